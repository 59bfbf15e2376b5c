"""Anchoring to the pretrained encoder (`retain`): distillation of sentence embeddings and L2-SP.

Run: `.venv/bin/python -m pytest -q tests/test_retain.py`
"""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors.torch import load_file
from toy import NEGATIVE, POSITIVE, toy_config, write_config
from typer.testing import CliRunner

from thawing.cli import app
from thawing.config import parse_config
from thawing.model.loading import load_encoder
from thawing.training import loop

STAGE = {"name": "all", "train": ["all"], "epochs": 3, "lr": {"encoder": 1e-3}, "warmup": 0}


def _run(model_dir, root, name, retain=None, **stage):
    schedule = [{**STAGE, **stage, **({"retain": retain} if retain is not None else {})}]
    raw = toy_config(model_dir, root, tasks=("sentiment", "ner"), schedule=schedule,
                     train={"batch_size": 4, "seed": 0, "log_every": 1})
    return loop.train(parse_config(raw), run_dir=str(root / name))


def _weights(run) -> dict[str, torch.Tensor]:
    return {**load_file(str(run.final / "heads.safetensors")),
            **load_file(str(run.encoder_dir / "model.safetensors"))}


def test_a_weight_of_zero_is_exactly_the_run_without(tiny_bert_dir, tmp_path):
    plain = _run(tiny_bert_dir, tmp_path, "plain")
    zero = _run(tiny_bert_dir, tmp_path, "zero", {"distill": {"weight": 0.0}, "l2sp": {"weight": 0.0}})
    assert plain.read_json(plain.results) == zero.read_json(zero.results)
    a, b = _weights(plain), _weights(zero)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_huge_l2sp_weight_keeps_the_encoder_at_its_pretrained_values(tiny_bert_dir, tmp_path):
    run = _run(tiny_bert_dir, tmp_path, "anchored", {"l2sp": {"weight": 1e6}}, lr={"encoder": 2e-5})
    before = load_encoder(str(tiny_bert_dir)).state_dict()
    after = load_encoder(str(run.encoder_dir)).state_dict()
    assert max(float((before[k] - after[k]).abs().max()) for k in before) <= 1e-4
    free = _run(tiny_bert_dir, tmp_path, "free", lr={"encoder": 2e-5})  # the same run without it moves further
    moved = load_encoder(str(free.encoder_dir)).state_dict()
    assert max(float((before[k] - moved[k]).abs().max()) for k in before) > 1e-4
    records = [m for m in run.read_metrics() if m["split"] == "train" and m["task"] == "retain:l2sp"]
    assert records and all(m["loss"] >= 0 for m in records)  # logged apart from the task losses


def test_distillation_keeps_embeddings_closer_to_the_pretrained_ones(tiny_bert_dir, tmp_path):
    texts = POSITIVE + NEGATIVE
    pretrained = load_encoder(str(tiny_bert_dir)).encode(texts)
    free = _run(tiny_bert_dir, tmp_path, "free")
    kept = _run(tiny_bert_dir, tmp_path, "kept", {"distill": {"weight": 20.0, "loss": "cosine"}})

    def distance(run) -> float:
        vectors = load_encoder(str(run.encoder_dir)).encode(texts)
        cosine = (vectors * pretrained).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(pretrained, axis=1)
        return float(1 - cosine.mean())

    assert distance(kept) < distance(free)
    assert any(m["task"] == "retain:distill" for m in kept.read_metrics() if m["split"] == "train")


def test_plan_shows_retain_from_the_top_level_and_per_stage(tiny_bert_dir, tmp_path):
    raw = toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",), retain={"l2sp": {"weight": 0.5}},
                     schedule=[{"name": "heads", "train": ["heads"]},
                               {**STAGE, "retain": {"distill": {"weight": 1.0, "loss": "mse"}}}])
    result = CliRunner().invoke(app, ["plan", str(write_config(raw, tmp_path / "c.yaml")), "--json"])
    assert result.exit_code == 0, result.output
    stages = json.loads(result.output)["stages"]
    assert stages[0]["retain"] == {"l2sp": {"weight": 0.5}}  # the config's `retain`
    assert stages[1]["retain"] == {"distill": {"weight": 1.0, "loss": "mse"}}  # the stage's own


def test_the_recorded_task_loss_under_distillation_is_the_task_loss_alone(tiny_bert_dir, tmp_path):
    """A stage that moves the encoder, then a stage that barely moves anything (rates of 1e-12), with and without
    distillation: the second stage's task losses are the same model's on the same batches, so their records must
    agree, while the distillation records show a loss that is not zero (the share that must not be subtracted)."""
    moved = {**STAGE, "name": "moved", "epochs": 2}
    held = {**STAGE, "name": "held", "epochs": 1, "lr": {"encoder": 1e-12, "heads": 1e-12}, "restore_best": False}

    def records(name, retain):
        schedule = [moved, {**held, **({"retain": retain} if retain else {})}]
        raw = toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment", "ner"), schedule=schedule,
                         train={"batch_size": 4, "seed": 0, "log_every": 1})
        run = loop.train(parse_config(raw), run_dir=str(tmp_path / name))
        return [m for m in run.read_metrics() if m["split"] == "train" and m["stage"] == "held"]

    plain, distilled = records("plain", None), records("distilled", {"distill": {"weight": 1.0}})
    shares = [m["loss"] for m in distilled if m["task"] == "retain:distill"]
    assert shares and min(shares) > 1e-4
    tasks = lambda lines: [(m["step"], m["task"], m["loss"]) for m in lines if not m["task"].startswith("retain:")]  # noqa: E731
    a, b = tasks(plain), tasks(distilled)
    assert [x[:2] for x in a] == [x[:2] for x in b] and a
    assert all(abs(x[2] - y[2]) < 1e-5 for x, y in zip(a, b, strict=True)), (a, b)
