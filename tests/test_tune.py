"""`thawing tune`: plans searched on Optuna over the tiny encoder, one run per trial; tune.json, best_plan.yaml (which
`thawing train` and `thawing plan` take), the report; pruning leaves no final/; a journal study resumed after a
SIGKILL and shared by two processes; an RDB URL (SQLite; PostgreSQL where a server can be started).

Run: `.venv/bin/python -m pytest -q tests/test_tune.py`
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from clirun import invoke
from toy import toy_config, write_config

from thawing.config import load_config, parse_config
from thawing.errors import ConfigError, InputError

optuna = pytest.importorskip("optuna")

from thawing.study.tune import choose, run_tune, with_tune  # noqa: E402  (after the skip: it needs optuna's extra)

# A small space: two shapes, one epoch a stage, so a trial is a second or two on the tiny model.
SPACE = {"shapes": [["heads"], ["heads", "top"]], "epochs": {"heads": [1, 1], "top": [1, 1]},
         "heads_lr": [1e-2, 1e-1]}
SRC = str(Path(__file__).resolve().parents[1] / "src")


def tune_config(model_dir: Path, root: Path, **tune) -> dict:
    """Two tasks, one with a test split (qtype), and a `tune:` section."""
    config = toy_config(model_dir, root, tasks=("sentiment", "qtype"))
    config["train"]["epochs"] = 1
    config["tune"] = {"space": SPACE, "startup_trials": 1, **tune}
    return config


@pytest.fixture(scope="module")
def tuned(tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    config = parse_config(tune_config(tiny_bert_dir, root, trials=3))
    return run_tune(config, root / "tune"), root


def test_every_trial_is_a_dev_only_run_and_tune_json_records_it(tuned):
    tune, _ = tuned
    out = json.loads(tune.tune_json.read_text())
    assert out["objectives"] == ["score"] and out["directions"] == ["maximize"]
    assert len(out["trials"]) == 3 and sum(out["states"].values()) == 3
    for row in out["trials"]:
        run = tune.path / row["run"]
        results = json.loads((run / "results.json").read_text()) if row["state"] == "complete" else None
        assert row["params"]["shape"] in ("heads", "heads+top")
        assert [s["name"] for s in row["plan"]] == row["params"]["shape"].split("+")
        recorded = yaml.safe_load((run / "config.yaml").read_text())
        assert recorded["tasks"]["qtype"]["data"]["test"] is None  # trials never see the test split
        if results is not None:
            assert results["splits"] == {"sentiment": "dev", "qtype": "dev"}
            assert row["values"]["score"] == results["score"]
            stages = json.loads((run / "stages.json").read_text())
            assert row["stage_s"] == pytest.approx(sum(s["wall_s"] for s in stages), abs=0.02)
            assert row["cost"] > 0 and row["wall_s"] >= row["stage_s"]


def test_only_the_chosen_trial_keeps_final_and_is_scored_on_test(tuned):
    tune, _ = tuned
    out = json.loads(tune.tune_json.read_text())
    complete = [r for r in out["trials"] if r["state"] == "complete"]
    best = max(complete, key=lambda r: r["values"]["score"])
    assert out["chosen"] == [best["number"]] == [out["best"]]
    for row in out["trials"]:
        run = tune.path / row["run"]
        assert (run / "final").is_dir() == row["chosen"]
        assert (run / "test.json").is_file() == row["chosen"]
    test = best["test"]
    assert set(test["tasks"]) == {"qtype"} and test["score"] is None  # sentiment has no test split
    assert 0.0 <= test["tasks"]["qtype"]["accuracy"] <= 1.0


def test_the_report_and_the_plot_are_written(tuned):
    tune, _ = tuned
    page = tune.index_html.read_text()
    assert "optimisation history" in page and "data:image/png;base64," in page
    assert tune.tune_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_thawing_train_and_plan_take_best_plan_yaml(tuned, tiny_bert_dir):
    tune, root = tuned
    out = json.loads(tune.tune_json.read_text())
    best = next(r for r in out["trials"] if r["number"] == out["best"])
    config = toy_config(tiny_bert_dir, root / "retrain", tasks=("sentiment", "qtype"))
    config["schedule"] = os.path.relpath(tune.best_plan, root)  # relative to the config's folder
    path = write_config(config, root / "retrain.yaml")
    code, shown = invoke("plan", str(path), "--json", stdout=True)
    assert code == 0, shown
    assert [s["name"] for s in json.loads(shown)["stages"]] == [s["name"] for s in best["plan"]]
    code, text = invoke("train", str(path), "--run-dir", str(root / "retrained"), stdout=True)
    assert code == 0, text
    recorded = yaml.safe_load((root / "retrained" / "config.yaml").read_text())
    assert [s["name"] for s in recorded["schedule"]] == [s["name"] for s in best["plan"]]
    assert recorded["schedule"][0]["lr"]["heads"] == best["params"]["heads_lr"]


def test_a_schedule_file_from_set_and_its_errors(tiny_bert_dir, tmp_path):
    config = toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",))
    path = write_config(config, tmp_path / "c.yaml")
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump([{"name": "warm", "train": ["heads"], "epochs": 2}]))
    loaded = load_config(path, [f"schedule=@{tmp_path / 'plan.yaml'}"])
    assert [(s.name, s.epochs) for s in loaded.schedule] == [("warm", 2)]
    with pytest.raises(ConfigError, match="schedule file 'nothere.yaml' is not found"):
        load_config(path, ["schedule=nothere.yaml"])
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump([{"name": "warm", "epocs": 2}]))
    with pytest.raises(ConfigError, match=r"(?s)bad\.yaml.*schedule\.0\.epocs: unknown key \(did you mean 'epochs'"):
        load_config(path, ["schedule=bad.yaml"])
    (tmp_path / "empty.yaml").write_text("{}\n")
    with pytest.raises(ConfigError, match="non-empty list of stages"):
        load_config(path, ["schedule=@empty.yaml"])


@pytest.mark.parametrize("space, message", [
    ({"shapes": [["top", "heads"]]}, "each stage at most once, in the order"),
    ({"heads_lr": [0.1, 0.01]}, "heads_lr: the low end 0.1 is above the high end 0.01"),
    ({"epochs": {"heads": [1, 2]}, "shapes": [["heads", "full"]]}, "no range for the stage"),
    ({"head_rate": [1e-4, 1e-3]}, r"tune\.space\.head_rate: unknown key \(did you mean 'head_lr'"),
])
def test_the_search_space_is_checked_like_the_rest_of_the_config(tiny_bert_dir, tmp_path, space, message):
    config = toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",))
    config["tune"] = {"space": space}
    with pytest.raises(ConfigError, match=message):
        parse_config(config)


@pytest.mark.parametrize("tasks, space, full_epochs, patience", [
    (("ner",), {}, (1, 20), 5),  # as the presets give a run of token tasks alone
    (("ner", "sentiment"), {}, (1, 4), 2),  # a mix: the sentence plans' range and plateau
    (("ner",), {"shapes": [["full"]], "epochs": {"full": [2, 3]}, "early_stopping": {"patience": 3}},
     (2, 3), 3),  # the user's own range and plateau win
])
def test_a_run_of_token_tasks_alone_searches_a_token_budget(tiny_bert_dir, tmp_path, tasks, space, full_epochs,
                                                             patience):
    config = toy_config(tiny_bert_dir, tmp_path, tasks=tasks)
    config["tune"] = {"space": space}
    searched = with_tune(parse_config(config), None, None, None).tune.space
    assert tuple(searched.epochs["full"]) == full_epochs
    assert tuple(searched.epochs.get("heads", (1, 6))) == (1, 6)  # the stages that leave the encoder frozen keep theirs
    assert searched.early_stopping.patience == patience  # every trial stage waits as long as the presets' would


def test_every_trial_stage_stops_on_the_plateau_of_the_space(tuned):
    tune, _ = tuned
    for row in json.loads(tune.tune_json.read_text())["trials"]:
        assert [s["early_stopping"]["patience"] for s in row["plan"]] == [2] * len(row["plan"])


def test_a_space_past_the_model_or_retention_without_a_probe_is_refused(tiny_bert_dir, tmp_path):
    config = tune_config(tiny_bert_dir, tmp_path)
    config["tune"]["space"] = {**SPACE, "top_layers": [1, 5]}
    with pytest.raises(ConfigError, match="top_layers: 5 layers asked; the model has 2"):
        run_tune(parse_config(config), tmp_path / "t1")
    assert not (tmp_path / "t1").exists()  # refused before the tune directory is made
    with pytest.raises(ConfigError, match="retention needs a similarity or transfer probe"):
        run_tune(parse_config(tune_config(tiny_bert_dir, tmp_path)), tmp_path / "t2", objectives=["score", "retention"])


def test_a_tune_dir_is_never_reused_and_resume_needs_a_study(tuned, tiny_bert_dir, tmp_path):
    tune, _ = tuned
    config = parse_config(tune_config(tiny_bert_dir, tmp_path, trials=3))
    with pytest.raises(InputError, match="a tune is here already: --resume continues it"):
        run_tune(config, tune.path)
    with pytest.raises(InputError, match="no tune to resume here"):
        run_tune(config, tmp_path / "none", resume=True)
    with pytest.raises(InputError, match=r"started with another config: tasks\.qtype, tasks\.sentiment differ"):
        run_tune(config, tune.path, resume=True)  # other data files: another study
    recorded = load_config(tune.tune_config, ["tune.trials=9", "tune.pruner=none"])
    with pytest.raises(InputError, match=r"another config: tune\.pruner differ \(only tune\.trials and"):
        run_tune(recorded, tune.path, resume=True)


def test_a_pruned_trial_leaves_no_final_and_its_heads_stage_is_never_judged(tiny_bert_dir, tmp_path):
    config = tune_config(tiny_bert_dir, tmp_path, trials=2)
    config["tune"]["space"] = {**SPACE, "shapes": [["heads", "top"]], "epochs": {"heads": [2, 2], "top": [1, 1]}}
    # a pruner that stops every trial at the first step it is asked about
    tune = run_tune(parse_config(config), tmp_path / "tune", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    out = json.loads(tune.tune_json.read_text())
    assert out["states"] == {"pruned": 2} and out["best"] is None and not tune.best_plan.exists()
    for row in out["trials"]:
        run = tune.path / row["run"]
        assert not (run / "final").exists() and not (run / "results.json").exists()
        finished = sum(s["wall_s"] for s in json.loads((run / "stages.json").read_text()))  # the heads stage
        assert row["stage_s"] > finished  # the stage cut short counts too, to where it stopped
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        dev = [(r["stage"], r["epoch"]) for r in records if r["split"] == "dev" and r["task"] == "*"]
        # the heads stage (frozen encoder, seconds) ran whole; the trial stopped at top's first evaluation
        assert [e for stage, e in dev if stage == "heads"][-1] == 2.0 and dev[-1][0] == "top"


def test_a_study_starts_from_the_presets_and_can_choose_the_fastest_near_the_best(tiny_bert_dir, tmp_path):
    config = tune_config(tiny_bert_dir, tmp_path, trials=3, pruner="none", tolerance=0.99)
    config["tune"]["space"] = {"shapes": [["heads"], ["full"], ["heads", "top", "discriminative"]],
                               "epochs": {"heads": [1, 1], "top": [1, 1], "discriminative": [1, 1], "full": [1, 2]}}
    code, text = invoke("tune", str(write_config(config, tmp_path / "tune.yaml")), "--tune-dir", str(tmp_path / "tune"))
    assert code == 0, text
    out = json.loads((tmp_path / "tune" / "tune.json").read_text())
    trials = {r["number"]: r for r in out["trials"]}
    assert [trials[n]["start"] for n in range(3)] == ["full", "progressive", None]
    # the last lines set the chosen plan beside the presets it started from (lines wrapped at the console's width)
    full, progressive = trials[0]["values"]["score"], trials[1]["values"]["score"]
    text = " ".join(text.split())
    assert (f"3 complete; chosen trial {out['best']}: dev " in text and f"(full preset: dev {full:.4f}, stages "
            in text and f"; progressive preset: dev {progressive:.4f}, stages " in text)

    def knobs(plan):
        return [(s["name"], s["train"], s["epochs"], s["lr"], s.get("layer_decay")) for s in plan]

    # each preset's own knobs where the space holds them: full's 4 epochs clipped to 2, progressive's top 2 layers to
    # the tiny model's 1, and its discriminative stage's heads rate is its top stage's (the space has one)
    assert knobs(trials[0]["plan"]) == [("full", ["all"], 2, {"heads": 3e-2, "encoder": 3e-5}, 1.0)]
    assert knobs(trials[1]["plan"]) == [
        ("heads", ["heads"], 1, {"heads": 3e-2}, None),
        ("top", ["heads", "projection", "layers[-1:]"], 1, {"heads": 5e-4, "encoder": 5e-5}, None),
        ("discriminative", ["heads", "projection", "layers[-2:]"], 1, {"heads": 5e-4, "encoder": 1e-4}, 0.8)]
    # tolerance 0.99: every completed trial is near enough, so the fastest is the plan chosen
    fastest = min(out["trials"], key=lambda r: r["stage_s"])
    assert out["tolerance"] == 0.99 and out["chosen"] == [fastest["number"]] == [out["best"]]
    assert "the fastest within 0.99 of the best score" in (tmp_path / "tune" / "report" / "index.html").read_text()


def test_a_preset_becomes_a_trials_knobs_inside_the_space():
    from thawing.config import TuneSpace
    from thawing.study.tune_space import preset_params
    from thawing.training.stages import preset

    def count(train):
        return 3 if train else 0  # the layers a stage's selectors pick (the model's own count in `thawing tune`)

    space = TuneSpace(lora_rank=[4, 8])
    lora = preset_params(preset("lora", 6), space, 6, ["score", "retention"], 0.05, count)
    # its optional discriminative stage is left out (trials run none); rank 16 is not offered: the nearest, 8; no
    # warm-up of its own: train.warmup's
    assert lora == {"shape": "heads+lora", "epochs.heads": 4, "heads_lr": 3e-2, "epochs.lora": 3, "head_lr": 5e-4,
                    "warmup": 0.05, "lora_rank": 8, "lora_lr": 5e-4, "distill": 0.0}
    # a run of token tasks alone: the preset's token budget (20 epochs at 1e-4, warm-up 0.1), clipped into the space
    space = TuneSpace(shapes=[["full"]], epochs={"full": (1, 8)})
    full = preset_params(preset("full", 6, token_only=True), space, 6, ["score"], 0.05, count)
    assert full == {"shape": "full", "epochs.full": 8, "head_lr": 1e-3, "warmup": 0.1, "encoder_lr": 1e-4,
                    "layer_decay": 1.0}
    with pytest.raises(ConfigError, match="no tuned plan has the stage"):
        preset_params(preset("pairs", 6), TuneSpace(), 6, ["score"], 0.1, count)


def test_choose_takes_the_fastest_trial_within_the_tolerance():
    study = optuna.create_study(direction="maximize")
    for score, seconds in ((0.80, 10.0), (0.78, 4.0), (0.70, 1.0)):
        study.add_trial(optuna.trial.create_trial(value=score, user_attrs={"stage_s": seconds}))
    done = study.get_trials()
    assert [choose(done, tolerance).number for tolerance in (0.0, 0.019, 0.02, 0.1)] == [0, 0, 1, 2]
    assert choose(done[1:], 0.0).number == 1  # with several objectives: among the Pareto front's trials


@pytest.mark.parametrize("tune, message", [
    ({"start": ["pairs"]}, r"tune\.start\.0: Input should be 'heads', 'full', 'progressive' or 'lora'"),
    ({"tolerance": 1.0}, r"tune\.tolerance: Input should be less than 1"),
])
def test_start_presets_and_tolerance_are_checked(tiny_bert_dir, tmp_path, tune, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(tune_config(tiny_bert_dir, tmp_path, **tune))


def test_a_start_preset_outside_the_space_is_refused(tiny_bert_dir, tmp_path):
    config = parse_config(tune_config(tiny_bert_dir, tmp_path, start=["lora"]))
    with pytest.raises(ConfigError, match="tune.start: lora: its stages heads\\+lora are not among tune.space.shapes"):
        run_tune(config, tmp_path / "tune")
    assert not (tmp_path / "tune").exists()


def test_several_objectives_give_a_pareto_front_in_sqlite(tiny_bert_dir, tmp_path):
    config = parse_config(tune_config(tiny_bert_dir, tmp_path, trials=3, objectives=["score", "time", "cost"]))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    tune = run_tune(config, tmp_path / "tune", storage=url, study_name="pareto")
    out = json.loads(tune.tune_json.read_text())
    assert out["directions"] == ["maximize", "minimize", "minimize"] and out["states"] == {"complete": 3}
    front = optuna.load_study(study_name="pareto", storage=url).best_trials
    assert sorted(out["chosen"]) == sorted(t.number for t in front)
    best = max(front, key=lambda t: (t.values[0], -t.number))  # the plan written: the front's best score
    assert out["best"] == best.number and yaml.safe_load(tune.best_plan.read_text()) == best.user_attrs["plan"]
    for row in out["trials"]:
        assert (tune.path / row["run"] / "final").is_dir() == (row["number"] in out["chosen"])
        assert row["values"]["time"] == pytest.approx(row["stage_s"], abs=0.01) and row["values"]["cost"] == row["cost"]
    assert "Pareto front" in tune.index_html.read_text()


def _tune_process(config: Path, tune_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "thawing", "tune", str(config), "--tune-dir", str(tune_dir),
                             *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_optuna_missing_is_named(tiny_bert_dir, tmp_path, monkeypatch):
    path = write_config(tune_config(tiny_bert_dir, tmp_path), tmp_path / "tune.yaml")
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    code, text = invoke("tune", str(path), "--tune-dir", str(tmp_path / "tune"))
    assert code == 2 and "pip install 'thawing[tune]'" in text
    assert not (tmp_path / "tune").exists()


def test_a_killed_tune_resumes_to_the_asked_number_of_trials(tiny_bert_dir, tmp_path):
    config = tune_config(tiny_bert_dir, tmp_path, trials=3, pruner="none")
    config["train"]["epochs"] = 1
    config["tune"]["space"] = {**SPACE, "epochs": {"heads": [30, 30], "top": [1, 1]}}  # long enough to be killed in
    path = write_config(config, tmp_path / "tune.yaml")
    tune = tmp_path / "tune"
    first = _tune_process(path, tune)
    _wait_for(lambda: (tune / "trials" / "trial-0000" / "metrics.jsonl").is_file())  # trial 0 is training
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (tune / "tune.json").exists()
    # SIGTERM stops the next process at an update boundary: exit 143, the trial under way failed, the way on named
    second = _tune_process(path, tune, "--resume")
    _wait_for(lambda: (tune / "trials" / "trial-0001" / "metrics.jsonl").is_file())
    second.send_signal(signal.SIGTERM)
    _, err = second.communicate(timeout=600)
    assert second.returncode == 143, err
    assert "SIGTERM: the tune stopped" in err and f"--tune-dir {tune} --resume" in " ".join(err.split())
    third = _tune_process(path, tune, "--resume")
    out, err = third.communicate(timeout=600)
    assert third.returncode == 0, err
    assert out.strip().splitlines()[-1] == str(tune)
    summary = json.loads((tune / "tune.json").read_text())
    states = {r["number"]: r["state"] for r in summary["trials"]}
    assert states[0] == "fail" and states[1] == "fail"  # killed, stopped: each failed, and run again as a new one
    assert sorted(states.values()) == ["complete", "complete", "complete", "fail", "fail"]
    assert not (tune / "trials" / "trial-0000" / "final").exists()


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL server of its own (initdb, pg_ctl; as the postgres user when the tests run as root) on a Unix
    socket; skips without the server's programs or a driver."""
    import shutil
    import tempfile

    programs = [shutil.which(p) for p in ("initdb", "pg_ctl")]
    if not all(programs):
        pytest.skip("no PostgreSQL server here (initdb and pg_ctl: apt install postgresql)")
    pytest.importorskip("psycopg2", reason="no PostgreSQL driver (pip install psycopg2-binary)")
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="thawing-pg-"))
    if as_user:
        os.chown(root, user.pw_uid, user.pw_gid)
    data, port = root / "data", 54000 + os.getpid() % 1000
    subprocess.run([*as_user, programs[0], "-D", str(data), "-A", "trust", "-U", "postgres"], check=True,
                   capture_output=True)
    options = f"-p {port} -k {root} -c listen_addresses=''"
    subprocess.run([*as_user, programs[1], "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
                   check=True, capture_output=True)
    yield f"postgresql+psycopg2://postgres@/postgres?host={root}&port={port}"
    subprocess.run([*as_user, programs[1], "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("storage", ["journal", "postgresql"])
def test_two_processes_share_one_study(tiny_bert_dir, tmp_path, request, storage):
    config = tune_config(tiny_bert_dir, tmp_path, trials=1, pruner="none")
    config["tune"]["space"] = {**SPACE, "epochs": {"heads": [20, 20], "top": [2, 2]}}
    path = write_config(config, tmp_path / "tune.yaml")
    tune = tmp_path / "tune"
    url = ["--storage", request.getfixturevalue("postgres_url")] if storage == "postgresql" else []
    # the study made by one trial, then two workers started together on it: both start up in the same time, so
    # neither can finish the 4 trials left before the other joins (a worker started once the first one's trials
    # had begun lost that race on a loaded machine: the first one finished them all while the second imported torch)
    first = _tune_process(path, tune, *url)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    workers = [_tune_process(path, tune, "--resume", "--trials", "5", *url) for _ in range(2)]
    for process in workers:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
    summary = json.loads((tune / "tune.json").read_text())
    finished = [r for r in summary["trials"] if r["state"] == "complete"]
    assert len(finished) >= 5  # each worker stops once the study has 5 (one may finish a trial beyond)
    assert {r["owner"]["pid"] for r in summary["trials"] if r["number"] > 0} == {w.pid for w in workers}
    assert len({r["number"] for r in summary["trials"]}) == len(summary["trials"])


def test_retention_is_an_objective_and_distillation_a_knob(tiny_bert_dir, tmp_path):
    texts = ["i love the film", "the movie was great", "where is paris ?", "who won the game ?",
             "the delivery was late", "bad price bad service", "when is monday ?", "thanks for the fast refund"]
    pairs = [{"sentence1": a, "sentence2": b, "score": float(i % 5)}
             for i, (a, b) in enumerate(zip(texts, texts[3:] + texts[:3], strict=True))]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    config = tune_config(tiny_bert_dir, tmp_path, trials=2, objectives=["score", "retention"])
    config["tune"]["space"] = {**SPACE, "shapes": [["heads", "top"]]}
    config["probes"] = {"sts": {"type": "similarity", "data": str(tmp_path / "pairs.jsonl")}}
    tune = run_tune(parse_config(config), tmp_path / "tune")
    out = json.loads(tune.tune_json.read_text())
    assert out["directions"] == ["maximize", "maximize"]
    for row in out["trials"]:
        results = json.loads((tune.path / row["run"] / "results.json").read_text())
        assert row["values"]["retention"] == results["probes"]["sts"]["spearman_retention"]
        top = next(s for s in row["plan"] if s["name"] == "top")
        assert 0.0 <= row["params"]["distill"] <= 1.0
        assert top["retain"] == {"distill": {"weight": row["params"]["distill"]}}


def test_a_trial_is_pruned_at_an_evaluation_inside_a_stage(tiny_bert_dir, tmp_path):
    """One stage of three epochs (an evaluation after each, and one of its start: heads from centroids): a pruner
    that waits for step 2 prunes at the second evaluation after training began, inside the stage, which therefore
    never ends (no stages.json entry, no final/)."""
    config = tune_config(tiny_bert_dir, tmp_path, trials=1)
    config["tune"]["space"] = {"shapes": [["full"]], "epochs": {"full": [3, 3]}}
    config["train"]["head_init"] = "centroids"  # as by default: the stage's start is evaluated first
    tune = run_tune(parse_config(config), tmp_path / "tune",
                    pruner=optuna.pruners.ThresholdPruner(lower=2.0, n_warmup_steps=2))
    out = json.loads(tune.tune_json.read_text())
    assert out["states"] == {"pruned": 1}
    run = tune.path / out["trials"][0]["run"]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scores = [line for line in lines if line.get("split") == "dev" and line.get("task") == "*"]  # the score lines
    assert [line["epoch"] for line in scores] == [0.0, 1.0, 2.0]  # the start is never judged
    assert not (run / "stages.json").exists() or json.loads((run / "stages.json").read_text()) == []
    assert not (run / "final").exists()
