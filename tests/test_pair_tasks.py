"""The sentence-pair task types: similarity, pair classification and retrieval, through public functions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from toy import pair_config, pair_rows, toy_data, write_jsonl

from thawing.config import TaskConfig, parse_config
from thawing.config.tasks import load_task
from thawing.errors import ConfigError, InputError
from thawing.task_types import task_type

# ---------------------------------------------------------------------------------------------- whole runs


def _train_losses(run_path) -> list[float]:
    lines = [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines()]
    return [line["loss"] for line in lines if line.get("split") == "train" and line.get("task") == "pair"]


@pytest.mark.parametrize(("kind", "metric"), [("similarity", "spearman"), ("pair-classification", "accuracy"),
                                              ("retrieval", "mrr_at_10")])
def test_each_pair_type_trains_end_to_end(tiny_bert_dir, tmp_path, kind, metric):
    import thawing
    from thawing.training.loop import train

    raw = pair_config(tiny_bert_dir, tmp_path, kind)
    raw["train"].update(epochs=6, log_every=1)
    run = train(parse_config(raw), run_dir=str(tmp_path / "run"))
    results = json.loads((run.path / "results.json").read_text())
    assert set(results["tasks"]["pair"]) == set(task_type(kind).metric_names)
    assert results["score"] == results["tasks"]["pair"][metric]
    losses = _train_losses(run.path)
    assert len(losses) >= 6 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-3:]) < np.mean(losses[:3])  # training lowers the task's loss
    # the saved model predicts pairs, and scores the dev split as training did
    model = thawing.load(run.path, device="cpu")
    dev = [json.loads(line) for line in Path(raw["tasks"]["pair"]["data"]["dev"]).read_text().splitlines()]
    fields = {"similarity": ("sentence1", "sentence2"), "pair-classification": ("sentence1", "sentence2"),
              "retrieval": ("query", "positive")}[kind]
    pairs = [[row[f] for f in fields] for row in dev]
    predictions = model.predict(pairs, task="pair")
    assert len(predictions) == len(pairs)
    if kind == "pair-classification":
        assert {p["label"] for p in predictions} <= {"same", "opposite", "unrelated"}
    else:
        unit = model.encode([p[0] for p in pairs[:2]]), model.encode([p[1] for p in pairs[:2]])
        cosines = (unit[0] * unit[1]).sum(-1) / np.linalg.norm(unit[0], axis=-1) / np.linalg.norm(unit[1], axis=-1)
        assert [p["score"] for p in predictions[:2]] == pytest.approx(cosines.tolist(), abs=1e-5)


def test_similarity_on_a_frozen_encoder_scores_the_pretrained_cosines(tiny_bert_dir, tmp_path):
    """No gradient step: the cached path's Spearman is that of the pretrained embeddings' cosines."""
    from scipy.stats import spearmanr

    import thawing
    from thawing.training.loop import train

    raw = pair_config(tiny_bert_dir, tmp_path, "similarity", schedule="frozen")
    run = train(parse_config(raw), run_dir=str(tmp_path / "run"))
    got = json.loads((run.path / "results.json").read_text())["tasks"]["pair"]["spearman"]
    encoder = thawing.load_encoder(str(tiny_bert_dir))
    dev = pair_rows()["similarity"][1::2]
    a, b = encoder.encode([r["sentence1"] for r in dev]), encoder.encode([r["sentence2"] for r in dev])
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert got == pytest.approx(spearmanr(cos, [r["score"] for r in dev]).statistic, abs=1e-4)


# ---------------------------------------------------------------------------------------------- losses and metrics


def test_cosent_by_hand():
    kind = task_type("similarity")
    cos, gold = torch.tensor([[0.5], [0.2], [0.9]]), torch.tensor([1.0, 0.0, 0.5])
    # ordered pairs (i above j): (0, 1), (0, 2), (2, 1); each adds exp(20 (cos_j - cos_i))
    terms = [20 * (0.2 - 0.5), 20 * (0.9 - 0.5), 20 * (0.2 - 0.9)]
    expected = math.log(1 + sum(math.exp(t) for t in terms))
    assert kind.loss(cos, gold).item() == pytest.approx(expected, rel=1e-5)
    assert kind.loss(cos, gold, divisor=6.0).item() == pytest.approx(expected * 3 / 6, rel=1e-5)
    mse = ((0.5 - 1.0) ** 2 + 0.2**2 + 0.4**2) / 3
    assert kind.loss(cos, gold, loss="cosine_mse").item() == pytest.approx(mse, rel=1e-5)
    same = kind.loss(torch.tensor([[0.3], [0.1]], requires_grad=True), torch.tensor([0.5, 0.5]))
    assert same.item() == 0.0 and same.requires_grad  # no ordered pair: zero, yet a gradient path


def test_multiple_negatives_ranking_by_hand():
    kind = task_type("retrieval")
    emb = F.normalize(torch.randn(3, 3, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    loss = kind.loss(emb, torch.zeros(3, 2), temperature=0.1)
    candidates = torch.cat([emb[:, 1], emb[:, 2]])  # positives, then hard negatives
    expected = np.mean([-torch.log_softmax(emb[i, 0] @ candidates.T / 0.1, 0)[i].item() for i in range(3)])
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_spearman_and_pearson_of_a_known_ordering():
    kind = task_type("similarity")
    logits = [np.array([x]) for x in (0.1, 0.2, 0.3, 0.4)]
    got = kind.metrics(None, logits, [0.0, 0.2, 0.6, 0.4])
    # Ranks of gold: 1, 2, 4, 3 against 1, 2, 3, 4: rho = 1 - 6 * 2 / (4 * 15)
    assert got["spearman"] == pytest.approx(0.8)
    assert got["pearson"] == pytest.approx(np.corrcoef([0.1, 0.2, 0.3, 0.4], [0.0, 0.2, 0.6, 0.4])[0, 1])
    assert kind.metrics(None, [np.array([0.5])] * 3, [0.0, 0.5, 1.0]) == {"spearman": 0.0, "pearson": 0.0}


def test_retrieval_metrics_of_a_known_ranking():
    kind = task_type("retrieval")
    # Corpus: documents 0, 1, 2 along three axes; query i points between its positive and the others.
    doc = np.eye(3)
    queries = [np.array([1.0, 0.5, 0.2]), np.array([1.0, 0.8, 0.0]), np.array([0.5, 0.4, 0.3])]
    logits = [np.stack([q, doc[i]]) for i, q in enumerate(queries)]
    got = kind.metrics(None, logits, [[0, -1], [1, -1], [2, -1]])
    # ranks of the positives: 1, 2, 3
    assert got["mrr_at_10"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert got["recall_at_1"] == pytest.approx(1 / 3)
    assert got["recall_at_10"] == 1.0
    assert got["ndcg_at_10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(4)) / 3)


def test_retrieval_corpus_holds_each_text_once_with_negatives(tmp_path):
    rows = [{"query": "who won", "positive": "the team won", "negative": "the team lost"},
            {"query": "who lost", "positive": "the team lost", "negative": "the team won"}]
    task = load_task("r", TaskConfig(type="retrieval", data={"train": write_jsonl(tmp_path / "r.jsonl", rows * 5)}))
    labels = [e.label for split in task.splits.values() for e in split]
    assert sorted({tuple(x) for x in labels}) == [(0, 1), (1, 0)]  # two distinct texts, shared ids


def test_training_batches_never_repeat_a_positive():
    from thawing.config import TrainConfig
    from thawing.data.batching import Features
    from thawing.training.updates import epoch_batches

    keys = [i % 5 for i in range(40)]  # 8 examples share each positive
    feats = Features([[1, 2]] * 40, [[k, -1] for k in keys], others=[[[3]]] * 40, keys=keys)
    batches = epoch_batches({"r": feats}, TrainConfig(batch_size=4), seed=0, packed=False)["r"]
    assert sorted(i for b in batches for i in b) == list(range(40))
    assert all(len({keys[i] for i in b}) == len(b) <= 4 for b in batches)
    unkeyed = Features([[1, 2]] * 40, [0] * 40)
    assert any(len({keys[i] for i in b}) < len(b)
               for b in epoch_batches({"r": unkeyed}, TrainConfig(batch_size=4), seed=0, packed=False)["r"])


def test_pair_head_reads_u_v_and_their_difference():
    from thawing.config import HeadConfig
    from thawing.task_types.heads import PairHead

    head = PairHead(4, 3, HeadConfig(dropout=0.0), product=True)
    pairs = torch.randn(5, 2, 4)
    u, v = pairs[:, 0], pairs[:, 1]
    assert torch.equal(head.combine(pairs), torch.cat([u, v, (u - v).abs(), u * v], -1))
    assert head(pairs).shape == (5, 3)
    assert PairHead(4, 3, HeadConfig()).net[-1].in_features == 12


# ---------------------------------------------------------------------------------------------- data and config


@pytest.mark.parametrize(("kind", "row", "field"), [
    ("similarity", {"sentence1": "a", "score": 1}, "sentence2"),
    ("similarity", {"sentence1": "a", "sentence2": "b"}, "score"),
    ("similarity", {"sentence1": "a", "sentence2": "b", "score": "high"}, "score"),
    ("pair-classification", {"sentence2": "b", "label": "x"}, "sentence1"),
    ("retrieval", {"query": "a", "positive": "", "negative": "c"}, "positive"),
    ("retrieval", {"query": "a", "positive": "b"}, "negative"),  # line 1 has a negative: every row needs one
])
def test_a_bad_pair_row_names_file_line_and_field(tmp_path, kind, row, field):
    good = {"similarity": {"sentence1": "a", "sentence2": "b", "score": 2},
            "pair-classification": {"sentence1": "a", "sentence2": "b", "label": "x"},
            "retrieval": {"query": "a", "positive": "b", "negative": "c"}}[kind]
    path = write_jsonl(tmp_path / "train.jsonl", [good, good, row, good])
    with pytest.raises(InputError) as err:
        load_task("t", TaskConfig(type=kind, data={"train": path}))
    assert err.value.line == 3 and err.value.field == field and str(path) in str(err.value)


def test_similarity_scores_scale_to_the_train_range_or_the_configured_one(tmp_path):
    rows = [{"sentence1": "a", "sentence2": "b", "score": s} for s in (1, 2, 3, 5)]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    task = load_task("s", TaskConfig(type="similarity", data={"train": path, "dev": path}))
    assert task.labels == ["1.0", "5.0"] and [e.label for e in task.splits["dev"]] == [0.0, 0.25, 0.5, 1.0]
    fixed = load_task("s", TaskConfig(type="similarity", data={"train": path, "dev": path}, score_range=(0, 5)))
    assert [e.label for e in fixed.splits["dev"]] == [0.2, 0.4, 0.6, 1.0]
    flat = write_jsonl(tmp_path / "flat.jsonl", [{"sentence1": "a", "sentence2": "b", "score": 2}] * 3)
    with pytest.raises(InputError, match="every train score is 2"):
        load_task("s", TaskConfig(type="similarity", data={"train": flat}))


@pytest.mark.parametrize(("kind", "options", "message"), [
    ("classification", {"loss": "cosine_mse"}, "'loss' applies only to similarity"),
    ("similarity", {"temperature": 0.1}, "'temperature' applies only to retrieval"),
    ("retrieval", {"score_field": "x"}, "'score_field' applies only to similarity"),
    ("similarity", {"labels": ["a", "b"]}, "'labels' applies only to"),
    ("similarity", {"score_range": [5, 0]}, "low < high"),
    ("classification", {"head": {"product": True}}, "'head.product' applies only to pair-classification"),
    ("similarity", {"loss": "mse"}, "cosent"),
    ("retrieval", {"temperature": 0}, "greater than 0"),
])
def test_config_refusals(kind, options, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"model": {"name": "m"}, "tasks": {"t": {"type": kind, "data": {"train": "x.jsonl"}, **options}}})


# ---------------------------------------------------------------------------------------------- freezing plans


def _plan(tiny_bert_dir, tmp_path, schedule, tasks):
    from thawing.config.tasks import load_tasks
    from thawing.model.groups import parameter_groups
    from thawing.training.setup import build_model
    from thawing.training.stages import build_plan

    raw = pair_config(tiny_bert_dir, tmp_path, "similarity", schedule=schedule)
    if "sentiment" in tasks:
        raw["tasks"]["sentiment"] = {"type": "classification", "data": toy_data(tmp_path)["sentiment"]}
    config = parse_config(raw)
    model = build_model(config, load_tasks(config.tasks))
    groups = parameter_groups(model)
    assert not any(g == "head:pair" for g in groups)  # similarity has no head: nothing of its own to train
    return build_plan(config, groups, model=model)


def test_a_heads_stage_skips_similarity_and_says_so(tiny_bert_dir, tmp_path):
    from thawing.training.stages import plan_summary

    plan = _plan(tiny_bert_dir, tmp_path, "progressive", ("pair", "sentiment"))
    assert [s.skips for s in plan] == [("pair",), (), (), ()][: len(plan)]
    assert plan_summary(plan, {g: [] for s in plan for g in s.trainable})["stages"][0]["skips"] == ["pair"]


def test_a_plan_that_never_trains_the_encoder_is_refused_for_similarity(tiny_bert_dir, tmp_path):
    with pytest.raises(ConfigError, match="pair have no head"):
        _plan(tiny_bert_dir, tmp_path, "heads", ("pair", "sentiment"))
    with pytest.raises(ConfigError, match="pair have no head"):
        _plan(tiny_bert_dir, tmp_path, "heads", ("pair",))
    assert _plan(tiny_bert_dir, tmp_path, "frozen", ("pair",))[0].epochs == 0  # the pretrained baseline is fine


def test_progressive_on_similarity_alone_skips_its_heads_stage(tiny_bert_dir, tmp_path):
    plan = _plan(tiny_bert_dir, tmp_path, "progressive", ("pair",))
    assert (plan[0].name, plan[0].epochs, plan[0].skips) == ("heads", 0, ("pair",))
    assert all(s.epochs > 0 and not s.skips for s in plan[1:])


def test_active_tasks_leave_similarity_out_of_a_heads_stage():
    from thawing.model.freezing import active_tasks
    from thawing.model.multitask import TaskSpec

    specs = {"sts": TaskSpec("similarity", [], {}), "sent": TaskSpec("classification", ["a", "b"], {})}
    assert active_tasks(specs, ["head:sent"]) == ["sent"]
    assert active_tasks(specs, ["head:sent", "projection"]) == ["sts", "sent"]
    assert active_tasks(specs, ["layers.1", "head:sent"]) == ["sts", "sent"]


def test_a_mix_trains_progressively_with_distillation(tiny_bert_dir, tmp_path):
    """Similarity, pair classification and a sentence task on one encoder: the heads stage trains the heads on cached
    features (the pair head on both sentences' embeddings) and skips similarity; later stages train all three, with
    the pair tasks' first sentences anchored by distillation."""
    from thawing.training.loop import train

    raw = pair_config(tiny_bert_dir, tmp_path, "similarity", schedule="progressive",
                      retain={"distill": {"weight": 1.0}})
    raw["tasks"]["nli"] = pair_config(tiny_bert_dir, tmp_path / "nli", "pair-classification")["tasks"]["pair"]
    raw["tasks"]["sentiment"] = {"type": "classification", "data": toy_data(tmp_path)["sentiment"]}
    raw["train"].update(log_every=1, head_init="centroids")
    run = train(parse_config(raw), run_dir=str(tmp_path / "run"))
    lines = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    trained = {}
    for line in lines:
        if line.get("split") == "train" and "loss" in line:
            trained.setdefault(line["stage"], set()).add(line["task"])
    assert trained["heads"] == {"nli", "sentiment"}  # similarity has no head: skipped where the encoder is frozen
    assert trained["top"] == {"pair", "nli", "sentiment", "retain:distill"}  # the added loss has its own lines
    results = json.loads((run.path / "results.json").read_text())
    assert set(results["tasks"]) == {"pair", "nli", "sentiment"}
    assert "pair" not in results.get("frozen_heads", {})
    card = (run.path / "final" / "README.md").read_text()
    assert "Head: none (the cosine of the two sentence embeddings)" in card
    assert "Pair tasks (`pair`, `nli`) read the batch as pairs" in card


# ---------------------------------------------------------------------------------------------- using a trained run


@pytest.fixture(scope="module")
def mixed_run(tiny_bert_dir, tmp_path_factory):
    """A run with a similarity task and a sentence classification task on one encoder."""
    from thawing.training.loop import train

    root = tmp_path_factory.mktemp("pairs-run")
    raw = pair_config(tiny_bert_dir, root, "similarity")
    raw["tasks"]["sentiment"] = {"type": "classification", "data": toy_data(root)["sentiment"]}
    return train(parse_config(raw), run_dir=str(root / "run"))


PAIRS = [["i love the film", "the movie was great"], ["i hate the film", "who won the game ?"]]


def test_load_predicts_pairs_for_pair_tasks_and_texts_for_the_others(mixed_run):
    import thawing

    model = thawing.load(mixed_run.path, device="cpu")
    by_pairs = model.predict(PAIRS)
    assert set(by_pairs) == {"pair"} and all(-1.0 <= p["score"] <= 1.0 for p in by_pairs["pair"])
    assert model.predict([{"sentence1": a, "sentence2": b} for a, b in PAIRS], task="pair") == by_pairs["pair"]
    assert set(model.predict(["i love the film"])) == {"sentiment"}
    with pytest.raises(InputError, match="takes 2 texts per input"):
        model.predict(["i love the film"], task="pair")
    # a user's gold scores, as in the data (0 to 5), give the metrics training computed on the same pairs
    dev = pair_rows()["similarity"][1::2]
    got = model.evaluate([[r["sentence1"], r["sentence2"]] for r in dev], [r["score"] for r in dev], task="pair")
    results = json.loads((mixed_run.path / "results.json").read_text())["tasks"]["pair"]
    assert got == pytest.approx(results, abs=1e-6)


def test_cli_predict_evaluate_and_plan_with_pairs(mixed_run, tmp_path):
    from clirun import invoke

    import thawing

    source = write_jsonl(tmp_path / "pairs.jsonl", [{"sentence1": a, "sentence2": b} for a, b in PAIRS])
    out = tmp_path / "out.jsonl"
    code, text = invoke("predict", str(mixed_run.path), "-i", source, "-o", str(out), "--task", "pair")
    assert code == 0, text
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected = thawing.load(mixed_run.path, device="cpu").predict(PAIRS, task="pair")
    assert [r["texts"] for r in rows] == PAIRS
    assert [r["pair"]["score"] for r in rows] == pytest.approx([p["score"] for p in expected], abs=1e-6)
    code, text = invoke("predict", str(mixed_run.path), "-i", source, "-o", str(tmp_path / "o2.jsonl"))
    assert code == 2 and "choose one with --task" in text
    code, text = invoke("predict", str(mixed_run.path), "-i", source, "-o", str(tmp_path / "o3.jsonl"), "--task",
                        "pair", "--pair-fields", "sentence1,other")
    assert code == 2 and "line 1, field 'other': missing field" in text

    metrics = tmp_path / "metrics.json"
    code, text = invoke("evaluate", str(mixed_run.path), "--split", "dev", "--output", str(metrics))
    assert code == 0, text
    results = json.loads((mixed_run.path / "results.json").read_text())["tasks"]
    assert json.loads(metrics.read_text())["tasks"]["pair"] == pytest.approx(results["pair"])

    from thawing.reporting.report import write_report

    report = write_report(mixed_run.path)
    markdown = (report / "report.md").read_text() if report.is_dir() else report.read_text()
    assert "**pair**: similarity, scores 0 to 5, primary metric spearman" in markdown

    config = mixed_run.path / "config.yaml"
    code, text = invoke("plan", str(config), "--set", "schedule=progressive")
    assert code == 0, text
    assert "skips pair: no head" in " ".join(text.split())


def test_serve_predicts_pairs(mixed_run):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    import thawing
    from thawing.deploy.serve import ServeSettings, build_app

    model = thawing.load(mixed_run.path, device="cpu")
    with TestClient(build_app(model, ServeSettings(max_texts=8, max_text_bytes=200))) as client:
        response = client.post("/predict", json={"pairs": PAIRS})
        assert response.status_code == 200, response.text
        got = response.json()["predictions"]
        assert set(got) == {"pair"}
        assert [p["score"] for p in got["pair"]] == pytest.approx(
            [p["score"] for p in model.predict(PAIRS, task="pair")], abs=1e-6)
        texts = client.post("/predict", json={"texts": ["i love the film"]})
        assert texts.status_code == 200 and set(texts.json()["predictions"]) == {"sentiment"}
        for body, message in [({"texts": ["i love the film"], "tasks": ["pair"]}, "do not take these inputs"),
                              ({"pairs": [["only one"]]}, "pairs[0] is not a [text, text] pair"),
                              ({"pairs": [["a", ""]]}, "pairs[0]: texts[1] is empty"),
                              ({"pairs": PAIRS, "texts": ["x"]}, "not both")]:
            refused = client.post("/predict", json=body)
            assert refused.status_code == 422 and message in refused.json()["error"], refused.text
        assert client.post("/embed", json={"texts": ["i love the film"]}).status_code == 200


def test_progressive_on_similarity_alone_runs(tiny_bert_dir, tmp_path):
    from thawing.training.loop import train

    raw = pair_config(tiny_bert_dir, tmp_path, "similarity", schedule="progressive")
    raw["train"]["log_every"] = 1
    run = train(parse_config(raw), run_dir=str(tmp_path / "run"))
    stages = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    trained = {line["stage"] for line in stages if line.get("split") == "train" and line.get("task") == "pair"}
    assert trained == {"top", "discriminative"}


def test_onnx_export_gives_pair_outputs_from_consecutive_texts(tiny_bert_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from clirun import invoke
    from transformers import AutoTokenizer

    import thawing
    from thawing.data.records import Example
    from thawing.training.loop import train

    raw = pair_config(tiny_bert_dir, tmp_path, "similarity")
    for kind, name in (("pair-classification", "nli"), ("retrieval", "search")):
        raw["tasks"][name] = pair_config(tiny_bert_dir, tmp_path / name, kind)["tasks"]["pair"]
    raw["tasks"]["sentiment"] = {"type": "classification", "data": toy_data(tmp_path)["sentiment"]}
    raw["train"]["epochs"] = 1
    run = train(parse_config(raw), run_dir=str(tmp_path / "run"))
    folder = tmp_path / "onnx"
    code, output = invoke("export", str(run.path), "--format", "onnx", "--output", str(folder))
    assert code == 0, output

    import onnxruntime

    meta = json.loads((folder / "thawing_onnx.json").read_text())
    assert meta["tasks"]["pair"]["shape"] == ["pairs", 1] and meta["tasks"]["nli"]["shape"] == ["pairs", "labels"]
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    pairs = PAIRS + [["where is berlin ?", "the parcel is late again"]]
    flat = [text for pair in pairs for text in pair]  # a1, b1, a2, b2, ...
    encoded = AutoTokenizer.from_pretrained(str(folder))(flat, padding=True, return_tensors="np")
    outputs = dict(zip(meta["outputs"], session.run(meta["outputs"], {k: encoded[k].astype(np.int64)
                                                                       for k in meta["inputs"]}), strict=True))
    model = thawing.load(run.path, device="cpu")
    for task in ("pair", "search"):
        want = [p["score"] for p in model.predict(pairs, task=task)]
        np.testing.assert_allclose(outputs[task][:, 0], want, atol=1e-4)
    want = np.stack(model.logits("nli", [Example(texts=p) for p in pairs]))
    np.testing.assert_allclose(outputs["nli"], want, atol=1e-4)
    assert outputs["sentiment"].shape == (len(flat), 2) and outputs["embedding"].shape[0] == len(flat)


def test_pair_classification_heads_on_small_data_from_centroids(tiny_bert_dir, tmp_path):
    """The pair head in a heads stage on cached pairs, started from class centroids over (u, v, |u - v|), with the
    small-data cross-validation deciding whether training beats them."""
    from thawing.training.loop import train

    raw = pair_config(tiny_bert_dir, tmp_path, "pair-classification", schedule="heads")
    raw["train"] = {"batch_size": 8, "seed": 0, "head_init": "centroids"}  # dev of 12: small data
    run = train(parse_config(raw), run_dir=str(tmp_path / "run"))
    stages = run.read_json(run.stages)
    assert stages[0]["cached"] and "head_check" in stages[0]
    assert set(run.read_json(run.results)["tasks"]["pair"]) == {"accuracy", "macro_f1"}


def test_a_frozen_encoder_embeds_each_distinct_sentence_once_across_tasks(tiny_bert_dir, tmp_path):
    """Pair-classification over the toy sentences beside a sentiment task over the same sentences, encoder frozen:
    the feature cache runs the encoder over each distinct text once, and the two tasks read the same embedding."""
    from thawing.model.freezing import active_tasks, apply_trainable, set_frozen_modes
    from thawing.training import loop
    from thawing.training.paths import CachedHeads, choose_path

    raw = pair_config(tiny_bert_dir, tmp_path, "pair-classification", schedule=[{"name": "h", "train": ["heads"]}])
    raw["tasks"]["sentiment"] = {"type": "classification", "data": toy_data(tmp_path)["sentiment"]}
    raw["cache"] = {"enabled": True, "dtype": "float32"}
    ctx, plan, groups = loop.start(parse_config(raw), run_dir=str(tmp_path / "run"))
    model, stage = ctx.model, plan[0]
    encoded: list[int] = []
    features = model.features
    model.features = lambda task, ids, mask: (encoded.append(ids.shape[0]), features(task, ids, mask))[1]
    apply_trainable(groups, stage.trainable)
    set_frozen_modes(model, stage.trainable)
    path = choose_path(model, stage.trainable, ctx.prep.features, ctx.runtime, ctx.prep.config,
                       active_tasks(model.specs, stage.trainable), lambda _message: None)
    assert isinstance(path, CachedHeads)

    rows = pair_rows()["pair-classification"]
    sentences = {s for r in rows for s in (r["sentence1"], r["sentence2"])}
    assert sum(encoded) == len(sentences) == 24  # against 48 + 24 + 16 + 6 texts in the four splits
    pair, sentiment = path.cache["pair"]["train"].features, path.cache["sentiment"]["train"].features
    assert pair.shape == (len(rows), 2, sentiment.shape[1])
    first = rows[0]["sentence1"]  # a positive sentence: sentiment's train file starts with the positives
    train = Path(toy_data(tmp_path)["sentiment"]["train"]).read_text().splitlines()
    position = [json.loads(line)["text"] for line in train].index(first)
    assert torch.equal(pair[0, 0], sentiment[position])
    with torch.no_grad():  # and it is the embedding of the sentence alone
        alone = model.encoder.pad(model.encoder.token_ids([first], None))
        expected = features("sentiment", alone["input_ids"], alone["attention_mask"])[0].float()
    torch.testing.assert_close(pair[0, 0], expected, atol=1e-5, rtol=1e-5)
