"""The freezing study: every scenario of the design in one directory (presets, the config's own plan, a frozen head,
a schedule file, a single task), summarised from each run's own files, compared against the frozen baseline, and
ending with the design's claims as measured lines.

Run: `.venv/bin/python -m pytest -q tests/test_study.py`
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml
from loop_records import add_loop_records
from safetensors.torch import load_file
from toy import toy_config, write_config
from typer.testing import CliRunner

from thawing.cli import app
from thawing.config import parse_config
from thawing.errors import ConfigError, InputError
from thawing.store.run_dir import RunDir
from thawing.study.claims import NOT_MEASURED, NOT_SUPPORTED, SUPPORTED, check_claims
from thawing.study.report import study_json, write_study_report
from thawing.study.run import combine, run_study, summarize_run
from thawing.study.scenarios import Scenario, parse_scenarios

PLAN = [{"name": "warm", "train": ["heads"], "epochs": 1},
        {"name": "top", "train": ["heads", "layers[-1:]"], "epochs": 1, "lr": {"encoder": 1.0e-4}}]
SWEEP = [{"name": "heads", "train": ["heads"], "epochs": 1},
         {"name": "top", "train": ["heads", "layers[-1:]"], "epochs": 1, "lr": {"encoder": 3.0e-4}}]
SCENARIOS = ["frozen", "heads", "config", "head-frozen:sentiment", "sweep=SWEEP", "single:qtype"]


@pytest.fixture(scope="module")
def study(tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    (root / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    config = parse_config(toy_config(tiny_bert_dir, root, tasks=("sentiment", "qtype"), schedule=PLAN))
    specs = [s.replace("SWEEP", str(root / "sweep.yaml")) for s in SCENARIOS]
    return run_study(config, specs, str(root / "study"), isolate=False)


def rows_of(study) -> dict:
    return json.loads((study.path / "study.json").read_text())["scenarios"]


def test_each_scenario_is_a_complete_run_summarised_from_its_own_files(study):
    rows = rows_of(study)
    assert list(rows) == ["frozen", "heads", "config", "head-frozen:sentiment", "sweep", "single:qtype"]
    for name, row in rows.items():
        run = study.path / name.replace(":", "-")
        results = json.loads((run / "results.json").read_text())
        evaluation = json.loads((run / "report" / "evaluation.json").read_text())
        assert row["tasks"] == results["tasks"] and row["score"] == results["score"]
        for task, splits in evaluation["tasks"].items():
            for split, e in splits.items():
                assert row[split][task] == e["metrics"]  # every task's dev and test metric of the final model
        stages = json.loads((run / "stages.json").read_text())
        assert row["updates"] == sum(s["updates"] for s in stages)
        assert [p["stage"] for p in row["plan"]] == [s["stage"] for s in stages]
    assert rows["frozen"]["updates"] == 0 and rows["heads"]["updates"] > 0
    assert rows["heads"]["trainable_params"] > 0 == rows["frozen"]["trainable_params"]
    assert "rss_peak_bytes" not in rows["heads"]  # in-process: the high-water mark would not be this scenario's


def test_a_frozen_head_keeps_the_config_plan_without_that_head(study):
    rows = rows_of(study)
    heads = load_file(str(study.path / "config" / "final" / "heads.safetensors"))
    sentiment = sum(v.numel() for k, v in heads.items() if k.startswith("sentiment."))
    frozen, plan = rows["head-frozen:sentiment"], rows["config"]
    assert [p["stage"] for p in frozen["plan"]] == [s["name"] for s in PLAN]
    assert [p["trainable_params"] for p in frozen["plan"]] == [p["trainable_params"] - sentiment for p in plan["plan"]]
    recorded = yaml.safe_load((study.path / "head-frozen-sentiment" / "config.yaml").read_text())
    assert all("-head:sentiment" in stage["train"] for stage in recorded["schedule"])
    assert frozen["kind"] == "head-frozen" and frozen["task"] == "sentiment"


def test_a_schedule_file_and_a_single_task(study):
    rows = rows_of(study)
    sweep = json.loads((study.path / "sweep" / "stages.json").read_text())
    assert [s["stage"] for s in sweep] == [s["name"] for s in SWEEP] and rows["sweep"]["kind"] == "schedule"
    single = rows["single:qtype"]
    assert list(single["tasks"]) == ["qtype"]
    for name, row in rows.items():
        if name == "single:qtype":
            assert "vs_single" not in row
            continue
        ratio = row["tasks"]["qtype"]["accuracy"] / single["tasks"]["qtype"]["accuracy"]
        assert row["vs_single"]["qtype"]["ratio"] == pytest.approx(ratio)
    text = (study.path / "study.md").read_text()
    assert f"{rows['heads']['vs_single']['qtype']['ratio']:.1%} of single-task" in text


def test_study_md_compares_against_the_frozen_baseline(study):
    rows = rows_of(study)
    text = (study.path / "study.md").read_text()
    line = next(x for x in text.splitlines() if x.startswith("| heads |"))
    heads, frozen = rows["heads"]["tasks"]["qtype"]["accuracy"], rows["frozen"]["tasks"]["qtype"]["accuracy"]
    assert f"{heads:.4f} ({heads - frozen:+.4f})" in line
    assert (study.path / "study.png").read_bytes().startswith(b"\x89PNG")


def test_study_ends_with_the_claims_computed_from_its_rows(study):
    data = json.loads((study.path / "study.json").read_text())
    assert data["reference"] == "config"
    claims = check_claims(data["scenarios"], data["reference"])
    assert data["claims"] == [c.to_json() for c in claims]
    text = (study.path / "study.md").read_text()
    section = text.split("## Claims\n", 1)[1].strip().splitlines()
    assert len(section) == len(claims)
    for line, claim in zip(section, claims, strict=True):
        assert line == f"- {claim.line()} **{claim.status.capitalize()}.**"
    by_start = {c.claim.split(":")[0].split(".")[0]: c.status for c in claims}
    assert by_start["Whole network frozen means zero gradient updates (the frozen baseline)"] == SUPPORTED
    assert by_start["Progressive unfreezing forgets less than full fine-tuning"] == NOT_MEASURED
    page = (study.path / "report" / "index.html").read_text()
    assert "<script" not in page and page.count('<img src="data:image/png;base64,') >= 3


def test_scenarios_are_parsed_from_their_forms(tiny_bert_dir, tmp_path, monkeypatch):
    config = parse_config(toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment", "qtype"), schedule="progressive"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rates.yaml").write_text(yaml.safe_dump(SWEEP))
    parsed = parse_scenarios(config, ["full", "head-frozen:qtype", "lr3=rates.yaml", "single:sentiment"], 6)
    assert [s.name for s in parsed] == ["full", "head-frozen:qtype", "lr3", "single:sentiment"]
    assert parsed[0].config.schedule == "full"
    stages = parsed[1].config.schedule  # the preset, expanded for 6 layers, without the qtype head
    assert [s.name for s in stages] == ["heads", "top", "discriminative", "full"]
    assert stages[1].train == ["heads", "projection", "layers[-2:]", "-head:qtype"]
    assert [s.name for s in parsed[2].config.schedule] == ["heads", "top"] and parsed[2].source == "rates.yaml"
    assert list(parsed[3].config.tasks) == ["sentiment"] and parsed[3].config.schedule == "progressive"
    plain = parse_config(toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment", "qtype")))
    assert parse_scenarios(plain, ["head-frozen:qtype"], 6)[0].config.freeze == ["head:qtype"]


@pytest.mark.parametrize("specs, error, message", [
    (["heads", "everything"], InputError, "frozen, heads, full, progressive, lora, pairs, config, head-frozen:<task>"),
    (["heads", "heads"], InputError, "repeated: heads"),
    (["head-frozen:topic"], InputError, "no task 'topic'"),
    (["x=missing.yaml"], InputError, "missing.yaml: schedule file not found"),
    (["x=typo.yaml"], ConfigError, "typo.yaml: 1 problem.*schedule.0.epoch: unknown key \\(did you mean 'epochs"),
    (["heads", "x=selector.yaml"], ConfigError, "scenario 'x'.*unknown parameter group selector 'layerz'"),
    (["frozen=selector.yaml"], InputError, "not a preset's name"),
])
def test_bad_scenarios_are_refused_before_anything_runs(tiny_bert_dir, tmp_path, monkeypatch, specs, error, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump([{"name": "a", "train": ["heads"], "epoch": 1}]))
    (tmp_path / "selector.yaml").write_text(yaml.safe_dump([{"name": "a", "train": ["layerz"]}]))
    config = parse_config(toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",)))
    with pytest.raises(error, match=re.compile(message, re.S)):
        run_study(config, specs, str(tmp_path / "s"), isolate=False)
    assert not (tmp_path / "s").exists()


def test_probes_and_training_records_reach_the_study(study, tmp_path):
    """The loop's probe results and training lines (added by hand), through the public summary functions."""
    rows = {}
    for name, source, kept in (("progressive", "config", 0.97), ("full", "heads", 0.88)):
        run = tmp_path / name
        shutil.copytree(study.path / source, run)
        add_loop_records(run, retention={s: kept for s in ("warm", "top", "heads")}, drift={s: 1 - kept for s in
                                                                                            ("warm", "top", "heads")})
        summary = summarize_run(RunDir(run), 0, {"rss_peak_bytes": 2**30, "process_s": 5.0})
        assert summary["probes"]["stsb"]["spearman_retention"] == pytest.approx(kept)
        assert summary["probe_seconds"] == 1.5 and summary["task_share"] == pytest.approx({"qtype": 0.5,
                                                                                            "sentiment": 0.5})
        rows[name] = combine([summary], Scenario(name, "preset", None), [])
    out = tmp_path / "study"
    out.mkdir()
    RunDir(out).write_json(out / "study.json", study_json("toy", [0], rows, None, isolated=True))
    write_study_report(out)
    text = (out / "study.md").read_text()
    full = next(line for line in text.splitlines() if line.startswith("| full | spearman_retention 0.8800 "))
    assert full.endswith("| drift 0.1200 |") and "| progressive | spearman_retention 0.9700 (spearman 0.7760)" in text
    assert "progressive kept 97.0% of the pretrained stsb spearman; full fine-tuning kept 88.0%" in text
    assert "1.00 GiB" in text and "50.0% of updates" in text
    claims = json.loads((out / "study.json").read_text())["claims"]
    assert {c["status"] for c in claims if c["claim"].startswith("Progressive unfreezing forgets")} == {SUPPORTED}
    rows["full"], rows["progressive"] = rows["progressive"], rows["full"]  # the other way round: not supported
    claims = [c for c in check_claims(rows) if c.claim.startswith("Progressive unfreezing forgets")]
    assert {c.status for c in claims} == {NOT_SUPPORTED}


