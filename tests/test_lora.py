"""LoRA as a stage option (issue #14, item 3): a stage trains adapters (peft) beside the groups in `train`, merges them
into the encoder when the plan has decided on it, and the final encoder is a plain sentence-transformers model.

Tiny BERT (query/value in `attention.self`) and tiny Qwen2 (`self_attn.q_proj`/`v_proj`, a Dense projection).

Run: `.venv/bin/python -m pytest -q tests/test_lora.py`
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from clirun import invoke
from safetensors.torch import load_file
from test_checkpoints import _assert_identical, _kill, _on_step
from toy import toy_config, write_config

from thawing.config import LoraSettings, parse_config
from thawing.errors import ConfigError
from thawing.model import lora
from thawing.model.freezing import apply_trainable, set_frozen_modes
from thawing.model.groups import parameter_groups
from thawing.model.loading import load_encoder
from thawing.training import loop
from thawing.training.events import Evaluated, StageEnded
from thawing.training.paths import TopLayers, WholeModel, choose_path

TEXTS = ["i love the film", "where is paris ?", "the delivery was late", "john is in london"]
QV = {"bert": ["attention.self.query", "attention.self.value"], "qwen2": ["self_attn.q_proj", "self_attn.v_proj"]}


@pytest.fixture(params=["bert", "qwen2"])
def model(request, tiny_bert_dir, tiny_qwen2_dir):
    """(architecture, model folder)"""
    return request.param, tiny_bert_dir if request.param == "bert" else tiny_qwen2_dir


def _stage(name="lora", train=("heads",), epochs=2, **lora_settings) -> dict:
    settings = {"r": 4, "alpha": 8, "dropout": 0.1, "layers": "layers[-2:]", "targets": ["query", "value"],
                **lora_settings}
    return {"name": name, "train": list(train), "epochs": epochs, "lr": {"heads": 1e-2, "encoder": 1e-2},
            "lora": settings}


def _config(model_dir, root, schedule, **train):
    raw = toy_config(model_dir, root, tasks=("sentiment", "ner"), schedule=schedule,
                     train={"batch_size": 4, "seed": 0, "eval_batch_size": 8, **train})
    return parse_config(raw)


def _linear(encoder, name: str):
    return dict(encoder.backbone.named_modules())[name]


# ------------------------------------------------------------------------------------------ plan


def test_plan_shows_each_stages_adapters(model, tmp_path):
    arch, model_dir = model
    schedule = [{"name": "heads", "train": ["heads"], "epochs": 1},
                {**_stage(r=8, layers="layers[-2:]"), "layer_decay": 0.5}]
    config = write_config(toy_config(model_dir, tmp_path, tasks=("sentiment",), schedule=schedule), tmp_path / "c.yaml")
    code, output = invoke("plan", str(config), "--json")
    assert code == 0, output
    stage = json.loads(output)["stages"][1]
    layers = 2 if arch == "bert" else 3
    top = [f"layers.{layers - 2}", f"layers.{layers - 1}"]
    hidden, kv = 32, (32 if arch == "bert" else 16)  # Qwen2: 2 of 4 heads for keys and values (GQA)
    per_layer = 8 * (hidden + hidden) + 8 * (hidden + kv)  # query: 32 -> 32, value: 32 -> kv
    assert stage["lora"] == {"r": 8, "alpha": 8.0, "dropout": 0.1, "targets": ["query", "value"], "layers": top,
                             "modules": QV[arch], "params": 2 * per_layer}
    groups = {g["name"]: g for g in stage["groups"]}
    assert [groups[f"lora:{layer}"]["params"] for layer in top] == [per_layer, per_layer]
    # the adapters of a layer take that layer's rate: the top one the encoder rate, the one below it x layer_decay
    assert [groups[f"lora:{layer}"]["lr"] for layer in top] == [5e-3, 1e-2]
    assert stage["trainable_params"] == groups["head:sentiment"]["params"] + 2 * per_layer

    code, output = invoke("plan", str(config))
    output = " ".join(output.split())  # as the terminal's width wrapped it
    assert code == 0 and "LoRA r=8" in output and f"{2 * per_layer:,} adapter parameters" in output


@pytest.mark.parametrize("targets, expected", [
    (["query", "value"], QV["bert"]),
    (["key", "attention_output", "intermediate", "output"],
     ["attention.self.key", "attention.output.dense", "intermediate.dense", "output.dense"]),
    (["dense"], ["attention.output.dense", "intermediate.dense", "output.dense"]),  # the model's own name
    ("all-linear", ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                    "intermediate.dense", "output.dense"]),
])
def test_bert_target_names(tiny_bert_dir, targets, expected):
    encoder = load_encoder(str(tiny_bert_dir))
    plan = lora.plan_adapters(LoraSettings(targets=targets, layers="layers.1"), encoder.backbone,
                              parameter_groups(encoder))
    assert plan.modules == expected and plan.layers == [1]
    assert plan.names == [f"encoder.layer.1.{m}" for m in expected]


@pytest.mark.parametrize("targets, expected", [
    (["query", "value"], QV["qwen2"]),
    (["q_proj", "down", "up", "gate"], ["self_attn.q_proj", "mlp.down_proj", "mlp.up_proj", "mlp.gate_proj"]),
    ("all-linear", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                    "mlp.up_proj", "mlp.down_proj"]),
])
def test_qwen2_target_names(tiny_qwen2_dir, targets, expected):
    encoder = load_encoder(str(tiny_qwen2_dir))
    plan = lora.plan_adapters(LoraSettings(targets=targets, layers=["encoder", "-layers.0"]), encoder.backbone,
                              parameter_groups(encoder))
    assert plan.modules == expected and plan.layers == [1, 2]


@pytest.mark.parametrize("family, expected", [
    ("MPNet", ["attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o", "intermediate.dense",
               "output.dense"]),
    ("DistilBert", ["attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin", "ffn.lin1",
                    "ffn.lin2"]),
    ("Llama", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.up_proj",
               "mlp.down_proj"]),
])
def test_generic_names_map_onto_other_families(family, expected):
    import transformers

    sizes = {"DistilBert": {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64}}.get(
        family, {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64})
    backbone = getattr(transformers, f"{family}Model")(getattr(transformers, f"{family}Config")(vocab_size=50, **sizes))
    holder = torch.nn.Module()  # what parameter_groups reads: a backbone and a projection
    holder.backbone, holder.projection = backbone, None
    targets = ["query", "key", "value", "attention_output", "intermediate", "output"]
    plan = lora.plan_adapters(LoraSettings(targets=targets, layers="layers.1"), backbone, parameter_groups(holder))
    assert plan.modules == expected


@pytest.mark.parametrize("settings, message", [
    ({"targets": ["queries"]}, "'queries' names no linear module of layers.0 (BertLayer)"),
    ({"targets": ["gate"]}, "'gate' names no linear module"),  # a generic name BERT has no module for
    ({"layers": "heads"}, "'heads' is not a layer selector"),
    ({"layers": "layers[5:]"}, "selects no layer"),
    ({"layers": ["layers.0", "-layers.0"]}, "selects no layer of this model"),
    ({"layers": "layers.7"}, "unknown parameter group selector 'layers.7'"),
])
def test_bad_targets_and_layers_exit_2_naming_the_stage_before_a_run_directory(tiny_bert_dir, tmp_path, settings,
                                                                               message):
    schedule = [{"name": "heads", "train": ["heads"], "epochs": 1}, _stage(name="adapt", **settings)]
    config = write_config(toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",), schedule=schedule),
                          tmp_path / "c.yaml")
    code, output = invoke("train", str(config), "--run-dir", str(tmp_path / "run"))
    assert code == 2 and "schedule: stage 'adapt': lora." in output and message in output, output
    assert not (tmp_path / "run").exists()
    assert invoke("plan", str(config))[0] == 2


def test_lora_settings_are_checked_at_load(tiny_bert_dir, tmp_path):
    bad = [_stage(targets="query"), _stage(rank=4), {**_stage(), "epochs": 0}]
    for stage in bad:
        with pytest.raises(ConfigError) as caught:
            parse_config(toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",), schedule=[stage]))
        assert "schedule.0" in str(caught.value)


def test_the_lora_preset(tiny_bert_dir, tmp_path):
    config = write_config(toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",), schedule="lora"),
                          tmp_path / "c.yaml")
    code, output = invoke("plan", str(config), "--json", "--full")
    assert code == 0, output
    stages = json.loads(output)["stages"]
    assert [s["name"] for s in stages] == ["heads", "lora", "discriminative"]
    assert stages[1]["lora"]["layers"] == ["layers.1"]  # the top half of 2 layers
    assert (stages[1]["lora"]["r"], stages[1]["lora"]["modules"]) == (16, QV["bert"])
    plain = json.loads(invoke("plan", str(config), "--json")[1])["stages"]
    assert [s["name"] for s in plain] == ["heads", "lora"]  # discriminative is optional


# ------------------------------------------------------------------------------------------ training


def test_a_lora_stage_trains_adapters_and_heads_and_merges_into_a_plain_encoder(model, tmp_path):
    arch, model_dir = model
    encoder = load_encoder(str(model_dir))
    start = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    seen = {}

    def events(event):
        if isinstance(event, StageEnded):  # the stage is over, the plan has not decided yet: adapters still attached
            weights = {n.replace(".base_layer", ""): p.detach().clone() for n, p in encoder.named_parameters()
                       if ".lora_" not in n}
            seen["unchanged"] = all(torch.equal(weights[n], start[n]) for n in start) and weights.keys() == start.keys()
            seen["adapters"] = {n: p.detach().clone() for n, p in encoder.named_parameters() if ".lora_" in n}
            seen["embeddings"] = encoder.encode(TEXTS)

    run = loop.train(_config(model_dir, tmp_path, [_stage(layers="layers[-1:]")]), run_dir=str(tmp_path / "run"),
                     encoder=encoder, callbacks=[events])

    assert seen["unchanged"]  # while the stage trained, no base weight moved
    assert seen["adapters"] and any(n.endswith("lora_B.stage.weight") and p.abs().sum() > 0
                                    for n, p in seen["adapters"].items())
    names = {n for n, _ in encoder.named_parameters()}
    assert names == set(start)  # merged and removed: the plain model's parameters, by their plain names
    top = 1 if arch == "bert" else 2
    adapted = {f"backbone.{'encoder.layer' if arch == 'bert' else 'layers'}.{top}.{m}.weight" for m in QV[arch]}
    changed = {n for n, p in encoder.named_parameters() if not torch.equal(p, start[n])}
    assert changed == adapted  # the merge changed exactly the adapted weights

    summary = run.read_json(run.stages)[0]
    assert summary["lora"]["merged"] is True
    heads = sum(p.numel() for p in load_file(str(run.final / "heads.safetensors")).values())
    assert summary["trainable_params"] == heads + summary["lora"]["params"]

    saved = load_file(str(run.final / "encoder" / "model.safetensors"))
    assert not [k for k in saved if "lora" in k or "base_layer" in k]
    assert not list(run.final.rglob("adapter_config.json"))
    # sentence-transformers, with peft impossible to import, gives what the model with its adapters gave
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["peft"] = None
        from sentence_transformers import SentenceTransformer
        model = SentenceTransformer({str(run.final / "encoder")!r}, device="cpu")
        print(json.dumps(model.encode({TEXTS!r}).tolist()))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    vectors = torch.tensor(json.loads(out.stdout.strip().splitlines()[-1]))
    assert (vectors - torch.from_numpy(seen["embeddings"])).abs().max() <= 1e-5


def test_adapters_leave_the_random_state_alone_and_merge_to_the_same_function(tiny_qwen2_dir):
    encoder, twin = load_encoder(str(tiny_qwen2_dir)), load_encoder(str(tiny_qwen2_dir))
    settings = LoraSettings(r=4, alpha=16, layers="layers[-2:]", targets="all-linear")
    plan = lora.plan_adapters(settings, encoder.backbone, parameter_groups(encoder))
    rng = torch.get_rng_state()
    tuner, other = lora.attach(encoder.backbone, plan, seed=3), lora.attach(twin.backbone, plan, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)  # a resumed run draws what the uninterrupted one drew
    mine, theirs = dict(encoder.named_parameters()), dict(twin.named_parameters())
    assert all(torch.equal(p, theirs[n]) for n, p in mine.items())  # the same seed, the same adapters
    assert sorted({g for g in parameter_groups(encoder) if g.startswith("lora:")}) == ["lora:layers.1",
                                                                                      "lora:layers.2"]
    with torch.no_grad():
        for name, p in mine.items():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    before = encoder.encode(TEXTS)
    lora.detach(tuner)
    assert (torch.from_numpy(encoder.encode(TEXTS)) - torch.from_numpy(before)).abs().max() <= 1e-5
    assert not [n for n, _ in encoder.named_parameters() if "lora" in n or "base_layer" in n]
    lora.detach(other, merge=False)  # dropped: the model as it was
    assert all(torch.equal(p, load_encoder(str(tiny_qwen2_dir)).state_dict()[n]) for n, p in twin.state_dict().items())


@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_qwen2_dir"])
def test_below_the_lowest_adapted_layer_the_boundary_cache_gives_the_same_loss_and_gradients(fixture, request,
                                                                                              tmp_path):
    raw = toy_config(request.getfixturevalue(fixture), tmp_path, tasks=("qtype",),
                     schedule=[_stage(layers="layers[-1:]")], cache={"enabled": True, "dtype": "float32"})
    ctx, plan, _ = loop.start(parse_config(raw), run_dir=str(tmp_path / "run"))
    stage, model = plan[0], ctx.model
    lora.attach(model.encoder.backbone, stage.lora, seed=0)
    groups = parameter_groups(model)
    with torch.no_grad():  # adapters that change what the top layer computes
        for name, p in groups[stage.lora.groups[0]]:
            if "lora_B" in name:
                p.normal_(0, 0.1)
    apply_trainable(groups, stage.trainable)
    model.train()
    set_frozen_modes(model, stage.trainable)
    top = choose_path(model, stage.trainable, ctx.prep.features, ctx.runtime, ctx.prep.config, ["qtype"],
                      lambda _payload: None)
    assert isinstance(top, TopLayers) and top.boundary["qtype"].first == stage.lora.layers[0]
    whole = WholeModel(model, ctx.prep.features, ctx.runtime, 8)
    params = [(n, p) for g in stage.trainable for n, p in groups[g]]
    results = []
    for path in (whole, top):
        for _, p in params:
            p.grad = None
        torch.manual_seed(7)  # the same dropout masks in the adapted layer on both paths
        loss = path.loss("qtype", [3, 0, 5, 1])
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in params}))
    (naive_loss, naive_grads), (cached_loss, cached_grads) = results
    assert cached_loss == pytest.approx(naive_loss, abs=1e-5)
    assert any(".lora_A." in n for n in naive_grads)
    for name in naive_grads:
        torch.testing.assert_close(cached_grads[name], naive_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_restore_best_puts_back_the_adapters_of_the_best_evaluation(tiny_bert_dir, tmp_path):
    encoder = load_encoder(str(tiny_bert_dir))
    at_eval, at_end = {}, {}

    def adapters():
        return {n: p.detach().clone() for n, p in encoder.named_parameters() if ".lora_" in n}

    def events(event):
        if isinstance(event, Evaluated):
            at_eval[event.step] = adapters()
        elif isinstance(event, StageEnded):
            at_end.update(adapters=adapters(), summary=event.summary)

    stage = {**_stage(layers="encoder", epochs=3), "eval_every": 1, "lr": {"heads": 0.3, "encoder": 0.3}}
    loop.train(_config(tiny_bert_dir, tmp_path, [stage]), run_dir=str(tmp_path / "run"), encoder=encoder,
               callbacks=[events])
    best, last = at_end["summary"]["best_step"], max(at_eval)
    assert best < last, "this setting was chosen so that the best evaluation is not the last one"
    assert not all(torch.equal(p, at_eval[last][n]) for n, p in at_end["adapters"].items())
    assert all(torch.equal(p, at_eval[best][n]) for n, p in at_end["adapters"].items())


def test_a_stage_can_train_adapters_alone(tiny_bert_dir, tmp_path):
    schedule = [{"name": "heads", "train": ["heads"], "epochs": 1}, _stage(name="adapters", train=())]
    config = _config(tiny_bert_dir, tmp_path, schedule, checkpoint_every=1)
    with pytest.raises(KeyboardInterrupt):
        loop.train(config, run_dir=str(tmp_path / "run"), callbacks=[_on_step("adapters", 3, _kill)])
    saved = load_file(str(tmp_path / "run" / "checkpoints" / "step" / "trainable.safetensors"))
    assert len(saved) == 8 and all(".lora_" in k for k in saved)  # A and B of query and value in two layers


def test_a_lora_stage_that_does_not_beat_the_plan_is_dropped(tiny_bert_dir, tmp_path):
    schedule = [{"name": "heads", "train": ["heads"], "epochs": 1},
                {**_stage(), "early_stopping": {"min_delta": 1.0}}]  # no score beats the best by 1.0
    run = loop.train(_config(tiny_bert_dir, tmp_path, schedule), run_dir=str(tmp_path / "run"))
    summary = run.read_json(run.stages)[1]
    assert summary["lora"]["merged"] is False and "plan stopped" in summary["stopped"]
    pretrained = load_file(str(tiny_bert_dir / "model.safetensors"))
    final = load_file(str(run.final / "encoder" / "model.safetensors"))
    assert final.keys() == pretrained.keys() and all(torch.equal(final[k], pretrained[k]) for k in final)
    assert "(dropped)" in run.model_card.read_text()


# ------------------------------------------------------------------------------------------ resume


@pytest.fixture(scope="module")
def lora_reference(tiny_bert_dir, tiny_qwen2_dir, tmp_path_factory):
    runs = {}
    for arch, model_dir in (("bert", tiny_bert_dir), ("qwen2", tiny_qwen2_dir)):
        root = tmp_path_factory.mktemp(f"uninterrupted-{arch}")
        runs[arch] = loop.train(_resumable(model_dir, root, keep_checkpoints=True), run_dir=str(root / "run"))
    return runs


def _resumable(model_dir, root, **train):
    # 16 sentiment + 12 NER rows at batch 4: 7 updates an epoch; the LoRA stage (beside the top layer) runs 3 epochs.
    schedule = [{"name": "heads", "train": ["heads"], "epochs": 1, "lr": {"heads": 1e-4}},  # a low bar to beat
                {**_stage(train=("heads", "layers[-1:]"), epochs=3, layers="encoder"),
                 "lr": {"heads": 1e-2, "encoder": 1e-3}}]
    return _config(model_dir, root, schedule, checkpoint_every=2, **train)


def test_a_run_killed_inside_a_lora_stage_resumes_identically(model, tmp_path, lora_reference):
    arch, model_dir = model
    with pytest.raises(KeyboardInterrupt):
        loop.train(_resumable(model_dir, tmp_path), run_dir=str(tmp_path / "run"),
                   callbacks=[_on_step("lora", 11, _kill)])
    step = tmp_path / "run" / "checkpoints" / "step"
    assert json.loads((step / "state.json").read_text())["stage"]["update"] == 10
    saved = load_file(str(step / "trainable.safetensors"))
    adapters = [k for k in saved if ".lora_" in k]
    top = "encoder.backbone." + ("encoder.layer.1." if arch == "bert" else "layers.2.")
    trained = [k for k in saved if k.startswith(("heads.", top, "encoder.backbone.norm.")) or ".lora_" in k]
    assert adapters and trained == list(saved)  # the heads, the top layer (and norm) and every layer's adapters

    events = _on_step("none", 0, _kill)
    resumed = loop.resume_run(tmp_path / "run", callbacks=[events])
    assert events.seen[0] == ("lora", 11)
    _assert_identical(resumed, lora_reference[arch])
    assert resumed.read_json(resumed.stages)[1]["lora"]["merged"] is True
