"""Tests for thawing.training.schedule: warm-up, each schedule at chosen steps, layer-wise decay."""

from __future__ import annotations

import pytest

from thawing.training.schedule import SCHEDULES, layer_learning_rates, lr_multiplier, warmup_steps


def test_warmup_steps_fraction_count_and_clamp() -> None:
    assert warmup_steps(0.1, 1000) == 100
    assert warmup_steps(0.06, 100) == 6
    assert warmup_steps(0.333, 10) == 3
    assert warmup_steps(50, 1000) == 50
    assert warmup_steps(1, 100) == 1
    assert warmup_steps(5000, 1000) == 1000
    assert warmup_steps(0, 100) == 0
    assert warmup_steps(-3, 100) == 0


def test_warmup_rises_linearly_and_first_step_learns() -> None:
    values = [lr_multiplier(s, 100, 4, "constant") for s in range(6)]
    assert values == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_constant() -> None:
    assert lr_multiplier(99, 100, 0, "constant") == 1.0


def test_linear() -> None:
    assert lr_multiplier(0, 100, 0, "linear") == pytest.approx(1.0)
    assert lr_multiplier(50, 100, 0, "linear") == pytest.approx(0.5)
    assert lr_multiplier(99, 100, 0, "linear") == pytest.approx(0.01)
    assert lr_multiplier(100, 100, 0, "linear") == 0.0
    assert lr_multiplier(10, 100, 10, "linear") == pytest.approx(1.0)
    assert lr_multiplier(55, 100, 10, "linear") == pytest.approx(0.5)


def test_cosine() -> None:
    assert lr_multiplier(0, 100, 0, "cosine") == pytest.approx(1.0)
    assert lr_multiplier(50, 100, 0, "cosine") == pytest.approx(0.5)
    assert lr_multiplier(25, 100, 0, "cosine") == pytest.approx(0.5 * (1 + 2**-0.5))
    assert lr_multiplier(60, 100, 20, "cosine") == pytest.approx(0.5)
    assert lr_multiplier(200, 100, 20, "cosine") == 0.0


def test_slanted_triangular_by_hand() -> None:
    # total 1000: cut = 100, ratio 32.
    assert lr_multiplier(0, 1000, 0, "slanted_triangular") == pytest.approx(1 / 32)
    assert lr_multiplier(50, 1000, 0, "slanted_triangular") == pytest.approx(16.5 / 32)
    assert lr_multiplier(100, 1000, 0, "slanted_triangular") == pytest.approx(1.0)
    # p = 1 - 450 / 900 = 0.5
    assert lr_multiplier(550, 1000, 0, "slanted_triangular") == pytest.approx(16.5 / 32)


def test_slanted_triangular_peaks_at_cut_and_ignores_warmup() -> None:
    values = [lr_multiplier(s, 1000, 0, "slanted_triangular") for s in range(1000)]
    assert max(range(1000), key=values.__getitem__) == 100
    assert [lr_multiplier(s, 1000, 500, "slanted_triangular") for s in range(1000)] == values


@pytest.mark.parametrize("total", [5, 19, 100])
def test_slanted_triangular_stays_within_bounds_for_short_runs(total: int) -> None:
    values = [lr_multiplier(s, total, 0, "slanted_triangular") for s in range(total + 3)]
    assert min(values) >= 1 / 32 - 1e-12
    assert max(values) == pytest.approx(1.0)


@pytest.mark.parametrize("kind", SCHEDULES)
def test_never_negative_and_no_schedule_without_steps(kind: str) -> None:
    assert all(0.0 <= lr_multiplier(s, 37, 5, kind) <= 1.0 for s in range(50))
    assert lr_multiplier(3, 0, 2, kind) == 1.0


def test_lr_multiplier_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="cosine"):
        lr_multiplier(0, 10, 0, "step")
    with pytest.raises(ValueError):
        lr_multiplier(-1, 10, 0, "linear")


def test_layer_learning_rates_decay_from_top() -> None:
    got = layer_learning_rates(["embeddings", "layers.0", "layers.1"], 2e-5, 0.8)
    assert list(got) == ["embeddings", "layers.0", "layers.1"]
    assert list(got.values()) == pytest.approx([0.64 * 2e-5, 0.8 * 2e-5, 2e-5])


def test_layer_learning_rates_no_decay_and_bad_input() -> None:
    assert layer_learning_rates(["a", "b"], 1e-3, 1.0) == {"a": 1e-3, "b": 1e-3}
    assert layer_learning_rates([], 1e-3, 0.9) == {}
    with pytest.raises(ValueError):
        layer_learning_rates(["a"], 1e-3, 0.0)
    with pytest.raises(ValueError):
        layer_learning_rates(["a", "a"], 1e-3, 0.9)
