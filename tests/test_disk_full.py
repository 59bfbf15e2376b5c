"""A full disk is an error like any other: exit 2 naming the path and the space, nothing half-written, and a resumed
run counts only the space it will newly write. Each test runs in a small tmpfs mounted in a private mount namespace
(`unshare -rm`, no root needed where user namespaces are allowed); without one the tests skip.

Run: `.venv/bin/python -m pytest -q tests/test_disk_full.py`
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from toy import toy_config, write_config

THAWING = [sys.executable, "-m", "thawing"]


def _small_disk_possible() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /tmp"],
                           capture_output=True)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _small_disk_possible(), reason="needs a private tmpfs mount (unshare -rm)")


def _on_small_disk(mount: Path, kib: int, *steps: str) -> list[subprocess.CompletedProcess]:
    """Run shell `steps` one after another with `mount` a tmpfs of `kib` KiB; a step `resize N` makes it N KiB. Every
    step's output is written to a file and read back, and the tmpfs is copied to `mount`/../kept at the end (the
    mount ends with the shell)."""
    mount.mkdir()
    script = [f"mount -t tmpfs -o size={kib}k tmpfs {mount} || exit 99"]
    for i, step in enumerate(steps):
        if step.startswith("resize "):
            step = f"mount -o remount,size={step.split()[1]}k {mount}"
        script.append(f"{step} > {mount.parent}/out{i}.txt 2>&1; echo $? > {mount.parent}/rc{i}.txt")
    script.append(f"cp -a {mount} {mount.parent}/kept")
    subprocess.run(["unshare", "-rm", "sh", "-c", "\n".join(script)], check=True, env=os.environ)
    return [subprocess.CompletedProcess(s, int((mount.parent / f"rc{i}.txt").read_text()),
                                        (mount.parent / f"out{i}.txt").read_text()) for i, s in enumerate(steps)]


def test_disk_full_while_writing_final_exits_2_and_resume_finishes(tiny_bert_dir, tmp_path):
    config = toy_config(tiny_bert_dir, tmp_path, tasks=("sentiment",))
    config["train"]["checkpoint"] = False  # the checkpoints' own space check would refuse so small a disk up front
    path = write_config(config, tmp_path / "config.yaml")
    reference = subprocess.run([*THAWING, "train", str(path), "--run-dir", str(tmp_path / "ref")],
                               capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr
    run = tmp_path / "disk" / "run"
    # 60 KiB hold the run's records but not final/ (about 128 KB with this model's tokenizer), which is written next.
    full, left, _, resumed = _on_small_disk(tmp_path / "disk", 60, f"{' '.join(THAWING)} train {path} --run-dir {run}",
                                            f"ls -A {run}", "resize 4096", f"{' '.join(THAWING)} train --resume {run}")
    assert full.returncode == 2, full.stdout
    assert "Traceback" not in full.stdout
    message = full.stdout[full.stdout.index("error:"):]
    assert f"{run}/final: the disk is full" in message and "MB is free" in message and "--resume" in message
    assert "final" not in left.stdout and "config.yaml" in left.stdout  # nothing of final/ half-written
    assert resumed.returncode == 0, resumed.stdout
    results = json.loads((tmp_path / "kept" / "run" / "results.json").read_text())
    assert results["tasks"] == json.loads((tmp_path / "ref" / "results.json").read_text())["tasks"]


def test_resume_counts_only_the_space_it_will_newly_write(tmp_path):
    """The checkpoints' space check: a fresh run needs room for its checkpoints; a resumed one already holds one."""
    disk = tmp_path / "disk"
    check = textwrap.dedent(f"""
        import sys, torch
        from pathlib import Path
        from thawing.errors import ThawingError
        from thawing.training.checkpoint import disk_check
        model = torch.nn.Linear(1000, 1000)  # 4 MB of weights: the check asks 2 x 4 + 10 x 4 = 48 MB when all train
        run = Path("{disk}/run")
        (run / "checkpoints" / "stage").mkdir(parents=True)
        (run / "checkpoints" / "stage" / "state.safetensors").write_bytes(bytes(40 * 10**6))  # the one on disk
        for where in (Path("{disk}/new"), run):
            try:
                disk_check(where, model, sum(p.numel() for p in model.parameters()))
                print(where.name, "ok")
            except ThawingError as exc:
                print(where.name, "refused:", exc)
    """)
    (tmp_path / "check.py").write_text(check)
    (out,) = _on_small_disk(disk, 50 * 1024, f"{sys.executable} {tmp_path / 'check.py'}")
    assert out.returncode == 0, out.stdout
    new, resumed = out.stdout.strip().splitlines()
    assert new.startswith("new refused:") and "checkpoints need about" in new
    assert resumed == "run ok"
