"""Stage-boundary checkpoints: a run stopped in its second stage, resumed, ends exactly as the uninterrupted run.

Run: `.venv/bin/python -m pytest -q tests/test_resume.py`
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from toy import toy_config
from typer.testing import CliRunner

from thawing.cli import app
from thawing.config import parse_config
from thawing.errors import InputError
from thawing.training import loop
from thawing.training.events import Evaluated

# Trained stages (BERT's dropout draws random numbers in each); on this data the plan stops after "all".
SCHEDULE = [{"name": "heads", "train": ["heads"], "epochs": 2}, {"name": "all", "train": ["all"], "epochs": 1},
            {"name": "top", "train": ["heads", "layers[-1:]"], "epochs": 1}]


def _config(model_dir, root):
    return parse_config(toy_config(model_dir, root, schedule=SCHEDULE))


def _kill_in_stage(name: str):
    """Events that make the run die inside stage `name`, after that stage has logged metrics (as a crash would)."""

    def events(event) -> None:
        if isinstance(event, Evaluated) and event.stage == name:
            raise KeyboardInterrupt("killed")

    return events


@pytest.fixture(scope="module")
def reference(tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    return loop.train(_config(tiny_bert_dir, root), run_dir=str(root / "run"))


def test_a_stopped_run_resumes_to_the_same_result(tiny_bert_dir, tmp_path, reference):
    with pytest.raises(KeyboardInterrupt):
        loop.train(_config(tiny_bert_dir, tmp_path), run_dir=str(tmp_path / "run"),
                   callbacks=[_kill_in_stage("all")])
    state = json.loads((tmp_path / "run" / "checkpoints" / "last" / "state.json").read_text())
    assert state["stages_done"] == 1 and not (tmp_path / "run" / "results.json").exists()

    resumed = loop.resume_run(tmp_path / "run")
    assert json.loads((resumed.path / "results.json").read_text()) == json.loads(
        (reference.path / "results.json").read_text()
    )
    mine, theirs = (load_file(str(r.final / "heads.safetensors")) for r in (resumed, reference))
    for key in theirs:
        torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=1e-6)
    lines = [(m["stage"], m["step"], m["task"]) for m in resumed.read_metrics()]
    assert lines == [(m["stage"], m["step"], m["task"]) for m in reference.read_metrics()]  # no duplicates
    assert _stages(resumed) == _stages(reference)


def _stages(run) -> list[dict]:
    """stages.json without wall times (the only thing that differs between two runs)."""
    return [{k: v for k, v in s.items() if k != "wall_s"} for s in json.loads((run.path / "stages.json").read_text())]


def test_a_run_stopped_after_its_plan_ended_resumes_straight_to_the_final_model(
    tiny_bert_dir, tmp_path, monkeypatch, reference
):
    with monkeypatch.context() as patch:
        patch.setattr(loop.RunDir, "save_final",
                      lambda _self, _model: (_ for _ in ()).throw(KeyboardInterrupt("killed")))
        with pytest.raises(KeyboardInterrupt):
            loop.train(_config(tiny_bert_dir, tmp_path), run_dir=str(tmp_path / "run"))
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    resumed = loop.resume_run(tmp_path / "run")
    assert (resumed.path / "metrics.jsonl").read_text() == before  # no stage ran again
    assert json.loads((resumed.path / "results.json").read_text()) == json.loads(
        (reference.path / "results.json").read_text()
    )


def test_resume_refuses_finished_and_unstarted_runs(reference, tmp_path):
    with pytest.raises(InputError, match="finished"):
        loop.resume_run(reference.path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a thawing run directory"):
        loop.resume_run(tmp_path / "empty")


def test_resume_from_the_command_line(tiny_bert_dir, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        loop.train(_config(tiny_bert_dir, tmp_path), run_dir=str(tmp_path / "run"),
                   callbacks=[_kill_in_stage("all")])
    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "results.json").is_file() and (tmp_path / "run" / "report" / "report.md").is_file()


def test_train_takes_a_config_or_resume_not_both(tmp_path):
    for args in (
        ["train"],
        ["train", "c.yaml", "--resume", str(tmp_path)],
        ["train", "--resume", str(tmp_path), "--full"],
    ):
        result = CliRunner().invoke(app, args)
        assert isinstance(result.exception, InputError), args
