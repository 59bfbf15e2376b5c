"""Which task each training step draws its batch from.

`proportional` sees every batch of every task exactly once per epoch, in a shuffled order, so big
tasks dominate; `round_robin` alternates tasks evenly, so small tasks are repeated; `temperature`
draws tasks at random with p ∝ n^(1/T), between the two (T=1 is proportional, T→∞ uniform), the
usual remedy when one task would drown the others (Arivazhagan et al. 2019).
"""

from __future__ import annotations

import random

STRATEGIES = ("proportional", "round_robin", "temperature")


def _check(sizes: dict[str, int], strategy: str, what: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown sampling strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}")
    if not sizes:
        raise ValueError(f"no tasks to sample from ({what} is empty)")
    bad = {task: n for task, n in sizes.items() if n <= 0}
    if bad:
        raise ValueError(f"{what} must be positive, got {bad}")


def task_probabilities(sizes: dict[str, int], strategy: str, temperature: float = 2.0) -> dict[str, float]:
    """The probability of drawing each task at a step.

    Args:
        sizes: Number of examples (or batches) per task; all positive.
        strategy: One of `STRATEGIES`: proportional p ∝ n, temperature p ∝ n^(1/T), round_robin
            uniform (its long-run share).
        temperature: T for the temperature strategy; must be positive.

    Returns:
        Probabilities per task, in the order of `sizes`, summing to 1.

    Raises:
        ValueError: On an unknown strategy, no tasks, a size <= 0 or a temperature <= 0.
    """
    _check(sizes, strategy, "sizes")
    if strategy == "round_robin":
        weights = {task: 1.0 for task in sizes}
    elif strategy == "proportional":
        weights = {task: float(n) for task, n in sizes.items()}
    else:
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        weights = {task: float(n) ** (1.0 / temperature) for task, n in sizes.items()}
    total = sum(weights.values())
    return {task: w / total for task, w in weights.items()}


def task_order(
    batches: dict[str, int],
    strategy: str,
    temperature: float = 2.0,
    seed: int = 0,
    length: int | None = None,
) -> list[str]:
    """The task of each step of one epoch; the same for the same arguments.

    Args:
        batches: Number of batches each task has per epoch; all positive.
        strategy: One of `STRATEGIES`.
            round_robin: the tasks in the order of `batches`, cycled (t1, t2, t3, t1, ...); a task
                that runs out of batches must be restarted by the caller.
            proportional: each task exactly `batches[t]` times, shuffled, so each task's data is
                seen once. A `length` past `sum(batches)` appends further shuffled passes; a shorter
                one cuts the order.
            temperature: `length` independent draws from `task_probabilities(batches, ...)`.
        temperature: T for the temperature strategy.
        seed: Seed of the `random.Random` that shuffles or draws (round_robin uses none).
        length: Number of steps; defaults to `sum(batches.values())`.

    Returns:
        A list of `length` task names.

    Raises:
        ValueError: As `task_probabilities`, or if `length` is negative.
    """
    _check(batches, strategy, "batches")
    total = sum(batches.values())
    steps = total if length is None else length
    if steps < 0:
        raise ValueError(f"length must be >= 0, got {steps}")
    tasks = list(batches)
    if strategy == "round_robin":
        return [tasks[i % len(tasks)] for i in range(steps)]
    rng = random.Random(seed)
    if strategy == "proportional":
        order: list[str] = []
        while len(order) < steps:
            one_pass = [task for task in tasks for _ in range(batches[task])]
            rng.shuffle(one_pass)
            order.extend(one_pass)
        return order[:steps]
    probs = task_probabilities(batches, strategy, temperature)
    return rng.choices(tasks, weights=[probs[t] for t in tasks], k=steps)
