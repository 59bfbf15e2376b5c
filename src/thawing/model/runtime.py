"""One runtime decision: config and hardware -> a frozen `Runtime` (device, precision, packing per context and its
row width, compile, pad multiple, the inference token budget). It is resolved once per command, logged, recorded in
the run directory (runtime.json), and used alike by `train`, `embed`, `evaluate`, `predict` and `thawing.load`.

Defaults follow measurements (docs/benchmarks.md): on a GPU, bf16 autocast, packing with flash varlen attention
where it applies, per-layer compile once training runs packed with varlen, inference batches filled to 16,384
tokens; on CPU none of these (each measured slower there).

`max_tokens` in training counts real tokens when training batches run packed (no padding to count) and padded
tokens (count x longest) otherwise; the inference budget always counts padded tokens of length-sorted batches.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import asdict, dataclass

import torch

from thawing import distributed
from thawing.errors import ConfigError, ThawingError
from thawing.model import packing

log = logging.getLogger(__name__)

# Inference batches (encode, evaluation, caching) on a GPU are filled to this many tokens. On an H200 (stella-shaped
# model) this ran 2.5x (AG News) to 11.8x (SST-2) faster than 64 padded sentences; on CPU it was slower, so there they
# hold a count of sentences (docs/benchmarks.md).
GPU_MAX_TOKENS = 16384
PRECISIONS = ("no", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    device: str  # "cpu", "cuda" or "mps"
    precision: str  # "no" (fp32), "bf16" or "fp16": autocast for every forward of the command
    packing: str | None  # how training batches run: "varlen", "rows", or None (padded)
    inference_packing: str | None  # the same for evaluation, caches, encode and predict
    pack_width: int | None  # rows mode's row width in tokens
    compile: bool  # torch.compile each transformer layer
    pad_multiple: int  # padded batch lengths round up to this
    inference_max_tokens: int | None  # inference batches fill this many padded tokens; None: `batch_size` texts
    notes: tuple[str, ...] = ()  # why a packing mode was passed over

    def autocast(self) -> contextlib.AbstractContextManager:
        """The command's mixed precision, for a block of forwards."""
        return torch.autocast(self.device, dtype=DTYPES.get(self.precision), enabled=self.precision != "no")

    @property
    def layout(self) -> packing.BatchLayout:
        return packing.BatchLayout(self.packing, self.inference_packing, self.pack_width, self.pad_multiple)

    def to_json(self) -> dict:
        return asdict(self)


DEVICES = ("auto", "cpu", "cuda", "mps")


