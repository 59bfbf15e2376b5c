"""thawing against the tools people would use instead, on the same data, splits and seeds (issue #17).

Methods, each scored on the data set's test split:
    probe          frozen MiniLM embeddings + scikit-learn logistic regression on the whole train split (MTEB-style)
    setfit         SetFit with the same MiniLM body (a few-shot method: its pairs grow with the data), on
                   `setfit_per_class` examples per class, or on the --fewshot draw; if setfit is installed
    hf             Hugging Face Trainer full fine-tuning, AutoModelForSequenceClassification (TokenClassification for
                   CoNLL) from the MiniLM folder, lr 5e-5, 3 epochs (1 in --quick), warmup 10%, the best epoch on dev
    thawing:<p>    thawing, one task per run, preset <p> (frozen, heads, progressive, full, lora, pairs); <p>+pairs adds
                   `pair_loss: 1` (SetFit's contrastive loss beside the cross-entropy) to each classification task;
                   thawing:pairs-plan runs bench/configs/fewshot/pairs_then_centroids.yaml (the pair loss alone; the
                   `pairs` preset is the same plan, and gives the same runs on few-shot data)
    multi:<p>      thawing, one model for every data set of a mix, preset <p>; multi:<p>@<strategy> samples tasks by
                   that strategy (temperature: T=2, round_robin) instead of proportionally
    <p> may also be a plan file, relative to the repository (thawing:bench/configs/sweep/progressive_disc4.yaml)

Data (fixed splits, drawn once with seed 0 and written under --work, so every method reads the same files): TREC
coarse and fine (train minus a fixed 10% dev carve; the 500-question test), SST-2 (its dev and test), AG News (a
stratified 6080/760/760 split of its 7,600-row test file), CoNLL-2003 (its dev and test); train and dev are capped
(FULL) so that the whole comparison, 3 seeds, takes about 2 hours as two single-thread processes on 2 cores.
Mixes: TREC coarse + SST-2 + CoNLL, TREC fine + AG News. `--quick`: 2 data sets, a few hundred rows, one seed, a
smoke test. `--fewshot N`: N per class drawn from the whole train file by thawing's own draw, TREC coarse and SST-2,
the full test splits (`--dev-fraction F`: the share of the draw thawing carves as dev). `--merge` joins the JSON of
runs split by --datasets/--mixes into one report.

Run: HF_HUB_OFFLINE=1 PYTHONPATH=src .venv/bin/python bench/quality.py [--quick | --fewshot N] [--datasets ...]
         [--mixes ...] [--methods ...] [--train-rows N] [--dev-rows N] --output bench/results/quality.json
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
# Rows per split (None: all; AG News's come from its stratified 6080/760/760 split). Train is capped so that the whole
# run (3 seeds, every method, both mixes) takes about 2 hours as two single-thread processes on a 2-core machine; the
# mixes are unequal on purpose, so that the sampling strategies have a smallest task to act on.
FULL = {
    "datasets": ["trec_coarse", "trec_fine", "sst2", "ag_news", "conll"],
    "train": {"trec_coarse": 1000, "trec_fine": 1000, "sst2": 1000, "ag_news": 600, "conll": 600},
    "dev": dict.fromkeys(SOURCES, 300), "test": {},
    "mixes": {"trec_coarse+sst2+conll": ["trec_coarse", "sst2", "conll"],
              "trec_fine+ag_news": ["trec_fine", "ag_news"]},
    # SetFit: 20 iterations (its documented default) make 2 x 20 pairs per example; TREC fine's 47 classes x 16 would
    # be 1,880 steps of 16 pairs, so pair steps are capped at 500 (every other data set runs its whole epoch)
    "seeds": [0, 1, 2], "hf_epochs": 3, "setfit_per_class": 16, "setfit_iterations": 20, "setfit_max_steps": 500,
    "methods": ["probe", "setfit", "hf"] + [f"thawing:{p}" for p in PRESETS] + [f"multi:{p}" for p in PRESETS]
    + ["multi:progressive@temperature", "multi:progressive@round_robin"],
}
QUICK = {
    "datasets": ["trec_coarse", "sst2"],
    "train": {"trec_coarse": 300, "sst2": 300}, "dev": {"trec_coarse": 60, "sst2": 60},
    "test": {"trec_coarse": 200, "sst2": 200}, "mixes": {"trec_coarse+sst2": ["trec_coarse", "sst2"]},
    "seeds": [0], "hf_epochs": 1, "setfit_per_class": 8, "setfit_iterations": 2,
    "methods": ["probe", "setfit", "hf"] + [f"thawing:{p}" for p in PRESETS] + ["multi:heads", "multi:full"],
}
# Few-shot (--fewshot N): N examples per class drawn from the whole train file by thawing's own draw (the same rows
# for every method at one seed); thawing carves its dev split from them, the others train on all of them.
FEWSHOT = {
    "datasets": ["trec_coarse", "sst2"], "seeds": [0, 1, 2], "setfit_iterations": 20,
    "methods": ["probe", "setfit"] + [f"thawing:{p}" for p in PRESETS] + ["thawing:pairs"],
}
PAIRS_PLAN = REPO / "bench" / "configs" / "fewshot" / "pairs_then_centroids.yaml"
STSB = DATA / "stsb" / "test.jsonl"  # the retention probe of every thawing run (its first 500 pairs)


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
            if i == 0:  # a rare class (TREC fine has classes of 1-3 questions) keeps a row in the first part
                take = max(take, 1)
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


def run_probe(paths: dict[str, Path], seed: int, C: float = 1.0) -> dict:
    """Logistic regression (scikit-learn's defaults, C=1 unless given; max_iter 1000) on frozen, normalized MiniLM
    embeddings; its dev accuracy too where there is a dev split (bench/baselines.py chooses C by it)."""
    from sklearn.linear_model import LogisticRegression

    from thawing.model.loading import load_encoder

    def embedded(path: Path):  # the same files for every seed: encoded once
        if path not in _EMBEDDED:
            _EMBEDDED[path] = load_encoder(MODEL).encode(labelled(path)[0], batch_size=64)
        return _EMBEDDED[path]

    (_, y_train), (_, y_test) = labelled(paths["train"]), labelled(paths["test"])
    clf = LogisticRegression(C=C, max_iter=1000, random_state=seed)
    clf.fit(embedded(paths["train"]), y_train)
    accuracy = float((clf.predict(embedded(paths["test"])) == y_test).mean())
    out = {"test": accuracy, "trainable_params": int(clf.coef_.size + clf.intercept_.size)}
    if "dev" in paths:
        out["dev"] = float((clf.predict(embedded(paths["dev"])) == labelled(paths["dev"])[1]).mean())
    return out


def run_setfit(paths: dict[str, Path], seed: int, work: Path, per_class: int, iterations: int,
               max_steps: int = -1) -> dict:
    """SetFit (contrastive body fine-tuning, then a logistic-regression head) on `per_class` examples per class."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    from thawing.model.resolve import resolve_model

    by: dict[str, list[dict]] = {}
    for text, label in zip(*labelled(paths["train"]), strict=True):
        by.setdefault(label, []).append({"text": text, "label": label})
    rng = random.Random(seed)
    few = [r for label in sorted(by) for r in rng.sample(by[label], min(per_class, len(by[label])))]
    model = SetFitModel.from_pretrained(str(resolve_model(MODEL)))
    # One epoch of its pairs (2 x `iterations` per example, 16 a step); SetFit's max_steps would cycle them beyond
    if max_steps > 0:
        max_steps = min(max_steps, math.ceil(2 * iterations * len(few) / 16))
    args = TrainingArguments(output_dir=str(work / "setfit"), batch_size=16, num_epochs=1, num_iterations=iterations,
                             max_steps=max_steps, seed=seed, report_to="none")
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(few))
    trainer.train()
    x_test, y_test = labelled(paths["test"])
    predicted = [str(p) for p in model.predict(x_test)]
    body = sum(p.numel() for p in model.model_body.parameters())
    return {"test": sum(p == y for p, y in zip(predicted, y_test, strict=True)) / len(y_test), "train_rows": len(few),
            "trainable_params": int(body + model.model_head.coef_.size + model.model_head.intercept_.size)}


