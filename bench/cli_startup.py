"""CLI start-up time: wall seconds of `thawing --help`, `thawing --version` and every command's `--help`, each in a
fresh process, several runs each (median, min, max; and the median CPU time), and which heavy libraries each one
imports (`-X importtime`).
With `--compare SRC`, another source tree (e.g. an older checkout's src/) runs the same commands, alternating with
this one run by run, so load from other work on the machine hits both alike.

Run (the comparison tree: a fixed commit's src/, e.g. `git archive 84fadfa src | tar -x -C /tmp/base`):
    HF_HUB_OFFLINE=1 .venv/bin/python bench/cli_startup.py --runs 10 --compare /tmp/base/src \
        --output bench/results/cli_startup.json
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from report import write_report  # noqa: E402

HEAVY = ("torch", "transformers", "accelerate", "sklearn", "matplotlib", "datasets", "numpy", "pydantic")


def commands(src: Path) -> list[list[str]]:
    """`--help`, `--version` and `<command> --help` for every command the tree's CLI has."""
    listed = run_python(src, ["-c", "import typer; from thawing.cli import app; "
                                    "print(' '.join(sorted(typer.main.get_command(app).commands)))"])
    return [["--help"], ["--version"]] + [[name, "--help"] for name in listed.stdout.split()]


def run_python(src: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)


def timed(src: Path, argv: list[str]) -> tuple[float, float, int]:
    """Wall seconds and CPU seconds (user + system) of `python -m thawing ARGV` in a fresh process, and its exit
    code. Start-up runs on one core, so on a busy machine its CPU time is close to what the wall time would be on an
    idle one."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = run_python(src, ["-m", "thawing", *argv])
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done.returncode


def heavy_imports(src: Path, argv: list[str]) -> list[str]:
    """The heavy top-level packages that `thawing ARGV` imports (from `-X importtime`)."""
    done = run_python(src, ["-X", "importtime", "-m", "thawing", *argv])
    names = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    return sorted(name for name in HEAVY if name in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="Timed runs per command and tree.")
    parser.add_argument("--compare", type=Path, default=None, help="Another source tree's src/ to time alike.")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    trees = {"this": REPO / "src"} | ({"compare": args.compare.resolve()} if args.compare else {})
    argvs = commands(trees["this"])
    load_before = [round(x, 2) for x in os.getloadavg()]
    seconds: dict[str, dict[str, list[float]]] = {t: {" ".join(a): [] for a in argvs} for t in trees}
    cpu: dict[str, dict[str, list[float]]] = {t: {" ".join(a): [] for a in argvs} for t in trees}
    codes: dict[str, dict[str, set[int]]] = {t: {" ".join(a): set() for a in argvs} for t in trees}
    baseline = []
    for _ in range(args.runs):  # alternate trees and commands run by run: drift in machine load hits all alike
        start = time.perf_counter()
        run_python(trees["this"], ["-c", "pass"])
        baseline.append(time.perf_counter() - start)
        for argv in argvs:
            for tree, src in trees.items():
                wall, used, code = timed(src, argv)
                seconds[tree][" ".join(argv)].append(wall)
                cpu[tree][" ".join(argv)].append(used)
                codes[tree][" ".join(argv)].add(code)
    result = {
        "command": " ".join(sys.argv),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
                   f"{platform.python_version()}; shared: load average {load_before} before, "
                   f"{[round(x, 2) for x in os.getloadavg()]} after",
        "runs": args.runs,
        "trees": {name: str(src) for name, src in trees.items()},
        "python_startup_s": {"median": round(statistics.median(baseline), 3)},  # `python -c pass`
        "results": {
            tree: {
                cmd: {
                    "exit_codes": sorted(codes[tree][cmd]),  # every run's: a tree that changed mid-run shows
                    "median_s": round(statistics.median(runs), 3),
                    "min_s": round(min(runs), 3),
                    "max_s": round(max(runs), 3),
                    "cpu_median_s": round(statistics.median(cpu[tree][cmd]), 3),
                    "heavy_imports": heavy_imports(trees[tree], cmd.split()),
                }
                for cmd, runs in by_cmd.items()
            }
            for tree, by_cmd in seconds.items()
        },
    }
    for tree, by_cmd in result["results"].items():
        for cmd, row in by_cmd.items():
            print(f"{tree:8} thawing {cmd:18} median {row['median_s']:.3f} s  (min {row['min_s']:.3f}, max "
                  f"{row['max_s']:.3f}; CPU {row['cpu_median_s']:.3f} s; exit {row['exit_codes']})  heavy: "
                  f"{', '.join(row['heavy_imports']) or '-'}")
    write_report(result, args.output)


if __name__ == "__main__":
    main()
