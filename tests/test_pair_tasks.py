"""The sentence-pair task types: similarity, pair classification and retrieval, through public functions."""

from __future__ import annotations

import json

import pytest
from toy import pair_config

from thawing.config import parse_config


@pytest.mark.parametrize("kind", ["similarity", "pair-classification", "retrieval"])
def test_each_pair_type_trains_end_to_end(tiny_bert_dir, tmp_path, kind):
    from thawing.training.loop import train

    config = parse_config(pair_config(tiny_bert_dir, tmp_path, kind))
    run = train(config, run_dir=str(tmp_path / "run"))
    results = json.loads((run.path / "results.json").read_text())
    print(results)
