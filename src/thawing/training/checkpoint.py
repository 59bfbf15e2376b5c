"""The state of a run between updates (`TrainState`), and checkpoints of it: a run that stops (a crash, a killed job,
a lost machine) resumes at the first stage it had not finished, and ends as the uninterrupted run would have.

    checkpoints/last/model.safetensors   every weight of the model (encoder, projection, heads)
    checkpoints/last/rng.safetensors     torch's random state (dropout), CPU and CUDA
    checkpoints/last/state.json          the `TrainState`

A checkpoint is taken after every stage (each stage starts from a fresh optimizer, so nothing else is needed) and
replaces the previous one whole. Within a stage nothing is saved yet: a resumed run repeats the stage it was in.
`TrainState` is the one record of progress, so that a checkpoint inside a stage adds fields to it, not a new format.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from thawing.errors import InputError
from thawing.run_dir import RunDir
from thawing.training.plateau import Plateau


@dataclass
class TrainState:
    """What a run has done so far: everything a checkpoint saves besides the weights and the random state."""

    plan: list[str]  # the stage names; a resumed run must have the same plan
    run_optional: bool | None = None  # as the run was started (it decides the plan)
    stages_done: int = 0
    plan_stopped: bool = False
    best: Plateau = field(default_factory=Plateau)  # the plan's best selection score, stage by stage
    summaries: list[dict] = field(default_factory=list)  # one per finished stage, as stages.json holds them
    step: int = 0  # optimizer updates over the whole plan
    trained_heads: list[str] = field(default_factory=list)  # heads some stage trained (the others become centroids)
    heads: dict[str, dict] = field(default_factory=dict)  # each task's head spec (a frozen head became linear)
    metrics_lines: int = 0  # metrics.jsonl lines written when the state was saved

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "TrainState":
        return cls(**{**data, "best": Plateau(**data["best"])})


def save(run: RunDir, model: torch.nn.Module, state: TrainState) -> None:
    """Write the checkpoint aside, then put it in place of the previous one."""
    with run.replacing(run.checkpoint) as tmp:
        save_model(model, str(tmp / "model.safetensors"))  # handles tied weights, unlike save_file
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        save_file(rng, str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state.to_json(), indent=2) + "\n")


def read_state(run: RunDir) -> TrainState:
    """The last checkpoint's state, or a clear error saying why this run cannot be resumed."""
    if run.results.is_file():
        raise InputError("this run finished (results.json exists); there is nothing to resume", path=run.path)
    path = run.checkpoint / "state.json"
    if not path.is_file():
        raise InputError("no checkpoint to resume from: the run stopped before its first stage ended", path=run.path)
    return TrainState.from_json(json.loads(path.read_text()))


def restore(run: RunDir, model: torch.nn.Module) -> None:
    """Load the checkpoint's weights into `model` and put back torch's random state."""
    missing, unexpected = load_model(model, str(run.checkpoint / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise InputError(f"the checkpoint does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})",
                         path=run.checkpoint)
    rng = load_file(str(run.checkpoint / "rng.safetensors"))
    torch.set_rng_state(rng["cpu"])
    cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def snapshot(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """A copy of `params` in host memory: a full-parameter stage keeps two (its start and its best), which on a GPU
    would be two more copies of a 1.5B model's weights beside the weights, gradients and Adam moments."""
    return [p.detach().to("cpu", copy=True) for p in params]


@torch.no_grad()
def put_back(params: list[torch.nn.Parameter], saved: list[torch.Tensor]) -> None:
    """Copy a `snapshot` back into `params`."""
    for p, value in zip(params, saved):
        p.copy_(value)
