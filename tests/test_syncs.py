"""Device-to-host syncs per update: outside the updates that write training records, an update never makes the host
wait for the device more than once (issue 30: on a GPU, each wait stalls the kernel queue). How syncs are counted:
tests/syncs.py.

Run: `.venv/bin/python -m pytest -q tests/test_syncs.py`
"""

from __future__ import annotations

import pytest
from syncs import syncs_per_update
from toy import toy_config

from thawing.config import parse_config

CASES = {"qwen2-packed": ("tiny_qwen2_dir", True, ["all"]), "bert-padded": ("tiny_bert_dir", False, ["all"]),
         "bert-packed": ("tiny_bert_dir", True, ["all"]),
         "bert-top-layer": ("tiny_bert_dir", False, ["layers[-1:]", "heads"]),
         "bert-heads": ("tiny_bert_dir", False, ["heads"])}


@pytest.mark.parametrize("case", list(CASES))
def test_an_update_that_writes_no_records_waits_for_the_device_at_most_once(case, request, tmp_path):
    fixture, packed, trains = CASES[case]
    model_dir = request.getfixturevalue(fixture)
    schedule = [{"name": "stage", "train": trains, "epochs": 3, "eval_every": "epoch"}]
    raw = toy_config(model_dir, tmp_path, tasks=("sentiment", "ner"), schedule=schedule,
                     train={"batch_size": 4, "seed": 0, "log_every": 5, "grad_accum": 2, "checkpoint": False,
                            "packing": packed, "grad_clip": 1.0})
    counts, sites, run = syncs_per_update(parse_config(raw), tmp_path)
    summary = run.read_json(run.stages)[0]
    assert ("boundary_cache" in summary) == (case == "bert-top-layer") and summary["cached"] == (trains == ["heads"])
    assert len(counts) >= 5, counts  # enough plain updates to judge by
    worst = max(range(len(counts)), key=counts.__getitem__)
    assert counts[worst] <= 1, f"{counts[worst]} syncs in one update: " + "; ".join(sites[worst])
