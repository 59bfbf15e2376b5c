"""GPU: the stages of a plan on the stella-shaped model, through thawing's own loop (`thawing.training.loop.train`).

Three parts, each writing into one JSON that is rewritten after every row (a run cut short keeps what it measured):

- stages: the progressive preset's stages (heads on cached embeddings, the top 3 layers and the top half on their
  boundary caches, full fine-tuning) and a LoRA stage (rank 16 on the queries and values of the top half), each a
  one-stage plan of --epochs epochs over AG News lengths, with the runtime's GPU defaults (bf16, varlen packing,
  compiled layers) and --max-tokens real tokens per batch. Throughput counts the updates after the first 3
  (compilation and warm-up left out) as examples/s and real tokens/s (examples/s x the mean tokens per training
  example); MFU counts the FLOPs of what each stage computes per real token, over a bf16 matmul rate measured in the
  same run: full 6N; the top 3 layers (the top half) from the boundary cache 6N x 3/L (6N x half/L); LoRA on the top
  half 2N forward + 2N x half/L for the backward through the adapted layers (the adapters' own FLOPs are under 1%).
  N = non-embedding parameters, L = layers. Peak memory covers the whole one-stage run (cache building included).
- end_to_end: `schedule: progressive` (the optional full stage included; with --every-stage, the default, every
  stage runs: on random weights the dev scores that would stop the plan are noise) against `schedule: full`, with
  --e2e-epochs epochs per stage, evaluations included: time and peak memory per stage, wall time of the whole run,
  scores, and progressive's wall time over full's.
- oom: a full stage at --oom-tokens real tokens per batch (too many for the card): the update runs out of memory,
  runs again in pieces (training/memory.py), and the stage completes. Records the pieces and the time.

Data: AG News test (7,600 rows) cut deterministically into train/dev/test 8:1:1 (row i mod 10). Model: a random
Qwen2 of stella_en_1.5B_v5's shape (bench/throughput.py), BPE tokenizer trained on the texts.

Run (GPU): PYTHONPATH=src THAWING_DATASETS=.gpu-data python bench/gpu_stages.py --output $OUT/gpu_stages.json
Check on CPU: HF_HUB_OFFLINE=1 .venv/bin/python bench/gpu_stages.py --model tiny-qwen2 --device cpu --n 400 \
                  --max-tokens 2048 --oom-tokens 0 --output /tmp/gpu_stages.json
Only progressive against full (issue 30): add --stages '' --oom-tokens 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gpu_throughput import matmul_peak  # noqa: E402
from report import write_report  # noqa: E402
from throughput import DATA, random_qwen2, sync  # noqa: E402

from thawing.errors import Interrupted  # noqa: E402

STAGES = {  # the progressive preset's stages at its rates (heads, top3, disc: stella's "top" and "more" layers), LoRA
    "heads": {"name": "heads", "train": ["heads"], "lr": {"heads": 3e-2}},
    "disc": {"name": "disc", "train": ["heads", "projection", "layers[-HALF:]"], "lr": {"heads": 3e-4, "encoder": 5e-5},
             "layer_decay": 0.8},
    "full": {"name": "full", "train": ["all"], "lr": {"heads": 3e-2, "encoder": 3e-5}},
    "top3": {"name": "top3", "train": ["heads", "projection", "layers[-3:]"], "lr": {"heads": 5e-4, "encoder": 5e-5}},
    "lora": {"name": "lora", "train": ["heads", "projection"], "lr": {"heads": 5e-4, "encoder": 5e-4},
             "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "layers": "layers[-HALF:]",
                      "targets": ["query", "value"]}},
}


def split_ag_news(root: Path, n: int) -> dict[str, str]:
    with open(DATA / "ag_news/test.jsonl") as lines:  # the first n lines (the file may hold more)
        rows = [json.loads(line) for _, line in zip(range(n), lines, strict=False)]
    parts = {"train": [r for i, r in enumerate(rows) if i % 10 < 8],
             "dev": [r for i, r in enumerate(rows) if i % 10 == 8],
             "test": [r for i, r in enumerate(rows) if i % 10 == 9]}
    out = {}
    for name, part in parts.items():
        out[name] = str(root / f"{name}.jsonl")
        Path(out[name]).write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in part))
    return out


SYNC_EVERY = 10  # the clock is read (after waiting for the GPU) at update 3 and every 10th: a wait each update
# would hold the loop to the host's pace, which it no longer keeps (issue 30)


class Recorder:
    """Events callback: the time at update 3 and every `SYNC_EVERY`th (after the GPU finished it) with the examples
    trained by then, and each stage's peak GPU memory."""

    def __init__(self, device: str):
        self.device, self.steps, self.stages, self.examples = device, [], {}, 0

    def __call__(self, event) -> None:
        import torch

        from thawing.training.events import StageEnded, UpdateDone

        if isinstance(event, UpdateDone):
            self.examples += event.examples
            if event.update == 3 or event.update % SYNC_EVERY == 0:
                sync(self.device)
                self.steps.append((time.perf_counter(), self.examples, event.update))
        elif isinstance(event, StageEnded) and self.device == "cuda":
            self.stages[event.stage] = round(torch.cuda.max_memory_allocated() / 1e9, 1)
            torch.cuda.reset_peak_memory_stats()


