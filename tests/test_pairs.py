"""A classification task's contrastive pair loss (`pair_loss`, SetFit's objective beside the cross-entropy).

Run: `.venv/bin/python -m pytest -q tests/test_pairs.py`
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from toy import toy_config

from thawing.config import load_config, parse_config
from thawing.errors import ConfigError
from thawing.training import loop
from thawing.training.pairs import pair_loss


def test_the_loss_is_zero_when_classes_are_orthogonal_and_each_class_is_one_point():
    e = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 1.0]])
    assert float(pair_loss(1.0, e, torch.tensor([0, 0, 1, 1]))) == pytest.approx(0.0, abs=1e-7)
    # the labels crossed: both positive pairs at cosine 0 (error 1 each); of the 4 negatives, 2 at cosine 1 (error 1)
    # and 2 at 0: (1 + 0.5) / 2, at weight 0.5
    assert float(pair_loss(0.5, e, torch.tensor([0, 1, 0, 1]))) == pytest.approx(0.375)


def test_positive_and_negative_pairs_count_equally_and_unlabelled_items_are_left_out():
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, -100])  # one positive pair (error 0) and two negatives at cosine 1 (error 1)
    assert float(pair_loss(1.0, e, labels)) == pytest.approx(0.5)  # (0 + 1) / 2, not (0 + 1 + 1) / 3
    assert pair_loss(1.0, e[:1], labels[:1]) is None  # one labelled sentence: no pair
    assert pair_loss(0.0, e, labels) is None


def test_the_gradient_pulls_a_class_together():
    e = torch.tensor([[1.0, 0.2], [0.2, 1.0]], requires_grad=True)
    pair_loss(1.0, e, torch.tensor([3, 3])).backward()
    moved = e.detach() - 0.1 * e.grad
    before = torch.cosine_similarity(e[0:1], e[1:2]).item()
    assert torch.cosine_similarity(moved[0:1], moved[1:2]).item() > before


def _run(model_dir, root, name: str, weight: float, train: list[str]):
    stage = [{"name": "s", "train": train, "epochs": 2, "lr": {"encoder": 1e-3}, "warmup": 0}]
    raw = toy_config(model_dir, root, tasks=("sentiment", "ner"), schedule=stage,
                     train={"batch_size": 4, "seed": 0, "log_every": 1})
    if weight:
        raw["tasks"]["sentiment"]["pair_loss"] = weight
    return loop.train(parse_config(raw), run_dir=str(root / name))


def _encoder(run) -> dict[str, torch.Tensor]:
    return load_file(str(run.encoder_dir / "model.safetensors"))


def test_pairs_train_the_encoder_only_where_it_trains_and_are_logged_apart(tiny_bert_dir, tmp_path):
    plain, pairs = _run(tiny_bert_dir, tmp_path, "plain", 0.0, ["all"]), _run(tiny_bert_dir, tmp_path, "pairs", 5.0,
                                                                              ["all"])
    a, b = _encoder(plain), _encoder(pairs)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the pair loss's gradient reached the encoder
    logged = [m for m in pairs.read_metrics() if m["split"] == "train" and m["task"] == "pairs:cosine"]
    assert logged and all(m["loss"] >= 0 for m in logged)  # its own record, apart from the task's loss
    assert not any(m["task"] == "pairs:cosine" for m in plain.read_metrics())
    # A frozen encoder: the heads read cached features, and the pair loss has nothing to train
    heads, heads_pairs = (_run(tiny_bert_dir, tmp_path, n, w, ["heads"]) for n, w in (("h", 0.0), ("hp", 5.0)))
    assert heads.read_json(heads.results)["tasks"] == heads_pairs.read_json(heads_pairs.results)["tasks"]
    assert not any(m["task"] == "pairs:cosine" for m in heads_pairs.read_metrics())


def test_pair_loss_is_refused_on_a_task_without_one_label_per_sentence(tiny_bert_dir, tmp_path):
    raw = toy_config(tiny_bert_dir, tmp_path, tasks=("ner",))
    raw["tasks"]["ner"]["pair_loss"] = 1.0
    with pytest.raises(ConfigError, match="pair_loss.*classification"):
        parse_config(raw)


def test_a_stage_without_its_task_loss_trains_the_encoder_by_pairs_alone(tiny_bert_dir, tmp_path):
    schedule = [{"name": "pairs", "train": ["encoder"], "epochs": 2, "lr": {"encoder": 1e-3}, "warmup": 0,
                 "task_loss": False}]
    raw = toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",), schedule=schedule,
                     train={"batch_size": 4, "seed": 0, "log_every": 1})
    raw["tasks"]["sentiment"]["pair_loss"] = 1.0
    run = loop.train(parse_config(raw), run_dir=str(tmp_path / "run"))
    records = [m for m in run.read_metrics() if m["split"] == "train"]
    assert all(m["loss"] == 0 for m in records if m["task"] == "sentiment")  # its own loss left out
    assert any(m["loss"] > 0 for m in records if m["task"] == "pairs:cosine")
    before = load_file(str(tiny_bert_dir / "model.safetensors"))
    after = _encoder(run)
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)


def test_a_stage_without_its_task_loss_and_nothing_else_is_refused(tiny_bert_dir, tmp_path):
    schedule = [{"name": "idle", "train": ["encoder"], "task_loss": False}]
    raw = toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",), schedule=schedule)
    with pytest.raises(ConfigError, match="task_loss: false but no other loss"):
        loop.train(parse_config(raw), run_dir=str(tmp_path / "run"))
    heads_only = [{"name": "heads", "train": ["heads"], "task_loss": False}]
    raw = toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",), schedule=heads_only)
    raw["tasks"]["sentiment"]["pair_loss"] = 1.0
    with pytest.raises(ConfigError, match="trains only heads"):
        loop.train(parse_config(raw), run_dir=str(tmp_path / "run2"))


def test_the_pairs_preset_gives_classification_tasks_a_pair_loss_and_trains_by_it(tiny_bert_dir, tmp_path):
    raw = toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment", "qtype", "ner"), schedule="pairs")
    raw["tasks"]["qtype"]["pair_loss"] = 0.5  # a weight the config gives is kept
    config = parse_config(raw)
    # the config is as written: the preset's stage carries the weight for the tasks that give none
    assert {t: c.pair_loss for t, c in config.tasks.items()} == {"sentiment": 0.0, "qtype": 0.5, "ner": 0.0}
    run = loop.train(config, run_dir=str(tmp_path / "run"))  # train.epochs 2 (toy_config) applies to both stages
    assert [s["stage"] for s in run.read_json(run.stages)] == ["pairs", "heads"]
    records = [m for m in run.read_metrics() if m["split"] == "train" and m["stage"] == "pairs"]
    assert any(m["loss"] > 0 for m in records if m["task"] == "pairs:cosine")
    assert all(m["loss"] == 0 for m in records if m["task"] in ("sentiment", "qtype", "ner"))
    written = load_config(run.config)  # what `--resume` reads back: the preset's stages, with the stage's weight
    assert [s.name for s in written.schedule] == ["pairs", "heads"] and written.schedule[0].pair_loss == 1.0
    assert written.tasks["sentiment"].pair_loss == 0.0


def test_a_stage_pair_loss_weighs_classification_tasks_that_give_none(tiny_bert_dir, tmp_path):
    from thawing.config import RunConfig
    from thawing.training.stages import Stage, pair_weights

    raw = toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment", "qtype", "ner"))
    raw["tasks"]["qtype"]["pair_loss"] = 0.5
    config: RunConfig = parse_config(raw)
    stage = Stage(name="s", trainable=["encoder"], lrs={}, epochs=1, warmup=0, lr_schedule="constant", eval_every=1,
                  pair_loss=2.0)
    assert pair_weights(stage, config) == {"sentiment": 2.0, "qtype": 0.5}  # ner: no pair loss for token tasks
    assert pair_weights(Stage(name="t", trainable=["encoder"], lrs={}, epochs=1, warmup=0, lr_schedule="constant",
                              eval_every=1), config) == {"qtype": 0.5}


def test_the_pairs_preset_needs_a_classification_task(tiny_bert_dir, tmp_path):
    with pytest.raises(ConfigError, match="no other loss to train by"):
        loop.train(parse_config(toy_config(tiny_bert_dir, tmp_path, tasks=("ner",), schedule="pairs")),
                   run_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