def test_study_page_renders_in_a_headless_browser(study, tmp_path):
    from browser import open_page

    record = open_page(study.path / "report" / "index.html", tmp_path / "study.png")
    assert record["errors"] == [] and record["console"] == []
    assert record["images"] and all(w > 0 and h > 0 and rw > 0 and rh > 0 for w, h, rw, rh, _ in record["images"])


def test_several_seeds_report_means_and_ranges(tiny_bert_dir, tmp_path):
    config = parse_config(toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment", "qtype")))
    study = run_study(config, ["frozen", "heads"], str(tmp_path / "s"), seeds=[0, 1], isolate=False)
    rows = rows_of(study)
    for name, row in rows.items():
        per_seed = [json.loads((study.path / f"{name}-seed{seed}" / "results.json").read_text()) for seed in (0, 1)]
        values = [r["tasks"]["qtype"]["accuracy"] for r in per_seed]
        assert row["tasks"]["qtype"]["accuracy"] == pytest.approx(sum(values) / 2)
        assert row["spread"]["tasks"]["qtype"]["accuracy"] == [min(values), max(values)]
        assert [r["seed"] for r in row["per_seed"]] == [0, 1]
    heads = rows["heads"]["spread"]["tasks"]["qtype"]["accuracy"]
    text = (study.path / "study.md").read_text()
    assert heads[0] == heads[1] or f"[{heads[0]:.4f}-{heads[1]:.4f}]" in text
    with pytest.raises(InputError, match="distinct"):
        run_study(config, ["heads"], str(tmp_path / "t"), seeds=[1, 1])


def test_study_command_trains_each_scenario_in_its_own_process(tiny_bert_dir, tmp_path):
    path = write_config(toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",)), tmp_path / "c.yaml")
    result = CliRunner().invoke(app, ["study", str(path), "--scenarios", "heads", "--study-dir", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(tmp_path / "s")
    data = json.loads((tmp_path / "s" / "study.json").read_text())
    row = data["scenarios"]["heads"]
    assert data["memory"] == "each scenario in its own process"
    assert 0 < row["rss_peak_bytes"] <= row["process_rss_peak_bytes"] and row["process_s"] >= row["wall_s"]
    (tmp_path / "s" / "study.md").unlink()
    shutil.rmtree(tmp_path / "s" / "report")
    result = CliRunner().invoke(app, ["report", str(tmp_path / "s")])
    assert result.exit_code == 0 and (tmp_path / "s" / "study.md").is_file()
    assert (tmp_path / "s" / "report" / "index.html").is_file()
    bad = ["study", str(path), "--scenarios", "heads,warm", "--study-dir", str(tmp_path / "t")]
    result = CliRunner().invoke(app, bad)
    assert isinstance(result.exception, InputError) and result.exception.exit_code == 2
    assert "unknown scenario 'warm'" in str(result.exception)
    assert not (tmp_path / "t").exists()


def test_the_lora_preset_runs_as_a_scenario(tiny_bert_dir, tmp_path):
    """Its plan resolves adapter targets against the model, before anything trains."""
    config = parse_config(toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",), train={"epochs": 1}))
    study = run_study(config, ["lora"], str(tmp_path / "s"), isolate=False)
    stages = json.loads((study.path / "lora" / "stages.json").read_text())
    assert [s["stage"] for s in stages][:2] == ["heads", "lora"] and stages[1]["lora"]["params"] > 0


def test_anchored_scenarios_add_retain_to_every_stage(tiny_bert_dir, tmp_path):
    raw = toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",), schedule="progressive",
                     retain={"l2sp": {"weight": 0.5}})
    parsed = parse_scenarios(parse_config(raw), ["full+distill", "full+distill+l2sp", "head-frozen:sentiment+l2sp"], 6)
    assert parsed[0].config.retain.distill.weight == 1.0 and parsed[0].config.retain.distill.loss == "cosine"
    assert parsed[1].config.retain.l2sp.weight == 0.5  # the config's own setting, not the default
    assert parsed[0].base == "full" and parsed[1].anchors == ("distill", "l2sp")
    assert parsed[2].kind == "head-frozen" and parsed[2].task == "sentiment" and parsed[2].dir_name == (
        "head-frozen-sentiment+l2sp")
    assert all("-head:sentiment" in s.train for s in parsed[2].config.schedule if s.train)
    for bad in ("full+dist", "full+l2sp+l2sp"):
        with pytest.raises(InputError, match="name each of distill, l2sp at most once"):
            parse_scenarios(parse_config(raw), [bad], 6)


def test_a_study_interpolates_a_scenario_and_prices_retention(tiny_bert_dir, tmp_path):
    from test_probes import _probe_files

    schedule = [{"name": "all", "train": ["all"], "epochs": 2, "lr": {"encoder": 1e-3}}]
    raw = toy_config(tiny_bert_dir, tmp_path, tasks=("qtype",), schedule=schedule,
                     probes=_probe_files(tmp_path / "probes"))
    study = run_study(parse_config(raw), ["config", "config+l2sp"], str(tmp_path / "s"), isolate=False,
                      interpolate="config", alphas=[1.0, 0.0])
    rows = rows_of(study)
    assert list(rows) == ["config", "config+l2sp", "config@0", "config@1"]
    start, end = rows["config@0"], rows["config@1"]
    assert start["kind"] == "interpolated" and start["source"] == "config" and start["alpha"] == 0.0
    assert start["probes"]["pairs"]["spearman_retention"] == 1.0 and start["probes"]["drift"]["drift"] == 0.0
    trained = rows["config"]["probes"]["drift"]["drift"]
    assert trained > 0 and end["probes"]["drift"]["drift"] == pytest.approx(trained, abs=1e-6)
    assert (study.path / end["per_seed"][0]["run"] / "results.json").is_file()
    assert rows["config+l2sp"]["base"] == "config"
    claims = json.loads((study.path / "study.json").read_text())["claims"]
    anchoring = [c for c in claims if c["claim"].startswith("Anchoring keeps more")]
    price = [c for c in claims if c["claim"].startswith("Keeping 99% of the pretrained pairs Spearman")]
    assert anchoring and all("config+l2sp" in c["measured"] for c in anchoring)
    assert len(price) == 1 and "the best that kept 99%" in price[0]["measured"]  # alpha 0 keeps 100%
    with pytest.raises(InputError, match="not one of the study's scenarios"):
        run_study(parse_config(raw), ["config"], str(tmp_path / "t"), interpolate="full")
    assert not (tmp_path / "t").exists()


def test_a_study_whose_seeds_agree_still_gets_its_figures():
    """Three seeds of the same accuracy: their float mean can lie an ulp outside their range, which matplotlib
    refused as a negative error bar (a 3-seed study lost its report to it)."""
    from thawing.reporting.figures import scenario_bars

    below, above = (0.7 + 0.7 + 0.7) / 3, (0.1 + 0.1 + 0.1) / 3
    assert below < 0.7 and above > 0.1  # the cases themselves
    png = scenario_bars("final metric per task", "accuracy", {"qtype": {"frozen": (below, 0.7, 0.7),
                                                                        "heads": (above, 0.1, 0.1)}})
    assert png is not None and png.startswith(b"\x89PNG")
