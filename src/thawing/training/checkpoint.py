"""Stage-boundary checkpoints: a run that stops (a crash, a killed job, a lost machine) resumes at the first
stage it had not finished, and ends as the uninterrupted run would have.

    checkpoints/last/model.safetensors   every weight of the model (encoder, projection, heads)
    checkpoints/last/rng.safetensors     torch's random state (dropout), CPU and CUDA
    checkpoints/last/state.json          stages done, the plan's best score, optimizer steps so far, which heads
                                         trained and their specs, metrics.jsonl lines written, run_optional

A checkpoint is taken after every stage (each stage starts from a fresh optimizer, so nothing else is needed) and
replaces the previous one whole. Within a stage nothing is saved: a resumed run repeats the stage it was in.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from thawing.atomic import replace_dir
from thawing.errors import InputError

LAST = Path("checkpoints") / "last"


def save(run_path: Path, model: torch.nn.Module, state: dict) -> None:
    """Write the checkpoint aside, then rename it over the previous one."""
    root = run_path / LAST.parent
    root.mkdir(exist_ok=True)
    tmp = root / ".last.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))  # handles tied weights, unlike save_file
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, str(tmp / "rng.safetensors"))
    (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    replace_dir(tmp, run_path / LAST)


def read_state(run_path: Path) -> dict:
    """The last checkpoint's state, or a clear error saying why this run cannot be resumed."""
    if (run_path / "results.json").is_file():
        raise InputError("this run finished (results.json exists); there is nothing to resume", path=run_path)
    path = run_path / LAST / "state.json"
    if not path.is_file():
        raise InputError("no checkpoint to resume from: the run stopped before its first stage ended", path=run_path)
    return json.loads(path.read_text())


def restore(run_path: Path, model: torch.nn.Module) -> None:
    """Load the checkpoint's weights into `model` and put back torch's random state."""
    missing, unexpected = load_model(model, str(run_path / LAST / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise InputError(f"the checkpoint does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})",
                         path=run_path / LAST)
    rng = load_file(str(run_path / LAST / "rng.safetensors"))
    torch.set_rng_state(rng["cpu"])
    cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
