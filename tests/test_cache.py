"""Caching what is frozen: the disk cache of frozen-encoder features and the boundary cache of hidden
states below the lowest trainable layer. Cached and uncached paths must give the same losses and gradients.

Run: `.venv/bin/python -m pytest -q tests/test_cache.py`
"""

from __future__ import annotations

import pytest
import torch
from toy import toy_config

from thawing.config import parse_config
from thawing.model.freezing import active_tasks, apply_trainable, layer_names, set_frozen_modes
from thawing.store.cache import FeatureStore, entry_key, fingerprint
from thawing.training import loop
from thawing.training.boundary_cache import estimate_bytes
from thawing.training.events import CacheNote
from thawing.training.paths import TopLayers, WholeModel, choose_path
from thawing.training.setup import prepare


def _context(model_dir, tmp_path, tasks, stage_train, cache=None):
    raw = toy_config(model_dir, tmp_path, tasks=tasks, schedule=[{"name": "s", "train": stage_train}])
    raw["cache"] = cache or {"enabled": True, "dtype": "float32"}
    ctx, plan, groups = loop.start(parse_config(raw), run_dir=str(tmp_path / "run"))
    return ctx, plan[0], groups


def _path(ctx, stage, groups, messages=None):
    """The stage's forward path, chosen as the loop chooses it."""
    apply_trainable(groups, stage.trainable)
    ctx.model.train()
    set_frozen_modes(ctx.model, stage.trainable)
    note = messages.append if messages is not None else (lambda _message: None)
    return choose_path(ctx.model, stage.trainable, ctx.prep.features, ctx.runtime, ctx.prep.config,
                       active_tasks(ctx.model.specs, stage.trainable), note)


