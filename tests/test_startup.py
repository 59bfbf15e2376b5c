"""Start-up: `thawing --help`, every command's `--help` and `--version` import none of the heavy libraries (torch,
transformers, ...), so they answer at once. Asserted on the import structure, in a fresh interpreter each, never on
a time (timings: bench/cli_startup.py, docs/benchmarks.md).

Run: `.venv/bin/python -m pytest -q tests/test_startup.py`
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import thawing

SRC = Path(__file__).resolve().parents[1] / "src"
# Each costs from a tenth of a second (numpy) to seconds (torch, transformers) to import. Not pydantic: typer
# (0.2x) builds its own pydantic adapters for a command's options as soon as the command parses, `--help` included.
HEAVY = ("torch", "transformers", "accelerate", "sklearn", "matplotlib", "datasets", "numpy", "pandas", "scipy",
         "safetensors", "seqeval", "peft", "sentence_transformers", "onnx", "onnxruntime", "yaml")


def fresh(code: str) -> str:
    """Run `code` in a new interpreter that imports this checkout's thawing; returns its stdout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def loaded_after(argv: list[str]) -> dict:
    """The heavy modules in sys.modules after the CLI ran `argv` (in a fresh interpreter), with its exit code and
    output."""
    code = f"""
import contextlib, io, json, sys
from thawing.cli import app
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        app({argv!r}, prog_name="thawing")
        code = 0
    except SystemExit as exc:
        code = exc.code
print(json.dumps({{"heavy": sorted(m for m in {HEAVY!r} if m in sys.modules), "code": code, "out": out.getvalue()}}))
"""
    return json.loads(fresh(code).splitlines()[-1])


def commands() -> list[str]:
    return json.loads(fresh("import json, typer; from thawing.cli import app; "
                            "print(json.dumps(sorted(typer.main.get_command(app).commands)))"))


def test_importing_the_cli_and_the_package_is_light():
    found = fresh(f"import sys, thawing, thawing.cli, thawing.errors; print(sorted(m for m in {HEAVY!r} "
                  "if m in sys.modules))")
    assert found.strip() == "[]"


@pytest.mark.parametrize("argv", [["--help"], ["--version"]], ids=["help", "version"])
def test_top_level_options_import_nothing_heavy(argv):
    result = loaded_after(argv)
    assert result["code"] in (0, None) and result["heavy"] == [], result


def test_every_command_help_imports_nothing_heavy():
    names = commands()
    assert {"train", "embed", "evaluate", "predict", "plan", "report", "study", "export"} <= set(names)
    for name in names:  # commands added later are held to it too
        result = loaded_after([name, "--help"])
        assert result["code"] in (0, None) and "Usage" in result["out"], (name, result)
        assert result["heavy"] == [], f"`thawing {name} --help` imports {result['heavy']}"


def test_public_api_loads_on_first_use():
    # `thawing.train` and friends are module attributes resolved on first access (a module __getattr__).
    watched = (*HEAVY, "thawing.config")
    found = fresh(f"import sys, thawing; f = thawing.load_config; print(sorted(m for m in {watched!r} "
                  "if m in sys.modules))")
    assert found.strip() == "['thawing.config', 'yaml']"
    assert callable(thawing.train) and callable(thawing.load) and callable(thawing.load_encoder)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        thawing.nothing  # noqa: B018


def test_version(monkeypatch):
    result = loaded_after(["--version"])
    assert result["out"] == f"thawing {thawing.version()}\n"

    import importlib.metadata

    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", absent)  # run from a checkout that is not installed
    assert thawing.version() == thawing.__version__


@pytest.mark.parametrize("command", ["predict", "embed", "evaluate"])
def test_an_existing_output_is_refused_before_anything_heavy_loads(tmp_path, command):
    out = tmp_path / "out.jsonl"
    out.write_text("an earlier result\n")
    argv = {"predict": ["predict", "a-run", "-i", "in.txt", "-o", str(out)],
            "embed": ["embed", "-m", "a-model", "-i", "in.txt", "-o", str(out)],
            "evaluate": ["evaluate", "a-run", "--output", str(out)]}[command]
    code = f"""
import json, sys
from thawing.cli import app
from thawing.errors import ThawingError
try:
    app({argv!r}, prog_name="thawing")
    message = ""
except ThawingError as exc:
    message = str(exc)
print(json.dumps({{"heavy": sorted(m for m in {HEAVY!r} if m in sys.modules), "message": message}}))
"""
    result = json.loads(fresh(code).splitlines()[-1])
    assert "output exists" in result["message"] and result["heavy"] == [], result
