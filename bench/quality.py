"""thawing against the tools people would use instead, on the same data, splits and seeds (issue #17).

Methods, each scored on the data set's test split:
    probe          frozen MiniLM embeddings + scikit-learn logistic regression on the whole train split (MTEB-style)
    setfit         SetFit with the same MiniLM body, on `setfit_per_class` examples per class (contrastive pairs cost
                   grow with the square of the data; SetFit is a few-shot method), if setfit is installed
    hf             Hugging Face Trainer, AutoModelForSequenceClassification from the MiniLM folder, lr 5e-5,
                   3 epochs (1 in --quick), warmup 10%, the best epoch on dev
    thawing:<p>    thawing, one task per run, preset <p> (frozen, heads, progressive, full, lora)
    multi:<p>      thawing, every data set of the run as one multi-task model, preset <p>

Data (fixed splits, drawn once with seed 0 and written under --work, so every method reads the same files):
TREC coarse and fine (train minus a 10% dev carve, the 500-question test), SST-2 (train <= 10k, its dev and test),
AG News (a stratified 6080/760/760 split of its 7,600-row test file), CoNLL-2003 (train <= 5k; thawing only: the other
methods classify sentences). `--quick` uses 2 data sets and a few hundred rows, one seed, for a smoke test.

Run: HF_HUB_OFFLINE=1 PYTHONPATH=src .venv/bin/python bench/quality.py [--quick] --output bench/results/quality.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
DATA = REPO.parent / "shared" / "datasets"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
PRESETS = ("frozen", "heads", "progressive", "full", "lora")

# name: (source folder, label field, kind); kind "token" is CoNLL (tokens + tags)
SOURCES = {
    "trec_coarse": ("trec", "label_coarse", "classification"),
    "trec_fine": ("trec", "label_fine", "classification"),
    "sst2": ("sst2", "label", "classification"),
    "ag_news": ("ag_news", "label", "classification"),
    "conll": ("conll2003", "tags", "token"),
}
FULL = {  # rows per split (None: all); AG News's sizes come from its stratified split
    "datasets": ["trec_coarse", "trec_fine", "sst2", "ag_news", "conll"],
    "train": {"sst2": 10000, "conll": 5000}, "dev": {}, "test": {},
    "seeds": [0, 1, 2], "hf_epochs": 3, "setfit_per_class": 16, "setfit_iterations": 20,
    "methods": ["probe", "setfit", "hf"] + [f"thawing:{p}" for p in PRESETS] + [f"multi:{p}" for p in PRESETS],
}
QUICK = {
    "datasets": ["trec_coarse", "sst2"],
    "train": {"trec_coarse": 300, "sst2": 300}, "dev": {"trec_coarse": 60, "sst2": 60},
    "test": {"trec_coarse": 200, "sst2": 200},
    "seeds": [0], "hf_epochs": 1, "setfit_per_class": 8, "setfit_iterations": 2,
    "methods": ["probe", "setfit", "hf"] + [f"thawing:{p}" for p in PRESETS] + ["multi:heads", "multi:full"],
}


# ---------------------------------------------------------------------------------------------- data


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def stratified(rows: list[dict], field: str, sizes: list[int], seed: int = 0) -> list[list[dict]]:
    """Split `rows` into parts of `sizes`, each with the classes in the same proportions (AG News: 4 x 1,900 rows,
    6080/760/760 is exactly 80/10/10 of every class)."""
    by_label: dict[str, list[dict]] = {}
    for row in rows:
        by_label.setdefault(row[field], []).append(row)
    parts: list[list[dict]] = [[] for _ in sizes]
    total = sum(sizes)
    for label in sorted(by_label):
        members = by_label[label][:]
        random.Random(f"{seed}:{label}").shuffle(members)
        start = 0
        for i, size in enumerate(sizes):
            take = round(len(members) * size / total) if i < len(sizes) - 1 else len(members) - start
            parts[i].extend(members[start : start + take])
            start += take
    return parts


def make_splits(name: str, mode: dict, work: Path) -> dict[str, Path]:
    """Write the data set's train/dev/test as JSON Lines ({"text", "label"} or {"tokens", "tags"}); fixed seed 0."""
    folder, field, kind = SOURCES[name]
    src = DATA / folder
    if name == "ag_news":
        train, dev, test = stratified(read_jsonl(src / "test.jsonl"), field, [6080, 760, 760])
    else:
        train = read_jsonl(src / "train.jsonl")
        if (src / "dev.jsonl").is_file():
            dev = read_jsonl(src / "dev.jsonl")
        else:  # TREC: a fixed 10% of train is dev
            order = list(range(len(train)))
            random.Random(0).shuffle(order)
            cut = set(order[: round(0.1 * len(train))])
            train, dev = [r for i, r in enumerate(train) if i not in cut], [r for i, r in enumerate(train) if i in cut]
        test = read_jsonl(src / "test.jsonl")
    out = {}
    for split, rows in (("train", train), ("dev", dev), ("test", test)):
        limit = mode[split].get(name)
        if limit is not None and limit < len(rows) and kind == "token":  # seeded, not the first rows (may be sorted)
            rows = [rows[i] for i in sorted(random.Random(0).sample(range(len(rows)), limit))]
        elif limit is not None and limit < len(rows):  # stratified: a rare class (TREC's ABBR) stays in every split
            rows = stratified(rows, field, [limit, len(rows) - limit])[0]
        path = work / "data" / name / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"tokens": r["tokens"], "tags": r["tags"]} if kind == "token"
                else {"text": r["text"], "label": r[field]} for r in rows]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        out[split] = path
    return out


