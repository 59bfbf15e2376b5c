"""The model card, final/README.md: what a trained model is, how well it did and how to use it, written from the run
directory's files alone (config.yaml, stages.json, results.json, final/tasks.json), like the report.

Front matter (YAML, as the Hugging Face Hub reads it): library_name, tags, base_model (a hub id; a local base model
is named in the body only), license (the base model's, read from its own card where this machine has a copy; else
none), datasets (the hub datasets of `format: hf` tasks; files are named in the body), metrics, and model-index (each
task's final metrics). Body: each task's labels, head, prompt, data and final metrics; the stage plan with trainable
parameters and wall time; retention probes where results.json has them (`probes`); usage with `thawing.load`,
sentence-transformers (`final/encoder/`, with each task's prompt by name) and an ONNX export. `thawing push` uploads
the card with its usage section rewritten to load the model by repo id (`card_for_repo`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import yaml

from thawing.errors import InputError, ThawingError
from thawing.model.multitask import TaskSpec
from thawing.store.atomic import write_text
from thawing.store.run_dir import ENCODER, FINAL, ONNX_META, ONNX_MODEL, RunDir
from thawing.task_types import task_type

log = logging.getLogger(__name__)

EXAMPLE = "An example sentence."
READS = {"sentence": "the sentence embedding", "tokens": "each token's state (a word is read at its first sub-token)",
         "pairs": "the two sentence embeddings u and v: (u, v, |u - v|)"}


def write_model_card(path: str | Path) -> Path:
    """Write final/README.md for the finished run at `path`; returns its path.

    Raises:
        InputError: naming the file, when the run has no results.json or final/tasks.json yet.
    """
    run = RunDir(path)
    for needed in (run.results, run.tasks):
        if not needed.is_file():
            raise InputError("not found: the model card needs a finished run", path=needed)
    config = yaml.safe_load(run.config.read_text()) if run.config.is_file() else {}
    stages = run.read_json(run.stages) if run.stages.is_file() else []
    card = render_card(run.path.name, config or {}, run.read_json(run.tasks), stages, run.read_json(run.results))
    write_text(run.model_card, card)
    return run.model_card


def render_card(name: str, config: dict, tasks: dict, stages: list[dict], results: dict) -> str:
    """The card's markdown, YAML front matter first. `name` is the run directory's name; the usage snippets use
    paths relative to the folder that holds the run."""
    base = (config.get("model") or {}).get("name", "")
    meta = yaml.safe_dump(front_matter(name, config, tasks, results), sort_keys=False, allow_unicode=True)
    lines = ["---", meta.rstrip("\n"), "---", "", f"# {name}", ""]
    lines += [
        f"A multi-task model trained with thawing: one shared sentence encoder, "
        f"fine-tuned from {_base_phrase(base)}, and one head per task ({', '.join(f'`{t}`' for t in tasks)}). "
        f"The encoder is in sentence-transformers layout (in `{ENCODER}/` of a run's final/, at the root of a pushed "
        "repo); the heads are in `heads.safetensors`, their labels and settings in `tasks.json`.",
        "",
        "## Tasks",
    ]
    task_configs = config.get("tasks") or {}
    for task, spec in tasks.items():
        lines += _task_section(task, spec, task_configs.get(task) or {}, results)
    if isinstance(results.get("score"), (int, float)):
        lines += ["", f"Selection score (over the tasks' primary metrics): **{results['score']:.4f}**"]
    lines += _stage_section(stages, config)
    lines += _probe_section(results.get("probes"))
    lines += _usage_section(name, tasks)
    return "\n".join(lines) + "\n"


def code(text: str) -> str:
    """`text` as one Markdown code span, whatever it holds: line breaks and other control characters written as
    escapes (a label with a newline would end the span and the list item), and a backtick in it fenced by two."""
    shown = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in str(text))
    fence = "``" if "`" in shown else "`"
    pad = " " if shown.startswith("`") or shown.endswith("`") else ""
    return f"{fence}{pad}{shown}{pad}{fence}"


# ---------------------------------------------------------------------------------------------- front matter


def front_matter(name: str, config: dict, tasks: dict, results: dict) -> dict:
    """The YAML metadata of the card (Hugging Face model card keys)."""
    base = (config.get("model") or {}).get("name", "")
    kinds = [task_type(spec["type"]) for spec in tasks.values()]
    # A pushed repo is a sentence-transformers model at its root (the heads beside it are thawing's): the Hub shows
    # its loading code, and the thawing tag finds it.
    meta: dict = {"library_name": "sentence-transformers"}
    license_ = base_model_license(base) if base else None
    if license_:
        meta["license"] = license_
    if _hub_id(base):
        meta["base_model"] = base
    meta["tags"] = ["thawing", "sentence-transformers", "sentence-similarity", "feature-extraction", "multi-task",
                    *dict.fromkeys(kind.hub_task for kind in kinds)]
    datasets = list(dict.fromkeys(d for t in (config.get("tasks") or {}).values() for d in _hub_datasets(t)))
    if datasets:
        meta["datasets"] = datasets
    scores = results.get("tasks") or {}
    meta["metrics"] = sorted({metric for values in scores.values() for metric in values})
    meta["model-index"] = [{"name": name, "results": [_index_entry(task, tasks[task], values, results, config)
                                                      for task, values in scores.items() if task in tasks]}]
    return meta


def _index_entry(task: str, spec: dict, values: dict, results: dict, config: dict) -> dict:
    split = (results.get("splits") or {}).get(task, "test")
    task_config = (config.get("tasks") or {}).get(task) or {}
    hub = _hub_datasets(task_config)
    source = (task_config.get("data") or {}).get(split)
    dataset = {"name": hub[0] if hub else _short_path(source) if source else task,
               "type": hub[0] if hub else "unknown", "split": split}
    if hub:  # the Hub's own names: the subset (config) and split read for ours
        dataset.update({"config": task_config["hf_subset"]} if task_config.get("hf_subset") else {},
                       split=(task_config.get("hf_split") or {}).get(split, split))
    return {
        "task": {"type": task_type(spec["type"]).hub_task, "name": task},
        "dataset": dataset,
        "metrics": [{"type": metric, "value": value, "name": metric} for metric, value in values.items()],
    }


def _hub_id(name: str) -> bool:
    """Whether a model name is a Hub id (owner/name) rather than a folder on this machine."""
    return (name.count("/") == 1 and not name.startswith(("/", ".", "~"))
            and not Path(name).expanduser().exists())


def _hub_datasets(task_config: dict) -> list[str]:
    """A `format: hf` task's hub dataset name (a `load_from_disk` folder is no hub dataset)."""
    if task_config.get("format") != "hf":
        return []
    train = (task_config.get("data") or {}).get("train")
    return [train] if train and not Path(train).exists() else []