def run_hf(paths: dict[str, Path], seed: int, work: Path, epochs: int, lr: float = 5e-5,
           head_lr: float | None = None) -> dict:
    """Single-task full fine-tuning with the Hugging Face Trainer; the best epoch on dev is scored on test.
    `head_lr`: the new head at a rate of its own (an AdamW with two parameter groups, through `optimizers=`)."""
    import numpy as np
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer

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
    args = _hf_args(work, len(splits["train"][0]), epochs, seed, "accuracy", lr)

    def accuracy(pred) -> dict:
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    trainer = Trainer(model=model, args=args, train_dataset=dataset("train"), eval_dataset=dataset("dev"),
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy,
                      optimizers=(_head_optimizer(model, lr, head_lr, args.weight_decay), None))
    trainer.train()
    test = trainer.evaluate(dataset("test"), metric_key_prefix="test")
    return {"test": test["test_accuracy"], "dev": trainer.state.best_metric, "updates": trainer.state.global_step,
            "trainable_params": sum(p.numel() for p in model.parameters())}


def run_hf_token(paths: dict[str, Path], seed: int, work: Path, epochs: int, lr: float = 5e-5) -> dict:
    """NER with the Hugging Face Trainer (AutoModelForTokenClassification): each word's first sub-token carries its
    tag, the others are -100; entity F1 by seqeval, the best epoch on dev."""
    import numpy as np
    from datasets import Dataset
    from seqeval.metrics import f1_score
    from transformers import AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification, Trainer

    from thawing.model.resolve import resolve_model

    folder = str(resolve_model(MODEL))
    splits = {s: read_jsonl(p) for s, p in paths.items()}
    names = sorted({t for r in splits["train"] for t in r["tags"]})
    ids = {n: i for i, n in enumerate(names)}
    tokenizer = AutoTokenizer.from_pretrained(folder)

    def dataset(split: str) -> Dataset:
        rows = splits[split]
        enc = tokenizer([r["tokens"] for r in rows], is_split_into_words=True, truncation=True, max_length=128)
        labels = []
        for i, row in enumerate(rows):
            words = enc.word_ids(i)
            labels.append([-100 if w is None or w == prev else ids.get(row["tags"][w], -100)
                           for prev, w in zip([None] + words[:-1], words, strict=True)])
        return Dataset.from_dict({**enc, "labels": labels})

    def f1(pred) -> dict:
        predicted, gold = np.argmax(pred.predictions, -1), pred.label_ids
        keep = [[j for j, g in enumerate(row) if g != -100] for row in gold]
        return {"f1": float(f1_score([[names[g[j]] for j in k] for g, k in zip(gold, keep, strict=True)],
                                     [[names[p[j]] for j in k] for p, k in zip(predicted, keep, strict=True)]))}

    model = AutoModelForTokenClassification.from_pretrained(folder, num_labels=len(names))
    trainer = Trainer(model=model, args=_hf_args(work, len(splits["train"]), epochs, seed, "f1", lr),
                      train_dataset=dataset("train"), eval_dataset=dataset("dev"),
                      data_collator=DataCollatorForTokenClassification(tokenizer), compute_metrics=f1)
    trainer.train()
    test = trainer.evaluate(dataset("test"), metric_key_prefix="test")
    return {"test": test["test_f1"], "dev": trainer.state.best_metric, "updates": trainer.state.global_step,
            "trainable_params": sum(p.numel() for p in model.parameters())}


