"""The final model, looked at closely: each task's metrics on dev and test, with where it goes wrong (a confusion
matrix for classification, F1 per entity type for token tasks, F1 per label for multi-label tasks).

The run directory holds the model but not the data, so this is computed once, at the end of training from the logits
the final evaluation computed anyway (task_types/breakdown.py), and kept in `report/evaluation.json`; a later
`thawing report` reuses it while `final/` is unchanged, and recomputes it from the run's data when it can (the caller
passes how: `thawing.api.evaluate_final`, which loads the model, a layer above this one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from thawing.errors import ThawingError
from thawing.store.run_dir import RunDir

log = logging.getLogger(__name__)


def final_evaluation(run: RunDir, previous: dict | None, compute: Callable[[RunDir], dict] | None
                     ) -> tuple[dict | None, str | None]:
    """The evaluation for the report: `previous` (training's, or the last report's) while it describes the current
    final model, else `compute(run)` when given. Returns (evaluation or None, why there is none)."""
    if not run.heads.is_file():
        return None, "the run has no final model"
    if previous and previous.get("final") == run.final_stamp():
        return previous, None
    if compute is None:
        return None, "not computed (the report was asked not to evaluate)"
    try:
        return compute(run), None
    except (ThawingError, OSError) as exc:  # e.g. data files that moved since training: the rest of the report stands
        log.warning("no final-model evaluation for %s: %s", run.path, exc)
        return None, f"not computed: {exc}"
