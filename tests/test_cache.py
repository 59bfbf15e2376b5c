"""Caching what is frozen: the disk cache of frozen-encoder features and the boundary cache of hidden
states below the lowest trainable layer. Cached and uncached paths must give the same losses and gradients.

Run: `.venv/bin/python -m pytest -q tests/test_cache.py`
"""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from thawing.cache import FeatureStore, entry_key, fingerprint
from thawing.config import parse_config
from thawing.freezing import layer_names
from thawing.model.groups import parameter_groups
from thawing.run_dir import RunDir
from thawing.training import loop
from thawing.training.boundary_cache import estimate_bytes
from thawing.training.setup import prepare
from toy import toy_config


def _context(model_dir, tmp_path, tasks, stage_train, cache=None):
    raw = toy_config(model_dir, tmp_path, tasks=tasks, schedule=[{"name": "s", "train": stage_train}])
    raw["cache"] = cache or {"enabled": True, "dtype": "float32"}
    config = parse_config(raw)
    prep = prepare(config)
    groups = parameter_groups(prep.model)
    ctx = loop.Context(prep, RunDir.create("t", tmp_path / "run"), Accelerator(cpu=True), lambda n, p: None, groups)
    stage = loop.build_plan(config, groups)[0]
    return ctx, stage


@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_qwen2_dir"])
@pytest.mark.parametrize("task", ["qtype", "ner"])
def test_boundary_cache_gives_same_loss_and_gradients(fixture, task, request, tmp_path):
    ctx, stage = _context(request.getfixturevalue(fixture), tmp_path, (task,), ["heads", "projection", "layers[-1:]"])
    loop.apply_trainable(ctx.groups, stage.trainable)
    ctx.model.train()
    loop.set_frozen_modes(ctx.model, stage.trainable)
    boundary = loop._build_boundary(ctx, stage)
    assert set(boundary) == {task} and boundary[task].first == len(layer_names(ctx.groups)) - 1
    params = [(n, p) for g in stage.trainable for n, p in ctx.groups[g]]
    indices = [3, 0, 5, 1]  # mixed lengths: cached states were computed in other batches, with other padding
    results = []
    for use in ({}, boundary):
        for _, p in params:
            p.grad = None
        torch.manual_seed(7)  # same dropout masks in the trainable layers on both paths
        loss = loop._loss(ctx, task, indices, {}, use)
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in params if p.grad is not None}))
    (naive_loss, naive_grads), (cached_loss, cached_grads) = results
    assert cached_loss == pytest.approx(naive_loss, abs=1e-5)
    assert naive_grads.keys() == cached_grads.keys() and len(naive_grads) > 2
    for name in naive_grads:
        torch.testing.assert_close(cached_grads[name], naive_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_boundary_cache_falls_back_over_budget(tiny_qwen2_dir, tmp_path):
    ctx, stage = _context(tiny_qwen2_dir, tmp_path, ("qtype",), ["heads", "layers[-1:]"], cache={"enabled": True, "max_gb": 1e-9})
    messages = []
    ctx.events = lambda name, payload: messages.append(payload.get("message", ""))
    assert loop._build_boundary(ctx, stage) == {}
    assert any("max_gb" in m for m in messages)
    summary = loop.run_stage(ctx, stage, float("-inf"))  # still trains, without the cache
    assert "boundary_cache" not in summary and summary["updates"] > 0


def test_boundary_cache_falls_back_with_left_padding(tiny_qwen2_dir, tmp_path):
    ctx, stage = _context(tiny_qwen2_dir, tmp_path, ("qtype",), ["heads", "layers[-1:]"])
    ctx.model.encoder.tokenizer.padding_side = "left"
    assert loop._build_boundary(ctx, stage) == {}


def test_estimate_counts_tokens_hidden_and_bytes(tiny_bert_dir, tmp_path):
    ctx, _ = _context(tiny_bert_dir, tmp_path, ("qtype",), ["heads"])
    feats = ctx.prep.features["qtype"]["train"]
    assert estimate_bytes([feats], 32, torch.bfloat16) == sum(feats.lengths) * 32 * 2


def test_training_with_and_without_boundary_cache_agrees(tiny_bert_dir, tmp_path):
    results = {}
    for enabled in (True, False):
        raw = toy_config(tiny_bert_dir, tmp_path / str(enabled), tasks=("sentiment", "ner"),
                         schedule=[{"name": "top", "train": ["heads", "layers[-1:]"], "epochs": 2}])
        raw["cache"] = {"enabled": enabled, "dtype": "float32"}
        run = loop.train(parse_config(raw), run_dir=str(tmp_path / f"run-{enabled}"))
        results[enabled] = run
    assert results[True].read_json("stages.json")[0]["boundary_cache"] == "layers.1"
    assert "boundary_cache" not in results[False].read_json("stages.json")[0]
    a, b = results[True].read_json("results.json"), results[False].read_json("results.json")
    for task in a["tasks"]:
        for metric in a["tasks"][task]:
            assert a["tasks"][task][metric] == pytest.approx(b["tasks"][task][metric], abs=1e-4)


def test_disk_cache_is_reused_and_invalidated_by_weight_changes(tiny_bert_dir, tmp_path):
    store = FeatureStore(tmp_path / "store")
    config = toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",), freeze=["encoder"])
    config["cache"] = {"dir": str(tmp_path / "store")}
    computed = []

    def events(name, payload):
        if name == "cache":
            computed.append(payload)

    loop.train(parse_config(config), run_dir=str(tmp_path / "a"), events=events)
    first = len(computed)
    entries = sorted(p.name for p in store.root.glob("*/*"))
    assert first == 2 and len(entries) == 2  # train and dev
    loop.train(parse_config(config), run_dir=str(tmp_path / "b"), events=events)
    assert len(computed) == first  # the second run read every feature from disk
    assert sorted(p.name for p in store.root.glob("*/*")) == entries

    prep = prepare(parse_config(config))
    before = fingerprint(prep.model.encoder)
    with torch.no_grad():
        prep.model.encoder.backbone.encoder.layer[0].output.dense.weight[0, 0] += 1e-3
    assert fingerprint(prep.model.encoder) != before
    assert entry_key(before, {}, [[1, 2]]) != entry_key(fingerprint(prep.model.encoder), {}, [[1, 2]])
