"""GPU efficiency on real sentence lengths: real tokens/s and MFU of frozen encode, top-3 and full fine-tuning.

Variants, each over the same texts:
- naive: 64 sentences in random order, padded to the batch maximum, eager;
- token_budget: length-grouped batches filled to --max-tokens padded tokens, eager;
- packed: random batches of --max-tokens real tokens, packed into rows of --pack-width (block-diagonal
  attention, see thawing.model.packing), eager;
- packed_compiled: packed, with each transformer layer under torch.compile (one graph shared by the layers;
  only the token or row count varies). The warm-up batches' extra time (compilation) is reported as compile_s,
  not hidden.

MFU counts real tokens only: 2 x N (forward) or 6 x N (training) FLOPs per real token, N = non-embedding
parameters (top-3: forward over all layers plus backward over 3), over a bf16 matmul rate measured on the same
card in the same run. Lengths come from SST-2 and AG News texts, tokenized by a BPE tokenizer trained on them
(the Qwen2 tokenizer cannot be fetched offline). Model: a random Qwen2 of stella_en_1.5B_v5's shape. The JSON
is rewritten after every row, so a run cut short keeps what it measured.

Run (GPU): PYTHONPATH=src THAWING_DATASETS=.gpu-data python bench/gpu_throughput.py --output $OUT/gpu_throughput.json
Check on CPU first: HF_HUB_OFFLINE=1 .venv/bin/python bench/gpu_throughput.py --model tiny-qwen2 --device cpu --steps 3
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from report import write_report  # noqa: E402
from throughput import DATA, random_qwen2  # noqa: E402

VARIANTS = ("naive", "token_budget", "packed", "packed_compiled")  # also: token_budget_compiled (padded, compiled)


def matmul_peak(device: str, size: int = 8192, repeats: int = 20) -> float:
    """Measured dense bf16 matmul FLOP/s on this card (fp32 on CPU)."""
    import torch

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    size = size if device == "cuda" else 512
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def texts(name: str, n: int) -> list[str]:
    with open(DATA / name) as fh:
        return [json.loads(line)["text"] for _, line in zip(range(n), fh, strict=False)]  # the first n lines


def batches(lengths: list[int], variant: str, max_tokens: int, seed: int = 0) -> list[list[int]]:
    from thawing.data.batching import packed_batches, token_budget_batches

    if variant == "naive":
        order = list(range(len(lengths)))
        random.Random(seed).shuffle(order)
        return [order[i : i + 64] for i in range(0, len(order), 64)]
    if variant.startswith("token_budget"):
        return token_budget_batches(lengths, max_tokens, seed)
    return packed_batches(lengths, max_tokens, seed)


def run(encoder, head, ids: list[list[int]], mode: str, variant: str, steps: int, device: str, max_tokens: int) -> dict:
    """Time `steps` batches (after 3 warm-up batches) of one mode (encode, top3, full) and one batching variant."""
    import torch

    from thawing.model.freezing import select_groups
    from thawing.model.groups import parameter_groups

    groups = parameter_groups(encoder)
    trainable = {
        "encode": [],
        "top3": select_groups(["layers[-3:]", "projection"], groups),
        "full": select_groups(["all"], groups),
    }[mode]
    for name, members in groups.items():
        for _, p in members:
            p.requires_grad_(name in trainable)
    params = [p for g in trainable for _, p in groups[g]] + list(head.parameters())
    # thawing's loop uses the fused AdamW on a GPU; the naive path keeps torch's default.
    fused = device == "cuda" and variant != "naive"
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=fused or None) if mode != "encode" else None
    plan = batches([len(x) for x in ids], variant, max_tokens)
    steps = min(steps, len(plan) - 3)
    real = computed = 0
    warmup_start = time.perf_counter()
    for step, idx in enumerate(plan[: steps + 3]):
        if step == 3:
            _sync(device)
            start, real, computed = time.perf_counter(), 0, 0
        batch = {k: v.to(device) for k, v in encoder.pad([ids[i] for i in idx]).items()}
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            if optimizer is None:
                with torch.no_grad():
                    encoder.pool(encoder.token_states(**batch), batch["attention_mask"])
            else:
                logits = head(encoder.pool(encoder.token_states(**batch), batch["attention_mask"]))
                loss = torch.nn.functional.cross_entropy(
                    logits.float(), torch.zeros(len(idx), dtype=torch.long, device=device)
                )
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        tokens = int(batch["attention_mask"].sum())
        real += tokens
        computed += _computed_tokens(encoder, batch, tokens)
    _sync(device)
    seconds = time.perf_counter() - start
    warmup = start - warmup_start
    return {
        "real_tokens_per_s": round(real / seconds),
        "padding_fraction": round(1 - real / computed, 3),
        "seconds": round(seconds, 3),
        "warmup_s": round(warmup, 2),
        "batches": steps,
        "sentences_per_batch": round(sum(len(b) for b in plan[3 : steps + 3]) / max(1, steps), 1),
        "packing": encoder.layout.mode(training=True) or "off",
        "optimizer": None if optimizer is None else ("fused AdamW" if fused else "AdamW"),
    }


def _computed_tokens(encoder, batch, real: int) -> int:
    """Positions the backbone actually ran: the padded batch, or the packed rows."""
    mode = encoder.layout.mode(training=True)
    if not mode:
        return batch["attention_mask"].numel()
    if mode == "varlen":  # one row of exactly the real tokens
        return real
    from thawing.model.packing import first_fit

    lengths = batch["attention_mask"].sum(dim=1).tolist()
    width = max(encoder.layout.width, max(lengths))
    return (max(first_fit(lengths, width)[0]) + 1) * width


def run_variant(encoder, head, ids, mode: str, variant: str, args) -> dict:
    """One row: packing and compilation as `thawing train` resolves them for the variant (`runtime.resolve` with
    packing on), padded otherwise; the encoder goes back to padded and eager afterwards."""
    from thawing.model.packing import BatchLayout
    from thawing.model.runtime import apply, resolve

    compiled = variant.endswith("_compiled")
    if variant.startswith("packed"):
        sample = encoder.pad(ids[:32])
        runtime = resolve(encoder, device=args.device, precision="bf16" if args.device == "cuda" else "no",
                          packing_=True, pack_width=args.pack_width, compile_=compiled,
                          sample=lambda: (sample["input_ids"], sample["attention_mask"]))
        apply(runtime, encoder)
    elif compiled:
        encoder.compile_layers()
    try:
        result = run(encoder, head, ids, mode, variant, args.steps, args.device, args.max_tokens)
    finally:
        encoder.layout = BatchLayout()
        if compiled:
            encoder.compile_layers(False)  # back to eager for later rows
    if compiled:  # the warm-up batches ran compilation; what they took beyond 3 steady-state batches is compile time
        result["compile_s"] = round(result["warmup_s"] - 3 * result["seconds"] / max(1, result["batches"]), 1)
    return result


def guarded(run_variant, encoder, head, *args) -> dict:
    """One row, with its own peak GPU memory; a row that fails (out of memory, a kernel or compiler error) is
    recorded as such and the rest still run, since a GPU session has time for one go."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        result = run_variant(encoder, head, *args)
    except Exception as exc:  # noqa: BLE001 -- any failure is recorded as the row's result (see the docstring)
        result = {"error": f"{type(exc).__name__}: {exc}"[:600]}
        for p in list(encoder.parameters()) + list(head.parameters()):
            p.grad = None
    if torch.cuda.is_available():
        result["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 1)
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="stella-shape")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--max-tokens", type=int, default=16384, help="token budget of the token_budget and packed variants"
    )
    parser.add_argument("--pack-width", type=int, default=512, help="tokens per packed row")
    parser.add_argument("--texts", type=int, default=20000)
    parser.add_argument("--datasets", default="sst2,ag_news")
    parser.add_argument("--modes", default="encode,top3,full")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--compile-modes", default="encode,full", help="modes that get the packed_compiled variant")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    import torch

    began = time.perf_counter()
    corpus = {"sst2": texts("sst2/train.jsonl", args.texts), "ag_news": texts("ag_news/test.jsonl", args.texts)}
    encoder = random_qwen2(args.model, corpus["sst2"][:5000] + corpus["ag_news"][:5000], args.device).to(args.device)
    encoder.train()
    head = torch.nn.Linear(encoder.embedding_size, 4).to(args.device)
    embedding_params = encoder.backbone.get_input_embeddings().weight.numel()
    n = sum(p.numel() for p in encoder.parameters()) - embedding_params
    layers = encoder.backbone.config.num_hidden_layers
    peak = matmul_peak(args.device)
    report = {
        "command": " ".join(sys.argv),
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "non_embedding_params": n,
        "matmul_peak_tflops": round(peak / 1e12, 1),
        "results": {},
    }
    print(json.dumps(report), flush=True)
    flops_per_token = {"encode": 2 * n, "top3": 2 * n + 4 * n * 3 / layers, "full": 6 * n}
    ids = {}
    for data in args.datasets.split(","):
        ids[data] = encoder.token_ids(corpus[data])
        report["results"][data] = {"mean_tokens": round(sum(map(len, ids[data])) / len(ids[data]), 1)}
        report["results"][data].update({mode: {} for mode in args.modes.split(",")})
    # Eager rows first, for every dataset in the order asked, compiled rows last: a run cut short (compilation
    # is the slow, uncertain part) keeps the most rows.
    variants = args.variants.split(",")
    rows = [
        (d, m, v)
        for compiled in (False, True)
        for d in ids
        for m in args.modes.split(",")
        for v in variants
        if v.endswith("_compiled") == compiled and (not compiled or m in args.compile_modes.split(","))
    ]
    for data, mode, variant in rows:
        row = report["results"][data][mode]
        r = guarded(run_variant, encoder, head, ids[data], mode, variant, args)
        if "error" not in r:
            r["mfu"] = round(r["real_tokens_per_s"] * flops_per_token[mode] / peak, 4)
        if "error" not in r and "real_tokens_per_s" in row.get("naive", {}):
            r["speedup_vs_naive"] = round(r["real_tokens_per_s"] / row["naive"]["real_tokens_per_s"], 2)
        row[variant] = r
        print(f"[{time.perf_counter() - began:.0f} s]", data, mode, variant, json.dumps(r), flush=True)
        write_report(report, args.output)
    write_report(report, args.output)


if __name__ == "__main__":
    main()
