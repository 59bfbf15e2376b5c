"""How a stage's updates reach the weights, with one process or several: `prepare_stepping` returns what the loop
forwards through, clips, steps and checkpoints.

    Replicated   accelerate's `prepare`: the model itself with one process; with several, DDP (every process holds
                 the whole model, gradients are averaged over the processes after the update's last micro-batch)
    Sharded      FSDP2 (`fully_shard`, one unit per transformer layer plus the rest): the stage trains a sharded
                 copy of the model (weights, gradients and Adam moments split over the processes), and the whole
                 trained weights are gathered back into the model itself before each evaluation, checkpoint and at
                 the stage's end. Everything between updates (evaluation, probes, snapshots, checkpoints, the final
                 model) reads the plain model, as with one process.

Both average gradients over the processes, and each process's micro-batch loss is its slice's sum over the whole
micro-batch's divisor, so `update.micro_backward` multiplies it by the number of processes: the update is the one a
single process computes over the whole micro-batch.

Why a copy for FSDP: sharding replaces a module's parameters in place and cannot be undone, while between stages
thawing needs a plain model (LoRA merges, checkpoints of the whole model, probes and caches on the encoder). The copy
costs one more set of weights per process while the stage builds it; what FSDP saves is the training state (16 bytes
a trainable parameter under AdamW in fp32: weights, gradients, two moments) split N ways. The plain model stays whole
on each device, for evaluation.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from dataclasses import dataclass

import torch

from thawing import distributed
from thawing.errors import ConfigError, InputError
from thawing.model.groups import find_layers, parameter_groups
from thawing.training.checkpoint import load_optimizer_state, optimizer_state
from thawing.training.stages import stage_optimizer

log = logging.getLogger(__name__)

# The accelerate FSDP settings (its config file's fsdp_config, which `accelerate launch` passes as FSDP_* variables)
# that thawing applies, and the values of the others that it can honour. Any other value is refused: thawing shards
# each transformer layer (its own wrap policy) and always saves whole-model files.
_FSDP_HONOURED = {"FSDP_OFFLOAD_PARAMS": "false", "FSDP_ACTIVATION_CHECKPOINTING": "false",
                  "FSDP_CPU_RAM_EFFICIENT_LOADING": "false"}


def fsdp_requested() -> bool:
    """Whether the launcher asked for FSDP (`accelerate launch` with an FSDP config, or ACCELERATE_USE_FSDP=true)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def mode() -> str | None:
    """"fsdp", "ddp", or None for one process (read from the launcher's variables)."""
    if distributed.world_size() == 1:
        return None
    return "fsdp" if fsdp_requested() else "ddp"


@dataclass(frozen=True)
class FsdpSettings:
    reshard_after_forward: bool = True  # free each layer's gathered weights after its forward (ZeRO-3)


def fsdp_settings(config, plan) -> FsdpSettings:
    """The FSDP settings from the launcher, checked against the run's config and plan before anything runs.

    Raises:
        ConfigError: FSDP with one process, FSDP version 1, an accelerate FSDP setting thawing does not apply, or a
            run setting FSDP does not support here (fp16, L2-SP, LoRA stages, compiled layers).
    """
    problems = []
    if distributed.world_size() == 1:
        problems.append("FSDP needs several processes (accelerate launch --num_processes N, N > 1)")
    version = os.environ.get("FSDP_VERSION", "1")
    if version != "2":
        problems.append(f"fsdp_version {version}: thawing shards with FSDP2 (fully_shard); set fsdp_version: 2")
    for name, value in _FSDP_HONOURED.items():
        if os.environ.get(name, value).lower() != value:
            hint = "; use train.gradient_checkpointing" if "CHECKPOINTING" in name else ""
            problems.append(f"{name.lower()}: {os.environ[name]} is not supported (only {value}){hint}")
    train = config.train
    if train.mixed_precision == "fp16":
        problems.append("train.mixed_precision fp16: its loss scaler would judge each process's gradient shard "
                        "apart; use bf16 or no")
    if train.compile:
        problems.append("train.compile: true is not supported with FSDP (untested); use false or auto")
    for stage in plan:
        if stage.retain is not None and stage.retain.l2sp is not None and stage.retain.l2sp.weight > 0:
            problems.append(f"stage '{stage.name}': retain.l2sp needs the whole weights at every update; with FSDP "
                            "use retain.distill, or DDP")
        if stage.lora is not None:
            problems.append(f"stage '{stage.name}': LoRA stages train few parameters; run them with DDP (drop the "
                            "FSDP config)")
    if problems:
        raise ConfigError("FSDP: " + "; ".join(problems))
    unread = sorted(k for k in os.environ if k.startswith("FSDP_") and k not in _FSDP_HONOURED
                    and k not in ("FSDP_VERSION", "FSDP_RESHARD_AFTER_FORWARD"))
    if unread:
        log.info("FSDP: %s do not apply (thawing wraps each transformer layer and saves whole-model files)",
                 ", ".join(k.lower() for k in unread))
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower()
    return FsdpSettings(reshard_after_forward=reshard not in ("false", "shard_grad_op", "2"))


