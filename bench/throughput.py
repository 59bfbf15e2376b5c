"""Training throughput with and without caching what is frozen.

For each scenario (heads-only, top-2, top-3, discriminative-6, full) it times one training epoch naive (every
step runs the whole encoder) and cached (heads-only: pooled embeddings computed once; top-k: hidden states at
the frozen boundary computed once, only the top k layers run), reports examples/s, the one-time cache build, the
cache's size beside the estimate N x tokens x hidden x 2 bytes, and the ideal top-k speed-up (L+2k)/(3k).
Evaluation is left out of the epoch times; `--progressive` adds the end-to-end time of the progressive preset
(evaluations included) with and without the cache.

Models: `minilm` (all-MiniLM-L6-v2), `stella-shape` (a random Qwen2 of stella_en_1.5B_v5's shape: hidden 1536,
28 layers, 12 heads, 2 KV heads, intermediate 8960, vocab 151646, Dense 1536 -> 1024), or `tiny-qwen2` (the
same code path at toy size, to check the GPU script on a CPU first). Random models get a BPE tokenizer trained
on the benchmark's own texts (the real Qwen2 tokenizer cannot be fetched offline).

Run (CPU):  HF_HUB_OFFLINE=1 .venv/bin/python bench/throughput.py --model minilm --progressive \
                --output bench/results/throughput_cpu.json
Run (GPU):  PYTHONPATH=src python bench/throughput.py --model stella-shape --device cuda --mixed-precision bf16 \
                --scenarios heads,top3 --output $OUT/throughput_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from report import write_report  # noqa: E402

DATA = Path(os.environ.get("THAWING_DATASETS", REPO.parent / "shared" / "datasets"))

SHAPES = {
    "stella-shape": dict(
        hidden_size=1536,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        intermediate_size=8960,
        vocab_size=151646,
        max_position_embeddings=8192,
        dense=1024,
    ),
    "tiny-qwen2": dict(
        hidden_size=64,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=151646,
        max_position_embeddings=512,
        dense=48,
    ),
}


def first_texts(name: str, n: int) -> list[str]:
    with open(DATA / name) as fh:
        return [json.loads(line)["text"] for _, line in zip(range(n), fh, strict=False)]  # the first n lines


def texts_for_tokenizer(n: int) -> list[str]:
    return first_texts("trec/train.jsonl", n) + first_texts("sst2/train.jsonl", n)


def random_qwen2(shape: str, corpus: list[str], device: str = "cpu"):
    """A randomly initialised Qwen2 encoder with stella's layout (mean pooling, Dense projection)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2Model

    from thawing.model.encoder import Dense, Encoder

    spec = dict(SHAPES[shape])
    dense = spec.pop("dense")
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=16000, special_tokens=["<|endoftext|>", "<unk>"]))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    with torch.device(device):  # initialise 1.5B random weights on the GPU, not on the host
        backbone = Qwen2Model(Qwen2Config(**spec, attn_implementation="sdpa"))
        projection = torch.nn.Sequential(Dense(spec["hidden_size"], dense, activation=torch.nn.Identity()))
    return Encoder(backbone, tokenizer, pooling="mean", projection=projection, normalize=False, max_length=512)


def base_config(args) -> dict:
    trec = {"train": str(DATA / "trec/train.jsonl"), "test": str(DATA / "trec/test.jsonl")}
    sst = {"train": str(DATA / "sst2/train.jsonl"), "dev": str(DATA / "sst2/dev.jsonl")}
    return {
        "name": "throughput",
        "model": {"name": "sentence-transformers/all-MiniLM-L6-v2", "max_length": 128},
        "tasks": {
            "trec": {
                "type": "classification",
                "data": trec,
                "label_field": "label_coarse",
                "limit": {"train": args.n_trec},
            },
            "sst2": {"type": "classification", "data": sst, "limit": {"train": args.n_sst, "dev": 200}},
        },
        "train": {
            "batch_size": args.batch_size,
            "seed": 0,
            "device": args.device,
            "mixed_precision": args.mixed_precision,
            "warmup": 0,
            "lr_schedule": "constant",
        },
        "cache": {"dir": tempfile.mkdtemp(prefix="thawing-bench-cache-"), "dtype": args.cache_dtype, "max_gb": 40},
    }


def scenario_stage(name: str, layers: int) -> dict:
    if name == "heads":
        return {"name": name, "train": ["heads"], "epochs": 1}
    if name.startswith("top"):
        k = int(name[3:])
        return {"name": name, "train": ["heads", "projection", f"layers[-{k}:]"], "epochs": 1}
    if name.startswith("disc"):
        k = min(int(name[4:]), layers)
        return {"name": name, "train": ["heads", "projection", f"layers[-{k}:]"], "epochs": 1, "layer_decay": 0.8}
    return {"name": name, "train": ["all"], "epochs": 1}


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


class Clock:
    """Events callback that notes when a stage's training starts (its cache is built by then) and its last update."""

    def __init__(self, device: str):
        self.device, self.marks = device, {}

    def __call__(self, name: str, _payload: dict) -> None:  # the loop calls events(name, payload)
        if name in ("stage_start", "step"):
            sync(self.device)
            self.marks[name] = time.perf_counter()


