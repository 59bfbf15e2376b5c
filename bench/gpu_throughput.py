"""GPU efficiency on real sentence lengths: real tokens/s and MFU of frozen encode, top-3 and full fine-tuning,
the naive path (64 sentences in random order, padded to the batch maximum, eager) beside thawing's path
(length-grouped batches of 64 with dynamic padding, as the training loop and `encode` batch today).

MFU counts real tokens only: 2 x N (forward) or 6 x N (training) FLOPs per real token, N = non-embedding
parameters (top-3: forward over all layers plus backward over 3), over a bf16 matmul rate measured on the same
card in the same run. Lengths come from SST-2 and AG News texts, tokenized by a BPE tokenizer trained on them
(the Qwen2 tokenizer cannot be fetched offline). Model: a random Qwen2 of stella_en_1.5B_v5's shape.

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

from throughput import DATA, random_qwen2  # noqa: E402


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
        return [json.loads(line)["text"] for _, line in zip(range(n), fh)]


def batches(lengths: list[int], size: int, naive: bool, seed: int = 0, max_tokens: int | None = None) -> list[list[int]]:
    from thawing.data.batching import length_grouped_batches, token_budget_batches

    if max_tokens:
        return token_budget_batches(lengths, max_tokens, seed)
    if not naive:
        return length_grouped_batches(lengths, size, seed)
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    return [order[i : i + size] for i in range(0, len(order), size)]


def run(encoder, head, ids: list[list[int]], mode: str, naive: bool, steps: int, device: str, max_tokens: int | None = None) -> dict:
    """Time `steps` batches (after 3 warm-up batches) of one mode: encode, top3 or full."""
    import torch

    from thawing.model.groups import parameter_groups
    from thawing.freezing import select_groups

    groups = parameter_groups(encoder)
    trainable = {"encode": [], "top3": select_groups(["layers[-3:]", "projection"], groups), "full": select_groups(["all"], groups)}[mode]
    for name, members in groups.items():
        for _, p in members:
            p.requires_grad_(name in trainable)
    params = [p for g in trainable for _, p in groups[g]] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-5) if mode != "encode" else None
    plan = batches([len(x) for x in ids], 64, naive, max_tokens=max_tokens)
    steps = min(steps, len(plan) - 3)
    real = padded = 0
    for step, idx in enumerate(plan[: steps + 3]):
        if step == 3:
            _sync(device)
            start, real, padded = time.perf_counter(), 0, 0
        batch = {k: v.to(device) for k, v in encoder.pad([ids[i] for i in idx]).items()}
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            if optimizer is None:
                with torch.no_grad():
                    encoder.pool(encoder.token_states(**batch), batch["attention_mask"])
            else:
                logits = head(encoder.pool(encoder.token_states(**batch), batch["attention_mask"]))
                loss = torch.nn.functional.cross_entropy(logits.float(), torch.zeros(len(idx), dtype=torch.long, device=device))
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        real += int(batch["attention_mask"].sum())
        padded += batch["attention_mask"].numel()
    _sync(device)
    seconds = time.perf_counter() - start
    return {"real_tokens_per_s": round(real / seconds), "padding_fraction": round(1 - real / padded, 3), "seconds": round(seconds, 3),
            "batches": steps, "sentences_per_batch": round(sum(len(b) for b in plan[3 : steps + 3]) / max(1, steps), 1)}


def run_compiled(encoder, head, ids, mode: str, steps: int, device: str, max_tokens: int) -> dict:
    """The token-budget path with the backbone compiled (dynamic shapes, lengths padded to multiples of 64).

    Compilation happens in the warm-up batches; their wall time is reported as `compile_and_warmup_s`, and the
    compiled module is restored to eager afterwards so later rows are unaffected.
    """
    multiple = encoder.pad_multiple
    encoder.pad_multiple = 64
    encoder.backbone.compile(dynamic=True)
    _sync(device)
    start = time.perf_counter()
    try:
        result = run(encoder, head, ids, mode, False, steps, device, max_tokens)
    finally:
        encoder.pad_multiple = multiple
        encoder.backbone._compiled_call_impl = None  # back to eager
    result["compile_and_warmup_s"] = round(time.perf_counter() - start - result["seconds"], 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="stella-shape")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=16384, help="token budget of the third variant")
    parser.add_argument("--texts", type=int, default=20000)
    parser.add_argument("--datasets", default="sst2,ag_news")
    parser.add_argument("--modes", default="encode,top3,full")
    parser.add_argument("--compile", action="store_true", help="add a variant: token budget + torch.compile (dynamic), lengths padded to 64")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    import torch

    corpus = {"sst2": texts("sst2/train.jsonl", args.texts), "ag_news": texts("ag_news/test.jsonl", args.texts)}
    encoder = random_qwen2(args.model, corpus["sst2"][:5000] + corpus["ag_news"][:5000], args.device).to(args.device)
    encoder.train()
    head = torch.nn.Linear(encoder.embedding_size, 4).to(args.device)
    embedding_params = encoder.backbone.get_input_embeddings().weight.numel()
    n = sum(p.numel() for p in encoder.parameters()) - embedding_params
    layers = encoder.backbone.config.num_hidden_layers
    peak = matmul_peak(args.device)
    report = {"command": " ".join(sys.argv), "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
              "torch": torch.__version__, "non_embedding_params": n, "matmul_peak_tflops": round(peak / 1e12, 1), "results": {}}
    print(json.dumps(report), flush=True)
    flops_per_token = {"encode": 2 * n, "top3": 2 * n + 4 * n * 3 / layers, "full": 6 * n}
    for data, texts_ in corpus.items():
        if data not in args.datasets.split(","):
            continue
        ids = encoder.token_ids(texts_)
        report["results"][data] = {"mean_tokens": round(sum(map(len, ids)) / len(ids), 1)}
        for mode in args.modes.split(","):
            row = {}
            for label, naive, budget in (("naive", True, None), ("thawing", False, None), ("token_budget", False, args.max_tokens)):
                r = run(encoder, head, ids, mode, naive, args.steps, args.device, budget)
                r["mfu"] = round(r["real_tokens_per_s"] * flops_per_token[mode] / peak, 4)
                row[label] = r
            row["speedup"] = round(row["thawing"]["real_tokens_per_s"] / row["naive"]["real_tokens_per_s"], 2)
            row["token_budget_speedup"] = round(row["token_budget"]["real_tokens_per_s"] / row["naive"]["real_tokens_per_s"], 2)
            if args.compile:
                row["compiled"] = run_compiled(encoder, head, ids, mode, args.steps, args.device, args.max_tokens)
                row["compiled"]["mfu"] = round(row["compiled"]["real_tokens_per_s"] * flops_per_token[mode] / peak, 4)
                row["compiled_speedup"] = round(row["compiled"]["real_tokens_per_s"] / row["naive"]["real_tokens_per_s"], 2)
            report["results"][data][mode] = row
            print(data, mode, json.dumps(row), flush=True)
    if args.device == "cuda":
        report["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 1)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