def labelled(path: Path) -> tuple[list[str], list[str]]:
    rows = read_jsonl(path)
    return [r["text"] for r in rows], [str(r["label"]) for r in rows]


# ---------------------------------------------------------------------------------------------- methods


_EMBEDDED: dict = {}


def run_probe(paths: dict[str, Path], seed: int, work: Path) -> dict:
    """Logistic regression (scikit-learn defaults, max_iter 1000) on frozen, normalized MiniLM embeddings."""
    from sklearn.linear_model import LogisticRegression

    from thawing.model.loading import load_encoder

    def embedded(path: Path):  # the same files for every seed: encoded once
        if path not in _EMBEDDED:
            _EMBEDDED[path] = load_encoder(MODEL).encode(labelled(path)[0], batch_size=64)
        return _EMBEDDED[path]

    (_, y_train), (_, y_test) = labelled(paths["train"]), labelled(paths["test"])
    clf = LogisticRegression(max_iter=1000, random_state=seed)
    clf.fit(embedded(paths["train"]), y_train)
    accuracy = float((clf.predict(embedded(paths["test"])) == y_test).mean())
    return {"test": accuracy, "trainable_params": int(clf.coef_.size + clf.intercept_.size)}


def run_setfit(paths: dict[str, Path], seed: int, work: Path, per_class: int, iterations: int) -> dict:
    """SetFit (contrastive body fine-tuning, then a logistic-regression head) on `per_class` examples per class."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    from thawing.model.resolve import resolve_model

    by: dict[str, list[dict]] = {}
    for text, label in zip(*labelled(paths["train"])):
        by.setdefault(label, []).append({"text": text, "label": label})
    rng = random.Random(seed)
    few = [r for label in sorted(by) for r in rng.sample(by[label], min(per_class, len(by[label])))]
    model = SetFitModel.from_pretrained(str(resolve_model(MODEL)))
    args = TrainingArguments(output_dir=str(work / "setfit"), batch_size=16, num_epochs=1, num_iterations=iterations,
                             seed=seed, report_to="none")
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(few))
    trainer.train()
    x_test, y_test = labelled(paths["test"])
    predicted = [str(p) for p in model.predict(x_test)]
    body = sum(p.numel() for p in model.model_body.parameters())
    return {"test": sum(p == y for p, y in zip(predicted, y_test)) / len(y_test), "train_rows": len(few),
            "trainable_params": int(body + model.model_head.coef_.size + model.model_head.intercept_.size)}


def run_hf(paths: dict[str, Path], seed: int, work: Path, epochs: int) -> dict:
    """Single-task full fine-tuning with the Hugging Face Trainer; the best epoch on dev is scored on test."""
    import numpy as np
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from thawing.model.resolve import resolve_model

    folder = str(resolve_model(MODEL))
    splits = {s: labelled(p) for s, p in paths.items()}
    names = sorted(set(splits["train"][1]))
    ids = {n: i for i, n in enumerate(names)}
    tokenizer = AutoTokenizer.from_pretrained(folder)

    def dataset(split: str) -> Dataset:
        texts, labels = splits[split]
        enc = tokenizer(texts, truncation=True, max_length=128)
        # A dev or test label that the train sample lacks: -100 is ignored by the loss and never equals a prediction
        return Dataset.from_dict({**enc, "labels": [ids.get(y, -100) for y in labels]})

    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(names))
    steps = math.ceil(len(splits["train"][0]) / 32) * epochs
    args = TrainingArguments(output_dir=str(work / "hf"), learning_rate=5e-5, num_train_epochs=epochs,
                             warmup_steps=max(1, round(0.1 * steps)), per_device_train_batch_size=32,
                             per_device_eval_batch_size=64, eval_strategy="epoch", save_strategy="epoch",
                             load_best_model_at_end=True, metric_for_best_model="accuracy", save_total_limit=1,
                             seed=seed, report_to=[], use_cpu=True, logging_strategy="no")

    def accuracy(pred) -> dict:
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    trainer = Trainer(model=model, args=args, train_dataset=dataset("train"), eval_dataset=dataset("dev"),
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy)
    trainer.train()
    test = trainer.evaluate(dataset("test"), metric_key_prefix="test")
    return {"test": test["test_accuracy"], "trainable_params": sum(p.numel() for p in model.parameters())}


def thawing_task(name: str, paths: dict[str, Path]) -> dict:
    kind = SOURCES[name][2]
    data = {s: str(p) for s, p in paths.items()}
    if kind == "token":
        return {"type": "token-classification", "data": data, "tag_scheme": "IOB2"}
    return {"type": "classification", "data": data}


def run_thawing(tasks: dict[str, dict[str, Path]], preset: str, seed: int, work: Path) -> dict:
    """One thawing run over `tasks` (one: single-task, several: multi-task) with a preset plan; test metric per task."""
    from thawing.config import parse_config
    from thawing.training.loop import train

    config = {"name": "quality", "model": {"name": MODEL, "max_length": 128},
              "tasks": {name: thawing_task(name, paths) for name, paths in tasks.items()},
              "train": {"batch_size": 32, "seed": seed, "checkpoint": False}, "schedule": preset}
    run_dir = work / "runs" / f"{'+'.join(tasks)}-{preset}-seed{seed}-{time.time_ns()}"
    run = train(parse_config(config), run_dir=str(run_dir))
    results, stages = run.read_json(run.results), run.read_json(run.stages)
    metric = {name: "f1" if SOURCES[name][2] == "token" else "accuracy" for name in tasks}
    return {"test": {name: results["tasks"][name][metric[name]] for name in tasks},
            "trainable_params": max(s["trainable_params"] for s in stages),
            "stages": [{k: s.get(k) for k in ("stage", "epochs_run", "updates", "stopped", "best_score")}
                       for s in stages]}


# ---------------------------------------------------------------------------------------------- driver


def summarize(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 4), "min": round(min(values), 4), "max": round(max(values), 4),
            "seeds": [round(v, 4) for v in values]}


def run_all(mode: dict, work: Path, only: list[str] | None) -> dict:
    paths = {name: make_splits(name, mode, work) for name in mode["datasets"]}
    methods = [m for m in mode["methods"] if only is None or m in only]
    out: dict = {name: {"sizes": {s: sum(1 for _ in open(p)) for s, p in paths[name].items()}, "methods": {}}
                 for name in paths}
    for method in methods:
        for name in paths:  # multi-task methods run once for all data sets (below)
            token = SOURCES[name][2] == "token"
            if method.startswith("multi:") or (token and not method.startswith("thawing:")):
                continue
            if method == "setfit" and not _has("setfit"):
                out[name]["methods"]["setfit"] = {"skipped": "setfit is not installed"}
                continue
            scores, walls, extra = [], [], {}
            for seed in mode["seeds"]:
                start = time.perf_counter()
                if method == "probe":
                    extra = run_probe(paths[name], seed, work)
                elif method == "setfit":
                    extra = run_setfit(paths[name], seed, work, mode["setfit_per_class"], mode["setfit_iterations"])
                elif method == "hf":
                    extra = run_hf(paths[name], seed, work, mode["hf_epochs"])
                else:
                    extra = run_thawing({name: paths[name]}, method.split(":")[1], seed, work)
                    extra["test"] = extra["test"][name]
                walls.append(time.perf_counter() - start)
                scores.append(extra["test"])
            out[name]["methods"][method] = {**summarize(scores), "wall_s": round(statistics.mean(walls), 1),
                                            "trainable_params": extra["trainable_params"]}
            print(name, method, json.dumps(out[name]["methods"][method]), flush=True)
        if method.startswith("multi:"):
            per_task: dict[str, list[float]] = {name: [] for name in paths}
            walls, extra = [], {}
            for seed in mode["seeds"]:
                start = time.perf_counter()
                extra = run_thawing(paths, method.split(":")[1], seed, work)
                walls.append(time.perf_counter() - start)
                for name in paths:
                    per_task[name].append(extra["test"][name])
            for name in paths:
                out[name]["methods"][method] = {**summarize(per_task[name]), "wall_s (all tasks)":
                                                round(statistics.mean(walls), 1),
                                                "trainable_params": extra["trainable_params"]}
            print(method, json.dumps({n: out[n]["methods"][method]["mean"] for n in paths}), flush=True)
    for name in paths:  # multi-task minus single-task, per preset
        got = out[name]["methods"]
        out[name]["multi_minus_single"] = {p: round(got[f"multi:{p}"]["mean"] - got[f"thawing:{p}"]["mean"], 4)
                                           for p in PRESETS if f"multi:{p}" in got and f"thawing:{p}" in got}
    return out


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def tables(results: dict) -> str:
    """One markdown table per data set."""
    lines = []
    for name, data in results.items():
        lines += ["", f"### {name} (" + ", ".join(f"{n} {s}" for s, n in data["sizes"].items()) + ")", "",
                  "| method | test (mean) | min-max | wall s | trainable params |", "|---|---|---|---|---|"]
        for method, r in data["methods"].items():
            if "skipped" in r:
                lines.append(f"| {method} | skipped: {r['skipped']} | | | |")
                continue
            wall = r.get("wall_s", r.get("wall_s (all tasks)"))
            lines.append(f"| {method} | {r['mean']:.4f} | {r['min']:.4f}-{r['max']:.4f} | {wall} | "
                         f"{r['trainable_params']:,} |")
        if data.get("multi_minus_single"):
            lines.append("")
            lines.append("multi-task minus single-task: " + ", ".join(f"{p} {d:+.4f}"
                                                                      for p, d in data["multi_minus_single"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 data sets, a few hundred rows, one seed")
    parser.add_argument("--methods", default=None, help="comma-separated subset, e.g. probe,thawing:heads")
    parser.add_argument("--seeds", default=None, help="e.g. 0,1,2 (default: 0 with --quick, else 0,1,2)")
    parser.add_argument("--datasets", default=None, help="comma-separated subset, e.g. trec_coarse,sst2")
    parser.add_argument("--work", default="/tmp/thawing-quality")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)

    import torch

    mode = dict(QUICK if args.quick else FULL)
    if args.seeds:
        mode["seeds"] = [int(s) for s in args.seeds.split(",")]
    if args.datasets:
        unknown = sorted(set(args.datasets.split(",")) - set(SOURCES))
        if unknown:
            parser.error(f"unknown data sets {unknown}; choose from {', '.join(SOURCES)}")
        mode["datasets"] = args.datasets.split(",")
    work = Path(args.work)
    start = time.perf_counter()
    results = run_all(mode, work, args.methods.split(",") if args.methods else None)
    report = {"command": " ".join(["bench/quality.py"] + (argv if argv is not None else sys.argv[1:])),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
              "mode": "quick" if args.quick else "full", "seeds": mode["seeds"],
              "wall_s": round(time.perf_counter() - start, 1), "datasets": results}
    print(tables(results))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
