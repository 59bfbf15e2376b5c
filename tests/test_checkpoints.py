"""Checkpoints inside a stage, SIGINT/SIGTERM, the run-directory lock, crash-safe folder swaps and checkpoint clean-up.

A run killed inside a stage resumes from its last stage checkpoint, not from the stage's start, and ends identical
to the uninterrupted run: results, metrics.jsonl, heads and encoder.

Run: `.venv/bin/python -m pytest -q tests/test_checkpoints.py`
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file
from toy import toy_config
from typer.testing import CliRunner

from thawing import cli, progress
from thawing.cli import app
from thawing.config import parse_config
from thawing.errors import InputError, Interrupted
from thawing.store.atomic import building, recover, write_text
from thawing.store.run_dir import RunDir
from thawing.training import loop
from thawing.training.events import StageEnded, UpdateDone

# 16 sentiment + 12 NER training rows at batch 4: 7 updates per epoch; stage "all" runs 3 epochs (21 updates).
SCHEDULE = [{"name": "heads", "train": ["heads"], "epochs": 1}, {"name": "all", "train": ["all"], "epochs": 3}]
TRAIN = {"batch_size": 4, "seed": 0, "eval_batch_size": 8, "checkpoint_every": 2}


def _config(model_dir, root, **train):
    raw = toy_config(model_dir, root, tasks=("sentiment", "ner"), schedule=SCHEDULE, train={**TRAIN, **train})
    return parse_config(raw)


def _on_step(stage: str, update: int, action):
    """Events that call `action()` when `stage` reports update number `update`; they also record every step."""
    seen = []

    def events(event) -> None:
        if isinstance(event, UpdateDone):
            seen.append((event.stage, event.update))
            if (event.stage, event.update) == (stage, update):
                action()

    events.seen = seen
    return events


def _kill():
    raise KeyboardInterrupt("killed")


@pytest.fixture(scope="module")
def reference(tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    return loop.train(_config(tiny_bert_dir, root, keep_checkpoints=True), run_dir=str(root / "run"))


def _assert_identical(run, reference):
    assert run.read_json(run.results) == reference.read_json(reference.results)
    assert _timeless(run) == _timeless(reference)  # every evaluation and training record, once, the same values
    for name in ("heads.safetensors", "encoder/model.safetensors"):
        mine, theirs = load_file(str(run.final / name)), load_file(str(reference.final / name))
        assert mine.keys() == theirs.keys()
        for key in theirs:
            assert torch.equal(mine[key], theirs[key]), (name, key)


def _timeless(run) -> list[dict]:
    """metrics.jsonl without the clock's fields (training records carry a time and a speed)."""
    return [{k: v for k, v in m.items() if k not in ("time", "examples_per_s")} for m in run.read_metrics()]


def test_a_run_killed_in_a_stages_third_epoch_resumes_from_its_last_stage_checkpoint(
    tiny_bert_dir, tmp_path, reference
):
    with pytest.raises(KeyboardInterrupt):
        loop.train(_config(tiny_bert_dir, tmp_path), run_dir=str(tmp_path / "run"),
                   callbacks=[_on_step("all", 17, _kill)])
    state = json.loads((tmp_path / "run" / "checkpoints" / "step" / "state.json").read_text())
    assert state["stages_done"] == 1 and state["stage"]["update"] == 16 and state["stage"]["epoch"] == 2

    events = _on_step("none", 0, _kill)
    resumed = loop.resume_run(tmp_path / "run", callbacks=[events])
    assert events.seen[0] == ("all", 17)  # not the stage's first update
    _assert_identical(resumed, reference)
    assert not resumed.checkpoints.exists()  # removed once the run finished (train.keep_checkpoints is off)
    assert reference.checkpoint.is_dir()  # kept where asked


def test_checkpointing_inside_stages_changes_nothing(tiny_bert_dir, tmp_path, reference):
    run = loop.train(_config(tiny_bert_dir, tmp_path, checkpoint_every=None), run_dir=str(tmp_path / "run"))
    _assert_identical(run, reference)


