"""Several processes training one model on CPU through gloo: `accelerate launch --num_processes 2 -m thawing train`
with configs/accelerate/ddp.yaml (DDP) or configs/accelerate/fsdp.yaml (FSDP2) ends with the weights one process
trains at the same global batch, in one run directory; a run stopped by a signal (under torchrun) resumes with two
processes to the same weights.

Each two-process run starts two Python processes that import torch and transformers: about 10-20 s on the shared
2-core machine. The runs compared with one process have no dropout (model or heads): each process draws its own
masks, which one process would draw differently.

Run: `.venv/bin/python -m pytest -q tests/test_distributed.py`
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from toy import toy_config, write_config

from thawing import distributed
from thawing.cli import app
from thawing.config import parse_config
from thawing.errors import ConfigError, InputError
from thawing.model.groups import parameter_groups
from thawing.training import loop
from thawing.training.setup import prepare
from thawing.training.stages import build_plan
from thawing.training.stepping import fsdp_settings

REPO = Path(__file__).resolve().parents[1]
# Free ports, chosen by the launchers: another job on the machine may hold the default one (29500).
LAUNCHERS = {"accelerate": [str(Path(sys.executable).with_name("accelerate")), "launch", "--main_process_port", "0"],
             "torchrun": [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2"]}
DDP_CONFIG = str(REPO / "configs" / "accelerate" / "ddp.yaml")
TOLERANCE = 1e-5  # fp32, two processes against one: float reduction order only

# Every path a stage can take: cached heads (the feature cache, built once), the top layer over the boundary cache
# (with L2-SP), the whole model (with distillation); grad_accum 2, and a task of 9 examples, whose last micro-batch
# of one item leaves the second process an empty slice.
# (On this data each stage beats the one before, so the plan runs all three.)
SCHEDULE = [
    {"name": "heads", "train": ["heads"], "epochs": 1},
    {"name": "top", "train": ["heads", "layers[-1:]"], "epochs": 2, "retain": {"l2sp": {"weight": 0.01}}},
    {"name": "all", "train": ["all"], "epochs": 2, "lr": {"heads": 0.03, "encoder": 0.001},
     "retain": {"distill": {"weight": 0.5}}},
]


def _environment() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for name in [k for k in env if k.startswith(("ACCELERATE_", "FSDP_"))] + ["RANK", "WORLD_SIZE", "LOCAL_RANK"]:
        env.pop(name, None)
    return env


def _launch(args: list[str], cwd: Path, launcher: str = "accelerate") -> subprocess.CompletedProcess:
    return subprocess.run([*LAUNCHERS[launcher], *args], cwd=cwd, env=_environment(), capture_output=True, text=True,
                          timeout=240)


def _no_dropout(model_dir: Path, root: Path) -> Path:
    """A copy of a fixture model with its dropout off (each process would draw its own masks)."""
    target = root / "model"
    shutil.copytree(model_dir, target)
    config = json.loads((target / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (target / "config.json").write_text(json.dumps(config))
    return target


def _config(model_dir: Path, root: Path, schedule: list, **train) -> dict:
    raw = toy_config(model_dir, root, schedule=schedule)
    raw["tasks"]["sentiment"]["limit"] = {"train": 9}
    for task in raw["tasks"].values():
        task["head"] = {"dropout": 0.0}
    raw["train"].update(grad_accum=2, **train)
    raw["probes"] = {"drift": {"type": "drift", "data": raw["tasks"]["sentiment"]["data"]["dev"]}}
    return raw


def _largest_difference(first: Path, second: Path) -> float:
    """The largest absolute difference between the final heads and encoder weights of two runs."""
    worst = 0.0
    for name in ("heads.safetensors", "encoder/model.safetensors"):
        mine, theirs = load_file(str(first / "final" / name)), load_file(str(second / "final" / name))
        assert mine.keys() == theirs.keys()
        worst = max([worst] + [(mine[k].float() - theirs[k].float()).abs().max().item() for k in mine])
    return worst


def _records(run: Path) -> list[tuple]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(r["stage"], r["step"], r["split"], r["task"]) for r in map(json.loads, lines)]


@pytest.fixture(scope="module")
def bert(tiny_bert_dir, tmp_path_factory) -> Path:
    return _no_dropout(tiny_bert_dir, tmp_path_factory.mktemp("bert"))


def test_a_micro_batch_splits_into_contiguous_slices():
    indices = [7, 3, 9, 1, 4]
    slices = [distributed.shard(indices, parts=3, index=i) for i in range(3)]
    assert slices == [[7, 3], [9, 1], [4]]
    assert [distributed.shard([5], parts=2, index=i) for i in range(2)] == [[5], []]
    assert distributed.shard(indices) == indices  # one process takes the whole micro-batch


def test_commands_other_than_train_refuse_to_run_under_a_launcher(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(app, ["plan", str(tmp_path / "config.yaml")])
    assert isinstance(result.exception, InputError) and "only `thawing train`" in str(result.exception)


def _fsdp_problems(model_dir: Path, root: Path, monkeypatch, env: dict, schedule: list, **train) -> str:
    """What `fsdp_settings` refuses, for the launcher variables `env` and a run config."""
    for name, value in {"WORLD_SIZE": "2", "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", **env}.items():
        monkeypatch.setenv(name, value)
    raw = toy_config(model_dir, root, tasks=("sentiment",), schedule=schedule)
    raw["train"].update(train)
    config = parse_config(raw)
    model = prepare(config).model
    with pytest.raises(ConfigError) as caught:
        fsdp_settings(config, build_plan(config, parameter_groups(model), None, model))
    return str(caught.value)


def test_fsdp_refuses_what_it_does_not_support(bert, tmp_path, monkeypatch):
    full = [{"name": "all", "train": ["all"], "epochs": 1}]
    refused = _fsdp_problems(bert, tmp_path, monkeypatch, {"WORLD_SIZE": "1", "FSDP_VERSION": "1",
                                                           "FSDP_OFFLOAD_PARAMS": "true"}, full)
    assert "needs several processes" in refused and "fsdp_version 1" in refused
    assert "fsdp_offload_params: true is not supported" in refused
    schedule = [{"name": "lora", "train": ["heads"], "epochs": 1, "lora": {"r": 2}},
                {"name": "all", "train": ["all"], "epochs": 1, "retain": {"l2sp": {"weight": 0.1}}}]
    refused = _fsdp_problems(bert, tmp_path, monkeypatch, {}, schedule, compile=True, mixed_precision="fp16")
    assert "stage 'lora': LoRA" in refused and "stage 'all': retain.l2sp" in refused and "train.compile" in refused
    assert "fp16" in refused


def test_two_processes_with_ddp_train_the_one_process_model(bert, tmp_path):
    config = _config(bert, tmp_path, SCHEDULE)
    single = loop.train(parse_config(config), run_dir=str(tmp_path / "single"))
    work = tmp_path / "launch"
    work.mkdir()
    path = write_config(config, tmp_path / "config.yaml")
    result = _launch(["--config_file", DDP_CONFIG, "--num_processes", "2", "-m", "thawing", "train", str(path)], work)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((work / "runs").iterdir())
    assert len(runs) == 1 and result.stdout.strip().endswith(runs[0].name)  # one run directory, named once
    difference = _largest_difference(runs[0], single.path)
    print(f"DDP, 2 processes against 1: max abs difference of final weights {difference:.2e}")
    assert difference <= TOLERANCE
    assert _records(runs[0]) == _records(single.path)  # the same evaluations and training records, once each
    assert (runs[0] / "report" / "index.html").is_file() and "no report" not in result.stderr
    runtime = json.loads((runs[0] / "runtime.json").read_text())
    assert (runtime["world_size"], runtime["distributed"]) == (2, "ddp")
    mine, theirs = (json.loads((r / "results.json").read_text()) for r in (runs[0], single.path))
    assert mine["tasks"].keys() == theirs["tasks"].keys()
    assert mine["score"] == pytest.approx(theirs["score"], abs=1e-6)
    stages = json.loads((runs[0] / "stages.json").read_text())
    assert [s.get("boundary_cache") for s in stages] == [None, "layers.1", None] and stages[0]["cached"]


def test_two_processes_asked_for_and_one_started_is_refused_before_a_run_directory(bert, tmp_path):
    """accelerate's --cpu without --multi_cpu starts one process for --num_processes 2: say so, do not train alone."""
    work = tmp_path / "launch"
    work.mkdir()
    path = write_config(_config(bert, tmp_path, SCHEDULE), tmp_path / "config.yaml")
    result = _launch(["--cpu", "--num_processes", "2", "-m", "thawing", "train", str(path)], work)
    # thawing's process exits 2 with its message; accelerate's launcher reports any failed command with a traceback
    assert result.returncode != 0 and "returned non-zero exit status 2" in result.stderr, result.stderr[-3000:]
    assert "error: accelerate started a single process" in result.stderr and "--multi_cpu" in result.stderr
    assert not (work / "runs").exists()


