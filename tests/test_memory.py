"""Out of GPU memory in an update: the update runs again in smaller pieces and trains the same model.

The GPU's out-of-memory error is raised on CPU by a loss that refuses micro-batches above a size, as a card would
refuse a token budget too large for it.

Run: `.venv/bin/python -m pytest -q tests/test_memory.py`
"""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file
from toy import toy_config

from thawing.config import parse_config
from thawing.training import memory, paths
from thawing.training.loop import train


def test_split_keeps_every_index_in_order_without_empty_pieces():
    batches = [("a", [0, 1, 2, 3, 4]), ("b", [7]), ("a", [5, 6])]
    pieces = memory.split(batches, 2)
    assert pieces == [("a", [0, 1, 2]), ("a", [3, 4]), ("b", [7]), ("a", [5]), ("a", [6])]
    assert memory.split(batches, 1) == batches
    assert [i for _, idx in memory.split(batches, 8) for i in idx] == [0, 1, 2, 3, 4, 7, 5, 6]


def _run(model_dir, tmp_path, name):
    raw = toy_config(model_dir, tmp_path, tasks=("sentiment", "qtype"), train={"batch_size": 8, "epochs": 2, "seed": 0,
                                                                            "device": "cpu"})
    for task in raw["tasks"].values():
        task["head"] = {"dropout": 0.0}  # no random masks: the pieces and the whole batch see the same network
    # fp32 on CPU, also where a GPU is: bf16 rounds the pieces' sums differently (8e-5 on an H100)
    return train(parse_config(raw), run_dir=str(tmp_path / name))


def test_an_update_that_runs_out_of_memory_runs_again_in_pieces_and_trains_the_same(
    tiny_qwen2_dir, tmp_path, monkeypatch, caplog
):
    whole = _run(tiny_qwen2_dir, tmp_path, "whole")
    loss = paths.WholeModel.forward_loss
    sizes = []

    def small_card(self, model, task, indices, *args, **kwargs):
        sizes.append(len(indices))
        if len(indices) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return loss(self, model, task, indices, *args, **kwargs)

    monkeypatch.setattr(paths.WholeModel, "forward_loss", small_card)
    with caplog.at_level(logging.WARNING, logger="thawing.training.memory"):
        pieces = _run(tiny_qwen2_dir, tmp_path, "pieces")
    assert max(sizes) == 8 and sizes[-1] <= 3  # it did run out, then went on in pieces of 2 (8 -> 4 -> 2)
    assert "out of GPU memory" in caplog.text and "4 pieces" in caplog.text
    [stage] = pieces.read_json(pieces.stages)
    assert stage["micro_batch_pieces"] == 4
    assert stage["updates"] == whole.read_json(whole.stages)[0]["updates"]
    a, b = load_file(str(whole.final / "heads.safetensors")), load_file(str(pieces.final / "heads.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)


def test_single_examples_that_do_not_fit_fail_with_the_error(tiny_qwen2_dir, tmp_path, monkeypatch):
    def no_card(_self, *_args, **_kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(paths.WholeModel, "forward_loss", no_card)
    with pytest.raises(torch.OutOfMemoryError):
        _run(tiny_qwen2_dir, tmp_path, "none")
