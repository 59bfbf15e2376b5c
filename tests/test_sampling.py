"""Tests for thawing.data.sampling: task probabilities and per-epoch task orders."""

from __future__ import annotations

from collections import Counter

import pytest

from thawing.data.sampling import STRATEGIES, task_order, task_probabilities


def test_strategies() -> None:
    assert STRATEGIES == ("proportional", "round_robin", "temperature")


def test_probabilities_by_hand() -> None:
    assert task_probabilities({"a": 1, "b": 3}, "proportional") == pytest.approx({"a": 0.25, "b": 0.75})
    # sqrt(1) : sqrt(9) = 1 : 3
    assert task_probabilities({"a": 1, "b": 9}, "temperature", 2.0) == pytest.approx({"a": 0.25, "b": 0.75})
    assert task_probabilities({"a": 1, "b": 9}, "round_robin") == pytest.approx({"a": 0.5, "b": 0.5})
    assert task_probabilities({"a": 2, "b": 6}, "temperature", 1.0) == pytest.approx({"a": 0.25, "b": 0.75})


def test_probabilities_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="round_robin"):
        task_probabilities({"a": 1}, "uniform")
    with pytest.raises(ValueError):
        task_probabilities({"a": 1, "b": 0}, "proportional")
    with pytest.raises(ValueError):
        task_probabilities({}, "proportional")
    with pytest.raises(ValueError):
        task_probabilities({"a": 1}, "temperature", 0.0)


def test_round_robin_cycles_in_dict_order() -> None:
    batches = {"a": 2, "b": 1, "c": 3}
    assert task_order(batches, "round_robin") == ["a", "b", "c", "a", "b", "c"]
    assert task_order(batches, "round_robin", length=4) == ["a", "b", "c", "a"]


def test_proportional_sees_every_batch_once_shuffled() -> None:
    batches = {"a": 30, "b": 60, "c": 10}
    order = task_order(batches, "proportional", seed=1)
    assert Counter(order) == Counter(batches)
    assert order != sorted(order, key=list(batches).index)


def test_proportional_longer_length_repeats_whole_passes() -> None:
    order = task_order({"a": 3, "b": 1}, "proportional", seed=0, length=8)
    assert Counter(order) == {"a": 6, "b": 2}
    assert Counter(order[:4]) == {"a": 3, "b": 1}


@pytest.mark.parametrize("strategy", ["proportional", "temperature"])
def test_order_is_deterministic_per_seed_and_differs_across_seeds(strategy: str) -> None:
    batches = {"a": 50, "b": 50}
    assert task_order(batches, strategy, seed=3) == task_order(batches, strategy, seed=3)
    assert task_order(batches, strategy, seed=3) != task_order(batches, strategy, seed=4)


def test_temperature_draw_shares_match_probabilities() -> None:
    # T=2 on 100:900 gives 10:30, i.e. 0.25 / 0.75.
    order = task_order({"a": 100, "b": 900}, "temperature", temperature=2.0, seed=0, length=20000)
    assert len(order) == 20000
    assert order.count("a") / len(order) == pytest.approx(0.25, abs=0.02)


def test_order_default_length_and_bad_length() -> None:
    assert len(task_order({"a": 4, "b": 7}, "temperature")) == 11
    assert task_order({"a": 4}, "proportional", length=0) == []
    with pytest.raises(ValueError):
        task_order({"a": 4}, "proportional", length=-1)