def test_sigint_saves_a_checkpoint_and_says_how_to_resume(tiny_bert_dir, tmp_path, reference):
    interrupt = _on_step("all", 5, lambda: os.kill(os.getpid(), signal.SIGINT))
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN when the suite runs in the background
    with pytest.raises(Interrupted) as caught:
        loop.train(_config(tiny_bert_dir, tmp_path), run_dir=str(tmp_path / "run"), callbacks=[interrupt])
    assert caught.value.exit_code == 130 and f"thawing train --resume {tmp_path / 'run'}" in str(caught.value)
    assert interrupt.seen[-1] == ("all", 5)  # it stopped at the next update boundary
    state = json.loads((tmp_path / "run" / "checkpoints" / "step" / "state.json").read_text())
    assert state["stage"]["update"] == 5  # a checkpoint of that update, although checkpoint_every is 2
    assert signal.getsignal(signal.SIGINT) == before  # the handlers are put back
    _assert_identical(loop.resume_run(tmp_path / "run"), reference)


def test_sigint_after_the_last_update_of_the_last_stage_still_stops_with_130(tiny_bert_dir, tmp_path):
    """No update boundary comes after the signal: the stage's end is the boundary, and finishing is left to --resume."""
    raw = toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",), schedule=[SCHEDULE[1]], train=TRAIN)
    reference = loop.train(parse_config(raw), run_dir=str(tmp_path / "reference"))

    def at_stage_end(event):
        if isinstance(event, StageEnded):
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted) as caught:
        loop.train(parse_config(raw), run_dir=str(tmp_path / "run"), callbacks=[at_stage_end])
    assert caught.value.exit_code == 130 and "thawing train --resume" in str(caught.value)
    run = RunDir(tmp_path / "run")
    assert not run.final.exists() and not run.results.exists()
    resumed = loop.resume_run(run.path)
    assert resumed.read_json(resumed.results) == reference.read_json(reference.results)


def test_a_second_sigint_stops_at_once_and_says_how_to_resume(tiny_bert_dir, tmp_path, monkeypatch, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",), schedule=SCHEDULE,
                                            train=TRAIN)))

    def twice():
        os.kill(os.getpid(), signal.SIGINT)  # asks for a stop at the next boundary
        os.kill(os.getpid(), signal.SIGINT)  # does not wait for it

    class Printer:  # the command line's progress printer, with two signals sent at one step
        def __init__(self, *args, **kwargs):
            pass

        __call__ = staticmethod(_on_step("all", 3, twice))

        def stop(self):
            pass

    monkeypatch.setattr(progress, "ProgressPrinter", Printer)
    monkeypatch.setattr("sys.argv", ["thawing", "train", str(config), "--run-dir", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 130
    err = capsys.readouterr().err
    assert "SIGINT twice: training stopped at once" in err and f"thawing train --resume {tmp_path / 'run'}" in err
    assert "its last checkpoint is kept in" in err and "Traceback" not in err


def test_sigterm_on_the_command_line_exits_143(tiny_bert_dir, tmp_path, monkeypatch):

    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",), schedule=SCHEDULE,
                                            train=TRAIN)))
    terminate = _on_step("all", 3, lambda: os.kill(os.getpid(), signal.SIGTERM))

    class Printer:  # the command line's progress printer, with a signal sent at one step
        def __init__(self, *args, **kwargs):
            pass

        __call__ = staticmethod(terminate)

        def stop(self):
            pass

    monkeypatch.setattr(progress, "ProgressPrinter", Printer)
    result = CliRunner().invoke(app, ["train", str(config), "--run-dir", str(tmp_path / "run")])
    assert isinstance(result.exception, Interrupted) and result.exception.exit_code == 143
    assert "SIGTERM" in str(result.exception) and (tmp_path / "run" / "checkpoints" / "step").is_dir()


def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_start(tiny_bert_dir, tmp_path, reference):
    with pytest.raises(KeyboardInterrupt):
        loop.train(_config(tiny_bert_dir, tmp_path), run_dir=str(tmp_path / "run"),
                   callbacks=[_on_step("heads", 1, _kill)])
    assert not (tmp_path / "run" / "checkpoints").exists()
    _assert_identical(loop.resume_run(tmp_path / "run"), reference)