def _head_optimizer(model, lr: float, head_lr: float | None, weight_decay: float):
    """None (the Trainer builds its own AdamW), or an AdamW whose group for the classifier runs at `head_lr`."""
    if head_lr is None:
        return None
    import torch

    head = [p for n, p in model.named_parameters() if n.startswith("classifier")]
    body = [p for n, p in model.named_parameters() if not n.startswith("classifier")]
    return torch.optim.AdamW([{"params": body, "lr": lr}, {"params": head, "lr": head_lr}], lr=lr,
                             weight_decay=weight_decay)


def _hf_args(work: Path, rows: int, epochs: int, seed: int, metric: str, lr: float = 5e-5):
    """The Trainer's usual recipe: lr 5e-5 (unless given), batch 32, warmup 10% of the steps, an evaluation per epoch,
    best on dev."""
    from transformers import TrainingArguments

    steps = math.ceil(rows / 32) * epochs
    return TrainingArguments(output_dir=str(work / "hf"), learning_rate=lr, num_train_epochs=epochs,
                             warmup_steps=max(1, round(0.1 * steps)), per_device_train_batch_size=32,
                             per_device_eval_batch_size=64, eval_strategy="epoch", save_strategy="epoch",
                             load_best_model_at_end=True, metric_for_best_model=metric, save_total_limit=1,
                             seed=seed, report_to=[], use_cpu=True, logging_strategy="no")


