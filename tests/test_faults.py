"""Fault injection in small: bench/faults.py kills a real `thawing train` process (SIGKILL) inside a stage
checkpoint's write, while final/ is written, between final/ and results.json, and inside a feature-cache entry's
write; each resumed run must end byte-identical to the uninterrupted one. (The full tool draws 21 points:
docs/benchmarks.md.)

Run: `.venv/bin/python -m pytest -q tests/test_faults.py`
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_killed_runs_resume_to_identical_results(tiny_bert_dir, datasets_dir, tmp_path):
    if not (datasets_dir / "trec" / "train.jsonl").is_file():
        pytest.skip("../shared/datasets is not here")
    out = tmp_path / "faults.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "faults.py"), "--model", str(tiny_bert_dir), "--points", "4",
         "--examples", "48", "--kinds", "stage-checkpoint,final,results,cache", "--workdir", str(tmp_path / "work"),
         "--output", str(out)],
        env={**os.environ, "THAWING_DATASETS": str(datasets_dir)}, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["points"] == 4 and report["killed"] == 4, report["rows"]
    assert report["identical"] == 4, report["rows"]