@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_qwen2_dir"])
@pytest.mark.parametrize("task", ["qtype", "ner"])
def test_boundary_cache_gives_same_loss_and_gradients(fixture, task, request, tmp_path):
    ctx, stage, groups = _context(
        request.getfixturevalue(fixture), tmp_path, (task,), ["heads", "projection", "layers[-1:]"]
    )
    top = _path(ctx, stage, groups)
    assert isinstance(top, TopLayers)
    assert set(top.boundary) == {task} and top.boundary[task].first == len(layer_names(groups)) - 1
    whole = WholeModel(ctx.model, ctx.prep.features, ctx.runtime, 8)
    params = [(n, p) for g in stage.trainable for n, p in groups[g]]
    indices = [3, 0, 5, 1]  # mixed lengths: cached states were computed in other batches, with other padding
    results = []
    for path in (whole, top):
        for _, p in params:
            p.grad = None
        torch.manual_seed(7)  # same dropout masks in the trainable layers on both paths
        loss = path.loss(task, indices)
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in params if p.grad is not None}))
    (naive_loss, naive_grads), (cached_loss, cached_grads) = results
    assert cached_loss == pytest.approx(naive_loss, abs=1e-5)
    assert naive_grads.keys() == cached_grads.keys() and len(naive_grads) > 2
    for name in naive_grads:
        torch.testing.assert_close(cached_grads[name], naive_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_boundary_cache_falls_back_over_budget(tiny_qwen2_dir, tmp_path):
    ctx, stage, groups = _context(
        tiny_qwen2_dir, tmp_path, ("qtype",), ["heads", "layers[-1:]"], cache={"enabled": True, "max_gb": 1e-9}
    )
    messages = []
    assert not isinstance(_path(ctx, stage, groups, messages), TopLayers)
    assert any("max_gb" in m and "padded" in m for m in messages)
    summary = loop.run_stage(ctx, stage, groups, [p for g in stage.trainable for _, p in groups[g]])
    assert "boundary_cache" not in summary and summary["updates"] > 0  # still trains, without the cache


def test_boundary_cache_falls_back_with_left_padding(tiny_qwen2_dir, tmp_path):
    ctx, stage, groups = _context(tiny_qwen2_dir, tmp_path, ("qtype",), ["heads", "layers[-1:]"])
    ctx.model.encoder.tokenizer.padding_side = "left"
    assert not isinstance(_path(ctx, stage, groups), TopLayers)


def test_estimate_counts_tokens_hidden_and_bytes(tiny_bert_dir, tmp_path):
    ctx, _, _ = _context(tiny_bert_dir, tmp_path, ("qtype",), ["heads"])
    feats = ctx.prep.features["qtype"]["train"]
    assert estimate_bytes([feats], 32, torch.bfloat16) == sum(feats.lengths) * 32 * 2


def test_training_with_and_without_boundary_cache_agrees(tiny_bert_dir, tmp_path):
    results = {}
    for enabled in (True, False):
        raw = toy_config(
            tiny_bert_dir,
            tmp_path / str(enabled),
            tasks=("sentiment", "ner"),
            schedule=[{"name": "top", "train": ["heads", "layers[-1:]"], "epochs": 2}],
        )
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

    def events(event):
        if isinstance(event, CacheNote) and event.message.startswith("computing frozen features"):
            computed.append(event)

    loop.train(parse_config(config), run_dir=str(tmp_path / "a"), callbacks=[events])
    first = len(computed)
    entries = sorted(p.name for p in store.root.glob("*/*"))
    assert first == 2 and len(entries) == 2  # train and dev
    loop.train(parse_config(config), run_dir=str(tmp_path / "b"), callbacks=[events])
    assert len(computed) == first  # the second run read every feature from disk
    assert sorted(p.name for p in store.root.glob("*/*")) == entries

    prep = prepare(parse_config(config))
    before = fingerprint(prep.model.encoder)
    with torch.no_grad():
        prep.model.encoder.backbone.encoder.layer[0].output.dense.weight[0, 0] += 1e-3
    assert fingerprint(prep.model.encoder) != before
    assert entry_key(before, {}, [[1, 2]]) != entry_key(fingerprint(prep.model.encoder), {}, [[1, 2]])


@pytest.mark.parametrize("damage", ["noise", "truncate", "old-entry"])
def test_a_damaged_cache_entry_is_computed_again_not_trained_on(damage, tiny_bert_dir, tmp_path, caplog):
    config = toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",), freeze=["encoder"])
    config["cache"] = {"dir": str(tmp_path / "store")}
    clean = loop.train(parse_config(config), run_dir=str(tmp_path / "clean")).read_json("results.json")
    for array in (tmp_path / "store").glob("*/*/*.npy"):
        if damage == "noise":  # the same shape and dtype, other values: only a checksum can tell
            raw = array.read_bytes()
            header = len(raw) - array.stat().st_size + raw.index(b"\n") + 1
            array.write_bytes(raw[:header] + bytes(reversed(raw[header:])))
        elif damage == "truncate":
            array.write_bytes(array.read_bytes()[:-7])
    if damage == "old-entry":  # written before checksums: an empty DONE
        for done in (tmp_path / "store").glob("*/*/DONE"):
            done.write_text("")
    again = loop.train(parse_config(config), run_dir=str(tmp_path / "again")).read_json("results.json")
    assert again["tasks"] == clean["tasks"]
    assert sum("damaged" in r.getMessage() for r in caplog.records) == 2  # train and dev, each named once
    assert len(list((tmp_path / "store").glob("*/*/DONE"))) == 2  # both computed again and verified
    assert FeatureStore(tmp_path / "store").load((next((tmp_path / "store").glob("*/*"))).name) is not None


def test_the_fingerprint_is_kept_while_no_weight_changes_and_follows_every_change(tiny_bert_dir):
    """The weight fingerprint is hashed once per module in a process (store/cache.py): a kept hash must never
    outlive a change of the weights, however they change."""
    from thawing.config import LoraSettings
    from thawing.model import lora
    from thawing.model.groups import parameter_groups
    from thawing.model.loading import load_encoder

    encoder = load_encoder(str(tiny_bert_dir))
    first = fingerprint(encoder)
    assert fingerprint(encoder) == first
    assert fingerprint(load_encoder(str(tiny_bert_dir))) == first  # the same weights in another module

    weight = encoder.backbone.encoder.layer[0].output.dense.weight
    with torch.no_grad():  # an in-place write (as an optimizer step)
        weight[0, 0] += 1e-3
    changed = fingerprint(encoder)
    assert changed != first and fingerprint(encoder) == changed

    encoder.backbone.encoder.layer[0].output.dense.weight = torch.nn.Parameter(weight.detach().clone() * 2)
    replaced = fingerprint(encoder)  # a tensor replaced by another
    assert replaced not in (first, changed)

    plan = lora.plan_adapters(LoraSettings(targets=["query"], layers="layers.1"), encoder.backbone,
                              parameter_groups(encoder))
    tuner = lora.attach(encoder.backbone, plan, seed=0)
    with torch.no_grad():  # adapters that change the weights when merged
        for name, param in tuner.named_parameters():
            if "lora_B" in name:
                param.fill_(0.1)
    encoder.backbone = lora.detach(tuner, merge=True)
    assert fingerprint(encoder) != replaced  # peft merges through .data: the merge is seen all the same


def test_a_killed_writes_leftovers_are_swept_but_not_a_write_under_way(tmp_path):
    """A write killed before its rename leaves `.KEY.*` in the cache (bench/faults.py's cache points); the next write
    of that key removes it once it is a day old, and leaves a recent one (another run may be writing it)."""
    import os
    import time

    import numpy as np

    store = FeatureStore(tmp_path)
    key = "ab" + "0" * 30
    shard = store.path(key).parent
    shard.mkdir(parents=True)
    dead, live = shard / f".{key}.dead", shard / f".{key}.live"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "x.npy").write_bytes(b"half")
    os.utime(dead, (time.time() - 2 * 86400,) * 2)
    store.save(key, {"a": np.arange(3.0)})
    assert not dead.exists() and live.exists()
    assert store.load(key)["a"].tolist() == [0.0, 1.0, 2.0]