def thawing_task(name: str, paths: dict[str, Path], per_class: int | None = None, pairs: float = 0.0,
                 dev_fraction: float | None = None) -> dict:
    kind = SOURCES[name][2]
    data = {s: str(p) for s, p in paths.items()}
    if kind == "token":
        return {"type": "token-classification", "data": data, "tag_scheme": "IOB2"}
    task = {"type": "classification", "data": data, **({"pair_loss": pairs} if pairs else {})}
    if per_class is None:
        return task
    # few-shot: the source files themselves, N per class drawn by thawing (train.seed), dev carved from them
    carve = {"dev_fraction": dev_fraction} if dev_fraction else {}
    return {**task, "label_field": SOURCES[name][1], "limit": {"train": {"per_class": per_class}}, **carve}


def run_thawing(tasks: dict[str, dict[str, Path]], preset: str, seed: int, work: Path, sampling: str | None = None,
                per_class: int | None = None, dev_fraction: float | None = None) -> dict:
    """One thawing run over `tasks` (one: single-task, several: multi-task) with a preset plan (`<preset>+pairs`:
    with `pair_loss: 1` on every classification task): test and dev metric per task, STS-B retention where the
    probe's data is present."""
    from thawing.config import parse_config
    from thawing.store.run_dir import RunDir
    from thawing.training.loop import train

    preset, _, extra = preset.partition("+")
    pairs = 1.0 if extra == "pairs" or preset == "pairs-plan" else 0.0

    config = {"name": "quality", "model": {"name": MODEL, "max_length": 128},
              "tasks": {name: thawing_task(name, paths, per_class, pairs, dev_fraction)
                        for name, paths in tasks.items()},
              "train": {"batch_size": 32, "seed": seed, "checkpoint": False}, "schedule": preset}
    plan = PAIRS_PLAN if preset == "pairs-plan" else REPO / preset if preset.endswith(".yaml") else None
    if plan is not None:  # a plan file (pairs-plan: SetFit's recipe, the encoder by the pair loss alone)
        import yaml

        config["schedule"] = yaml.safe_load(plan.read_text(encoding="utf-8"))
        preset = plan.stem
    if sampling:
        config["train"]["sampling"] = {"strategy": sampling}
    if STSB.is_file():
        config["probes"] = {"stsb": {"type": "similarity", "data": str(STSB), "limit": 500}}
    run_dir = work / "runs" / f"{'+'.join(tasks)}-{preset}-{sampling or ''}seed{seed}-{time.time_ns()}"
    run = train(parse_config(config), run_dir=str(run_dir))
    assert isinstance(run, RunDir)
    results, stages = run.read_json(run.results), run.read_json(run.stages)
    evaluation = run.read_json(run.evaluation)["tasks"]
    metric = {name: "f1" if SOURCES[name][2] == "token" else "accuracy" for name in tasks}
    retention = ((results.get("probes") or {}).get("stsb") or {}).get("spearman_retention")
    return {"test": {name: results["tasks"][name][metric[name]] for name in tasks},
            "dev": {name: evaluation[name]["dev"]["metrics"][metric[name]]
                    for name in tasks if "dev" in evaluation[name]},
            "stsb_retention": retention,
            "trainable_params": max(s["trainable_params"] for s in stages),
            "stages": [{k: s.get(k) for k in ("stage", "epochs_run", "updates", "stopped", "best_score")}
                       for s in stages]}


