"""What the GPU defaults do on a GPU: bf16 autocast, flash varlen packing and compiled layers in training, packed
embedding. Skipped without CUDA (CI has none); run on a lent GPU with `python -m pytest -q tests/test_gpu.py`.

The fixture's Qwen2 has heads of 64 dimensions, like real models, so the flash kernel runs; the shared tiny
fixtures' 8-dimensional heads show what happens where the kernel refuses a head size.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_qwen2
from toy import toy_config

from thawing.config import parse_config
from thawing.model.loading import load_encoder
from thawing.model.runtime import apply, resolve
from thawing.training.loop import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SENTENCES = ["who won the game ?", "the movie was great", "i hate the film", "where is paris ?", "john is in paris"] * 7


@pytest.fixture(scope="module")
def qwen2_64_dir(tmp_path_factory) -> Path:
    """A 2-layer random Qwen2 with 64-dimensional heads (2 query heads, 1 key/value head) and a Dense layer."""
    return save_qwen2(
        tmp_path_factory.mktemp("qwen2-64"), hidden=128, layers=2, heads=2, kv_heads=1, intermediate=256, dense=64
    )


def test_defaults_train_in_bf16_with_varlen_packing_and_compiled_layers(qwen2_64_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="thawing")
    config = parse_config(toy_config(qwen2_64_dir, tmp_path))
    run = train(config, run_dir=str(tmp_path / "run"))
    runtime = json.loads((run.path / "runtime.json").read_text())  # what ran is recorded
    assert runtime["precision"] == "bf16" and runtime["compile"] is True
    assert runtime["packing"] == runtime["inference_packing"] == "varlen"  # evaluation packs too
    results = json.loads((run.path / "results.json").read_text())
    assert all(np.isfinite(v) for task in results["tasks"].values() for v in task.values())


def test_varlen_in_bf16_matches_padded(qwen2_64_dir):
    encoder = load_encoder(str(qwen2_64_dir)).to("cuda")
    batch = encoder.pad(encoder.token_ids(SENTENCES))
    runtime = resolve(encoder, device="cuda", precision="bf16", training=False,
                      sample=lambda: (batch["input_ids"], batch["attention_mask"]))
    assert runtime.inference_packing == "varlen"
    with runtime.autocast():
        padded = encoder.encode(SENTENCES)
        apply(runtime, encoder)
        packed = encoder.encode(SENTENCES)
    cosine = (padded * packed).sum(1) / np.linalg.norm(padded, axis=1) / np.linalg.norm(packed, axis=1)
    assert cosine.min() > 0.999  # bf16 rounding differs between the kernels, nothing else


def test_a_head_size_the_kernel_refuses_falls_back(tiny_qwen2_dir, tmp_path, caplog):
    """8-dimensional heads: the self-test on the model's own head layout decides, and training still runs."""
    caplog.set_level(logging.INFO, logger="thawing")
    config = parse_config(toy_config(tiny_qwen2_dir, tmp_path))
    run = train(config, run_dir=str(tmp_path / "run"))
    assert (run.path / "results.json").is_file()
    runtime = json.loads((run.path / "runtime.json").read_text())
    assert runtime["packing"] == "varlen" or any("training" in note for note in runtime["notes"])  # or why not


def test_attention_dropout_trains_padded_and_eager(tiny_bert_dir, tmp_path, caplog):
    """BERT trains with attention dropout, which flash varlen lacks: training pads, uncompiled."""
    caplog.set_level(logging.INFO, logger="thawing")
    config = parse_config(toy_config(tiny_bert_dir, tmp_path))
    run = train(config, run_dir=str(tmp_path / "run"))
    assert "attention dropout" in caplog.text
    assert "compiling" not in caplog.text  # compiled padded batches measured slower than eager ones
    assert (run.path / "results.json").is_file()


def test_embed_defaults_on_gpu(qwen2_64_dir, tmp_path):
    from typer.testing import CliRunner

    from thawing.cli import app

    src = tmp_path / "texts.txt"
    src.write_text("\n".join(SENTENCES) + "\n")
    out = {}
    for name, extra in (("gpu", []), ("cpu", ["--device", "cpu"])):
        result = CliRunner().invoke(
            app, ["embed", "-m", str(qwen2_64_dir), "-i", str(src), "-o", str(tmp_path / f"{name}.npy"), *extra]
        )
        assert result.exit_code == 0, result.output
        out[name] = np.load(tmp_path / f"{name}.npy")
    cosine = (out["gpu"] * out["cpu"]).sum(1) / np.linalg.norm(out["gpu"], axis=1) / np.linalg.norm(out["cpu"], axis=1)
    assert cosine.min() > 0.99  # bf16 + varlen on the GPU, fp32 padded on CPU


def _encoder_delta(model_dir: Path, run) -> torch.Tensor:
    before, after = load_encoder(str(model_dir)).state_dict(), load_encoder(str(run.encoder_dir)).state_dict()
    return torch.cat([(after[k] - before[k]).flatten().float() for k in before])


def test_fp16_unscales_gradients_before_clipping(qwen2_64_dir, tmp_path):
    """fp16: accelerate scales the loss and unscales the prepared optimizer's gradients before clipping. Clipping
    scaled gradients (the bug this guards against) would shrink every update by the loss scale, 65,536: the encoder
    would barely move. So fp16 must move it about as far, and the same way, as fp32 does."""
    common = {"epochs": 2, "seed": 0, "batch_size": 4, "grad_clip": 1.0, "lr": {"encoder": 1e-3}}
    runs = {}
    for precision in ("no", "fp16"):
        raw = toy_config(qwen2_64_dir, tmp_path / precision, tasks=("sentiment",),
                         train={**common, "mixed_precision": precision})
        runs[precision] = train(parse_config(raw), run_dir=str(tmp_path / precision / "run"))
    fp32, fp16 = (_encoder_delta(qwen2_64_dir, runs[p]) for p in ("no", "fp16"))
    ratio = (fp16.norm() / fp32.norm()).item()
    cosine = torch.nn.functional.cosine_similarity(fp16, fp32, dim=0).item()
    assert 0.5 < ratio < 2 and cosine > 0.8, (ratio, cosine)
    summary = json.loads((runs["fp16"].path / "stages.json").read_text())[0]
    assert summary.get("nonfinite_updates", 0) == 0  # inf steps are the scaler's to skip (skipped_updates)
