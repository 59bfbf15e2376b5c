"""bench/quality.py --quick: thawing against a logistic-regression probe, the Hugging Face Trainer and SetFit on the
same small splits, end to end (real MiniLM and ../shared/datasets; skipped cleanly when absent). A few minutes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.bench]
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.usefixtures("minilm_dir", "datasets_dir")  # what bench/quality.py reads: skips where either is absent
def test_quick_comparison_writes_one_table_per_data_set(tmp_path):
    out = tmp_path / "quality.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "quality.py"), "--quick", "--work", str(tmp_path),
                           "--output", str(out)], env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["datasets"]) == {"trec_coarse", "sst2"}
    for name, data in report["datasets"].items():
        # stratified samples: each class rounds its share, so a split may be a row or two off
        assert {k: round(v, -1) for k, v in data["sizes"].items()} == {"train": 300, "dev": 60, "test": 200}
        methods = data["methods"]
        for method in ("probe", "hf", "thawing:frozen", "thawing:heads", "thawing:progressive", "thawing:full",
                       "multi:heads", "multi:full"):
            assert 0.0 <= methods[method]["mean"] <= 1.0, (name, method)
            assert f"### {name}" in done.stdout
        assert set(data["multi_minus_single"]) == {"heads", "full"}
        assert methods["thawing:frozen"]["trainable_params"] == 0
        # Nothing trained beats chance by a wide margin unless the pieces are wired right (labels, splits, metric).
        assert methods["probe"]["mean"] > (0.6 if name == "trec_coarse" else 0.65)
        assert methods["thawing:heads"]["mean"] > methods["thawing:frozen"]["mean"] - 0.05
