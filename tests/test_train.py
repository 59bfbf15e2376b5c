"""The training loop on tiny random encoders: freezing scenarios, stages, determinism, the run directory.

Run: `.venv/bin/python -m pytest -q tests/test_train.py`
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from toy import toy_config

from thawing.api import load
from thawing.config import parse_config
from thawing.model.loading import load_encoder
from thawing.model.packing import pack as packing_pack
from thawing.training.loop import train


def _run(model_dir, tmp_path, name="run", head_dropout=None, **extra):
    raw = toy_config(model_dir, tmp_path, **extra)
    if head_dropout is not None:
        for task in raw["tasks"].values():
            task["head"] = {"dropout": head_dropout}
    config = parse_config(raw)
    return train(config, run_dir=str(tmp_path / name))


def _encoder_state(path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_encoder(str(path)).state_dict().items()}


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_run_directory_is_complete(tiny_bert_dir, tmp_path):
    run = _run(tiny_bert_dir, tmp_path)
    for name in ("config.yaml", "metrics.jsonl", "results.json", "stages.json", "final/heads.safetensors",
                 "final/labels.json", "final/tasks.json", "final/encoder/modules.json"):
        assert (run.path / name).is_file(), name
    results = json.loads((run.path / "results.json").read_text())
    assert set(results["tasks"]) == {"sentiment", "qtype", "ner"}
    assert results["splits"] == {"sentiment": "dev", "qtype": "test", "ner": "dev"}
    assert set(results["tasks"]["ner"]) >= {"precision", "recall", "f1"}
    assert set(results["tasks"]["qtype"]) >= {"accuracy", "macro_f1"}
    lines = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]
    evaluations = [line for line in lines if line["split"] in ("dev", "test")]
    assert evaluations and all({"stage", "step", "epoch", "split", "task", "metrics"} <= set(x) for x in evaluations)
    training = [line for line in lines if line["split"] == "train"]  # every train.log_every (10) updates
    assert training and {"stage", "step", "task", "loss", "lr", "examples_per_s", "time"} <= set(training[0])
    assert json.loads((run.path / "final/labels.json").read_text())["sentiment"] == ["negative", "positive"]


def test_final_encoder_loads_in_sentence_transformers(tiny_bert_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    run = _run(tiny_bert_dir, tmp_path)
    texts = ["who won the game ?", "the delivery was late"]
    ours = load(run.path).encode(texts)
    theirs = SentenceTransformer(str(run.encoder_dir), device="cpu").encode(texts)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert np.abs(ours - load_encoder(str(tiny_bert_dir)).encode(texts)).max() > 1e-4  # it did train


def test_same_seed_same_metrics(tiny_qwen2_dir, tmp_path):
    first = _run(tiny_qwen2_dir, tmp_path, name="a")
    second = _run(tiny_qwen2_dir, tmp_path, name="b")
    clockless = [[{k: v for k, v in m.items() if k not in ("time", "examples_per_s")} for m in run.read_metrics()]
                 for run in (first, second)]
    assert clockless[0] == clockless[1]  # every record but the clock's fields (a training record's time and speed)
    assert first.read_json(first.results) == second.read_json(second.results)


@pytest.mark.parametrize("cache", [True, False])
def test_frozen_all_makes_no_gradient_step_and_builds_centroid_heads(tiny_bert_dir, tmp_path, cache):
    run = _run(tiny_bert_dir, tmp_path, freeze=["all"], cache={"enabled": cache})
    assert _changed(_encoder_state(tiny_bert_dir), _encoder_state(run.encoder_dir)) == set()
    stages = run.read_json(run.stages)
    assert stages[0]["stopped"] == "no training (frozen)" and stages[0]["epochs_run"] == 0
    assert stages[0]["updates"] == 0 and {m["step"] for m in run.read_metrics()} == {0}  # no optimizer step
    # The sentiment head is the nearest-centroid classifier of the training embeddings.
    from toy import NEGATIVE, POSITIVE

    encoder = load_encoder(str(tiny_bert_dir))
    centroids = np.stack([encoder.encode(NEGATIVE).mean(0), encoder.encode(POSITIVE).mean(0)])
    heads = load_file(str(run.final / "heads.safetensors"))
    np.testing.assert_allclose(heads["sentiment.net.1.weight"].numpy(), centroids, atol=1e-5)
    np.testing.assert_allclose(heads["sentiment.net.1.bias"].numpy(), -0.5 * (centroids**2).sum(1), atol=1e-5)
    assert set(run.read_json(run.results)["tasks"]) == {"sentiment", "qtype", "ner"}


def test_frozen_encoder_trains_only_heads(tiny_qwen2_dir, tmp_path):
    run = _run(tiny_qwen2_dir, tmp_path, freeze=["encoder", "projection"])
    assert _changed(_encoder_state(tiny_qwen2_dir), _encoder_state(run.encoder_dir)) == set()
    assert run.read_json(run.stages)[0]["cached"] is True


def test_frozen_head_stays_bit_identical_while_encoder_learns(tiny_bert_dir, tmp_path):
    reference = _run(tiny_bert_dir, tmp_path, name="ref", freeze=["all"], train={"seed": 0})
    frozen_head = _run(tiny_bert_dir, tmp_path, name="frozen", freeze=["head:sentiment"], train={"seed": 0})
    # Heads start from the same seeded init in both runs; the frozen one must not move at all.
    init = parse_config(toy_config(tiny_bert_dir, tmp_path / "init"))
    from thawing.training.setup import prepare

    start = {k: v.clone() for k, v in prepare(init).model.heads["sentiment"].state_dict().items()}
    saved = load_file(str(frozen_head.final / "heads.safetensors"))
    for key, value in start.items():
        assert torch.equal(saved[f"sentiment.{key}"], value), key
    assert _changed(_encoder_state(tiny_bert_dir), _encoder_state(frozen_head.encoder_dir))  # the encoder learned
    assert reference.path.is_dir()
    # The frozen head's task is still evaluated.
    assert any(x["task"] == "sentiment" for x in frozen_head.read_metrics())


def test_cached_and_uncached_heads_training_agree(tiny_bert_dir, tmp_path):
    # Head dropout off: a token head's dropout mask has another shape on cached (words, H) features
    # than on padded (B, T, H) states, so the random streams would differ, legitimately.
    cached = _run(tiny_bert_dir, tmp_path, name="c", head_dropout=0.0, freeze=["encoder"], cache={"enabled": True})
    naive = _run(tiny_bert_dir, tmp_path, name="n", head_dropout=0.0, freeze=["encoder"], cache={"enabled": False})
    assert cached.read_json(cached.stages)[0]["cached"] and not naive.read_json(naive.stages)[0]["cached"]
    a, b = cached.read_json(cached.results), naive.read_json(naive.results)
    assert a["tasks"].keys() == b["tasks"].keys()
    for task in a["tasks"]:
        for metric, value in a["tasks"][task].items():
            assert value == pytest.approx(b["tasks"][task][metric], abs=1e-6), (task, metric)
    heads_a = load_file(str(cached.final / "heads.safetensors"))
    heads_b = load_file(str(naive.final / "heads.safetensors"))
    for key in heads_a:
        torch.testing.assert_close(heads_a[key], heads_b[key], atol=1e-5, rtol=1e-4)


def test_each_stage_updates_exactly_its_groups_at_its_rates(tiny_qwen2_dir, tmp_path):
    """One update per stage, Adam, no warm-up or decay: each trained group moves by about its LR."""
    stages = [
        {"name": "heads", "train": ["heads"], "epochs": 0.1, "lr": {"heads": 1e-2}},
        {"name": "top", "train": ["head:qtype", "layers[-1:]"], "epochs": 0.1, "lr": {"heads": 3e-3, "encoder": 1e-3}},
        {
            "name": "deep",
            "train": ["layers[-3:]", "projection"],
            "epochs": 0.1,
            "lr": {"heads": 2e-3, "encoder": 1e-3},
            "layer_decay": 0.5,
        },
    ]
    config = parse_config(
        toy_config(
            tiny_qwen2_dir,
            tmp_path,
            tasks=("qtype",),
            schedule=stages,
            train={"batch_size": 16, "warmup": 0, "lr_schedule": "constant", "weight_decay": 0.0},
        )
    )
    from thawing.training import loop

    # Run stage by stage, checking which parameters moved and by how much.
    ctx, plan, groups = loop.start(config, run_dir=str(tmp_path / "run"))
    expected = {
        "heads": {"head:qtype": 1e-2},
        "top": {"head:qtype": 3e-3, "layers.2": 1e-3, "norm": 1e-3},
        "deep": {"layers.0": 2.5e-4, "layers.1": 5e-4, "layers.2": 1e-3, "norm": 1e-3, "projection": 2e-3},
    }
    for stage in plan:
        before = {g: [p.detach().clone() for _, p in members] for g, members in groups.items()}
        stage.restore_best = False  # keep the single update, whatever dev says
        loop.run_stage(ctx, stage, groups, [p for g in stage.trainable for _, p in groups[g]])
        moved = {}
        for g, members in groups.items():
            delta = max((p.detach() - b).abs().max().item() for (_, p), b in zip(members, before[g], strict=True))
            if delta > 0:
                moved[g] = delta
        assert set(moved) == set(expected[stage.name]), stage.name
        for g, lr in expected[stage.name].items():
            assert moved[g] == pytest.approx(lr, rel=0.05), (stage.name, g)


def test_plateau_stops_a_stage_and_the_plan(tiny_bert_dir, tmp_path):
    stages = [
        {"name": "warm", "train": ["heads"], "epochs": 3, "lr": {"heads": 5e-2}},
        # A learning rate this small cannot beat the first stage, so the plan stops after it.
        {"name": "tiny", "train": ["heads"], "epochs": 6, "lr": {"heads": 1e-9}, "early_stopping": {"patience": 1}},
        {"name": "never", "train": ["all"], "epochs": 1},
    ]
    run = _run(tiny_bert_dir, tmp_path, tasks=("sentiment",), schedule=stages)
    summary = run.read_json(run.stages)
    assert [s["stage"] for s in summary] == ["warm", "tiny"]
    assert summary[1]["stopped"].startswith("plateau") and "plan stopped" in summary[1]["stopped"]
    assert summary[1]["epochs_run"] < 6


def test_gradient_accumulation_and_step_evaluation(tiny_bert_dir, tmp_path):
    plain = _run(tiny_bert_dir, tmp_path, name="plain", tasks=("sentiment",))
    accumulated = _run(
        tiny_bert_dir,
        tmp_path,
        name="acc",
        tasks=("sentiment",),
        train={"grad_accum": 2, "epochs": 2, "batch_size": 4, "eval_every": 1},
    )
    updates = plain.read_json(plain.stages)[0]["updates"]
    assert accumulated.read_json(accumulated.stages)[0]["updates"] == updates // 2
    steps = [x["step"] for x in accumulated.read_metrics() if x["task"] == "*"]
    assert steps == list(range(1, updates // 2 + 1))  # eval_every: 1 evaluates after every optimizer update


def test_token_budget_training_runs_and_is_deterministic(tiny_qwen2_dir, tmp_path):
    first = _run(tiny_qwen2_dir, tmp_path, name="a", train={"max_tokens": 48, "epochs": 2, "seed": 0})
    second = _run(tiny_qwen2_dir, tmp_path, name="b", train={"max_tokens": 48, "epochs": 2, "seed": 0})
    assert first.read_json(first.results) == second.read_json(second.results)
    assert first.read_json(first.stages)[0]["updates"] > 0


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="torch.compile on CPU needs a C compiler")
@pytest.mark.parametrize(
    "speed", [{"pad_to_multiple_of": 8}, {"packing": True, "pack_width": 32}], ids=["padded", "packed"]
)
def test_compiled_training_matches_eager(tiny_qwen2_dir, tmp_path, speed):
    """torch.compile (opt-in) trains the same model, padded or packed; it costs a compile, so one small run."""
    common = {"epochs": 1, "seed": 0, "batch_size": 8, **speed}
    eager = _run(tiny_qwen2_dir, tmp_path, name="eager", tasks=("qtype",), head_dropout=0.0, train=common)
    compiled = _run(
        tiny_qwen2_dir, tmp_path, name="compiled", tasks=("qtype",), head_dropout=0.0, train={**common, "compile": True}
    )
    a = load_file(str(eager.final / "heads.safetensors"))
    b = load_file(str(compiled.final / "heads.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-3)


def _whole_model_path(model_dir, tmp_path, tasks):
    from thawing.training import loop
    from thawing.training.paths import WholeModel

    ctx, _, _ = loop.start(parse_config(toy_config(model_dir, tmp_path, tasks=tasks)), run_dir=str(tmp_path / "run"))
    ctx.model.eval()  # no dropout: the accumulated and the one-pass gradients see the same network
    return ctx, WholeModel(ctx.model, ctx.prep.features, ctx.runtime, 8)


def _gradients(model) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("tasks", [("sentiment",), ("ner",), ("sentiment", "ner")])
def test_an_update_averages_its_labelled_items_whatever_the_batch_sizes(tiny_bert_dir, tmp_path, tasks):
    from thawing.data.batching import collate
    from thawing.training.updates import divisors

    ctx, path = _whole_model_path(tiny_bert_dir, tmp_path, tasks)
    model, train_sets = ctx.model, {t: ctx.prep.features[t]["train"] for t in tasks}
    # Unequal sizes within a task, and an unequal count of micro-batches per task.
    split = {"sentiment": [[0], [1, 2, 3, 4, 5], [6, 7]], "ner": [[0, 1, 2], [3]]}
    update = [(t, b) for t in tasks for b in split[t]]
    reported = 0.0  # what the loop does for one update: each micro-batch's loss over its divisor, backward
    for (task, indices), divisor in zip(update, divisors(update, train_sets), strict=True):
        loss = path.loss(task, indices, divisor)
        loss.backward()
        reported += loss.item()
    accumulated = _gradients(model)

    # One pass per task over all its examples of the update, the plain mean; tasks share by micro-batch count.
    expected = 0.0
    for t in tasks:
        batch = collate(model.encoder, train_sets[t], [i for b in split[t] for i in b])
        logits = model(t, batch["input_ids"], batch["attention_mask"])
        expected = expected + model.loss(t, logits, batch["labels"]) * len(split[t]) / len(update)
    expected.backward()
    assert reported == pytest.approx(expected.item(), abs=1e-5)
    one_pass = _gradients(model)
    assert accumulated.keys() == one_pass.keys()
    for name in one_pass:
        torch.testing.assert_close(accumulated[name], one_pass[name], atol=1e-5, rtol=1e-4)


def test_one_fixed_size_batch_per_update_is_the_batch_mean(tiny_bert_dir, tmp_path):
    from thawing.training.updates import divisors

    ctx, path = _whole_model_path(tiny_bert_dir, tmp_path, ("sentiment",))
    indices, train_sets = [0, 3, 5, 9], {"sentiment": ctx.prep.features["sentiment"]["train"]}
    [divisor] = divisors([("sentiment", indices)], train_sets)
    torch.testing.assert_close(path.loss("sentiment", indices, divisor), path.loss("sentiment", indices))


def test_updates_close_as_soon_as_they_reach_the_token_budget():
    from thawing.data.batching import Features
    from thawing.training.updates import group_updates

    rng = np.random.default_rng(0)
    sets = {t: Features([[1] * int(n) for n in rng.integers(3, 40, 50)], [0] * 50) for t in ("a", "b")}
    tasks = rng.choice(["a", "b"], 60)
    micro = [(t, sorted(rng.choice(50, int(rng.integers(1, 6)), replace=False).tolist())) for t in tasks]

    def tokens(batches):
        return sum(len(sets[t].input_ids[i]) for t, b in batches for i in b)

    for budget in (1, 64, 200, 10**6):
        updates = group_updates(micro, sets, update_tokens=budget)
        assert [m for u in updates for m in u] == micro  # nothing lost, duplicated or reordered
        assert all(tokens(u) >= budget > tokens(u[:-1]) for u in updates[:-1])
        assert updates[-1] and tokens(updates[-1][:-1]) < budget
    assert [len(u) for u in group_updates(micro, sets, grad_accum=7)] == [7] * 8 + [4]


def test_update_tokens_training_accumulates_several_batches_per_update(tiny_bert_dir, tmp_path):
    from thawing.training.events import UpdateDone

    events = []
    settings = {"update_tokens": 60, "epochs": 2, "batch_size": 4, "eval_every": 2, "log_every": 2}
    config = parse_config(toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment", "ner"), train=settings))
    run = train(config, run_dir=str(tmp_path / "run"), callbacks=[events.append])
    summary = run.read_json(run.stages)[0]
    steps = [e for e in events if isinstance(e, UpdateDone)]
    micro_batches = 2 * (16 // 4 + 12 // 4)  # two epochs of sentiment (16 examples) and ner (12)
    assert 0 < summary["updates"] == len(steps) < micro_batches
    assert [e.update for e in steps] == list(range(1, len(steps) + 1))
    assert all(e.update <= e.total for e in steps)
    # the losses are read on the updates that write records (every log_every), not on the others
    assert all(e.loss > 0 and e.tasks for e in steps if e.update % 2 == 0)
    assert all(e.loss is None and e.tasks is None for e in steps if e.update % 2)
    assert summary["epochs_run"] == 2 and summary["best_score"] is not None


def test_grad_accum_and_update_tokens_are_exclusive(tiny_bert_dir, tmp_path):
    from thawing.errors import ConfigError

    with pytest.raises(ConfigError, match="update_tokens"):
        parse_config(toy_config(tiny_bert_dir, tmp_path, train={"grad_accum": 2, "update_tokens": 512}))
    alone = parse_config(toy_config(tiny_bert_dir, tmp_path, train={"grad_accum": 1, "update_tokens": 512}))
    assert alone.train.update_tokens == 512


def test_round_robin_restarts_a_task_that_runs_out_of_batches(tiny_bert_dir, tmp_path):
    # 8 sentiment and 6 qtype batches: alternating 14 steps asks qtype for a 7th.
    run = _run(
        tiny_bert_dir,
        tmp_path,
        tasks=("sentiment", "qtype"),
        train={"batch_size": 2, "epochs": 1, "sampling": {"strategy": "round_robin"}},
    )
    assert run.read_json(run.stages)[0]["updates"] == 14


def test_packed_training_matches_padded(tiny_qwen2_dir, tmp_path, caplog, monkeypatch):
    """Packing changes how the batch runs, not what it computes: same batches (batch_size), same trained heads."""
    from thawing.model import packing

    common = {"epochs": 1, "seed": 0, "batch_size": 8}
    padded = _run(tiny_qwen2_dir, tmp_path, name="padded", head_dropout=0.0, train=common)
    rows = []
    monkeypatch.setattr(packing, "pack", lambda *a, **k: rows.append(packing_pack(*a, **k)) or rows[-1])
    packed = _run(
        tiny_qwen2_dir, tmp_path, name="packed", head_dropout=0.0, train={**common, "packing": True, "pack_width": 32}
    )
    assert "packing is off" not in caplog.text
    assert rows and any(
        len(set(p.index[:, 0].div(32, rounding_mode="floor").tolist())) < p.index.shape[0] for p in rows
    )  # rows shared
    a = load_file(str(padded.final / "heads.safetensors"))
    b = load_file(str(packed.final / "heads.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-3)
    assert padded.read_json(padded.results)["tasks"].keys() == packed.read_json(packed.results)["tasks"].keys()


def test_packed_token_budget_batches_run(tiny_bert_dir, tmp_path):
    run = _run(tiny_bert_dir, tmp_path, train={"epochs": 1, "seed": 0, "max_tokens": 64, "packing": True})
    assert run.read_json(run.stages)[0]["updates"] > 0


def test_gradient_checkpointing_trains_to_the_same_weights(tiny_bert_dir, tmp_path):
    """train.gradient_checkpointing recomputes each training layer's forward in the backward (the modules inside its
    layers run more often) and ends with the weights the plain run ends with (dropout included: the recompute
    replays its masks)."""
    schedule = [{"name": "top", "train": ["heads", "layers[-1:]"], "epochs": 1},
                {"name": "all", "train": ["all"], "epochs": 1, "lr": {"heads": 0.03, "encoder": 0.001}}]
    calls, runs = {}, {}
    for checkpointing in (False, True):
        raw = toy_config(tiny_bert_dir, tmp_path / str(checkpointing), schedule=schedule)
        raw["train"]["gradient_checkpointing"] = checkpointing
        encoder = load_encoder(str(tiny_bert_dir))
        counted = calls.setdefault(checkpointing, [0])
        for layer in encoder.backbone.encoder.layer:
            layer.attention.register_forward_hook(lambda *_, counted=counted: counted.__setitem__(0, counted[0] + 1))
        runs[checkpointing] = train(parse_config(raw), run_dir=str(tmp_path / f"run-{checkpointing}"), encoder=encoder)
    assert calls[True][0] > calls[False][0]
    worst = 0.0
    for name in ("heads.safetensors", "encoder/model.safetensors"):
        plain, checkpointed = (load_file(str(runs[c].final / name)) for c in (False, True))
        worst = max([worst] + [(checkpointed[k] - plain[k]).abs().max().item() for k in plain])
    print(f"gradient checkpointing against none: max abs difference of final weights {worst:.2e}")
    assert worst <= 1e-6