DRIVER = """
import os, signal, sys
from thawing.config import load_config
from thawing.training import loop
from thawing.training.events import UpdateDone

config, run_dir, stage, update = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def events(event):  # only the main process hears events: it alone receives the signal
    if isinstance(event, UpdateDone) and (event.stage, event.update) == (stage, update):
        os.kill(os.getpid(), signal.SIGTERM)

loop.train(load_config(config), run_dir=run_dir, callbacks=[events])
"""


def _stop_and_resume(config: dict, root: Path, stage: str, update: int, launch: list[str]) -> Path:
    """Two processes: the main one gets SIGTERM at `update` of `stage` (so both stop at a checkpoint inside it),
    then `thawing train --resume` with two processes finishes the run. Returns the run directory. `launch`: the
    accelerate launch options of both launches, or [] to stop under torchrun (and resume with accelerate's DDP)."""
    path = write_config(config, root / "config.yaml")
    driver = root / "driver.py"
    driver.write_text(DRIVER)
    run = root / "stopped"
    arguments = [str(driver), str(path), str(run), stage, str(update)]
    if launch:
        result = _launch([*launch, "--num_processes", "2", *arguments], root)
    else:
        result = _launch(arguments, root, launcher="torchrun")
        launch = ["--config_file", DDP_CONFIG]
    assert result.returncode != 0 and "SIGTERM" in result.stderr, result.stderr[-3000:]
    state = json.loads((run / "checkpoints" / "step" / "state.json").read_text())
    assert state["stage"]["update"] == update and not (run / "results.json").exists()
    result = _launch([*launch, "--num_processes", "2", "-m", "thawing", "train", "--resume", str(run)], root)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def test_two_processes_stopped_by_a_signal_resume_to_the_same_weights(tiny_bert_dir, tmp_path):
    # With dropout (BERT's and the heads'): each process resumes its own random state, so the resumed run draws the
    # masks the uninterrupted one drew.
    config = _config(tiny_bert_dir, tmp_path, SCHEDULE, checkpoint_every=100)
    for task in config["tasks"].values():
        task["head"] = {"dropout": 0.1}
    path = write_config(config, tmp_path / "config.yaml")
    result = _launch(["--multi_gpu", "--num_processes", "2", "-m", "thawing", "train", str(path), "--run-dir",
                      str(tmp_path / "uninterrupted")], tmp_path)  # accelerate's flags, without a config file
    assert result.returncode == 0, result.stderr[-3000:]
    run = _stop_and_resume(config, tmp_path, "top", 3, [])
    difference = _largest_difference(run, tmp_path / "uninterrupted")
    print(f"DDP with dropout, stopped and resumed against uninterrupted (2 processes each): max abs difference "
          f"{difference:.2e}")
    assert difference == 0.0
    assert _records(run) == _records(tmp_path / "uninterrupted")


