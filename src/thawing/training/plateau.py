"""One plateau rule for evaluations, stages and the plan: a value is a gain when it beats the best so far by more
than `min_delta` (the first value always is); `patience` values in a row without a gain is a plateau."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Plateau:
    """Tracks the best value and the values since it. Pure: no clock, no model.

    Example:
        >>> p = Plateau(min_delta=0.01, patience=2)
        >>> [p.update(v) for v in (0.5, 0.505, 0.6, 0.6, 0.59)], p.stalled, p.best
        ([True, False, True, False, False], True, 0.6)
    """

    min_delta: float = 0.0
    patience: int | None = None  # None: never a plateau
    best: float | None = None
    best_at: int | None = None  # the caller's position of the best value (e.g. the optimizer step)
    waited: int = 0  # values since the best

    def update(self, value: float | None, at: int | None = None, min_delta: float | None = None) -> bool:
        """Record `value`; True when it is a gain. `None` (nothing measured) is no gain, unless nothing came before.
        `min_delta` overrides the tracker's for this value (the plan judges each stage by that stage's own)."""
        delta = self.min_delta if min_delta is None else min_delta
        if self.best is None or (value is not None and value > self.best + delta):
            self.best = value if value is not None else self.best
            self.best_at, self.waited = at, 0
            return True
        self.waited += 1
        return False

    @property
    def stalled(self) -> bool:
        """`patience` values in a row without a gain."""
        return bool(self.patience) and self.waited >= self.patience

    def to_json(self) -> dict:
        return asdict(self)
