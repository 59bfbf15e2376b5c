"""The README's quickstart, run for real: its CSV, YAML and text files written as the README shows them, its shell
commands run by bash (`thawing` is this interpreter's `python -m thawing`), its Python block executed, on the tiny
random BERT instead of all-MiniLM-L6-v2 (and without the small-data rules, which would only make it slow). A wrong
command, config key or file name in the README fails here."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- --8<-- [start:quickstart] -->", "<!-- --8<-- [end:quickstart] -->"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # what the README's config names; the test swaps in the tiny model
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```[ \t]*$", re.S | re.M)


def quickstart() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert START in text and END in text, "README.md lost its quickstart markers"
    return text.split(START, 1)[1].split(END, 1)[0]


def blocks(section: str) -> list[tuple[str, str | None, str]]:
    """(language, title, body) of each fenced block; the title is a file name: ```yaml title="tickets.yaml"."""
    found = []
    for lang, info, body in FENCE.findall(section):
        title = re.search(r'title="([^"]+)"', info)
        found.append((lang, title.group(1) if title else None, body))
    return found


def test_quickstart_has_its_parts():
    kinds = [(lang, title is not None) for lang, title, _ in blocks(quickstart())]
    assert ("csv", True) in kinds and ("yaml", True) in kinds and ("text", True) in kinds
    assert ("bash", False) in kinds and ("python", False) in kinds


def test_quickstart_runs(tiny_bert_dir, tmp_path, monkeypatch):
    section = quickstart()
    found = blocks(section)
    for _, title, body in found:
        if title is None:
            continue
        if title.endswith((".yaml", ".yml")):
            config = yaml.safe_load(body)
            assert config["model"]["name"] == MODEL
            config["model"]["name"] = str(tiny_bert_dir)
            # The README's 12 rows leave one dev text, so thawing would run each stage for 50 updates with an
            # evaluation per epoch (small-data rules): minutes on a loaded 2-core machine for nothing this test checks.
            config.setdefault("train", {}).setdefault("small_data", {"min_dev": 0})
            body = yaml.safe_dump(config, sort_keys=False)
        (tmp_path / title).write_text(body, encoding="utf-8")

    shell = "\n".join(body for lang, _, body in found if lang == "bash")
    script = 'set -euo pipefail\nthawing() { "$THAWING_PYTHON" -m thawing "$@"; }\n' + shell
    env = {**os.environ, "THAWING_PYTHON": sys.executable, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"the quickstart's commands failed:\n{shell}\n{result.stdout}\n{result.stderr}"

    # Every file the quickstart says a run leaves is there.
    named = set(re.findall(r"`(runs/[^`<>]+)`", section))
    assert named, "the quickstart names no run files"
    for path in named:
        assert (tmp_path / path).exists(), f"the quickstart names {path}, which the run did not write"

    # predict wrote one line per input text, with a label of the training data for the task.
    csv_file = next(title for lang, title, _ in found if lang == "csv")
    with open(tmp_path / csv_file, newline="", encoding="utf-8") as fh:
        labels = {row["label"] for row in csv.DictReader(fh)}
    tasks = list(yaml.safe_load((tmp_path / next(t for _, t, _ in found if t and t.endswith(".yaml"))).read_text(
        encoding="utf-8"))["tasks"])
    for output in re.findall(r"(?:-o|--output) (\S+)", shell):
        source = re.search(rf"(?:-i|--input) (\S+) (?:-o|--output) {re.escape(output)}", shell).group(1)
        texts = (tmp_path / source).read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in (tmp_path / output).read_text(encoding="utf-8").splitlines()]
        assert [row["text"] for row in rows] == texts
        for row in rows:
            assert {row[task]["label"] for task in tasks} <= labels

    # The Python block, as a user would run it from the same folder.
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for lang, _, body in found:
        if lang == "python":
            exec(compile(body, "README.md (quickstart)", "exec"), namespace)  # the README's own code
    assert namespace["predictions"][0]["label"] in labels
    assert namespace["vectors"].shape[0] == 1
