"""Several processes training one model on CPU through gloo: `accelerate launch --num_processes 2 -m thawing train`
(DDP, and FSDP2 through configs/accelerate_fsdp.yaml) ends with the weights one process trains at the same global
batch, in one run directory; a run stopped by a signal resumes with two processes to the same weights.

Each two-process run starts two Python processes that import torch and transformers: about 10-20 s on the shared
2-core machine. Models and heads without dropout: each process draws its own dropout masks, which one process would
draw differently.

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
from thawing.config import parse_config
from thawing.training import loop

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")
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


def _launch(args: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    result = subprocess.run([str(ACCELERATE), "launch", *args], cwd=cwd, env=_environment(), capture_output=True,
                            text=True, timeout=timeout)
    return result


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


def test_two_processes_with_ddp_train_the_one_process_model(bert, tmp_path):
    config = _config(bert, tmp_path, SCHEDULE)
    single = loop.train(parse_config(config), run_dir=str(tmp_path / "single"))
    work = tmp_path / "launch"
    work.mkdir()
    path = write_config(config, tmp_path / "config.yaml")
    result = _launch(["--multi_gpu", "--num_processes", "2", "-m", "thawing", "train", str(path)], cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((work / "runs").iterdir())
    assert len(runs) == 1 and result.stdout.strip().endswith(runs[0].name)  # one run directory, named once
    difference = _largest_difference(runs[0], single.path)
    print(f"DDP, 2 processes against 1: max abs difference of final weights {difference:.2e}")
    assert difference <= TOLERANCE
    assert _records(runs[0]) == _records(single.path)  # the same evaluations and training records, once each
    runtime = json.loads((runs[0] / "runtime.json").read_text())
    assert (runtime["world_size"], runtime["distributed"]) == (2, "ddp")
    mine, theirs = (json.loads((r / "results.json").read_text()) for r in (runs[0], single.path))
    assert mine["tasks"].keys() == theirs["tasks"].keys()
    assert mine["score"] == pytest.approx(theirs["score"], abs=1e-6)
    stages = json.loads((runs[0] / "stages.json").read_text())
    assert [s.get("boundary_cache") for s in stages] == [None, "layers.1", None] and stages[0]["cached"]