def time_epoch(ctx, stage, groups, cached: bool, device: str) -> dict:
    """One epoch of `stage`, naive or cached, through the loop's own `run_stage`; returns timings and cache size.
    The epoch time runs from the stage's start (its cache built) to its last update: evaluation is left out."""
    import torch

    from thawing.training import loop

    ctx.prep.config.cache.enabled = cached
    clock = ctx.events = Clock(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    began = time.perf_counter()
    summary = loop.run_stage(ctx, stage, groups, [p for g in stage.trainable for _, p in groups[g]])
    build_s = clock.marks["stage_start"] - began
    epoch_s = clock.marks["step"] - clock.marks["stage_start"]
    examples = sum(len(ctx.prep.features[t]["train"]) for t in ctx.prep.features)
    out = {"epoch_s": round(epoch_s, 3), "examples_per_s": round(examples / epoch_s, 1), "updates": summary["updates"],
           "cache_build_s": round(build_s, 3) if summary["cached"] or "boundary_cache" in summary else None}
    if "boundary_cache" in summary:
        tokens = sum(sum(ctx.prep.features[t]["train"].lengths) for t in ctx.prep.features)
        out.update(cache_kind=f"boundary at {summary['boundary_cache']}", cache_mb=summary["boundary_cache_mb"],
                   estimate_mb_2_bytes=round(tokens * ctx.model.encoder.hidden_size * 2 / 1e6, 2), cached_tokens=tokens)
    elif summary["cached"]:
        out.update(cache_kind="pooled embeddings", cache_mb=summary["feature_cache_mb"])
    if device == "cuda":
        out["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    return out


def scenario_context(raw: dict, encoder=None, run_dir: Path | None = None):
    """The loop's context for timing single stages (`loop.start` on a config), its parameter groups and layers."""
    from thawing.config import parse_config
    from thawing.model.freezing import layer_names
    from thawing.training import loop

    ctx, _, groups = loop.start(parse_config(raw), str(run_dir), encoder=encoder)
    return ctx, groups, len(layer_names(groups))


def scenario(raw: dict, groups: dict, name: str, layers: int):
    """The one stage of scenario `name`, planned as the loop plans it."""
    from thawing.config import parse_config
    from thawing.training.stages import build_plan

    return build_plan(parse_config({**raw, "schedule": [scenario_stage(name, layers)]}), groups)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", choices=["minilm", *SHAPES])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--cache-dtype", default="bfloat16")
    parser.add_argument("--scenarios", default="heads,top2,top3,disc6,full")
    parser.add_argument("--n-trec", type=int, default=1000)
    parser.add_argument("--n-sst", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--progressive", action="store_true")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    import torch

    from thawing.config import parse_config
    from thawing.training import loop

    raw = base_config(args)
    encoder = None if args.model == "minilm" else random_qwen2(args.model, texts_for_tokenizer(5000), args.device)
    runs = Path(tempfile.mkdtemp(prefix="thawing-bench-runs-"))
    ctx, groups, layers = scenario_context(raw, encoder, runs / "ctx")
    prep = ctx.prep
    results = {}
    for name in args.scenarios.split(","):
        stage = scenario(raw, groups, name, layers)
        row = {"trainable": stage.trainable, "naive": time_epoch(ctx, stage, groups, False, args.device),
               "cached": time_epoch(ctx, stage, groups, True, args.device)}
        row["speedup"] = round(row["cached"]["examples_per_s"] / row["naive"]["examples_per_s"], 2)
        if name.startswith("top"):
            k = int(name[3:])
            row["ideal_speedup"] = round((layers + 2 * k) / (3 * k), 2)
            row["fraction_of_ideal"] = round(row["speedup"] / row["ideal_speedup"], 3)
        results[name] = row
        print(name, json.dumps(row), flush=True)

    report = {
        "command": " ".join(sys.argv),
        "machine": torch.cuda.get_device_name(0)
        if args.device == "cuda"
        else f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "model": args.model,
        "layers": layers,
        "examples_per_epoch": sum(len(prep.features[t]["train"]) for t in prep.features),
        "mean_tokens": round(
            sum(sum(prep.features[t]["train"].lengths) for t in prep.features)
            / sum(len(prep.features[t]["train"]) for t in prep.features),
            1,
        ),
        "scenarios": results,
    }
    if args.progressive:
        report["progressive_end_to_end_s"] = {}
        for enabled in (False, True):
            cfg = parse_config({**raw, "schedule": "progressive", "cache": {**raw["cache"], "enabled": enabled}})
            start = time.perf_counter()
            run = loop.train(cfg, run_dir=str(runs / f"progressive-{enabled}"), encoder=encoder)
            report["progressive_end_to_end_s"]["cached" if enabled else "naive"] = {
                "wall_s": round(time.perf_counter() - start, 1),
                "score": run.read_json(run.results)["score"],
            }
            print("progressive", enabled, report["progressive_end_to_end_s"], flush=True)
    print(json.dumps(report, indent=2))
    write_report(report, args.output)


if __name__ == "__main__":
    main()