def base_model_license(name: str) -> str | None:
    """The license in the base model's own card (README.md front matter), from this machine's copy only."""
    from thawing.model.resolve import resolve_model

    try:
        card = resolve_model(name, local_only=True) / "README.md"
        text = card.read_text() if card.is_file() else ""
    except (ThawingError, OSError):
        return None
    if not text.startswith("---"):
        return None
    try:
        meta = yaml.safe_load(text.split("---", 2)[1])
    except (yaml.YAMLError, IndexError):
        log.info("%s: front matter is not valid YAML; no license on the card", card)
        return None
    license_ = meta.get("license") if isinstance(meta, dict) else None
    return license_ if isinstance(license_, str) else None


# ---------------------------------------------------------------------------------------------- body


def _base_phrase(base: str) -> str:
    if not base:
        return "its base model"
    if _hub_id(base):
        return f"[{base}](https://huggingface.co/{base})"
    return f"a local model (`{Path(base).name}`)"


def _task_section(task: str, spec: dict, task_config: dict, results: dict) -> list[str]:
    kind = task_type(spec["type"])
    labels = spec.get("labels") or []
    head = spec.get("head") or {}
    shape = (f"MLP (hidden size {head.get('hidden_size')}, GELU)" if head.get("type") == "mlp" else "linear")
    rule = kind.decision_rule(TaskSpec(**spec))
    lines = ["", f"### {task}", "", f"- Type: {spec['type']}"]
    if kind.reads == "pairs" and not kind.has_head:  # similarity, retrieval: the encoder alone
        objective = ", ".join(f"{k} {v}" for k, v in (spec.get("objective") or {}).items())
        lines += [f"- Score range: {' to '.join(labels)} (scaled to 0 to 1)"] if labels else []
        lines.append(f"- Head: none ({rule['rule']}); trained through the encoder" + (f" ({objective})"
                                                                                        if objective else ""))
    else:
        lines += [f"- Labels ({len(labels)}): " + ", ".join(code(label) for label in labels),
                  f"- Head: {shape} over {READS[kind.reads]}, dropout {head.get('dropout', 0.0)} in training"]
    lines.append(f"- Prompt: {code(spec['prompt'])}" if spec.get("prompt") else "- Prompt: none")
    if "threshold" in rule:
        lines.append(f"- Threshold: {rule['threshold']} (a label is predicted when its probability is above it)")
    if "tag_scheme" in rule:
        lines.append(f"- Tag scheme: {rule['tag_scheme']}")
    data = task_config.get("data") or {}
    hf_split = task_config.get("hf_split") or {}
    files = [f"{split} `{_short_path(path)}`" + (f" (split `{hf_split[split]}`)" if split in hf_split else "")
             for split, path in data.items() if path]
    if files:
        subset = f", subset `{task_config['hf_subset']}`" if task_config.get("hf_subset") else ""
        lines.append("- Data: " + ", ".join(files) + subset + _limit_note(task_config))
    values = (results.get("tasks") or {}).get(task)
    if values:
        split = (results.get("splits") or {}).get(task, "test")
        note = "" if split == "test" else " (the task has no test split)"
        lines += ["", f"Metrics on {split}{note}:", "", "| metric | value |", "|---|---|"]
        lines += [f"| {metric} | {value:.4f} |" for metric, value in values.items()]
    return lines