def every_stage(build):
    """`build_plan` whose stages all run, whatever the stage before scored: on random weights the dev scores are
    noise, and a plan stopped by them would leave its later stages unmeasured."""

    def built(*args, **kwargs):
        return [dataclasses.replace(stage, stops_plan=False) for stage in build(*args, **kwargs)]

    return built


def train_once(raw: dict, schedule, encoder, run_dir: Path, device: str, run_optional: bool | None = None,
               all_stages: bool = False):
    import torch

    from thawing.config import parse_config
    from thawing.training import loop

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    events = Recorder(device)
    began = time.perf_counter()
    plan = mock.patch.object(loop, "build_plan", every_stage(loop.build_plan)) if all_stages else nullcontext()
    with plan:
        run = loop.train(parse_config({**raw, "schedule": schedule}), run_dir=str(run_dir), callbacks=[events],
                         encoder=encoder, run_optional=run_optional)
    return run, events, time.perf_counter() - began


def stage_row(raw, name, encoder, runs, args, n_params, layers, peak, mean_tokens) -> dict:
    stage = json.loads(json.dumps(STAGES[name]).replace("HALF", str(layers // 2)))
    run, events, wall = train_once(raw, [{**stage, "epochs": args.epochs}], encoder, runs / name, args.device)
    [summary] = run.read_json(run.stages)
    shutil.rmtree(run.path)  # a 1.5B model's final/ is 6 GB: the GPU machine's disk holds a few
    steps = events.steps  # from update 3: the first 3 updates compile and warm up
    if len(steps) < 2:  # too few updates to time (small data: heads whose centroid start held, head_start.py)
        steps = [(0.0, 0, 0), (float("nan"), 0, 0)]
    seconds = steps[-1][0] - steps[0][0]
    examples_per_s = (steps[-1][1] - steps[0][1]) / seconds
    tokens_per_s = examples_per_s * mean_tokens
    half = layers // 2
    flops = {"heads": 0, "full": 6 * n_params, "top3": 6 * n_params * 3 / layers, "disc": 6 * n_params * half / layers,
             "lora": 2 * n_params + 2 * n_params * half / layers}[name]
    timed = tokens_per_s == tokens_per_s  # not NaN
    row = {"trainable_params": summary["trainable_params"], "updates": summary["updates"],
           "timed_updates": steps[-1][2] - steps[0][2], "examples_per_s": round(examples_per_s, 1) if timed else None,
           "real_tokens_per_s": round(tokens_per_s) if timed else None,
           "mfu": round(tokens_per_s * flops / peak, 4) if flops and timed else None,
           "stage_wall_s": summary["wall_s"], "run_wall_s": round(wall, 1), "best_score": summary["best_score"],
           "peak_gpu_gb": events.stages.get(name)}
    for key in ("cached", "feature_cache_mb", "boundary_cache", "boundary_cache_mb", "lora", "micro_batch_pieces"):
        if key in summary:
            row[key] = summary[key]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="stella-shape")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--n", type=int, default=7600, help="AG News rows to use (8:1:1 train/dev/test)")
    parser.add_argument("--max-tokens", type=int, default=16384)
    parser.add_argument("--epochs", type=float, default=3, help="epochs of each stage in the stages part")
    parser.add_argument("--stages", default="heads,top3,disc,lora,full")
    parser.add_argument("--e2e", default="progressive,full", help="presets of the end-to-end part ('' for none)")
    parser.add_argument("--e2e-epochs", type=float, default=1)
    parser.add_argument("--every-stage", action=argparse.BooleanOptionalAction, default=True,
                        help="end to end: run every stage of the plan (random weights' scores would stop it)")
    parser.add_argument("--oom-tokens", type=int, default=131072, help="0: skip the out-of-memory part")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    import torch

    began = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="thawing-gpu-stages-"))
    data = split_ag_news(root, args.n)
    with open(data["train"]) as lines:
        texts = [json.loads(line)["text"] for line in lines]
    encoder = random_qwen2(args.model, texts[:5000], args.device).to(args.device)
    n_params = sum(p.numel() for p in encoder.parameters()) - encoder.backbone.get_input_embeddings().weight.numel()
    layers = encoder.backbone.config.num_hidden_layers
    mean_tokens = sum(map(len, encoder.token_ids(texts))) / len(texts)
    peak = matmul_peak(args.device)
    raw = {
        "name": "gpu-stages",
        "model": {"name": "stella-shape (random weights)", "max_length": 512},
        "tasks": {"topic": {"type": "classification", "data": data}},
        "train": {"seed": 0, "device": args.device, "max_tokens": args.max_tokens, "checkpoint": False},
        "cache": {"dir": str(root / "cache"), "max_gb": 40},
    }
    report = {
        "command": " ".join(sys.argv),
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "gpu_memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1) if args.device == "cuda"
        else None,
        "torch": torch.__version__,
        "non_embedding_params": n_params,
        "layers": layers,
        "matmul_peak_tflops": round(peak / 1e12, 1),
        "train_examples": len(texts),
        "mean_tokens": round(mean_tokens, 1),
        "max_tokens": args.max_tokens,
        "stages": {},
        "end_to_end": {},
        "oom": {},
    }
    runs = root / "runs"

    def save(part, key, value):
        report[part][key] = value
        print(f"[{time.perf_counter() - began:.0f} s]", part, key, json.dumps(value), flush=True)
        write_report(report, args.output)

    for name in filter(None, args.stages.split(",")):
        try:
            save("stages", name, stage_row(raw, name, encoder, runs, args, n_params, layers, peak, mean_tokens))
        except Interrupted:  # a time limit's SIGTERM ends the script, not the row
            raise
        except Exception as exc:  # noqa: BLE001 -- one GPU session: a failing row is recorded, the others still run
            save("stages", name, {"error": f"{type(exc).__name__}: {exc}"[:600]})
    for preset in filter(None, args.e2e.split(",")):
        try:
            raw_e2e = {**raw, "train": {**raw["train"], "epochs": args.e2e_epochs}}
            run, events, wall = train_once(raw_e2e, preset, encoder, runs / f"e2e-{preset}", args.device,
                                           run_optional=True, all_stages=args.every_stage)
            results, stages = run.read_json(run.results), run.read_json(run.stages)
            shutil.rmtree(run.path)
            save("end_to_end", preset, {
                "wall_s": round(wall, 1), "score": results["score"], "every_stage": args.every_stage,
                "stages": [{"stage": s["stage"], "wall_s": s["wall_s"], "updates": s["updates"],
                            "epochs_run": s["epochs_run"], "best_score": s["best_score"], "stopped": s["stopped"],
                            "cached": s["cached"], "peak_gpu_gb": events.stages.get(s["stage"])}
                           for s in stages]})
        except Interrupted:
            raise
        except Exception as exc:  # noqa: BLE001 -- recorded as the row's error, as for the stages
            save("end_to_end", preset, {"error": f"{type(exc).__name__}: {exc}"[:600]})
    walls = {k: v.get("wall_s") for k, v in report["end_to_end"].items()}
    if walls.get("progressive") and walls.get("full"):  # issue 30's goal: <= 0.5 on the same card
        save("end_to_end", "progressive_over_full_wall", round(walls["progressive"] / walls["full"], 3))
    if args.oom_tokens:
        raw_oom = {**raw, "train": {**raw["train"], "max_tokens": args.oom_tokens}}
        try:
            run, events, wall = train_once(raw_oom, [{**STAGES["full"], "epochs": 1}], encoder, runs / "oom",
                                           args.device)
            [summary] = run.read_json(run.stages)
            shutil.rmtree(run.path)
            save("oom", "full", {"max_tokens": args.oom_tokens, "micro_batch_pieces": summary.get("micro_batch_pieces"),
                                 "updates": summary["updates"], "stage_wall_s": summary["wall_s"],
                                 "peak_gpu_gb": events.stages.get("full")})
        except Interrupted:
            raise
        except Exception as exc:  # noqa: BLE001 -- recorded as the row's error, as for the stages
            save("oom", "full", {"error": f"{type(exc).__name__}: {exc}"[:600]})
    write_report(report, args.output)


if __name__ == "__main__":
    main()
