"""Batching: length grouping, token budgets, first-sub-token labels, per-item loss weighting.

Run: `.venv/bin/python -m pytest -q tests/test_batching.py`
"""

from __future__ import annotations

import random

import numpy as np
import torch
from conftest import SENTENCES

from thawing.data.batching import (
    IGNORE,
    featurize_words,
    length_grouped_batches,
    packed_batches,
    sorted_batches,
    token_budget_batches,
)
from thawing.model.loading import load_encoder


def test_token_budget_batches_cover_everything_once_within_budget():
    rng = random.Random(0)
    lengths = [rng.randint(3, 60) for _ in range(500)] + [300]  # one example longer than the budget
    batches = token_budget_batches(lengths, 256, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) * max(lengths[i] for i in batch) <= 256 or len(batch) == 1
    # Short examples share big batches; long ones get small batches.
    sizes = {max(lengths[i] for i in b): len(b) for b in batches}
    assert sizes[min(sizes)] > sizes[max(sizes)]
    assert batches == token_budget_batches(lengths, 256, seed=1) and batches != token_budget_batches(
        lengths, 256, seed=2
    )


def test_packed_batches_hold_real_tokens_within_budget_in_random_order():
    lengths = [random.Random(i).randint(3, 60) for i in range(500)]
    batches = packed_batches(lengths, 256, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 256 for b in batches)
    assert all(
        sum(lengths[i] for i in b) + lengths[nxt[0]] > 256 for b, nxt in zip(batches, batches[1:], strict=False)
    )  # full before the next
    assert batches != packed_batches(lengths, 256, seed=2)


def test_sorted_batches_by_count_or_budget():
    lengths = [5, 17, 3, 9, 12, 40, 1]
    assert sorted_batches(lengths, 3) == [[5, 1, 4], [3, 0, 2], [6]]
    budget = sorted_batches(lengths, 3, max_tokens=40)
    assert sorted(i for b in budget for i in b) == list(range(7))
    assert all(len(b) * lengths[b[0]] <= 40 for b in budget) and budget[0] == [5]


def test_length_grouped_batches_pad_little():
    rng = random.Random(0)
    lengths = [rng.randint(3, 60) for _ in range(640)]
    batches = length_grouped_batches(lengths, 32, seed=0)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(640))
    assert sum(lengths) / padded > 0.9


def test_words_are_labelled_on_their_first_sub_token(tiny_bert_dir):
    encoder = load_encoder(str(tiny_bert_dir))
    feats = featurize_words(encoder, [["john", "is", "in", "paris"]], [[1, 0, 0, 2]], prompt="where is")
    ids, labels, starts = feats.input_ids[0], feats.labels[0], feats.word_starts[0]
    assert len(ids) == 2 + 2 + 4  # [CLS] prompt(2) words(4) [SEP]
    assert starts == [3, 4, 5, 6] and [labels[p] for p in starts] == [1, 0, 0, 2]
    assert all(labels[p] == IGNORE for p in range(len(ids)) if p not in starts)


def test_encode_with_a_token_budget_gives_the_same_vectors(tiny_qwen2_dir):
    encoder = load_encoder(str(tiny_qwen2_dir))
    np.testing.assert_allclose(
        encoder.encode(SENTENCES * 5, max_tokens=40), encoder.encode(SENTENCES * 5, batch_size=4), atol=1e-5
    )


def test_loss_divisor_weighs_every_item_alike(tiny_bert_dir):
    from thawing.model.multitask import MultiTaskModel, TaskSpec

    model = MultiTaskModel(
        load_encoder(str(tiny_bert_dir)), {"t": TaskSpec("classification", ["a", "b"], {"type": "linear"})}
    )
    logits, labels = torch.randn(6, 2), torch.tensor([0, 1, 1, 0, 1, 0])
    per_item = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    # An update of a batch of 2 and a batch of 4: the loop divides each sum by 6 items / 2 batches * 2 batches,
    # so each item counts 1/6 of the update and every item weighs alike.
    small, big = model.loss("t", logits[:2], labels[:2], 6.0), model.loss("t", logits[2:], labels[2:], 6.0)
    torch.testing.assert_close(small + big, per_item.mean())
    torch.testing.assert_close(model.loss("t", logits, labels), per_item.mean())


def test_padding_to_a_multiple_changes_no_vector(tiny_qwen2_dir):
    encoder = load_encoder(str(tiny_qwen2_dir))
    plain = encoder.encode(SENTENCES, batch_size=3)
    from thawing.model.packing import BatchLayout

    encoder.layout = BatchLayout(pad_multiple=16)
    assert encoder.pad([[1, 2, 3]])["input_ids"].shape == (1, 16)
    np.testing.assert_allclose(encoder.encode(SENTENCES, batch_size=3), plain, atol=1e-5)
