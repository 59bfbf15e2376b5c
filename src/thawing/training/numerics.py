"""Non-finite losses and gradients during training: caught at the update, before the optimizer steps. By default
the run stops with a message naming the stage, step and task (its last checkpoint stays); `train.nonfinite: skip`
skips such updates, up to `train.nonfinite_limit`."""

from __future__ import annotations

import logging
import math

import torch

from thawing.errors import NonFiniteError

log = logging.getLogger(__name__)


def finite(losses: list[torch.Tensor], norm: torch.Tensor | None, scaled: bool) -> bool:
    """Whether an update's losses, and its gradient norm, are finite (one device sync). Under a loss scaler (fp16) a
    non-finite gradient is the scaler's to handle: it skips the step and lowers the scale."""
    ok = torch.isfinite(torch.stack(losses)).all()
    if norm is not None and not scaled:
        ok = ok & torch.isfinite(torch.as_tensor(norm, device=ok.device))
    return bool(ok)


def nonfinite_update(ctx, stage, batches: list, losses: list[torch.Tensor]) -> None:
    """Stop the run (train.nonfinite: stop), or skip the update and count it, up to train.nonfinite_limit."""
    cfg, p = ctx.prep.config.train, ctx.state.stage
    bad = [(task, float(loss)) for (task, _), loss in zip(batches, losses) if not math.isfinite(float(loss))]
    what = f"the loss of task '{bad[0][0]}' is {bad[0][1]}" if bad else "the gradient norm is not finite"
    where = f"stage '{stage.name}', update {p.update + 1} (step {ctx.state.step + 1})"
    if cfg.nonfinite == "skip" and p.nonfinite < cfg.nonfinite_limit:
        p.nonfinite += 1
        log.warning("%s: %s; update skipped (%d of at most %d)", where, what, p.nonfinite, cfg.nonfinite_limit)
        return
    limit = f" after {p.nonfinite} skipped updates (train.nonfinite_limit)" if cfg.nonfinite == "skip" else ""
    raise NonFiniteError(f"{where}: {what}{limit}. The run stopped; its last checkpoint is kept in "
                         f"{ctx.run.checkpoints}. Lower the learning rates, or set train.nonfinite: skip")