def test_a_second_process_on_a_run_directory_is_refused(tiny_bert_dir, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        loop.train(_config(tiny_bert_dir, tmp_path), run_dir=str(tmp_path / "run"),
                   callbacks=[_on_step("all", 3, _kill)])
    run = RunDir(tmp_path / "run")
    holder = run.lock()  # another process would hold this lock; a lock is per open file, so this stands in
    try:
        with pytest.raises(InputError, match=f"in use by process {os.getpid()}"):
            loop.resume_run(run.path)
    finally:
        holder.close()
    assert loop.resume_run(run.path).results.is_file()  # released: it resumes
    assert not (run.path / "run.lock").exists() and not (run.path / "run.lock.pid").exists()  # finished: no lock left


@pytest.mark.parametrize("moment", ["building", "after moving the old aside", "removing the old"])
def test_a_folder_swap_killed_at_any_moment_leaves_a_complete_folder(tmp_path, moment):
    target = tmp_path / "last"
    target.mkdir()
    (target / "state.json").write_text("old")
    tmp, old = tmp_path / ".last.tmp", tmp_path / ".last.old"
    tmp.mkdir()
    (tmp / "state.json").write_text("new" if moment != "building" else "half")
    if moment == "after moving the old aside":
        os.replace(target, old)
    elif moment == "removing the old":
        old.mkdir()
    recover(target)
    expected = "old" if moment == "building" else "new" if moment == "after moving the old aside" else "old"
    assert (target / "state.json").read_text() == expected
    assert not tmp.exists() and not old.exists()
    with building(target) as new:  # and the next swap works
        (new / "state.json").write_text("next")
    assert (target / "state.json").read_text() == "next" and sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_resume_after_a_kill_between_the_renames_of_a_checkpoint_swap(tiny_bert_dir, tmp_path, reference):
    with pytest.raises(KeyboardInterrupt):
        loop.train(_config(tiny_bert_dir, tmp_path), run_dir=str(tmp_path / "run"),
                   callbacks=[_on_step("all", 9, _kill)])
    step = tmp_path / "run" / "checkpoints" / "step"
    os.replace(step, step.with_name(".step.old"))  # where the swap was: the old folder aside, the new one not in
    _assert_identical(loop.resume_run(tmp_path / "run"), reference)


def test_too_little_disk_for_checkpoints_is_refused_before_training(tiny_bert_dir, tmp_path, monkeypatch):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage._replace(free=1000))
    with pytest.raises(Exception, match="B free, checkpoints need about"):
        loop.train(_config(tiny_bert_dir, tmp_path), run_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_files_written_atomically_get_the_modes_of_plain_files(tmp_path, umask, mode):
    """The temporary file is mkstemp's (0600); the renamed result must read like any file the user writes."""
    before = os.umask(umask)
    try:
        write_text(tmp_path / "results.json", "{}")
    finally:
        os.umask(before)
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == mode


def test_a_resume_takes_the_lock_before_it_touches_the_checkpoints(tiny_bert_dir, tmp_path):
    """A live run writing a stage checkpoint has `.step.tmp` beside `step/`; a second `--resume` of the same run must
    be refused before its checkpoint reading repairs (deletes) what the live run is writing (the hostile pass, #26)."""
    with pytest.raises(KeyboardInterrupt):
        loop.train(_config(tiny_bert_dir, tmp_path), run_dir=str(tmp_path / "run"),
                   callbacks=[_on_step("all", 3, _kill)])
    run = RunDir(tmp_path / "run")
    writing = run.checkpoints / ".step.tmp"  # what the live run is in the middle of writing
    writing.mkdir()
    (writing / "state.json").write_text("{}")
    holder = run.lock()  # the live run
    try:
        with pytest.raises(InputError, match="in use by"):
            loop.resume_run(run.path)
        assert (writing / "state.json").is_file()  # untouched
    finally:
        holder.close()


def test_a_trained_model_s_weights_read_like_its_other_files(tiny_bert_dir, tmp_path):
    """The hostile pass (#26): safetensors wrote heads.safetensors and the encoder's weights 0600, the rest 0644."""
    before = os.umask(0o022)
    try:
        run = loop.train(_config(tiny_bert_dir, tmp_path), run_dir=str(tmp_path / "run"))
    finally:
        os.umask(before)
    modes = {p.relative_to(run.final).as_posix(): p.stat().st_mode & 0o777 for p in run.final.rglob("*") if p.is_file()}
    assert modes["heads.safetensors"] == modes["encoder/model.safetensors"] == modes["tasks.json"] == 0o644, modes
