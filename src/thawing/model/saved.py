"""The folder a trained thawing model is saved as (its encoder, heads, labels and tasks), and the name of that folder
inside a run. The model layer reads it (a trained model's encoder is a starting point like any other); the run
directory (store/run_dir.py) writes it and names everything else of a run."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

FINAL = "final"  # a run's trained model
ENCODER = "encoder"  # inside final/: sentence-transformers layout
HEADS = "heads.safetensors"  # inside final/
LABELS = "labels.json"  # inside final/
TASKS = "tasks.json"  # inside final/


def encoder_folder(root: Path) -> Path:
    """The encoder folder of a trained thawing model at `root` (a run, its final/, a pushed repo's download: the
    encoder is in encoder/ there), or `root` itself."""
    model = root / FINAL if (root / FINAL).is_dir() else root
    if (model / TASKS).is_file() and (model / ENCODER).is_dir():
        log.info("%s is a trained thawing model: using its encoder, %s", root, model / ENCODER)
        return model / ENCODER
    return root