def _short_path(path: str) -> str:
    """A data file as `folder/file`: enough to recognise it, without this machine's absolute path."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def _limit_note(task_config: dict) -> str:
    limit = task_config.get("limit") or {}
    parts = [f"{n['per_class']:,} per class of {split}" if isinstance(n, dict) else f"first {n:,} {split} rows"
             for split, n in limit.items()]
    return " (" + ", ".join(parts) + ")" if parts else ""


def _stage_section(stages: list[dict], config: dict) -> list[str]:
    if not stages:
        return []
    # config.yaml records the stages a preset expanded to, so each stage's selectors are there by name.
    schedule = config.get("schedule") if isinstance(config.get("schedule"), list) else []
    trains = {s.get("name"): s.get("train") for s in schedule if isinstance(s, dict)}
    adapters = {s.get("name"): s["lora"] for s in schedule if isinstance(s, dict) and isinstance(s.get("lora"), dict)}
    lines = ["", "## Training plan", "",
             "Each stage trains the parameter groups it names (the rest stay frozen), with a fresh optimizer.", "",
             "| stage | trains | trainable parameters | epochs | best dev score | stopped | wall time |",
             "|---|---|---|---|---|---|---|"]
    for s in stages:
        groups = trains.get(s.get("stage"))
        groups_cell = ", ".join(f"`{g}`" for g in groups) if groups else ("nothing" if groups == [] else "")
        if s.get("stage") in adapters:
            merged = isinstance(s.get("lora"), dict) and s["lora"].get("merged") is True  # stages.json says
            adapters_cell = _lora_cell(adapters[s["stage"]], merged)
            groups_cell = f"{groups_cell}, {adapters_cell}" if groups else adapters_cell
        best = "" if s.get("best_score") is None else f"{s['best_score']:.4f}"
        lines.append(f"| {s.get('stage', '')} | {groups_cell} | {s.get('trainable_params', 0):,} "
                     f"| {s.get('epochs_run', '')} | {best} | {s.get('stopped', '')} | {s.get('wall_s', '')} s |")
    total = sum(s.get("wall_s") or 0 for s in stages)
    lines += ["", f"Training took {total:.1f} s over {len(stages)} stage(s)."]
    return lines


def _lora_cell(lora: dict, merged: bool) -> str:
    """A LoRA stage's adapters as the config gave them, and whether they were merged into the encoder (a stage that
    did not beat the plan's best has its adapters dropped)."""
    targets = lora.get("targets")
    named = ", ".join(f"`{t}`" for t in targets) if isinstance(targets, list) else f"`{targets}`"
    layers = lora.get("layers")
    where = ", ".join(f"`{x}`" for x in layers) if isinstance(layers, list) else f"`{layers}`"
    return f"LoRA r={lora.get('r')} on {named} of {where} ({'merged' if merged else 'dropped'})"


