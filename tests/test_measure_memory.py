"""A scenario's peak CPU memory is its own process's, not the floor it inherits from the study that started it.

On Linux `ru_maxrss` survives fork and exec: a child of a 400 MiB parent reports 400 MiB whatever it uses itself.
Here the test's own process (the study) first raises its high-water mark with a large resident buffer, then trains
one toy scenario in its own process, the way `thawing study` does; the scenario's figures must stay well below it.

Run: `.venv/bin/python -m pytest -q tests/test_measure_memory.py`
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from toy import toy_config, write_config

from thawing.config import load_config
from thawing.study.measure import train_isolated

MiB = 2**20
BALLAST = 768 * MiB  # well above what a toy scenario's process holds itself (a few hundred MiB: torch and the rest)


def _hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the inherited high-water mark is Linux's")
def test_a_scenarios_peak_memory_leaves_out_the_study_processs_own(tiny_bert_dir, tmp_path):
    config = load_config(write_config(toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",), schedule="heads"),
                                      tmp_path / "c.yaml"))
    ballast = bytearray(BALLAST)
    ballast[::4096] = b"\x01" * len(range(0, BALLAST, 4096))  # touch every page: resident, not just reserved
    parent_peak = _hwm_bytes()
    measured = train_isolated(config, str(tmp_path / "run"), tmp_path)
    del ballast
    for key in ("rss_peak_bytes", "process_rss_peak_bytes"):
        assert 0 < measured[key] < parent_peak - BALLAST // 2, (
            f"{key}: {measured[key] / MiB:.0f} MiB, the study's own peak {parent_peak / MiB:.0f} MiB")
    assert measured["rss_peak_bytes"] <= measured["process_rss_peak_bytes"]