# FSDP: the heads alone, then every weight (the full-parameter stage FSDP is for), on the Qwen2 fixture (no dropout).
FSDP_SCHEDULE = [
    {"name": "heads", "train": ["heads"], "epochs": 1},
    {"name": "all", "train": ["all"], "epochs": 2, "lr": {"heads": 0.03, "encoder": 0.001}},
]
FSDP_CONFIG = str(REPO / "configs" / "accelerate" / "fsdp.yaml")


@pytest.fixture(scope="module")
def fsdp_reference(tiny_qwen2_dir, tmp_path_factory) -> tuple[dict, Path]:
    """The FSDP tests' config (stage checkpoints every 3 updates: the sharded optimizer state is gathered; heads
    started from their centroids, as by default, which the sharded copy must be made after) and its one-process
    run."""
    root = tmp_path_factory.mktemp("fsdp")
    config = _config(tiny_qwen2_dir, root, FSDP_SCHEDULE, checkpoint_every=3, head_init="centroids")
    return config, loop.train(parse_config(config), run_dir=str(root / "single")).path


def test_two_processes_with_fsdp_train_the_one_process_model(fsdp_reference, tmp_path):
    config, single = fsdp_reference
    path = write_config(config, tmp_path / "config.yaml")
    result = _launch(["--config_file", FSDP_CONFIG, "--num_processes", "2", "-m", "thawing", "train", str(path),
                      "--run-dir", str(tmp_path / "fsdp")], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "fsdp" / "runtime.json").read_text())["distributed"] == "fsdp"
    difference = _largest_difference(tmp_path / "fsdp", single)
    print(f"FSDP, 2 processes against 1: max abs difference of final weights {difference:.2e}")
    assert difference <= TOLERANCE
    assert _records(tmp_path / "fsdp") == _records(single)


def test_fsdp_stopped_inside_its_full_stage_resumes_to_the_same_weights(fsdp_reference, tmp_path):
    config, single = fsdp_reference
    run = _stop_and_resume(config, tmp_path, "all", 4, ["--config_file", FSDP_CONFIG])
    difference = _largest_difference(run, single)
    print(f"FSDP, 2 processes stopped and resumed against 1: max abs difference of final weights {difference:.2e}")
    assert difference <= TOLERANCE
    assert _records(run) == _records(single)
