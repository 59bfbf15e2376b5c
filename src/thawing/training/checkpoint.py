"""The state of a run between updates (`TrainState`), and checkpoints of it: a run that stops (a crash, a killed job,
a lost machine, Ctrl-C) resumes where its last checkpoint was taken and ends as the uninterrupted run would have.

    checkpoints/last/    after the last finished stage: every weight of the model, torch's random state, the state
        model.safetensors, rng.safetensors, state.json
    checkpoints/step/    inside the stage under way (every `train.checkpoint_every` updates or minutes, and on
                         SIGINT/SIGTERM): what that stage changes and nothing else
        trainable.safetensors   the stage's trainable weights (the rest are those of checkpoints/last, or the
                                model as prepared while the first stage runs)
        optimizer.pt            the optimizer's moments and step (and the fp16 loss scaler), read weights-only
        begin.safetensors       the stage's starting weights (put back when the stage does not beat the plan)
        best.safetensors        the stage's best weights so far, when an evaluation has found one
        rng.safetensors, state.json   (state.json's `stage` holds the position inside the stage)

Each folder is built aside and swapped in whole (`atomic.building`, which recovers from a kill between its renames);
state.json is written last, and a folder without it is not a checkpoint. The stage checkpoint goes once the stage's
boundary checkpoint is in place. `TrainState` is the one record of progress for both.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from thawing import distributed
from thawing.errors import DiskFullError, InputError, ThawingError
from thawing.store.atomic import recover
from thawing.store.run_dir import RunDir
from thawing.training.plateau import Plateau

STATE, MODEL, RNG = "state.json", "model.safetensors", "rng.safetensors"
TRAINABLE, OPTIMIZER, BEGIN, BEST = "trainable.safetensors", "optimizer.pt", "begin.safetensors", "best.safetensors"


@dataclass
class StageProgress:
    """Where a stage stands between two updates: enough to carry on as if it had never stopped."""

    evals: Plateau  # the stage's evaluations so far (best score, patience)
    epoch: int = 0  # the epoch under way
    epoch_start: int = 0  # micro-batches done when that epoch began
    position: int = 0  # updates done in that epoch
    micro: int = 0  # micro-batches done in the stage
    update: int = 0  # updates done in the stage
    skipped: int = 0  # fp16 steps the loss scaler skipped
    nonfinite: int = 0  # updates skipped for a non-finite loss or gradient (`train.nonfinite: skip`)
    split: int = 1  # pieces each micro-batch runs in, after running out of GPU memory (memory.py)
    has_best: bool = False  # an evaluation found a best state (its weights are in best.safetensors)
    stopped: str = ""  # why the stage stopped early (a plateau)
    log: dict[str, list] = field(default_factory=dict)  # training-record sums since the last record (numerics.py)
    norms: list[float] = field(default_factory=list)  # the updates' gradient norms since the last record


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
    stage: StageProgress | None = None  # inside a stage: where it stands (a stage checkpoint); None between stages
    probes: dict[str, dict] = field(default_factory=dict)  # the last probe point's values ({} before the start's)
    probe_seconds: float = 0.0  # time spent probing so far

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> TrainState:
        stage = data.get("stage")
        if stage is not None:
            stage = StageProgress(**{**stage, "evals": Plateau(**stage["evals"])})
        return cls(**{**data, "best": Plateau(**data["best"]), "stage": stage})


def save(run: RunDir, model: torch.nn.Module, state: TrainState, rng: dict[str, torch.Tensor] | None = None) -> None:
    """The boundary checkpoint after a stage: the whole model. The stage's own checkpoint is no longer needed.
    `rng`: the random states to save (`rng_states()`; default: this process's)."""
    with _writing(run, run.checkpoint) as tmp:
        save_model(model, str(tmp / MODEL))  # handles tied weights, unlike save_file
        _finish(tmp, state, rng)
    shutil.rmtree(run.stage_checkpoint, ignore_errors=True)


def save_stage(run: RunDir, state: TrainState, named: dict[str, torch.nn.Parameter], optimizer: dict,
               begin: list[torch.Tensor], best: list[torch.Tensor] | None,
               rng: dict[str, torch.Tensor] | None = None) -> None:
    """A checkpoint inside a stage: its trainable weights (by name), its optimizer's state (`optimizer_state`), start
    and best snapshots."""
    with _writing(run, run.stage_checkpoint) as tmp:
        save_file({n: p.detach().contiguous().cpu() for n, p in named.items()}, str(tmp / TRAINABLE))
        torch.save(optimizer, tmp / OPTIMIZER)
        save_file(_numbered(begin), str(tmp / BEGIN))
        if best is not None:
            save_file(_numbered(best), str(tmp / BEST))
        _finish(tmp, state, rng)


@contextlib.contextmanager
def _writing(run: RunDir, folder) -> Iterator:
    """Build a checkpoint folder aside; a failed write (a full disk) leaves the previous checkpoint and says so."""
    try:
        with run.replacing(folder) as tmp:
            yield tmp
    except (DiskFullError, OSError, RuntimeError, SafetensorError) as exc:
        raise ThawingError(f"{folder}: the checkpoint could not be written ({type(exc).__name__}: {exc}); the "
                           "previous checkpoint is kept") from exc


def rng_states() -> dict[str, torch.Tensor]:
    """torch's random states (CPU, and each GPU's). With several processes, every one's (a collective: all of them
    call it): each draws its own dropout masks, so each resumes from its own state, saved as `<name>@<rank>` beside
    the main process's plain names."""
    own = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        own.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    if distributed.size() == 1:
        return own
    everyone = distributed.gathered(own)
    return {name + (f"@{rank}" if rank else ""): state for rank, states in enumerate(everyone)
            for name, state in states.items()}


def _finish(folder, state: TrainState, rng: dict[str, torch.Tensor] | None = None) -> None:
    """The random states, then state.json: written last, it marks the folder complete."""
    save_file(rng if rng is not None else rng_states(), str(folder / RNG))
    (folder / STATE).write_text(json.dumps(state.to_json(), indent=2, allow_nan=False) + "\n")


def read_state(run: RunDir) -> TrainState | None:
    """The latest checkpoint's state (inside a stage when there is one), None when the run stopped before its first
    checkpoint, or a clear error saying why this run cannot be resumed."""
    if run.results.is_file() and run.model_card.is_file():  # the card is the last file a run writes
        raise InputError("this run finished (results.json exists); there is nothing to resume", path=run.path)
    for folder in (run.stage_checkpoint, run.checkpoint):
        recover(folder)  # a kill between the two renames of a checkpoint swap
    last, inside = _state(run, run.checkpoint), _state(run, run.stage_checkpoint)
    if inside is not None and (last is None or inside.stages_done >= last.stages_done):
        return inside
    shutil.rmtree(run.stage_checkpoint, ignore_errors=True)  # killed after its stage's boundary checkpoint was saved
    return last


def _state(run: RunDir, folder) -> TrainState | None:
    if not (folder / STATE).is_file():
        return None
    data = run.read_json(folder / STATE)  # damaged JSON: an error naming the file and line
    try:
        return TrainState.from_json(data)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        damage = f"{type(exc).__name__}: {exc}"
        raise InputError(f"the checkpoint's state is damaged ({damage})", path=folder / STATE) from exc


def restore(run: RunDir, model: torch.nn.Module, state: TrainState) -> None:
    """Load the boundary checkpoint's weights into `model` and put back torch's random state as it was saved (the
    stage checkpoint's, when there is one). A stage checkpoint's own weights load when its stage starts again
    (`stage_tensors`): a LoRA stage's adapters exist only from then."""
    folders = []
    if (run.checkpoint / STATE).is_file():
        _load(model, run.checkpoint / MODEL, whole=True)
        folders.append(run.checkpoint)
    if state.stage is not None:
        folders.append(run.stage_checkpoint)
    saved = _read(load_file, folders[-1] / RNG)
    mark = f"@{distributed.rank()}"  # this process's own states, where the run had as many processes
    mine = {k[: -len(mark)]: v for k, v in saved.items() if k.endswith(mark)} if distributed.rank() else {}
    rng = mine or {k: v for k, v in saved.items() if "@" not in k}
    torch.set_rng_state(rng["cpu"])
    cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _load(model: torch.nn.Module, path, whole: bool) -> None:
    missing, unexpected = _read(lambda p: load_model(model, p, strict=False), path)
    if unexpected or (whole and missing):
        raise InputError(f"the checkpoint does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})",
                         path=path)


def stage_tensors(run: RunDir, model: torch.nn.Module) -> tuple[dict, list[torch.Tensor], list[torch.Tensor] | None]:
    """Load a stage checkpoint's trainable weights into `model` (by name: the stage's adapters must be attached);
    return its optimizer state, start snapshot and best snapshot (None if it had none)."""
    folder = run.stage_checkpoint
    _load(model, folder / TRAINABLE, whole=False)
    optimizer = _read(lambda p: torch.load(p, weights_only=True), folder / OPTIMIZER)  # no pickled code runs
    begin = _unnumbered(_read(load_file, folder / BEGIN))
    best = _unnumbered(_read(load_file, folder / BEST)) if (folder / BEST).is_file() else None
    return optimizer, begin, best


def _read(reader, path):
    try:
        return reader(str(path))
    except Exception as exc:  # a truncated or damaged file: say which, not a library traceback
        raise InputError(f"the checkpoint cannot be read ({type(exc).__name__}: {exc})", path=path) from exc


def optimizer_state(optimizer) -> dict:
    """The optimizer's state, and the fp16 loss scaler's when accelerate has one."""
    scaler = getattr(optimizer, "scaler", None)
    return {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None}


def load_optimizer_state(optimizer, saved: dict) -> None:
    optimizer.load_state_dict(saved["optimizer"])
    scaler = getattr(optimizer, "scaler", None)
    if scaler is not None and saved["scaler"] is not None:
        scaler.load_state_dict(saved["scaler"])


def disk_check(where: Path, model: torch.nn.Module, trainable: int) -> None:
    """Refuse to start when the disk cannot hold the checkpoints: the model, and a stage checkpoint's trainable
    weights, their two snapshots and Adam's two moments (counted twice: a new one is built beside the old)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    need = 2 * weights + 2 * 5 * trainable * 4
    if where.is_dir():  # a resumed run: the checkpoint it wrote is on the disk already and is replaced in place
        need = max(need - sum(f.stat().st_size for f in RunDir(where).checkpoints.rglob("*") if f.is_file()), 0)
    while not where.exists() and where != where.parent:  # the run directory may not exist yet
        where = where.parent
    free = shutil.disk_usage(where.resolve()).free
    if free < need:
        raise ThawingError(f"{where}: {_size(free)} free, checkpoints need about {_size(need)}; free space, or set "
                           "train.checkpoint: false")


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def due(cfg, update: int, saved: tuple[int, float]) -> bool:
    """Whether `train.checkpoint_every` (updates, or minutes like "30m") has passed since the last stage checkpoint."""
    every = cfg.checkpoint_every
    if every is None:
        return False
    if isinstance(every, int):
        return update - saved[0] >= every
    return time.monotonic() - saved[1] >= float(every[:-1]) * 60


def snapshot(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """A copy of `params` in host memory: a full-parameter stage keeps two (its start and its best), which on a GPU
    would be two more copies of a 1.5B model's weights beside the weights, gradients and Adam moments."""
    return [p.detach().to("cpu", copy=True) for p in params]


@torch.no_grad()
def put_back(params: list[torch.nn.Parameter], saved: list[torch.Tensor]) -> None:
    """Copy a `snapshot` back into `params`."""
    for p, value in zip(params, saved, strict=True):
        p.copy_(value)


def _numbered(tensors: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    return {str(i): t.contiguous() for i, t in enumerate(tensors)}


def _unnumbered(tensors: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return [tensors[str(i)] for i in range(len(tensors))]
