"""Weight interpolation (`thawing interpolate`): alpha 0 is the pretrained encoder exactly, alpha 1 the fine-tuned
one; heads are re-fitted per alpha; the chosen model is saved beside the run's, never over it.

Run: `.venv/bin/python -m pytest -q tests/test_interpolate.py`
"""

from __future__ import annotations

import json

import pytest
import torch
from test_probes import _probe_files
from toy import toy_config, write_config
from typer.testing import CliRunner

from thawing.cli import app
from thawing.config import parse_config
from thawing.errors import InputError
from thawing.model.loading import load_encoder
from thawing.study.interpolate import interpolate
from thawing.training import loop


@pytest.fixture(scope="module")
def tuned(tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("interpolate")
    schedule = [{"name": "all", "train": ["all"], "epochs": 3, "lr": {"encoder": 1e-3}}]
    raw = toy_config(tiny_bert_dir, root, tasks=("qtype",), schedule=schedule, probes=_probe_files(root / "probes"),
                     train={"batch_size": 4, "seed": 0})
    return loop.train(parse_config(raw), run_dir=str(root / "run"))


def test_the_ends_are_the_pretrained_and_the_fine_tuned_encoder(tuned, tiny_bert_dir):
    report = interpolate(tuned.path, [0.0, 0.5, 1.0], floor=0.0)
    points = {p["alpha"]: p for p in report["points"]}
    start = points[0.0]["probes"]
    assert start["drift"]["drift"] == 0.0 and start["pairs"]["spearman_retention"] == 1.0  # exactly pretrained
    assert points[1.0]["probes"]["drift"]["drift"] == tuned.read_json(tuned.results)["probes"]["drift"]["drift"]
    saved = json.loads(tuned.interpolate_json.read_text())
    assert saved["chosen"] in (0.0, 0.5, 1.0) and tuned.interpolate_png.is_file()
    assert (tuned.interpolated_final / "heads.safetensors").is_file() and tuned.final.is_dir()  # beside, not over
    # The chosen model is the encoder at its alpha (exactly the pretrained or the fine-tuned one at the ends) ...
    alpha = saved["chosen"]
    start, end = load_encoder(str(tiny_bert_dir)).state_dict(), load_encoder(str(tuned.encoder_dir)).state_dict()
    mine = load_encoder(str(tuned.interpolated_final / "encoder")).state_dict()
    for key, value in mine.items():
        expected = start[key] if alpha == 0 else end[key] if alpha == 1 else (1 - alpha) * start[key] + alpha * end[key]
        torch.testing.assert_close(value, expected, atol=0 if alpha in (0, 1) else 1e-6, rtol=0)
    # ... and the only copy kept: no alpha's run holds a model of its own
    assert not any((tuned.interpolate_dir / p["run"] / "final").exists() for p in report["points"])
    with pytest.raises(InputError, match="already interpolated"):
        interpolate(tuned.path, [0.0])


def test_the_floor_rules_out_alphas_below_it():
    from thawing.study.interpolate import choose

    rows = [{"alpha": 0.0, "dev_score": 0.5, "retention": 1.0}, {"alpha": 1.0, "dev_score": 0.9, "retention": 0.8}]
    assert choose(rows, 0.95)["alpha"] == 0.0 and choose(rows, None)["alpha"] == 1.0 and choose(rows, 1.1) is None


def test_bad_alphas_exit_2(tuned):
    for alphas in ("0,2", "a,b", "0.5,0.5"):
        result = CliRunner().invoke(app, ["interpolate", str(tuned.path), "--alphas", alphas, "--no-save"])
        assert isinstance(result.exception, InputError), (alphas, result.output)


def test_the_command_line_prints_each_alpha(tiny_bert_dir, tmp_path):
    raw = toy_config(tiny_bert_dir, tmp_path, tasks=("qtype",), schedule=[{"name": "all", "train": ["all"]}])
    run = loop.train(parse_config(raw), run_dir=str(tmp_path / "run"))
    write_config(raw, tmp_path / "c.yaml")
    result = CliRunner().invoke(app, ["interpolate", str(run.path), "--alphas", "0,1", "--no-save"])
    assert result.exit_code == 0, result.output
    assert "alpha 0:" in result.output and "alpha 1:" in result.output and "chosen: alpha" in result.output
    assert not run.interpolated_final.exists()
