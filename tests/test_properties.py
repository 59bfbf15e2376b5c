"""Property-based tests (hypothesis): whatever the input, the config loader and the readers give a result or a
`ThawingError` (a clear message, exit code 2), never another exception (a traceback).

Each property runs a modest number of examples, so the module takes seconds.

Run: `.venv/bin/python -m pytest -q tests/test_properties.py`
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thawing.config import RunConfig, TaskConfig, apply_override, dump_config, load_config, parse_config, read_yaml
from thawing.config.tasks import load_task
from thawing.data.readers import read_rows, read_texts
from thawing.errors import ConfigError, InputError, ThawingError
from thawing.store.run_dir import RunDir

FAST = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# ------------------------------------------------------------------------------------------ values

WORDS_OF_CONFIGS = ["epoch", "tune", "auto", "heads", "progressive", "layers[-2:]", "classification",
                    "token-classification", "multi-label", "a/accuracy", "f1", "IOB2", "linear", "mlp"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12), st.sampled_from(WORDS_OF_CONFIGS))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)
# Keys the config knows, so that examples reach deep into validation rather than stopping at "unknown key".
KEYS = st.sampled_from(["name", "model", "tasks", "train", "freeze", "schedule", "run_optional", "cache",
                        "selection_metric", "type", "data", "labels", "limit", "head", "threshold", "epochs",
                        "eval_every", "lr", "heads", "encoder", "train", "dev", "test", "max_length",
                        "trust_remote_code", "early_stopping", "metric", "patience", "dir", "enabled", "batch_size"])


def _task() -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {"type": st.sampled_from(["classification", "token-classification", "multi-label", "regression"]),
         "data": st.one_of(st.fixed_dictionaries({"train": st.text(max_size=10)}), VALUES)},
        optional={"labels": VALUES, "limit": VALUES, "head": VALUES, "threshold": VALUES, "tag_scheme": VALUES,
                  "label_separator": VALUES, "dev_fraction": VALUES},
    )


CONFIGS = st.fixed_dictionaries(
    {"tasks": st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(["a", "ner", "sst.2", "*"])), _task(),
                              max_size=3)},
    optional={"name": VALUES, "model": st.dictionaries(KEYS, VALUES, max_size=3),
              "train": st.dictionaries(KEYS, VALUES, max_size=4), "freeze": VALUES,
              "schedule": st.one_of(VALUES, st.lists(st.dictionaries(KEYS, VALUES, max_size=4), max_size=3)),
              "selection_metric": VALUES, "cache": st.dictionaries(KEYS, VALUES, max_size=3), "extra": VALUES},
)


def _raises_only_thawing_errors(call, *args):
    try:
        return call(*args)
    except ThawingError:
        return None


# ------------------------------------------------------------------------------------------ the config


@FAST
@given(raw=CONFIGS)
def test_parse_config_gives_a_config_or_a_config_error(raw):
    try:
        config = parse_config(raw)
    except ConfigError as exc:
        assert str(exc).startswith("config: ")
        return
    assert isinstance(config, RunConfig)
    # What the run directory records reads back as the same config (a resumed run reads it).
    assert parse_config(read_yaml(dump_config(config))) == config


@FAST
@given(raw=st.dictionaries(st.one_of(KEYS, st.text(max_size=6)), VALUES, max_size=5))
def test_parse_config_of_any_mapping(raw):
    _raises_only_thawing_errors(parse_config, raw)


@FAST
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))),
       raw=st.binary(max_size=60), overrides=st.lists(st.text(max_size=20), max_size=3))
def test_load_config_of_any_file_and_overrides(tmp_path, text, raw, overrides):
    path = tmp_path / "config.yaml"
    for content in (text.encode("utf-8", "surrogatepass"), raw,
                    ("tasks: {a: {type: classification, data: {train: x.jsonl}}}\n" + text).encode("utf-8",
                                                                                                  "surrogatepass")):
        path.write_bytes(content)
        config = _raises_only_thawing_errors(load_config, path, overrides)
        assert config is None or isinstance(config, RunConfig)


@FAST
@given(item=st.text(max_size=30))
def test_an_override_is_applied_or_refused(item):
    raw: dict = {"train": {"epochs": 1}}
    _raises_only_thawing_errors(apply_override, raw, item)
    assert isinstance(raw, dict)


# ------------------------------------------------------------------------------------------ data readers

TEXTS = st.one_of(st.text(max_size=300),
                  st.lists(st.one_of(st.dictionaries(st.sampled_from(["text", "label", "tokens", "tags"]), VALUES,
                                                     max_size=4), VALUES), max_size=5).map(
                      lambda rows: "\n".join(json.dumps(r) for r in rows)))


@FAST
@given(text=TEXTS, raw=st.binary(max_size=100), suffix=st.sampled_from([".jsonl", ".csv", ".tsv", ".conll", ".txt"]))
def test_readers_give_rows_or_an_input_error(tmp_path, text, raw, suffix):
    path = tmp_path / f"data{suffix}"
    for content in (text.encode("utf-8", "surrogatepass"), raw):
        path.write_bytes(content)
        if suffix != ".txt":
            rows = _raises_only_thawing_errors(read_rows, path)
            assert rows is None or all(isinstance(line, int) and isinstance(r, dict) for line, r in rows)
        if suffix in (".txt", ".jsonl", ".csv", ".tsv"):
            texts = _raises_only_thawing_errors(read_texts, path)
            assert texts is None or (texts and all(isinstance(t, str) for t in texts))


GOOD_LABELS = st.sampled_from(["a", "b", "c"])
ODD_LABELS = st.one_of(st.sampled_from(["True", "1"]), st.booleans(), st.integers(0, 2),
                       st.floats(allow_nan=True, allow_infinity=True), st.none())
GOOD_TAGS = st.sampled_from(["O", "B-X", "I-X", "B-Y"])
ODD_TAGS = st.sampled_from(["S-Y", "x", "B-"])


@st.composite
def records(draw, kind: str) -> list[dict]:
    """Rows of a task's file: mostly well-formed for `kind` (so that many tasks load and their labels can be
    checked), about one in eight with an odd label or tag, one in eight with a field replaced by anything."""

    def pick(good, odd):
        return draw(odd if draw(st.integers(0, 7)) == 0 else good)

    rows = []
    for _ in range(draw(st.integers(0, 10))):
        if kind == "token-classification":
            n = draw(st.integers(1, 4))
            words = st.one_of(st.sampled_from(["john", "paris", "", "\u200b"]), st.text(max_size=4))
            row = {"tokens": draw(st.lists(words, min_size=n, max_size=n)),
                   "tags": [pick(GOOD_TAGS, ODD_TAGS) for _ in range(n)]}
        else:
            label = pick(GOOD_LABELS, ODD_LABELS)
            row = {"text": draw(st.one_of(st.sampled_from(["good film", "bad", "x"]), st.text(min_size=1, max_size=8))),
                   "label": label if kind == "classification" else [label, pick(GOOD_LABELS, ODD_LABELS)][
                       : draw(st.integers(0, 2))]}
        if draw(st.integers(0, 7)) == 0:
            row[draw(st.sampled_from(sorted(row)))] = draw(VALUES)
        rows.append(row)
    return rows


@settings(FAST, max_examples=200)  # each example takes milliseconds; few of them load, and those are the point
@given(data=st.data(), kind=st.sampled_from(["classification", "token-classification", "multi-label"]))
def test_a_task_loads_or_gives_an_input_error(tmp_path, data, kind):
    files = {"train": data.draw(records(kind))}
    if data.draw(st.booleans()):
        files["dev"] = data.draw(records(kind))
    for split, rows in files.items():
        path = tmp_path / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        files[split] = str(path)
    try:
        task = load_task("t", TaskConfig.model_validate({"type": kind, "data": files}))
    except InputError:
        return
    labels = task.labels
    assert len(set(labels)) == len(labels) >= (1 if kind == "multi-label" else 2)
    assert not {"nan", "inf", "-inf", "None", ""} & set(labels)
    for examples in task.splits.values():
        for example in examples:
            if kind == "multi-label":
                assert len(example.label) == len(labels)
            else:
                ids = example.label if isinstance(example.label, list) else [example.label]
                assert all(0 <= i < len(labels) for i in ids)


# ------------------------------------------------------------------------------------------ run directory readers


@FAST
@given(content=st.one_of(st.binary(max_size=120), st.text(max_size=120).map(str.encode),
                         VALUES.map(lambda v: json.dumps(v).encode())))
def test_read_json_gives_a_value_or_an_input_error(tmp_path, content):
    path = tmp_path / "results.json"
    path.write_bytes(content)
    try:
        value = RunDir(tmp_path).read_json("results.json")
    except InputError as exc:
        assert str(exc).startswith(str(path))
        return
    assert json.loads(content) == value or (isinstance(value, float) and math.isnan(value))


@FAST
@given(lines=st.lists(st.one_of(
    st.text(max_size=40),
    VALUES.map(json.dumps),
    st.fixed_dictionaries({"task": st.text(max_size=5), "step": st.integers(0, 9),
                           "metrics": st.dictionaries(st.text(max_size=5), st.floats(), max_size=2)}).map(json.dumps),
), max_size=6))
def test_read_metrics_gives_records_or_an_input_error(tmp_path, lines):
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    try:
        records = RunDir(tmp_path).read_metrics()
    except InputError as exc:
        assert "metrics.jsonl" in str(exc)
        return
    assert all(isinstance(r, dict) and isinstance(r["task"], str) and isinstance(r["step"], int) for r in records)


# ------------------------------------------------------------------------------------------ token words


@pytest.fixture(scope="module")
def bert(tiny_bert_dir):
    from thawing.model.loading import load_encoder

    return load_encoder(str(tiny_bert_dir))


WORDS = st.one_of(st.sampled_from(["john", "is", "in", "paris", "", "\u200b", "\u00ad", " ", "\t", "[UNK]", "\x00"]),
                  st.text(max_size=3))


@FAST
@given(sentence=st.lists(WORDS, max_size=10))
def test_every_word_gets_a_position(bert, sentence):
    """With room for every word (no truncation), each word has its first sub-token, and its tag sits there."""
    from thawing.data.batching import featurize_words

    tags = list(range(len(sentence)))
    feats = featurize_words(bert, [sentence], [tags], None)
    assert len(feats.input_ids[0]) < bert.max_length  # nothing was cut off
    assert len(feats.word_starts[0]) == len(sentence)
    assert [feats.labels[0][p] for p in feats.word_starts[0]] == tags
