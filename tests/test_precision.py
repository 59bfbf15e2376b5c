"""Mixed precision through accelerate: fp16 loss scaling unscales before clipping and skips non-finite steps; one
runtime decides device and precision, and a process may train in several precisions one after another.

Run: `.venv/bin/python -m pytest -q tests/test_precision.py`
"""

from __future__ import annotations

import math

import pytest
import torch
from toy import toy_config

from thawing.config import parse_config
from thawing.errors import ThawingError
from thawing.model.runtime import Runtime, make_accelerator, resolve_precision
from thawing.training import loop


def _fp16_accelerator(init_scale: float):
    """accelerate with fp16 loss scaling, on CPU: accelerate builds its GradScaler on accelerators only, so this one
    is given a CPU GradScaler, as a GPU run would have a CUDA one (the same class and logic)."""
    runtime = Runtime(device="cpu", precision="fp16", packing=None, inference_packing=None, pack_width=None,
                      compile=False, pad_multiple=1, inference_max_tokens=None)
    accelerator = make_accelerator(runtime)  # resets accelerate's process-wide precision when it differs
    accelerator.native_amp = True
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    return accelerator


def test_fp16_skips_non_finite_steps_and_keeps_weights_finite(tiny_bert_dir, tmp_path):
    """A loss scale so large that the scaled gradients overflow: the steps must be skipped (and the scale lowered),
    never applied. An optimizer that accelerate did not prepare would step with inf and leave NaN weights."""
    schedule = [{"name": "all", "train": ["all"], "epochs": 3, "restore_best": False}]
    config = parse_config(toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",), schedule=schedule,
                                     train={"batch_size": 2}))
    ctx, plan, groups = loop.start(config, run_dir=str(tmp_path / "run"))
    ctx.accelerator = _fp16_accelerator(init_scale=2.0**30)  # fp16's largest value is 65504: gradients overflow
    params = [p for g in plan[0].trainable for _, p in groups[g]]
    before = [p.detach().clone() for p in params]
    summary = loop.run_stage(ctx, plan[0], groups, params)
    assert summary["skipped_updates"] >= 1
    assert all(torch.isfinite(p).all() for p in params)
    assert any(not torch.equal(a, p) for a, p in zip(before, params, strict=True))  # the later, finite steps did apply
    assert ctx.accelerator.scaler.get_scale() < 2.0**30


def _recorded_norms(tiny_bert_dir, tmp_path, name: str, init_scale: float | None = None) -> list[float]:
    """The gradient norms a heads stage records (every update), trained from the same seed."""
    schedule = [{"name": "heads", "train": ["heads"], "epochs": 0.2, "lr": {"heads": 1e-3}}]
    config = parse_config(toy_config(tiny_bert_dir, tmp_path / name, tasks=("sentiment",), schedule=schedule,
                                     train={"log_every": 1, "grad_clip": 1.0}))
    ctx, plan, groups = loop.start(config, run_dir=str(tmp_path / name / "run"))
    if init_scale is not None:  # made after start: accelerate's precision is process-wide, and start sets it
        ctx.accelerator = _fp16_accelerator(init_scale)
    loop.run_stage(ctx, plan[0], groups, [p for g in plan[0].trainable for _, p in groups[g]])
    return [r["grad_norm"] for r in ctx.run.read_metrics() if r.get("split") == "train"]


def test_fp16_clips_the_unscaled_gradients(tiny_bert_dir, tmp_path):
    """Clipping must see the true gradient norm, not the norm times the loss scale: the norm an fp16 run records
    (the one clipping used) is the fp32 run's, where a scaled norm would be 4096 times larger."""
    plain = _recorded_norms(tiny_bert_dir, tmp_path, "fp32")
    scaled = _recorded_norms(tiny_bert_dir, tmp_path, "fp16", init_scale=2.0**12)
    assert plain and len(scaled) == len(plain)
    assert all(math.isfinite(n) and n > 0 for n in scaled)
    # fp16 autocast changes the gradients a little, never by the loss scale.
    assert all(0.5 < s / p < 2 for s, p in zip(scaled, plain, strict=True)), (scaled, plain)


def test_a_process_trains_in_one_precision_then_another(tiny_bert_dir, tmp_path):
    """accelerate keeps one process-wide state; two runs in one process (the Python API, a study) may differ."""
    for precision in ("no", "bf16", "no"):
        raw = toy_config(
            tiny_bert_dir, tmp_path / precision, tasks=("sentiment",), train={"epochs": 1, "mixed_precision": precision}
        )
        run = loop.train(parse_config(raw), run_dir=str(tmp_path / f"run-{precision}-{len(list(tmp_path.iterdir()))}"))
        assert run.read_json(run.runtime)["precision"] == precision


def test_fp16_on_cpu_and_cuda_without_a_gpu_are_refused():
    with pytest.raises(ThawingError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", "cpu")
    if not torch.cuda.is_available():
        from thawing.model.runtime import resolve_device

        with pytest.raises(ThawingError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_an_apple_gpu_is_a_device_where_torch_has_one(monkeypatch):
    """mps: chosen by auto after CUDA, refused where torch has none; fp16 (loss scaling) stays CUDA's."""
    from thawing.model import runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "mps_available", lambda: True)
    assert runtime.resolve_device("auto") == "mps" and runtime.resolve_device("mps") == "mps"
    assert runtime.resolve_precision("auto", "mps") == "no"
    with pytest.raises(ThawingError, match="fp16 needs a CUDA GPU"):
        runtime.resolve_precision("fp16", "mps")
    monkeypatch.setattr(runtime, "mps_available", lambda: False)
    assert runtime.resolve_device("auto") == "cpu"
    with pytest.raises(ThawingError, match="no Apple GPU"):
        runtime.resolve_device("mps")
