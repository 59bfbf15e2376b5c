"""Token tasks: a word that the tokenizer turns into nothing ("", a zero-width space, a soft hyphen) keeps its place
(it stands in as the unknown token), so every later tag stays on its own word, in training, prediction and scoring.

Run: `.venv/bin/python -m pytest -q tests/test_words.py`
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from toy import NER, toy_config, write_jsonl
from typer.testing import CliRunner

import thawing
from thawing.cli import app
from thawing.config import parse_config
from thawing.data.batching import IGNORE, featurize_words, placeholder_word
from thawing.data.records import Example
from thawing.model.inference import featurize
from thawing.model.loading import load_encoder
from thawing.training.loop import train

EMPTY = ["", "\u200b", "\u00ad", " "]  # each makes no token with the BERT tokenizer


def _stand_in(words: list[str], unk: str = "[UNK]") -> list[str]:
    return [unk if w in EMPTY else w for w in words]


@pytest.fixture(scope="module")
def run(tiny_bert_dir, tmp_path_factory):
    """A token task trained on data that holds empty words."""
    root = tmp_path_factory.mktemp("words")
    config = toy_config(tiny_bert_dir, root, tasks=("ner",))
    odd = [(["john", "\u200b", "is", "in", "paris"], ["B-PER", "O", "O", "O", "B-LOC"]),
           (["google", "", "won", "\u00ad", "in", "berlin"], ["B-ORG", "O", "O", "O", "O", "B-LOC"])]
    config["tasks"]["ner"]["data"]["train"] = write_jsonl(root / "ner.jsonl", [{"tokens": t, "tags": y}
                                                                                for t, y in NER * 2 + odd])
    return train(parse_config(config), run_dir=str(root / "run"))


def test_every_word_keeps_its_first_sub_token(tiny_bert_dir):
    encoder = load_encoder(str(tiny_bert_dir))
    words = ["john", "\u200b", "is", "", "paris", "\u00ad", " "]
    tags = [1, 2, 0, 3, 4, 5, 6]
    feats = featurize_words(encoder, [words], [tags], "which entity :")
    plain = featurize_words(encoder, [_stand_in(words)], [tags], "which entity :")
    assert len(feats.word_starts[0]) == len(words)
    assert [feats.labels[0][p] for p in feats.word_starts[0]] == tags  # each tag on its own word
    assert sum(label != IGNORE for label in feats.labels[0]) == len(words)
    assert feats.input_ids == plain.input_ids and feats.word_starts == plain.word_starts
    assert placeholder_word(encoder.tokenizer) == "[UNK]"


def test_words_cut_off_by_max_length_stay_cut_off(tiny_bert_dir):
    """Only words that make no token on their own stand in; the tail that truncation drops is not brought back."""
    encoder = load_encoder(str(tiny_bert_dir), max_length=6)
    words = ["john", "", "is", "in", "new", "york", "city"]
    feats = featurize_words(encoder, [words], None, None)
    assert len(feats.input_ids[0]) == 6 and len(feats.word_starts[0]) == 4  # [CLS] john [UNK] is in [SEP]


def test_predict_puts_tags_on_the_right_words(run, tmp_path):
    model = thawing.load(run.path)
    text = "john \u200b is in paris"
    words = text.split()
    assert len(words) == 5
    odd, plain = (model.logits("ner", [Example(tokens=w)])[0] for w in (words, _stand_in(words)))
    assert odd.shape == (5, len(model.tasks["ner"].labels))
    np.testing.assert_allclose(odd, plain, atol=1e-6)  # the word after the empty one reads its own position
    expected = model.predict([" ".join(_stand_in(words))], task="ner")[0]["tags"]

    inputs = tmp_path / "in.jsonl"
    write_jsonl(inputs, [{"text": text}])
    result = CliRunner().invoke(app, ["predict", str(run.path), "-i", str(inputs), "-o", str(tmp_path / "p.jsonl")])
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "p.jsonl").read_text())["ner"]
    assert row["tokens"] == words and row["tags"] == expected and len(row["tags"]) == 5


def test_scoring_compares_each_word_with_its_own_tag(run, tmp_path):
    model = thawing.load(run.path)
    labels = model.tasks["ner"].labels
    gold = [(["john", "\u00ad", "is", "in", "paris"], ["B-PER", "O", "O", "O", "B-LOC"]),
            (["", "apple", "is", "in", "london", "\u200b"], ["O", "B-ORG", "O", "O", "B-LOC", "O"])]
    examples = [Example(tokens=t, label=[labels.index(x) for x in y]) for t, y in gold]
    replaced = [Example(tokens=_stand_in(e.tokens), label=e.label) for e in examples]
    feats = featurize(model.model, "ner", examples, labelled=True)
    for i, example in enumerate(examples):
        assert [feats.labels[i][p] for p in feats.word_starts[i]] == example.label
    assert model.evaluate_examples("ner", examples) == model.evaluate_examples("ner", replaced)

    files = {"odd": examples, "plain": replaced}
    scores = {}
    for name, rows in files.items():
        data = write_jsonl(tmp_path / f"{name}.jsonl", [{"tokens": e.tokens, "tags": [labels[k] for k in e.label]}
                                                         for e in rows])
        out = tmp_path / f"{name}.json"
        result = CliRunner().invoke(app, ["evaluate", str(run.path), "--data", f"ner={data}", "--split", "dev",
                                          "--output", str(out)])
        assert result.exit_code == 0, result.output
        scores[name] = json.loads(out.read_text())["tasks"]["ner"]
    assert scores["odd"] == scores["plain"]