def few_shot_rows(name: str, per_class: int, seed: int) -> list[dict]:
    """The rows thawing's `limit: {train: {per_class: N}}` draws at train.seed `seed` (the same public function)."""
    from thawing.config.tasks import draw_per_class

    folder, field, _ = SOURCES[name]
    rows = read_jsonl(DATA / folder / "train.jsonl")
    drawn = draw_per_class([(i, r["text"], str(r[field])) for i, r in enumerate(rows, start=1)], per_class, seed)
    return [{"text": text, "label": label} for _, text, label in drawn]


# ---------------------------------------------------------------------------------------------- driver


def summarize(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 4), "min": round(min(values), 4), "max": round(max(values), 4),
            "seeds": [round(v, 4) for v in values]}


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.mean(values), 4) if values else None


def method_summary(tests: list[float], devs: list, retentions: list, walls: list[float], trainable: int) -> dict:
    """One method's entry over its seeds: test mean and range, dev and STS-B retention means, time, size."""
    return {**summarize(tests), "dev": _mean(devs), "stsb_retention": _mean(retentions),
            "wall_s": round(statistics.mean(walls), 1), "trainable_params": trainable}


def run_method(method: str, name: str, paths: dict[str, Path], seed: int, work: Path, mode: dict) -> dict:
    """One single-task method on one data set at one seed."""
    per_class = mode.get("per_class")
    if per_class and method in ("probe", "setfit"):  # few-shot: every method trains on thawing's draw
        folder, field, _ = SOURCES[name]
        test = [{"text": r["text"], "label": str(r[field])} for r in read_jsonl(DATA / folder / "test.jsonl")]
        paths = {"train": work / "data" / name / f"train-{per_class}-seed{seed}.jsonl",
                 "test": work / "data" / name / "test.jsonl"}
        paths["train"].parent.mkdir(parents=True, exist_ok=True)
        for split, rows in (("train", few_shot_rows(name, per_class, seed)), ("test", test)):
            paths[split].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    if method == "probe":
        return run_probe(paths, seed)
    if method == "setfit":
        return run_setfit(paths, seed, work, per_class or mode["setfit_per_class"], mode["setfit_iterations"],
                          mode.get("setfit_max_steps", -1))
    if method == "hf":
        run = run_hf_token if SOURCES[name][2] == "token" else run_hf
        return run(paths, seed, work, mode["hf_epochs"])
    got = run_thawing({name: paths}, method.split(":")[1], seed, work, per_class=per_class,
                      dev_fraction=mode.get("dev_fraction"))
    return {**got, "test": got["test"][name], "dev": got["dev"].get(name)}


def line_count(path: Path) -> int:
    with open(path) as lines:
        return sum(1 for _ in lines)


def run_all(mode: dict, work: Path, only: list[str] | None, mixes: list[str] | None, save=lambda _out: None) -> dict:
    """Every method on every data set (and mix) of `mode`; `save(out)` after each method, so that a stopped run
    keeps what it finished."""
    mixes_run = {m: names for m, names in mode.get("mixes", {}).items() if mixes is None or m in mixes}
    needed = list(dict.fromkeys(mode["datasets"] + [n for names in mixes_run.values() for n in names]))
    if mode.get("per_class"):  # the source files: thawing and the draw read them as they are
        folder = {n: DATA / SOURCES[n][0] for n in needed}
        paths = {n: {"train": folder[n] / "train.jsonl", "test": folder[n] / "test.jsonl"} for n in needed}
    else:
        paths = {name: make_splits(name, mode, work) for name in needed}
    methods = only or mode["methods"]  # --methods may name variants beyond the mode's list (`thawing:full+pairs`)
    out: dict = {name: {"sizes": {s: line_count(p) for s, p in paths[name].items()}, "methods": {}}
                 for name in needed}
    if mode.get("per_class"):
        for name in needed:
            out[name]["sizes"]["train"] = f"{mode['per_class']} per class"
    for method in methods:
        if method.startswith("multi:"):
            for mix, names in mixes_run.items():
                run_mix(method, mix, {n: paths[n] for n in names}, mode["seeds"], work, out)
            save(out)
            continue
        for name in mode["datasets"]:
            if SOURCES[name][2] == "token" and method in ("probe", "setfit"):  # sentence classifiers only
                continue
            if method == "setfit" and not _has("setfit"):
                out[name]["methods"]["setfit"] = {"skipped": "setfit is not installed"}
                continue
            runs, walls = [], []
            for seed in mode["seeds"]:
                start = time.perf_counter()
                runs.append(run_method(method, name, paths[name], seed, work, mode))
                walls.append(time.perf_counter() - start)
            out[name]["methods"][method] = {
                **method_summary([r["test"] for r in runs], [r.get("dev") for r in runs],
                                 [r.get("stsb_retention") for r in runs], walls, runs[-1]["trainable_params"]),
                **({"train_rows": runs[-1]["train_rows"]} if "train_rows" in runs[-1] else {}),
                **({"stages": [r["stages"] for r in runs]} if "stages" in runs[-1] else {})}
            print(name, method, json.dumps({k: v for k, v in out[name]["methods"][method].items() if k != "stages"}),
                  flush=True)
            save(out)
    for name in needed:
        out[name]["multi_minus_single"] = multi_minus_single(out[name]["methods"])
    return out