class Replicated:
    """The model itself (DDP-wrapped by accelerate with several processes) and its optimizer."""

    sharded = False

    def __init__(self, accelerator, model, optimizer, params: list):
        self.accelerator = accelerator
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.params = params  # what the gradient norm is taken over

    def sync(self, last: bool):
        """DDP averages gradients at the update's last micro-batch only; the others accumulate locally."""
        if last or distributed.size() == 1:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(self.model)

    def clip(self, max_norm: float) -> torch.Tensor:
        return self.accelerator.clip_grad_norm_(self.params, max_norm)

    @property
    def skips_on_device(self) -> bool:
        """Whether a non-finite update's step is skipped without the host reading the mark: a fused AdamW takes it
        (`found_inf`, as under torch's GradScaler); fp16's loss scaler sets its own."""
        inner = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate wraps it
        return self.accelerator.scaler is None and bool(inner.defaults.get("fused"))

    def step(self, found_inf: torch.Tensor) -> bool:
        """Step the optimizer, unless `found_inf` (1.0: the update has a non-finite value): on the device where the
        optimizer takes the mark (the step then changes nothing, its count included), else read here, one wait for
        the device. Returns whether the fp16 loss scaler skipped the step."""
        if self.skips_on_device:
            inner = getattr(self.optimizer, "optimizer", self.optimizer)
            inner.found_inf = found_inf
            try:
                self.optimizer.step()
            finally:
                del inner.found_inf
            return False
        if found_inf.item():
            return False
        scaler = self.accelerator.scaler
        if scaler is None:
            self.optimizer.step()
            return False
        # fp16: the scaler skips a step with non-finite gradients and lowers its scale. (accelerate's
        # `step_was_skipped` misses the skip of a fused optimizer, whose step runs and skips inside its kernel.)
        before = scaler.get_scale()
        self.optimizer.step()
        return scaler.get_scale() < before

    def pull(self) -> None:
        """The trained weights are the model's own: nothing to gather."""

    def optimizer_state(self) -> dict:
        return optimizer_state(self.optimizer)

    def load_optimizer_state(self, saved: dict) -> None:
        if saved.get("fsdp"):
            raise InputError("this stage checkpoint was taken under FSDP; resume it with the FSDP config")
        load_optimizer_state(self.optimizer, saved)

    def release(self) -> None:
        self.accelerator.unwrap_model(self.model, keep_fp32_wrapper=False)


class Sharded:
    """A copy of the model, sharded with FSDP2 over the processes, trained in the model's place (module docstring)."""

    sharded = True

    def __init__(self, model, stage, weight_decay: float, device: str, settings: FsdpSettings):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        # FSDP2 warns that an output which is a view loses its hook to an in-place op; the loop never changes an
        # output in place (losses are computed out of place), so the warning says nothing here.
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        self.base = model
        self.model = copy.deepcopy(model)  # trainable flags and train/eval modes as the stage set them
        mesh = init_device_mesh(device, (distributed.size(),))
        for layer in find_layers(self.model.encoder.backbone)[1]:
            fully_shard(layer, mesh=mesh, reshard_after_forward=settings.reshard_after_forward)
        fully_shard(self.model, mesh=mesh, reshard_after_forward=settings.reshard_after_forward)
        groups = parameter_groups(self.model)
        self.optimizer = stage_optimizer(stage, groups, weight_decay)
        self.params = [p for g in stage.trainable for _, p in groups[g]]
        self.trained = {name: p for g in stage.trainable for name, p in groups[g]}
        self.targets = dict(model.named_parameters())

    def sync(self, last: bool):  # noqa: ARG002 (the stepping interface: Replicated reads it)
        """Each micro-batch's gradients are reduce-scattered at once: unsharded gradients held over several
        micro-batches would cost the memory FSDP is there to save."""
        return contextlib.nullcontext()

    def clip(self, max_norm: float) -> torch.Tensor:
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)  # the norm over every shard (DTensor-aware)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def step(self, found_inf: torch.Tensor) -> bool:
        """Step unless `found_inf` (read here: untried with a fused optimizer over DTensors)."""
        if not found_inf.item():
            self.optimizer.step()
        return False  # no loss scaler: fp16 is refused with FSDP

    @torch.no_grad()
    def pull(self) -> None:
        """Gather the trained weights into the plain model (every process takes part, in the same order)."""
        for name, param in self.trained.items():
            full = param.full_tensor() if hasattr(param, "full_tensor") else param
            self.targets[name].copy_(full)

    def optimizer_state(self) -> dict:
        """The whole optimizer state, keyed by parameter name (every process takes part in gathering it)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return {"optimizer": get_optimizer_state_dict(self.model, self.optimizer, options=options), "scaler": None,
                "fsdp": True}

    def load_optimizer_state(self, saved: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        if not saved.get("fsdp"):
            raise InputError("this stage checkpoint was taken without FSDP; resume it without the FSDP config")
        set_optimizer_state_dict(self.model, self.optimizer, saved["optimizer"],
                                 options=StateDictOptions(full_state_dict=True))

    def release(self) -> None:
        """Drop the sharded copy and its Adam moments (the loop has pulled its weights)."""
        self.model = self.optimizer = None


def prepare_stepping(ctx, stage, groups: dict, params: list):
    """What the stage's updates run through (module docstring); None when nothing trains."""
    if not params:
        return None
    if ctx.fsdp is not None:
        return Sharded(ctx.model, stage, ctx.prep.config.train.weight_decay, ctx.runtime.device, ctx.fsdp)
    optimizer = stage_optimizer(stage, groups, ctx.prep.config.train.weight_decay)
    return Replicated(ctx.accelerator, ctx.model, optimizer, params)
