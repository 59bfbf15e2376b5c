"""Training's callbacks and progress: typed events in order through `thawing.train(callbacks=)`, the printer that
`thawing train` and `thawing.train(verbose=True)` use (plain lines between evaluations without a terminal, no speed
before a second has passed), and what `thawing.train` returns.

Run: `.venv/bin/python -m pytest -q tests/test_events.py`
"""

from __future__ import annotations

import io

from rich.console import Console
from toy import toy_config

import thawing
from thawing.progress import ProgressPrinter
from thawing.training.events import Evaluated, Finished, StageEnded, StageStarted, UpdateDone

SCHEDULE = [{"name": "heads", "train": ["heads"], "epochs": 2}, {"name": "all", "train": ["all"], "epochs": 1}]


def test_callbacks_hear_every_stage_update_and_evaluation_in_order(tiny_bert_dir, tmp_path, capsys):
    events = []
    config = toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",), schedule=SCHEDULE)
    run = thawing.train(config, run_dir=str(tmp_path / "run"), callbacks=[events.append], verbose=False)
    kinds = [type(e).__name__ for e in events]
    assert kinds.index("StageStarted") < kinds.index("UpdateDone") and kinds[-1] == "Finished"
    stages = run.read_json(run.stages)
    started = [e.stage for e in events if isinstance(e, StageStarted)]
    ended = [e for e in events if isinstance(e, StageEnded)]
    assert started == [e.stage for e in ended] == [s["stage"] for s in stages]
    assert [e.summary["updates"] for e in ended] == [s["updates"] for s in stages]
    for stage in stages:  # each stage's updates, numbered 1..n, between its start and its end
        updates = [e.update for e in events if isinstance(e, UpdateDone) and e.stage == stage["stage"]]
        assert updates == list(range(1, stage["updates"] + 1))
    evaluated = [e for e in events if isinstance(e, Evaluated)]
    dev = [m for m in run.read_metrics() if m.get("split") == "dev" and m["task"] == "*"]
    assert [(e.step, e.score) for e in evaluated] == [(m["step"], m["metrics"]["score"]) for m in dev]
    [finished] = [e for e in events if isinstance(e, Finished)]
    assert finished.results == run.read_json(run.results)
    assert capsys.readouterr().err == ""  # verbose=False: nothing printed


def test_train_shows_progress_unless_told_not_to_and_returns_a_readable_run(tiny_bert_dir, tmp_path, capsys):
    config = toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",), schedule=SCHEDULE)
    run = thawing.train(config, run_dir=str(tmp_path / "run"))
    err = capsys.readouterr().err
    assert "stage 'heads'" in err and "final model" in err
    score = run.read_json(run.results)["score"]
    assert repr(run) == f"RunDir({str(run.path)!r}, score={score:.4f})"


def _updates(stage: str, total: int, examples: int = 8) -> list[UpdateDone]:
    return [UpdateDone(stage, i, total, 0.5, {"sentiment": 0.5}, examples) for i in range(1, total + 1)]


def test_without_a_terminal_progress_is_a_line_every_tenth_of_a_stage():
    out = io.StringIO()
    printer = ProgressPrinter(Console(file=out, force_terminal=False, width=200))
    for event in _updates("all", 40):
        printer(event)
    lines = [line for line in out.getvalue().splitlines() if line.startswith("all: update")]
    assert [line.split()[2] for line in lines] == [f"{n}/40," for n in (1, 5, 9, 13, 17, 21, 25, 29, 33, 37, 40)]


def test_no_speed_is_shown_before_a_second_has_passed():
    out = io.StringIO()
    printer = ProgressPrinter(Console(file=out, force_terminal=False, width=200))
    printer(_updates("heads", 1, examples=100_000)[0])  # a first update finishes in microseconds after the start
    assert "ex/s" not in out.getvalue()


def test_progress_shows_the_losses_once_read():
    """Losses come on the updates that write records (`train.log_every`); between them an update carries None."""
    out = io.StringIO()
    printer = ProgressPrinter(Console(file=out, force_terminal=False, width=200))
    for i in range(1, 21):
        read = i % 5 == 0
        printer(UpdateDone("all", i, 20, 0.5 if read else None, {"sentiment": 0.5} if read else None, 8))
    lines = [line for line in out.getvalue().splitlines() if line.startswith("all: update")]
    assert lines[0] == "all: update 1/20"  # nothing read yet: no loss, no dangling comma
    assert lines[-1].startswith("all: update 20/20, loss sentiment 0.500")