def run_mix(method: str, mix: str, paths: dict[str, dict[str, Path]], seeds: list[int], work: Path,
            out: dict) -> None:
    """`multi:<preset>[@<sampling>]`: one model for every data set of the mix, per seed."""
    preset, _, sampling = method.split(":")[1].partition("@")
    runs, walls = [], []
    for seed in seeds:
        start = time.perf_counter()
        runs.append(run_thawing(paths, preset, seed, work, sampling=sampling or None))
        walls.append(time.perf_counter() - start)
    for name in paths:
        entry = method_summary([r["test"][name] for r in runs], [r["dev"].get(name) for r in runs],
                               [r["stsb_retention"] for r in runs], walls, runs[-1]["trainable_params"])
        entry["wall_s (all tasks)"] = entry.pop("wall_s")  # the mix's one model trained every task in that time
        out[name]["methods"][method] = {**entry, "mix": mix, "stages": [r["stages"] for r in runs]}
    print(mix, method, json.dumps({n: out[n]["methods"][method]["mean"] for n in paths}), flush=True)


def multi_minus_single(got: dict) -> dict:
    """Per preset: the multi-task model's mean test score minus the single-task run's (positive: transfer)."""
    return {p: round(got[f"multi:{p}"]["mean"] - got[f"thawing:{p}"]["mean"], 4)
            for p in PRESETS if f"multi:{p}" in got and f"thawing:{p}" in got}