def mps_available() -> bool:
    """An Apple GPU (Metal), as torch sees it."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str = "auto") -> str:
    """auto: a CUDA GPU when there is one, else an Apple GPU (mps), else the CPU. Refuses a GPU that is not there.
    On mps thawing runs in fp32 by default, unpacked and uncompiled (the CPU's defaults; CUDA's speed-ups need CUDA)."""
    if name not in DEVICES:
        raise ThawingError(f"unknown device '{name}'; choose {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ThawingError("device cuda: no CUDA GPU is available here")
    if name == "mps" and not mps_available():
        raise ThawingError("device mps: no Apple GPU (Metal) is available to torch here")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    return name


def resolve_precision(name: str, device: str) -> str:
    """auto: bf16 on a GPU that has it, else fp32 ("no"). fp16 needs a GPU (CPU autocast runs bf16 only, and
    accelerate scales fp16 losses on accelerators only)."""
    if name not in ("auto",) + PRECISIONS:
        raise ThawingError(f"unknown mixed precision '{name}'; choose auto, no, bf16 or fp16")
    if name == "auto":
        return "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "no"
    if name == "fp16" and device != "cuda":
        raise ThawingError(f"mixed precision fp16 needs a CUDA GPU (its loss scaling); use bf16 or no on {device}")
    return name


def resolve(encoder, *, device: str = "auto", precision: str = "auto", packing_: bool | None = None,
            pack_width: int | None = None, compile_: bool | None = None, pad_to_multiple_of: int | None = None,
            training: bool = True, sample=None) -> Runtime:
    """Decide the runtime for `encoder` on this machine. `packing_`: None (auto: flash varlen where it applies, a GPU
    in half precision), True (varlen, else rows, anywhere), False. `compile_`: None (auto: when training runs packed
    with varlen). `sample()` gives a real (input_ids, attention_mask) batch, which packing is checked against.
    The encoder is moved to the device."""
    on = resolve_device(device)
    precision = resolve_precision(precision, on)
    encoder.to(on)
    half = precision != "no"
    modes = () if packing_ is False else packing.MODES if packing_ else ("varlen",) if on == "cuda" and half else ()
    width = (pack_width or encoder.max_length) if modes else None
    chosen, notes = {}, []
    for context in (("training", "inference") if training else ("inference",)):
        mode, reasons = (None, [])
        if modes:
            ids, mask = sample()
            mode, reasons = packing.choose(encoder, modes, context == "training", half, width,
                                           (ids[:32].to(on), mask[:32].to(on)))
        chosen[context] = mode
        notes += [f"{context}: {r}" for r in reasons]
    runtime = Runtime(
        device=on, precision=precision, packing=chosen.get("training"), inference_packing=chosen["inference"],
        pack_width=width if "rows" in chosen.values() else None,
        # Measured on an H200: compiled layers pay off with varlen (one dynamic dimension, 40% -> 54% MFU) and cost
        # with padded batches (two: 21% -> 15%), so auto compile waits for varlen training.
        compile=bool(compile_) if compile_ is not None else chosen.get("training") == "varlen",
        pad_multiple=pad_to_multiple_of or 1,
        inference_max_tokens=GPU_MAX_TOKENS if on == "cuda" else None,
        notes=tuple(notes),
    )
    if modes and not any(chosen.values()):
        log.warning("packing is off, batches are padded instead: %s", "; ".join(notes))
    log.info("runtime: %s", runtime)
    return runtime


def apply(runtime: Runtime, encoder) -> None:
    """Put the encoder on the runtime's device with its batch layout, and compile its layers if asked."""
    encoder.to(runtime.device)
    encoder.layout = runtime.layout
    if runtime.compile:
        encoder.compile_layers()


def resolve_for_training(config, prep, sharded: bool = False) -> Runtime:
    """The training runtime from the config's `train` switches, checked on the first task's training batch.
    `sharded` (FSDP): layers are not compiled (auto; `compile: true` is refused before this)."""
    from thawing.data.batching import collate

    cfg = config.train
    encoder = prep.model.encoder
    if cfg.pad_to_multiple_of and cfg.pad_to_multiple_of > encoder.max_length:  # a batch padded past the positions
        raise ConfigError(f"train.pad_to_multiple_of: {cfg.pad_to_multiple_of} is more than the model's maximum "
                          f"length ({encoder.max_length} tokens); choose a multiple such as 8 or 64")

    def sample():
        feats = next(iter(prep.features.values()))["train"]
        batch = collate(encoder, feats, list(range(min(len(feats), 32))))
        return batch["input_ids"], batch["attention_mask"]

    runtime = resolve(encoder, device=cfg.device, precision=cfg.mixed_precision, packing_=cfg.packing,
                      pack_width=cfg.pack_width, compile_=False if sharded else cfg.compile,
                      pad_to_multiple_of=cfg.pad_to_multiple_of, sample=sample)
    # Packing is chosen by measuring, which may tip differently on two devices: every process takes the main one's.
    runtime = distributed.agree(runtime)
    prep.model.to(runtime.device)
    apply(runtime, encoder)
    return runtime


def make_accelerator(runtime: Runtime, processes: int = 1):
    """The accelerate `Accelerator` for a run: its device and mixed precision (fp16 loss scaling) are the runtime's.
    With several processes (DDP), a micro-batch runs one task's head, so the others' get no gradient in it:
    `find_unused_parameters` lets DDP finish its reduction without them."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState, PartialState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != runtime.precision and PartialState().num_processes == 1:
        # accelerate keeps one process-wide state and refuses a second precision in a process; a single-process
        # caller (the Python API, a study, the tests) may train in fp32 and then in bf16. (No public reset exists.)
        AcceleratorState._reset_state()
    asked = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")  # an accelerate config's (accelerate launch)
    if asked not in ("no", runtime.precision):
        log.warning("accelerate's mixed_precision '%s' is not used: thawing's train.mixed_precision decides (%s)",
                    asked, runtime.precision)
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if processes > 1 else []
    return Accelerator(mixed_precision=runtime.precision, cpu=runtime.device == "cpu", kwargs_handlers=handlers)
