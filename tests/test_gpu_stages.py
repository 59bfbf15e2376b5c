"""bench/gpu_stages.py end to end on a CPU with a tiny Qwen2: the one command a GPU session runs for issue 30's
progressive-against-full figure works before device time is spent on it.

Run: `.venv/bin/python -m pytest -q -m bench tests/test_gpu_stages.py`
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.bench
def test_progressive_runs_every_stage_against_full(datasets_dir, tmp_path):
    if not (datasets_dir / "ag_news" / "test.jsonl").is_file():
        pytest.skip("../shared/datasets is not here")
    out = tmp_path / "gpu_stages.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_stages.py"), "--model", "tiny-qwen2", "--device", "cpu",
         "--n", "600", "--max-tokens", "2048", "--oom-tokens", "0", "--stages", "", "--e2e-epochs", "0.2",
         "--output", str(out)],
        env={**os.environ, "THAWING_DATASETS": str(datasets_dir), "HF_HUB_OFFLINE": "1"}, capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    e2e = json.loads(out.read_text())["end_to_end"]
    stages = [s["stage"] for s in e2e["progressive"]["stages"]]
    assert len(stages) >= 3 and not any("plan stopped" in s["stopped"] for s in e2e["progressive"]["stages"]), e2e
    assert [s["stage"] for s in e2e["full"]["stages"]] == ["full"]
    assert e2e["progressive_over_full_wall"] == pytest.approx(e2e["progressive"]["wall_s"] / e2e["full"]["wall_s"],
                                                              abs=1e-3)