def _probe_section(probes: object) -> list[str]:
    """Retention probes (results.json `probes`): how much of what the base model knew the fine-tuned one kept."""
    if not probes:
        return []
    lines = ["", "## Retention", "", "| probe | value |", "|---|---|"]
    lines += [f"| {name} | {_cell(value)} |" for name, value in _flatten("", probes)]
    return lines


def _flatten(prefix: str, value: object) -> Iterator[tuple[str, object]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _flatten(f"{prefix} / {key}" if prefix else str(key), inner)
    else:
        yield prefix, value


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return json.dumps(value) if isinstance(value, (list, type(None), bool)) else str(value)


# ---------------------------------------------------------------------------------------------- usage


USAGE = "## Usage"


def card_for_repo(card: str, repo_id: str, tasks: dict) -> str | None:
    """`card` (a run's final/README.md) for the Hugging Face repo `repo_id`: its usage section (from its heading to
    the next section, so edits elsewhere stay) rewritten to load the model by repo id. None when the card has no
    such section (edited away).

    Example:
        >>> tasks = {"t": {"type": "classification", "labels": ["a", "b"], "head": {"type": "linear"}}}
        >>> card_for_repo("# r\n\n## Usage\n\nold\n", "someone/r", tasks)[:40]
        '# r\n\n## Usage\n\nFrom the Hugging Face '
    """
    lines = card.splitlines()
    if USAGE not in lines:
        return None
    start = lines.index(USAGE)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    before = lines[:start]
    while before and not before[-1].strip():  # the section brings its own blank line
        before.pop()
    return "\n".join(before + _usage_section(repo_id, tasks, hub=True) + [""] * (end < len(lines)) + lines[end:]) + "\n"


def _usage_section(name: str, tasks: dict, hub: bool = False) -> list[str]:
    """Snippets that load the model `name`: a run directory (paths relative to the folder that holds it), or with
    `hub`, a Hugging Face repo id."""
    first = next(iter(tasks))
    prompted = next((t for t, spec in tasks.items() if spec.get("prompt")), None)
    if hub:
        where = ["From the Hugging Face Hub: downloaded the first time, then read from the Hugging Face cache."]
        load = f'model = thawing.load("{name}")'
        # The repo's root is the encoder in sentence-transformers layout (deploy/hub.py), the heads beside it.
        st = ["from sentence_transformers import SentenceTransformer", "", f'encoder = SentenceTransformer("{name}")']
    else:
        where = ["Paths are relative to the folder that holds the run directory."]
        load = f'model = thawing.load("{name}")  # the run directory, or its {FINAL}/ folder'
        st = ["from sentence_transformers import SentenceTransformer", "",
              f'encoder = SentenceTransformer("{name}/{FINAL}/{ENCODER}")']
    lines = ["", USAGE, "", *where, "", "With thawing:", "", "```python", "import thawing", "", load,
             f'print(model.predict(["{EXAMPLE}"], task="{first}"))',
             f'print(model.encode(["{EXAMPLE}"]).shape)  # sentence embeddings', "```", "",
             "With sentence-transformers (the encoder alone: embeddings; each task's prompt is a named prompt):",
             "", "```python", *st]
    if prompted:
        lines.append(f'vectors = encoder.encode(["{EXAMPLE}"], prompt_name="{prompted}")  # the prompt of {prompted}')
    else:
        lines.append(f'vectors = encoder.encode(["{EXAMPLE}"])')
    lines += ["print(vectors.shape)", "```"]
    return lines + _onnx_usage(name, tasks)


def _onnx_usage(name: str, tasks: dict) -> list[str]:
    folder = f"{name.rsplit('/', 1)[-1]}-onnx"  # a run directory's name, or a repo's name without its owner
    sentence = next((t for t, spec in tasks.items() if task_type(spec["type"]).reads == "sentence"), None)
    lines = ["", "As ONNX (one graph: the encoder, every head and the embedding; run with onnxruntime):", "",
             "```bash", 'pip install "thawing[onnx]"', f"thawing export {name} --format onnx --output {folder}", "```",
             "", "```python", "import json", "", "import numpy as np", "import onnxruntime",
             "from transformers import AutoTokenizer", "",
             f'folder = "{folder}"', f'meta = json.load(open(f"{{folder}}/{ONNX_META}"))',
             "tokenizer = AutoTokenizer.from_pretrained(folder)",
             f'session = onnxruntime.InferenceSession(f"{{folder}}/{ONNX_MODEL}", providers=["CPUExecutionProvider"])']
    if sentence is None:
        lines += [f'batch = tokenizer(["{EXAMPLE}"], padding=True, truncation=True, max_length=meta["max_length"],',
                  '                  return_tensors="np")',
                  'inputs = {"input_ids": batch["input_ids"].astype(np.int64),',
                  '          "attention_mask": batch["attention_mask"].astype(np.int64)}',
                  'embedding, = session.run(["embedding"], inputs)', "print(embedding.shape)", "```"]
    else:
        rule = task_type(tasks[sentence]["type"]).decision_rule(TaskSpec(**tasks[sentence]))
        lines += [f'task = meta["tasks"]["{sentence}"]',
                  f'texts = [(task["prompt"] or "") + "{EXAMPLE}"]  # lower-case them too if meta["do_lower_case"]',
                  'batch = tokenizer(texts, padding=True, truncation=True, max_length=meta["max_length"],'
                  ' return_tensors="np")',
                  'inputs = {"input_ids": batch["input_ids"].astype(np.int64),',
                  '          "attention_mask": batch["attention_mask"].astype(np.int64)}',
                  f'logits, embedding = session.run(["{sentence}", "embedding"], inputs)']
        if rule["activation"] == "sigmoid":
            lines += ["probs = 1 / (1 + np.exp(-logits[0]))",
                      'print([label for label, p in zip(task["labels"], probs) if p > task["threshold"]])']
        else:
            lines.append('print(task["labels"][int(logits[0].argmax())])')
        lines.append("```")
    pairs = [t for t, spec in tasks.items() if task_type(spec["type"]).reads == "pairs"]
    if pairs:
        lines += ["", f"Pair tasks ({', '.join(f'`{t}`' for t in pairs)}) read the batch as pairs, each pair's two "
                  "texts one after the other (a1, b1, a2, b2, ...): one output row per pair, the cosine of the two "
                  "embeddings (similarity, retrieval) or the pair's logits (pair classification)."]
    tokens = [t for t, spec in tasks.items() if task_type(spec["type"]).reads == "tokens"]
    if tokens:
        lines += ["", f"Token tasks ({', '.join(f'`{t}`' for t in tokens)}) output logits per token (batch, tokens, "
                  "labels): tokenize the words with `is_split_into_words=True` (a prompt as leading words) and read "
                  "each word at its first sub-token."]
    return lines