def merge(reports: list[dict]) -> dict:
    """Several runs' reports (e.g. data sets split between two processes) as one: methods joined per data set."""
    datasets: dict = {}
    for report in reports:
        for name, data in report["datasets"].items():
            into = datasets.setdefault(name, {"sizes": data["sizes"], "methods": {}})
            into["methods"].update(data["methods"])
    for data in datasets.values():
        data["multi_minus_single"] = multi_minus_single(data["methods"])
    return {"command": [r["command"] for r in reports], "machine": reports[0]["machine"], "mode": reports[0]["mode"],
            "seeds": reports[0]["seeds"], "wall_s": [r.get("wall_s") for r in reports], "datasets": datasets}


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def overview(results: dict) -> str:
    """One table for the whole run: a row per method, a column per data set, the mean test score over seeds."""
    names = list(results)
    methods = list(dict.fromkeys(m for data in results.values() for m in data["methods"]))
    lines = ["| method | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for method in methods:
        cells = []
        for name in names:
            r = results[name]["methods"].get(method)
            cells.append("" if r is None or "skipped" in r else f"{r['mean']:.3f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tables(results: dict) -> str:
    """One markdown table per data set."""
    lines = []
    for name, data in results.items():
        lines += ["", f"### {name} (" + ", ".join(f"{s} {n}" for s, n in data["sizes"].items()) + ")", "",
                  "| method | test (mean) | min-max | dev (mean) | STS-B retention | wall s | trainable params |",
                  "|---|---|---|---|---|---|---|"]
        for method, r in data["methods"].items():
            if "skipped" in r:
                lines.append(f"| {method} | skipped: {r['skipped']} | | | | | |")
                continue
            wall = r.get("wall_s", r.get("wall_s (all tasks)"))
            label = f"{method} [{r['mix']}]" if "mix" in r else method
            dev = "" if r.get("dev") is None else f"{r['dev']:.4f}"
            kept = "" if r.get("stsb_retention") is None else f"{r['stsb_retention']:.1%}"
            lines.append(f"| {label} | {r['mean']:.4f} | {r['min']:.4f}-{r['max']:.4f} | {dev} | {kept} | {wall} | "
                         f"{r['trainable_params']:,} |")
        if data.get("multi_minus_single"):
            lines.append("")
            lines.append("multi-task minus single-task: " + ", ".join(f"{p} {d:+.4f}"
                                                                      for p, d in data["multi_minus_single"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 data sets, a few hundred rows, one seed")
    parser.add_argument("--fewshot", type=int, default=None, metavar="N",
                        help="N examples per class (TREC coarse and SST-2; SetFit, the probe and the presets)")
    parser.add_argument("--methods", default=None, help="comma-separated subset, e.g. probe,thawing:heads")
    parser.add_argument("--seeds", default=None, help="e.g. 0,1,2 (default: 0 with --quick, else 0,1,2)")
    parser.add_argument("--datasets", default=None, help="comma-separated subset of the single-task data sets")
    parser.add_argument("--mixes", default=None, help="comma-separated subset of the multi-task mixes")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON", help="join earlier runs' JSON files")
    parser.add_argument("--train-rows", type=int, default=None, metavar="N",
                        help="cap every data set's train split at N rows instead of the mode's caps (0: all rows)")
    parser.add_argument("--dev-rows", type=int, default=None, metavar="N", help="the same for dev (0: all rows)")
    parser.add_argument("--dev-fraction", type=float, default=None,
                        help="--fewshot: the share of the draw carved as thawing's dev (default: the task's, 0.1)")
    parser.add_argument("--work", default="/tmp/thawing-quality")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if args.merge:
        report = merge([json.loads(Path(f).read_text(encoding="utf-8")) for f in args.merge])
        return _write(report, args.output)

    import torch

    mode = dict(QUICK if args.quick else FEWSHOT if args.fewshot else FULL)
    if args.fewshot:
        mode["per_class"] = args.fewshot
    if args.dev_fraction is not None:
        if not args.fewshot:
            parser.error("--dev-fraction applies to --fewshot runs (the other modes have dev splits of their own)")
        mode["dev_fraction"] = args.dev_fraction
    if args.seeds:
        mode["seeds"] = [int(s) for s in args.seeds.split(",")]
    for split, rows in (("train", args.train_rows), ("dev", args.dev_rows)):
        if rows is not None:  # one cap for every data set; 0: none
            mode[split] = dict.fromkeys(SOURCES, rows or None)
    if args.datasets:
        unknown = sorted(set(args.datasets.split(",")) - set(SOURCES))
        if unknown:
            parser.error(f"unknown data sets {unknown}; choose from {', '.join(SOURCES)}")
        mode["datasets"] = args.datasets.split(",")
    mixes = args.mixes.split(",") if args.mixes is not None else None
    unknown = sorted(set(mixes or []) - set(mode.get("mixes", {})) - {""})
    if unknown:
        parser.error(f"unknown mixes {unknown}; choose from {', '.join(mode.get('mixes', {}))}")
    work = Path(args.work)
    start = time.perf_counter()

    def report(results: dict, complete: bool) -> dict:
        return {"command": " ".join(["bench/quality.py"] + (argv if argv is not None else sys.argv[1:])),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                           f"{torch.get_num_threads()} threads",
                "mode": "quick" if args.quick else f"fewshot {args.fewshot}" if args.fewshot else "full",
                "seeds": mode["seeds"], "wall_s": round(time.perf_counter() - start, 1), "complete": complete,
                "datasets": results}

    results = run_all(mode, work, args.methods.split(",") if args.methods else None, mixes,
                      save=lambda out: _write(report(out, False), args.output, quiet=True))
    return _write(report(results, True), args.output)


def _write(report: dict, output: str | None, quiet: bool = False) -> dict:
    if not quiet:
        print(overview(report["datasets"]) + "\n" + tables(report["datasets"]))
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(output).with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        tmp.replace(output)
    return report


if __name__ == "__main__":
    main()
