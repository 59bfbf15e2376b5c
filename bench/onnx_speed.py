"""CPU inference: an ONNX export (fp32, and int8) run by onnxruntime beside thawing's PyTorch `predict`, on the same
2,000 texts, same batch size, alternating runs in one process; also test accuracy and agreement of each side.

The model: all-MiniLM-L6-v2 with two heads trained heads-only (encoder frozen) on slices of TREC (coarse, 6 classes)
and SST-2 (2 classes), unless --run-dir names a trained run. The texts: the 500 TREC test questions and the first
1,500 SST-2 test sentences, each scored on its own task; every side predicts both tasks for every text. Both sides
include tokenization and batch in order of token length. The ONNX side is what a user writes from the export folder
alone (transformers' tokenizer, onnxruntime, numpy).

Run: HF_HUB_OFFLINE=1 .venv/bin/python bench/onnx_speed.py --output bench/results/onnx_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from report import write_report  # noqa: E402

DATA = REPO.parent / "shared" / "datasets"


def config(n_train: int) -> dict:
    return {
        "name": "onnx-bench",
        "model": {"name": "sentence-transformers/all-MiniLM-L6-v2", "max_length": 128},
        "tasks": {
            "question_type": {"type": "classification", "label_field": "label_coarse", "limit": {"train": n_train},
                              "data": {"train": str(DATA / "trec/train.jsonl"), "test": str(DATA / "trec/test.jsonl")}},
            "sentiment": {"type": "classification", "limit": {"train": n_train},
                          "data": {"train": str(DATA / "sst2/train.jsonl"), "dev": str(DATA / "sst2/dev.jsonl"),
                                   "test": str(DATA / "sst2/test.jsonl")}},
        },
        "train": {"batch_size": 32, "epochs": 4, "seed": 0},
        "freeze": ["encoder"],
    }


def texts_and_gold(n: int) -> tuple[list[str], dict[str, list[tuple[int, str]]]]:
    """The texts, and per task (index of a text, its gold label) for the texts that task is scored on."""
    trec = [json.loads(line) for line in (DATA / "trec/test.jsonl").read_text().splitlines()]
    sst = [json.loads(line) for line in (DATA / "sst2/test.jsonl").read_text().splitlines()]
    rows = [(r["text"], "question_type", r["label_coarse"]) for r in trec]
    rows += [(r["text"], "sentiment", r["label"]) for r in sst][: max(0, n - len(rows))]
    rows = rows[:n]
    gold: dict[str, list[tuple[int, str]]] = {"question_type": [], "sentiment": []}
    for i, (_, task, label) in enumerate(rows):
        gold[task].append((i, str(label)))
    return [text for text, _, _ in rows], gold


class OnnxPredictor:
    """Labels for every task from the export folder alone: tokenize, batch by length, run, argmax."""

    def __init__(self, folder: Path):
        import onnxruntime
        from transformers import AutoTokenizer

        self.meta = json.loads((folder / "thawing_onnx.json").read_text())
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.session = onnxruntime.InferenceSession(str(folder / self.meta["graph"]),
                                                    providers=["CPUExecutionProvider"])
        self.tasks = list(self.meta["tasks"])

    def predict(self, texts: list[str], batch_size: int):
        import numpy as np

        ids = self.tokenizer([t.strip() for t in texts], truncation=True, max_length=self.meta["max_length"])
        order = sorted(range(len(texts)), key=lambda i: len(ids["input_ids"][i]), reverse=True)
        labels = {task: [None] * len(texts) for task in self.tasks}
        probs = {task: [None] * len(texts) for task in self.tasks}
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = self.tokenizer.pad({"input_ids": [ids["input_ids"][i] for i in chunk],
                                        "attention_mask": [ids["attention_mask"][i] for i in chunk]},
                                       return_tensors="np")
            out = self.session.run(self.tasks, {name: batch[name].astype(np.int64) for name in self.meta["inputs"]})
            for task, logits in zip(self.tasks, out, strict=True):
                p = np.exp(logits - logits.max(-1, keepdims=True))
                p /= p.sum(-1, keepdims=True)
                for row, i in enumerate(chunk):
                    labels[task][i] = self.meta["tasks"][task]["labels"][int(p[row].argmax())]
                    probs[task][i] = p[row]
        return labels, probs


def accuracy(labels: dict[str, list], gold: dict[str, list[tuple[int, str]]]) -> dict[str, float]:
    return {task: round(sum(labels[task][i] == y for i, y in pairs) / len(pairs), 4)
            for task, pairs in gold.items() if pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default=None, help="A trained run (default: train the heads-only model)")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--n-train", type=int, default=2000, help="training rows of each task")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="onnx-bench-") as work:
        result = measure(args, Path(work))
    print(json.dumps(result, indent=2))
    write_report(result, args.output)


def measure(args: argparse.Namespace, work: Path) -> dict:
    import numpy as np
    import onnxruntime
    import torch

    import thawing
    from thawing.config import parse_config
    from thawing.deploy.export import export_run
    from thawing.training.loop import train

    start = time.perf_counter()
    run = Path(args.run_dir) if args.run_dir else train(parse_config(config(args.n_train)), str(work / "run")).path
    train_s = time.perf_counter() - start
    folders = {}
    export_s = {}
    for name, quantize in (("onnx_fp32", None), ("onnx_int8", "int8")):
        start = time.perf_counter()
        folders[name] = export_run(run, work / name, quantize=quantize)
        export_s[name] = round(time.perf_counter() - start, 1)

    texts, gold = texts_and_gold(args.n)
    model = thawing.load(run, device="cpu")
    model.batch_size = args.batch_size
    onnx = {name: OnnxPredictor(folder) for name, folder in folders.items()}

    def run_thawing():
        out = model.predict(texts)
        return ({task: [p["label"] for p in rows] for task, rows in out.items()},
                {task: [np.array(list(p["probs"].values())) for p in rows] for task, rows in out.items()})

    sides = {"thawing_pytorch": run_thawing, **{name: (lambda p=p: p.predict(texts, args.batch_size))
                                                 for name, p in onnx.items()}}
    for side in sides.values():  # warm-up (and each side's predictions)
        side()
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    outputs = {}
    for _ in range(args.repeats):  # alternate, so drift in machine load hits every side alike
        for name, side in sides.items():
            start = time.perf_counter()
            outputs[name] = side()
            seconds[name].append(time.perf_counter() - start)
    load = [round(x, 2) for x in os.getloadavg()]  # other work on the machine slows every side alike (alternated)
    medians = {name: statistics.median(v) for name, v in seconds.items()}
    reference_labels, reference_probs = outputs["thawing_pytorch"]
    return {
        "command": " ".join(sys.argv),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, onnxruntime {onnxruntime.__version__}",
        "load_average_1_5_15_min_at_end": load,
        "model": "sentence-transformers/all-MiniLM-L6-v2" if not args.run_dir else str(run),
        "training": None if args.run_dir else {"config": config(args.n_train), "seconds": round(train_s, 1)},
        "n": len(texts),
        "batch_size": args.batch_size,
        "export_seconds": export_s,
        "graph_mb": {name: round((folder / "model.onnx").stat().st_size / 2**20, 1)
                     for name, folder in folders.items()},
        "seconds": {name: [round(s, 3) for s in v] for name, v in seconds.items()},
        "texts_per_s": {name: round(len(texts) / s, 1) for name, s in medians.items()},
        "speed_over_thawing": {name: round(medians["thawing_pytorch"] / s, 3) for name, s in medians.items()},
        # Each round runs every side back to back: the ratio within a round is the least touched by other load.
        "speed_over_thawing_per_round": {
            name: [round(t / s, 2) for t, s in zip(seconds["thawing_pytorch"], v, strict=True)]
            for name, v in seconds.items()},
        "test_accuracy": {name: accuracy(labels, gold) for name, (labels, _) in outputs.items()},
        "label_agreement_with_thawing": {
            name: {task: round(float(np.mean([a == b for a, b in
                                              zip(labels[task], reference_labels[task], strict=True)])), 4)
                   for task in labels} for name, (labels, _) in outputs.items()},
        "max_abs_prob_diff_from_thawing": {
            name: {task: float(max(np.abs(a - b).max()
                                   for a, b in zip(probs[task], reference_probs[task], strict=True)))
                   for task in probs} for name, (_, probs) in outputs.items()},
    }


if __name__ == "__main__":
    main()
