"""Tests for thawing.data: every reader format, every data error, label order, dev carving, HF."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thawing.config import TaskConfig
from thawing.config.tasks import load_task, load_tasks
from thawing.data import TAG_SCHEMES, check_tags, read_rows, read_texts, seqeval_scheme
from thawing.errors import InputError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(tmp_path: Path, name: str, records: list) -> Path:
    return write(tmp_path, name, "".join(json.dumps(r) + "\n" for r in records))


def task(train: Path, dev: Path | None = None, **kw) -> TaskConfig:
    data = {"train": str(train)} | ({"dev": str(dev)} if dev else {})
    return TaskConfig.model_validate({"type": "classification", "data": data} | kw)


def error(fn, *args, **kw) -> str:
    with pytest.raises(InputError) as info:
        fn(*args, **kw)
    return str(info.value)


# ---------------------------------------------------------------------------------------------- readers


def test_jsonl_keeps_line_numbers_and_skips_blank_lines(tmp_path):
    path = write(tmp_path, "a.jsonl", '{"text": "x"}\n\n  \n{"text": "y"}\n')
    assert read_rows(path) == [(1, {"text": "x"}), (4, {"text": "y"})]
    assert read_rows(write(tmp_path, "b.json", '{"a": 1}\n')) == [(1, {"a": 1})]


@pytest.mark.parametrize("line, message", [('{"text": ', "not valid JSON"), ("[1, 2]", "expected a JSON object")])
def test_jsonl_bad_line(tmp_path, line, message):
    path = write(tmp_path, "bad.jsonl", '{"text": "ok"}\n' + line + "\n")
    assert error(read_rows, path).startswith(f"{path}, line 2: {message}")


def test_csv_and_tsv_line_numbers(tmp_path):
    csv_path = write(tmp_path, "a.csv", 'text,label\n"two\nlines",1\n\nthird,2\n')
    assert read_rows(csv_path) == [(2, {"text": "two\nlines", "label": "1"}), (5, {"text": "third", "label": "2"})]
    # TSV ignores quotes: a bare '"' token must not swallow the following lines.
    tsv_path = write(tmp_path, "a.tsv", 'text\tlabel\n" hi\t0\nok\t1\n')
    assert read_rows(tsv_path) == [(2, {"text": '" hi', "label": "0"}), (3, {"text": "ok", "label": "1"})]


@pytest.mark.parametrize("name, text", [("a.csv", "text,label\nx,1\ny,2,3\n"), ("a.tsv", "text\tlabel\nx\t1\ny\n")])
def test_csv_wrong_field_count(tmp_path, name, text):
    path = write(tmp_path, name, text)
    assert error(read_rows, path).startswith(f"{path}, line 3: expected 2 fields")


def test_conll(tmp_path):
    text = "-DOCSTART- -X- O O\n\nEU NNP B-ORG\nrejects VBZ O\n\n\nPeter B-PER\nBlackburn I-PER\n"
    path = write(tmp_path, "a.conll", text)
    assert read_rows(path) == [(3, {"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}),
                               (7, {"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"]})]
    bad = write(tmp_path, "bad.iob", "EU B-ORG\nrejects\n")
    assert error(read_rows, bad).startswith(f"{bad}, line 2: expected a token and a tag")


def test_unreadable_inputs(tmp_path, monkeypatch):
    assert error(read_rows, tmp_path / "nope.jsonl") == f"{tmp_path / 'nope.jsonl'}: file not found"
    odd = write(tmp_path, "a.xml", "<a/>")
    assert all(s in error(read_rows, odd) for s in (".jsonl", ".csv", ".tsv", ".conll", "suffix '.xml'"))
    (tmp_path / "dir.jsonl").mkdir()
    assert "is a directory" in error(read_rows, tmp_path / "dir.jsonl", "jsonl")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text\nok\ncaf\xe9\n".encode("latin-1"))
    assert error(read_rows, latin).startswith(f"{latin}, line 3: not UTF-8")
    ok = write(tmp_path, "ok.jsonl", "{}\n")

    def denied(_self):  # chmod does not stop root, so simulate the OS refusing
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)
    assert error(read_rows, ok) == f"{ok}: cannot read file: permission denied"


def test_hf_load_from_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-X", "I-X"]))})
    part = {"tokens": [["a", "b"], ["c"]], "tags": [[1, 2], [0]]}
    dd = datasets.DatasetDict({s: datasets.Dataset.from_dict(part, features=features) for s in ("train", "validation")})
    dd.save_to_disk(str(tmp_path / "ds"))
    rows = read_rows(tmp_path / "ds", split="dev")  # auto: a directory; dev -> validation
    assert rows == [(1, {"tokens": ["a", "b"], "tags": ["B-X", "I-X"]}), (2, {"tokens": ["c"], "tags": ["O"]})]
    message = error(read_rows, tmp_path / "ds", "hf", "test")
    assert "no 'test' split (tried test); the dataset has train, validation" in message
    cfg = TaskConfig.model_validate({"type": "token-classification", "format": "hf",
                                     "data": {"train": str(tmp_path / "ds"), "dev": str(tmp_path / "ds")}})
    data = load_task("x", cfg)
    assert data.labels == ["O", "B-X", "I-X"] and data.splits["dev"][0].label == [1, 2]
    datasets.Dataset.from_dict({"text": ["hi"], "label": [3]}).save_to_disk(str(tmp_path / "single"))
    assert read_rows(tmp_path / "single", "hf", "test") == [(1, {"text": "hi", "label": 3})]
    (tmp_path / "empty").mkdir()
    assert "cannot load Hugging Face dataset" in error(read_rows, tmp_path / "empty")


def test_read_texts(tmp_path):
    assert read_texts(write(tmp_path, "a.txt", "one\n\n  \ntwo\r\n")) == ["one", "two"]
    assert read_texts(jsonl(tmp_path, "a.jsonl", [{"t": "x"}, {"t": "y"}]), "t") == ["x", "y"]
    assert read_texts(write(tmp_path, "a.csv", "id,text\n1,hello\n")) == ["hello"]
    missing = jsonl(tmp_path, "m.jsonl", [{"text": "x"}, {"body": "y"}])
    assert error(read_texts, missing) == f"{missing}, line 2, field 'text': missing field"
    number = jsonl(tmp_path, "n.jsonl", [{"text": 5}])
    assert error(read_texts, number) == f"{number}, line 1, field 'text': expected a string, got int"
    assert error(read_texts, write(tmp_path, "e.txt", "\n\n")).endswith("no texts in input")
    assert "unsupported suffix" in error(read_texts, write(tmp_path, "a.md", "x"))


# ---------------------------------------------------------------------------------------------- tags


@pytest.mark.parametrize("scheme, good, bad", [
    ("IOB1", ["I-PER", "B-PER", "O"], "E-PER"), ("IOB2", ["B-PER", "I-PER"], "S-PER"),
    ("IOE1", ["I-PER", "E-PER"], "B-PER"), ("IOE2", ["E-PER"], "B-PER"),
    ("IOBES", ["B-PER", "I-PER", "E-PER", "S-LOC"], "U-PER"), ("BILOU", ["B-X", "I-X", "L-X", "U-Y"], "E-X"),
])
def test_check_tags(scheme, good, bad):
    assert check_tags(good, scheme) is None
    problem = check_tags(["O", bad], scheme.lower())
    assert problem.startswith(f"tag 2 '{bad}': prefix '{bad[0]}' is not allowed in {scheme}")
    assert "neither 'O' nor" in check_tags(["PER"], scheme) and "neither" in check_tags(["B-"], scheme)
    assert seqeval_scheme(scheme).__name__ == scheme and scheme in TAG_SCHEMES


# ---------------------------------------------------------------------------------------------- tasks


def test_classification_labels_sorted_and_stringified(tmp_path):
    train = jsonl(tmp_path, "t.jsonl", [{"text": f"t{i}", "label": lab} for i, lab in enumerate([10, 2, 9, 2])])
    dev = write(tmp_path, "d.csv", "text,label\nhello,9\n")
    data = load_task("c", task(train, dev, prompt="q: "))
    assert data.labels == ["2", "9", "10"]  # integer labels sort as numbers
    assert [e.label for e in data.splits["train"]] == [2, 0, 1, 0] and data.splits["dev"][0].label == 1
    assert data.splits["dev"][0].text == "hello" and len(data.splits["train"]) == 4  # dev given: nothing carved
    words = jsonl(tmp_path, "w.jsonl", [{"text": "a", "label": "b"}, {"text": "c", "label": "A"}])
    assert load_task("w", task(words, words)).labels == ["A", "b"]
    fixed = load_task("f", task(words, words, labels=["b", "A", "unused"]))
    assert fixed.labels == ["b", "A", "unused"] and fixed.splits["train"][1].label == 1


def test_token_classification_o_first(tmp_path):
    train = write(tmp_path, "t.conll", "EU B-ORG\nsays O\n\nPeter B-PER\nX I-PER\n")
    cfg = TaskConfig.model_validate({"type": "token-classification", "data": {"train": str(train), "dev": str(train)},
                                     "tokens_field": "words", "tags_field": "ner"})  # ignored for CoNLL
    data = load_task("ner", cfg)
    assert data.labels == ["O", "B-ORG", "B-PER", "I-PER"]
    assert data.splits["train"][1].tokens == ["Peter", "X"] and data.splits["train"][1].label == [2, 3]


def _bad(tmp_path, records, dev=None, **kw):
    """The message of load_task on a train file of `records` (and dev records, when given)."""
    train = jsonl(tmp_path, "train.jsonl", records)
    dev_path = jsonl(tmp_path, "dev.jsonl", dev) if dev is not None else None
    kw.setdefault("type", "classification")
    cfg = TaskConfig.model_validate({"data": {"train": str(train)} | ({"dev": str(dev_path)} if dev_path else {})} | kw)
    return error(load_task, "t", cfg)


OK = {"text": "fine", "label": "a"}
OK_B = {"text": "other", "label": "b"}  # a second class: train needs two
TOK = {"tokens": ["a", "b"], "tags": ["B-X", "O"]}


@pytest.mark.parametrize("records, dev, kw, expected", [
    ([OK, {"label": "a"}], None, {}, "train.jsonl, line 2, field 'text': missing field"),
    ([OK, {"text": "x"}], None, {}, "train.jsonl, line 2, field 'label': missing field"),
    ([{"text": "  ", "label": "a"}], None, {}, "train.jsonl, line 1, field 'text': expected a non-empty string"),
    ([{"text": 3, "label": "a"}], None, {}, "train.jsonl, line 1, field 'text': expected a non-empty string"),
    ([{"text": "x", "label": None}], None, {}, "train.jsonl, line 1, field 'label': expected a label"),
    ([OK, OK], [OK, {"text": "y", "label": "zz"}], {}, "dev.jsonl, line 2, field 'label': label 'zz' is not in train"),
    ([OK, {"text": "y", "label": "b"}], [OK], {"labels": ["a"]},
     "train.jsonl, line 2, field 'label': label 'b' is not one of the configured labels"),
    ([OK], None, {"labels": ["a", "a"]}, "the task's 'labels' list repeats a"),
    ([], [OK], {}, "train.jsonl: train split is empty"),
    ([OK], [OK], {"limit": {"dev": 0}}, "dev.jsonl: dev split is empty (after limit 0)"),
    ([OK], None, {}, "train.jsonl: train has 1 row"),
    ([TOK, {"tokens": ["a"], "tags": ["O", "O"]}], None, {"type": "token-classification"},
     "train.jsonl, line 2, field 'tags': 1 tokens ('tokens') but 2 tags"),
    ([{"tokens": [], "tags": []}], None, {"type": "token-classification"},
     "train.jsonl, line 1, field 'tokens': the token list is empty"),
    ([{"tokens": ["a"], "tags": ["S-X"]}], None, {"type": "token-classification"},
     "train.jsonl, line 1, field 'tags': tag 1 'S-X': prefix 'S' is not allowed in IOB2"),
    ([{"tokens": "a b", "tags": ["O"]}], None, {"type": "token-classification"},
     "train.jsonl, line 1, field 'tokens': expected a list of strings"),
    ([TOK], [TOK, {"tokens": ["c"], "tags": ["B-Y"]}], {"type": "token-classification"},
     "dev.jsonl, line 2, field 'tags': tag 'B-Y' is not in train"),
])
def test_task_errors(tmp_path, records, dev, kw, expected):
    message = _bad(tmp_path, records, dev, **kw)
    # The message starts with the full path, then the line and field.
    assert message.startswith(f"{tmp_path}/{expected}" if ".jsonl" in expected else expected)


def test_errors_of_all_splits_and_tasks_are_reported_together(tmp_path):
    bad_train = jsonl(tmp_path, "bt.jsonl", [{"text": "x"}])
    bad_dev = write(tmp_path, "bd.csv", "text,label\nx\n")
    message = error(load_task, "one", task(bad_train, bad_dev))
    assert message.startswith("task 'one': 2 problems:\n")
    assert "bt.jsonl, line 1" in message and "bd.csv, line 2" in message
    good = jsonl(tmp_path, "g.jsonl", [OK, OK_B])
    tasks = {"one": task(bad_train), "two": task(good), "three": task(tmp_path / "missing.jsonl")}
    lines = error(load_tasks, tasks).splitlines()
    assert lines[0] == "2 problem(s) in the input data:"
    assert lines[1].startswith("  one: ") and "field 'label'" in lines[1]
    assert lines[2] == f"  three: {tmp_path / 'missing.jsonl'}: file not found"
    assert list(load_tasks({"two": task(good)})) == ["two"]


def test_dev_carving_is_deterministic(tmp_path):
    train = jsonl(tmp_path, "t.jsonl", [{"text": f"t{i}", "label": str(i % 3)} for i in range(50)])
    a, b, c = (load_task("x", task(train, dev_fraction=0.2), seed=s) for s in (1, 1, 2))
    texts = {k: [e.text for e in v] for k, v in a.splits.items()}
    assert len(texts["dev"]) == 10 and len(texts["train"]) == 40
    assert texts == {k: [e.text for e in v] for k, v in b.splits.items()}
    assert texts["dev"] != [e.text for e in c.splits["dev"]]
    order = lambda ts: [int(t[1:]) for t in ts]  # noqa: E731
    assert order(texts["dev"]) == sorted(order(texts["dev"])) and order(texts["train"]) == sorted(order(texts["train"]))
    assert sorted(texts["train"] + texts["dev"]) == sorted(f"t{i}" for i in range(50))
    tiny = jsonl(tmp_path, "tiny.jsonl", [OK, OK_B])
    assert [len(v) for v in load_task("t", task(tiny, dev_fraction=0.01)).splits.values()] == [1, 1]


def test_a_small_train_split_keeps_its_rows_for_training(tmp_path):
    """Where a 10% carve would make a dev split too small to choose by (< train.small_data.min_dev), the carve keeps
    `train.small_data.dev_rows` examples and the rest train; a task's own dev_fraction, a large train split, no
    small-data settings, or min_dev 0 keep 10%."""
    from thawing.config import SmallDataConfig

    def sizes(n: int, small: SmallDataConfig | None, **kw) -> dict[str, int]:
        rows = jsonl(tmp_path, f"t{n}.jsonl", [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(n)])
        return {k: len(v) for k, v in load_task("x", task(rows, **kw), small=small).splits.items()}

    small = SmallDataConfig()
    assert sizes(48, small) == {"train": 47, "dev": 1}
    assert sizes(48, SmallDataConfig(dev_rows=4)) == {"train": 44, "dev": 4}
    assert sizes(48, small, dev_fraction=0.1) == {"train": 43, "dev": 5}
    assert sizes(600, small) == {"train": 540, "dev": 60}
    assert sizes(48, None) == sizes(48, SmallDataConfig(min_dev=0)) == {"train": 43, "dev": 5}


def test_limit_keeps_first_rows(tmp_path):
    train = jsonl(tmp_path, "t.jsonl", [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(10)])
    data = load_task("x", task(train, train, limit={"train": 3, "dev": 20}))
    assert [e.text for e in data.splits["train"]] == ["t0", "t1", "t2"] and len(data.splits["dev"]) == 10


def test_real_datasets():
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found")
    trec = TaskConfig.model_validate({"type": "classification", "label_field": "label_coarse",
                                      "data": {"train": str(SHARED / "trec" / "train.jsonl")}})
    assert len(read_rows(SHARED / "trec" / "train.jsonl")) == 5452
    data = load_task("trec", trec)
    assert len(data.labels) == 6 and sum(len(v) for v in data.splits.values()) == 5452
    conll = SHARED / "conll2003" / "dev.jsonl"
    cfg = TaskConfig.model_validate({"type": "token-classification", "data": {"train": str(conll), "dev": str(conll)}})
    data = load_task("conll", cfg)
    assert len(data.splits["dev"]) == 3250 and len(data.labels) == 9 and data.labels[0] == "O"


# ---------------------------------------------------------------------------------------------- per-class limits


def _skewed(tmp_path: Path) -> Path:
    # 30 of class a, 5 of b, 12 of c, interleaved, each text unique so the draw can be read back
    labels = [("a", "a", "c", "b", "a", "c", "a", "a")[i % 8] for i in range(40)] + ["a"] * 7
    rows = [{"text": f"t{i} {lab}", "label": lab} for i, lab in enumerate(labels)]
    return jsonl(tmp_path, "skewed.jsonl", rows)


def test_per_class_limit_draws_n_of_each_class_in_file_order(tmp_path):
    train = _skewed(tmp_path)
    dev = jsonl(tmp_path, "dev.jsonl", [{"text": "d a", "label": "a"}, {"text": "d b", "label": "b"}])
    data = load_task("x", task(train, dev, limit={"train": {"per_class": 8}}), seed=0)
    got = data.splits["train"]
    counts = {lab: sum(ex.label == i for ex in got) for i, lab in enumerate(data.labels)}
    assert counts == {"a": 8, "b": 5, "c": 8}  # b has only 5: it keeps all of them
    order = [int(ex.text.split()[0][1:]) for ex in got]
    assert order == sorted(order)


def test_per_class_limit_is_seeded(tmp_path):
    train = _skewed(tmp_path)
    dev = jsonl(tmp_path, "dev.jsonl", [{"text": "d a", "label": "a"}])
    cfg = task(train, dev, limit={"train": {"per_class": 4}})
    texts = {seed: [ex.text for ex in load_task("x", cfg, seed=seed).splits["train"]] for seed in (0, 1)}
    again = [ex.text for ex in load_task("x", cfg, seed=0).splits["train"]]
    assert texts[0] == again
    assert texts[0] != texts[1]


def test_per_class_limit_is_refused_where_it_has_no_meaning():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="applies to classification tasks"):
        TaskConfig.model_validate({"type": "token-classification", "data": {"train": "x.conll"},
                                   "limit": {"train": {"per_class": 4}}})
    with pytest.raises(ValidationError, match="only the train split"):
        task(Path("x.jsonl"), limit={"test": {"per_class": 4}})
    with pytest.raises(ValidationError):
        task(Path("x.jsonl"), limit={"train": {"per_class": 0}})
