"""Learning-rate schedules as pure functions of the optimizer step, and layer-wise rate decay.

Design: there is no stateful LR scheduler. Every update, `training/loop.py`'s `run_stage` sets each optimizer
param group's rate as `group["lr"] = group["initial_lr"] * lr_multiplier(update, total, warmup, kind)`, counting
the stage's own updates (each stage has a fresh optimizer and its own schedule). Restoring the rates therefore
needs only the update count.
`initial_lr` is each group's own peak rate, e.g. from `layer_learning_rates`.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "linear", "cosine", "slanted_triangular")

# Slanted triangular constants from Howard & Ruder (2018): rise over the first 10% of steps, and
# start/end at 1/32 of the peak rate.
_STLR_CUT_FRAC = 0.1
_STLR_RATIO = 32


def warmup_steps(warmup: float, total_steps: int) -> int:
    """The number of warm-up steps.

    Args:
        warmup: Below 1, a fraction of `total_steps` (rounded); 1 or more, a number of steps.
        total_steps: Optimizer steps in the stage (each stage runs its own schedule).

    Returns:
        The warm-up length, clamped to [0, total_steps].
    """
    total = max(total_steps, 0)
    steps = round(warmup * total) if warmup < 1 else int(warmup)
    return min(max(steps, 0), total)


def _slanted_triangular(step: int, total_steps: int) -> float:
    cut = math.floor(total_steps * _STLR_CUT_FRAC)
    if step < cut:
        p = step / cut
    elif cut > 0:
        p = 1 - (step - cut) / (cut * (1 / _STLR_CUT_FRAC - 1))
    else:
        # Under 10 steps there is no rise; decay over the whole run instead of dividing by zero.
        p = 1 - step / total_steps
    # floor() can make the decay reach 0 before the last step; clamp so the rate stays >= 1/ratio.
    p = min(max(p, 0.0), 1.0)
    return (1 + p * (_STLR_RATIO - 1)) / _STLR_RATIO


def lr_multiplier(step: int, total_steps: int, warmup: int, kind: str) -> float:
    """The factor on each group's peak rate at a 0-based optimizer step.

    During warm-up (`step < warmup`) the factor is `(step + 1) / warmup`, so it rises linearly to 1
    and the first step already learns. After it:

    - constant: 1.
    - linear: `(total_steps - step) / (total_steps - warmup)`, reaching 0 at `total_steps`.
    - cosine: `0.5 * (1 + cos(pi * q))` with `q = (step - warmup) / (total_steps - warmup)`.
    - slanted_triangular (Howard & Ruder 2018, ULMFiT) ignores `warmup`: with
      `cut = floor(0.1 * total_steps)` and `ratio = 32`,
      `p = step / cut` if `step < cut` else `1 - (step - cut) / (cut * (1 / 0.1 - 1))`,
      and the factor is `(1 + p * (ratio - 1)) / ratio`; it peaks at 1 at `step == cut`.
      `p` is clamped to [0, 1], so the factor stays within [1/32, 1].

    Args:
        step: 0-based optimizer step.
        total_steps: Optimizer steps in the stage; <= 0 gives 1.0 (no schedule).
        warmup: Warm-up steps (see `warmup_steps`).
        kind: One of `SCHEDULES`.

    Returns:
        A factor in [0, 1].

    Raises:
        ValueError: On an unknown `kind` or a negative `step`.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule '{kind}'; choose one of {', '.join(SCHEDULES)}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if total_steps <= 0:
        return 1.0
    if kind == "slanted_triangular":
        return _slanted_triangular(step, total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    if step >= total_steps:
        return 0.0
    q = (step - max(warmup, 0)) / (total_steps - max(warmup, 0))
    if kind == "linear":
        return max(0.0, 1.0 - q)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * q)))


def layer_learning_rates(layers: list[str], base_lr: float, decay: float) -> dict[str, float]:
    """Layer-wise learning-rate decay: lower layers, which hold more general features, learn slower.

    Args:
        layers: Group names ordered from bottom to top, e.g. ["embeddings", "layers.0", ..., "layers.5"].
        base_lr: The rate of the top group.
        decay: Factor from each group to the one below it; 1.0 gives every group `base_lr`.

    Returns:
        The rate of each group, in the order of `layers`: `base_lr * decay ** (distance from top)`.

    Raises:
        ValueError: If `decay` is not positive or a name repeats.
    """
    if decay <= 0:
        raise ValueError(f"layer decay must be positive, got {decay}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layer names repeat: {layers}")
    top = len(layers) - 1
    return {name: base_lr * decay ** (top - i) for i, name in enumerate(layers)}
