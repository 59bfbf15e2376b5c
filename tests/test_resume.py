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


def _stopped(tiny_bert_dir, root):
    with pytest.raises(KeyboardInterrupt):
        loop.train(_config(tiny_bert_dir, root), run_dir=str(root / "run"), callbacks=[_kill_in_stage("all")])
    return root / "run"


def _edit(run, change) -> None:
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text())
    change(config)
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def test_a_resume_refuses_an_edited_config_naming_each_change(tiny_bert_dir, tmp_path):
    """The hostile pass (#26): a changed seed and max_length gave exit 0 and another model; a changed stage rate was
    silently ignored."""
    run = _stopped(tiny_bert_dir, tmp_path)
    metrics = (run / "metrics.jsonl").read_text()

    def edit(config):
        config["train"]["seed"] = 7
        config["model"]["max_length"] = 40
        config["schedule"][1]["lr"] = {"encoder": 0.5}

    _edit(run, edit)
    with pytest.raises(InputError, match="config.yaml was edited") as caught:
        loop.resume_run(run)
    message = str(caught.value)
    assert "train.seed: 0 -> 7" in message and "model.max_length" in message and "schedule" in message
    assert (run / "metrics.jsonl").read_text() == metrics and not (run / "results.json").exists()


def test_a_resume_takes_a_changeable_key_when_told_and_records_it(tiny_bert_dir, tmp_path):
    run = _stopped(tiny_bert_dir, tmp_path)
    _edit(run, lambda config: config["train"].update(log_every=3))
    with pytest.raises(InputError, match="--allow-config-change train.log_every"):
        loop.resume_run(run)
    with pytest.raises(InputError, match="only train.log_every"):
        loop.resume_run(run, allow_config_change=["train.log_every", "train.seed"])
    assert loop.resume_run(run, allow_config_change=["train.log_every"]).results.is_file()
    record = json.loads((run / "config_record.json").read_text())
    assert record["config"]["train"]["log_every"] == 3
    assert [c["changed"] for c in record["changes"]] == [{"train.log_every": [10, 3]}]


def test_the_cli_passes_allowed_changes_and_refuses_them_without_resume(tiny_bert_dir, tmp_path):
    run = _stopped(tiny_bert_dir, tmp_path)
    _edit(run, lambda config: config["train"].update(log_every=4))
    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--allow-config-change", "train.log_every"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["train", str(run / "config.yaml"), "--allow-config-change", "train.log_every"])
    assert isinstance(result.exception, InputError) and "applies to --resume" in str(result.exception)
