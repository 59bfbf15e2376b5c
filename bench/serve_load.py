"""Load test of `thawing serve`: requests/s, texts/s and latency under 1, 8 and 32 concurrent clients, beside
`TrainedModel.predict` called in-process on the same texts.

The server runs in its own process on a free port of 127.0.0.1 (`thawing serve RUN --port 0`). Each level runs
its clients for `--seconds`; every client sends `--texts-per-request` demo messages per request, asking for every
task, and every `--bad-every`-th request is a bad one (malformed JSON, an unknown task, an empty or non-string
text, too many texts, a text too long), which must get a 4xx while the good ones all get 200 with the in-process
labels. Reported: good requests/s and texts/s, p50/p99 latency of good requests, errors on good requests, bad
requests not refused with a 4xx, label mismatches, texts per model run (from /info), and the server's RSS after
loading and at its peak. The in-process side: `predict` on all texts at once (its best case), and one call per
request-sized slice in a loop (what a client without a server would do per request).

Without `--run` it first trains `configs/demo.yaml` (all-MiniLM-L6-v2, about a minute on 2 CPU cores).

`--threads N` sets torch's CPU threads on both sides: on a machine shared with other busy processes, fewer
threads than cores avoids OpenMP threads waiting for each other (see docs/benchmarks.md).

Run: HF_HUB_OFFLINE=1 .venv/bin/python bench/serve_load.py --threads 1 --output bench/results/serve_load_cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from report import write_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="A trained run directory (default: train configs/demo.yaml).")
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--data", default=str(REPO / "data" / "demo"), help="Folder of .jsonl files with 'text'.")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=15.0, help="Per concurrency level.")
    parser.add_argument("--texts-per-request", type=int, default=4)
    parser.add_argument("--bad-every", type=int, default=10)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=16, help="The server's texts per encoder forward.")
    parser.add_argument("--max-texts", type=int, default=64)
    parser.add_argument("--max-text-bytes", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads, in-process and in the server (default: torch's).")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    import torch

    from thawing.store.run_dir import RESULTS, RunDir

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        run, train_s = (Path(args.run), None) if args.run else _train(args.config, Path(tmp) / "run")
        texts = _texts(Path(args.data))
        run_metrics = RunDir(run).read_json(RESULTS)["tasks"]
        model, in_process, reference = _in_process(run, texts, args)
        served = asyncio.run(_serve_levels(run, model, texts, reference, args))
    result = {
        "command": " ".join(sys.argv),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads (clients and server share the machine)",
        "load_average_1m": {"start": round(load_before[0], 2), "end": round(os.getloadavg()[0], 2)},
        "run": str(run) if args.run else f"trained from {args.config} ({train_s:.0f} s)",
        "run_test_metrics": run_metrics,
        "texts": len(texts),
        "texts_per_request": args.texts_per_request,
        "bad_every": args.bad_every,
        "seconds_per_level": args.seconds,
        "server_settings": {"max_batch": args.max_batch, "batch_size": args.batch_size, "max_wait_ms": args.max_wait_ms,
                            "max_texts": args.max_texts, "max_text_bytes": args.max_text_bytes,
                            "threads": args.threads},
        "in_process": in_process,
        **served,
    }
    print(json.dumps(result, indent=2))
    write_report(result, args.output)
    bad = sum(level["errors_good"] + level["bad_not_4xx"] + level["mismatches"] for level in served["levels"].values())
    if bad:
        sys.exit(f"{bad} good requests failed or differed, or bad requests were not refused")


def _train(config: str, run_dir: Path) -> tuple[Path, float]:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "thawing", "train", config, "--run-dir", str(run_dir)], check=True,
                   env=_env(), stdout=subprocess.DEVNULL)
    return run_dir, time.perf_counter() - start


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}


def _texts(folder: Path) -> list[str]:
    texts = []
    for path in sorted(folder.glob("*.jsonl")):
        texts += [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
    return list(dict.fromkeys(texts))  # each once, in file order


def _percentiles(seconds: list[float]) -> dict:
    import numpy as np

    if not seconds:
        return {"p50_ms": None, "p99_ms": None}
    p50, p99 = np.percentile(np.array(seconds) * 1000, [50, 99])
    return {"p50_ms": round(float(p50), 1), "p99_ms": round(float(p99), 1)}


def _in_process(run: Path, texts: list[str], args) -> tuple[object, dict, dict]:
    """`predict` in this process: all texts at once (best of 3; sorted by length, so batches barely pad), in slices of
    `max_batch` texts in the clients' order run as the server runs them (what a full micro-batch computes), and
    request-sized calls one after another. Returns the model, the figures and each task's reference labels."""
    import thawing

    model = thawing.load(run, device="cpu")
    model.predict(texts[:64])  # warm-up
    bulk = []
    for _ in range(3):
        start = time.perf_counter()
        reference = model.predict(texts)
        bulk.append(time.perf_counter() - start)
    labels = {task: [_label(p) for p in rows] for task, rows in reference.items()}
    figures = {"bulk_texts_per_s": round(len(texts) / min(bulk), 1),
               "max_batch_slices_texts_per_s": _slices_rate(model, texts, args),
               "per_request": _requests_rate(model, texts, args, args.seconds)}
    return model, figures, labels


def _slices_rate(model, texts: list[str], args) -> float:
    """texts/s of `predict` on consecutive `max_batch` slices, `batch_size` texts a forward (as the server runs)."""
    model.batch_size = args.batch_size
    start = time.perf_counter()
    for i in range(0, len(texts), args.max_batch):
        model.predict(texts[i : i + args.max_batch])
    return round(len(texts) / (time.perf_counter() - start), 1)


def _requests_rate(model, texts: list[str], args, seconds: float) -> dict:
    """`predict` on request-sized slices one after another, for `seconds`: requests/s, texts/s, latency."""
    latencies, i, start = [], 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        chunk = [texts[(i + j) % len(texts)] for j in range(args.texts_per_request)]
        t0 = time.perf_counter()
        model.predict(chunk)
        latencies.append(time.perf_counter() - t0)
        i += args.texts_per_request
    elapsed = time.perf_counter() - start
    return {"requests_per_s": round(len(latencies) / elapsed, 1),
            "texts_per_s": round(len(latencies) * args.texts_per_request / elapsed, 1), **_percentiles(latencies)}


def _label(prediction: dict):
    return prediction.get("label", prediction.get("labels", prediction.get("tags")))


# ---------------------------------------------------------------------------------------------------- the server
def _start_server(run: Path, args, log: Path) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "thawing", "serve", str(run), "--port", "0", "--device", "cpu", "--log-level",
           "warning", "--max-batch", str(args.max_batch), "--batch-size", str(args.batch_size), "--max-wait-ms",
           str(args.max_wait_ms), "--max-texts", str(args.max_texts), "--max-text-bytes", str(args.max_text_bytes)]
    cmd += ["--threads", str(args.threads)] if args.threads else []
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stderr=err, stdout=subprocess.DEVNULL, env=_env())
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        lines = [x for x in log.read_text().splitlines() if x.startswith("serving ")]
        if lines:
            return proc, lines[0].split(" on ")[-1].strip()
        time.sleep(0.2)
    proc.kill()
    sys.exit(f"the server did not start:\n{log.read_text()}")


def _rss_mb(pid: int) -> dict:
    """Current and peak resident memory of a process (Linux /proc), MiB."""
    status = Path(f"/proc/{pid}/status")
    if not status.is_file():
        return {}
    fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
    return {key: round(int(fields[name].split()[0]) / 1024, 1) for key, name in (("rss_mb", "VmRSS"),
                                                                                   ("peak_rss_mb", "VmHWM"))}


def _bad_request(kind: int, args) -> tuple[dict | None, bytes | None]:
    """One of six bad requests: (json body, None) or (None, raw bytes)."""
    return [
        (None, b'{"texts": ["an unfinished'),
        ({"texts": ["where is my parcel?"], "tasks": ["no-such-task"]}, None),
        ({"texts": ["where is my parcel?", "   "]}, None),
        ({"texts": ["where is my parcel?", 42]}, None),
        ({"texts": ["hello"] * (args.max_texts + 1)}, None),
        ({"texts": ["x" * (args.max_text_bytes + 1)]}, None),
    ][kind % 6]


async def _serve_levels(run: Path, model, texts: list[str], reference: dict, args) -> dict:
    """Each concurrency level against the server, after the in-process rates measured just before it (the load of a
    shared machine drifts, so each level has its own baseline)."""
    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = _start_server(run, args, Path(tmp) / "serve.log")
        try:
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                for _ in range(600):  # bound at once, answering once the app has started
                    try:
                        if (await client.get("/health")).status_code == 200:
                            break
                    except httpx.TransportError:
                        await asyncio.sleep(0.1)
                for i in range(5):  # warm-up
                    await client.post("/predict", json={"texts": texts[i : i + args.texts_per_request]})
            loaded = _rss_mb(proc.pid)
            levels = {}
            for c in [int(x) for x in args.concurrency.split(",")]:
                before = {"max_batch_slices_texts_per_s": _slices_rate(model, texts[::3], args),  # the same mix
                          "per_request_texts_per_s": _requests_rate(model, texts, args, 3.0)["texts_per_s"]}
                levels[str(c)] = {**await _level(url, c, texts, reference, args), "in_process_just_before": before}
            async with httpx.AsyncClient(base_url=url) as client:
                info = (await client.get("/info")).json()
            peak = _rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    return {"levels": levels, "server": {"rss_after_load_mb": loaded.get("rss_mb"),
                                         "peak_rss_mb": peak.get("peak_rss_mb", info["stats"]["peak_rss_mb"]),
                                         "stats": info["stats"]}}


async def _level(url: str, clients: int, texts: list[str], reference: dict, args) -> dict:
    import httpx

    counts = {"good": 0, "ok": 0, "bad": 0, "errors_good": 0, "bad_not_4xx": 0, "mismatches": 0}
    latencies: list[float] = []
    sent = {"n": 0}

    async def client_loop(http: httpx.AsyncClient, deadline: float) -> None:
        while time.perf_counter() < deadline:
            n = sent["n"]
            sent["n"] += 1
            if n % args.bad_every == args.bad_every - 1:
                body, raw = _bad_request(n // args.bad_every, args)
                response = await http.post("/predict", json=body) if raw is None else await http.post(
                    "/predict", content=raw, headers={"content-type": "application/json"})
                counts["bad"] += 1
                counts["bad_not_4xx"] += not (400 <= response.status_code < 500 and "error" in response.json())
                continue
            first = (n * args.texts_per_request) % len(texts)
            index = [(first + j) % len(texts) for j in range(args.texts_per_request)]
            t0 = time.perf_counter()
            try:
                response = await http.post("/predict", json={"texts": [texts[i] for i in index]})
            except httpx.HTTPError:
                counts["errors_good"] += 1
                continue
            counts["good"] += 1
            if response.status_code != 200:
                counts["errors_good"] += 1
                continue
            latencies.append(time.perf_counter() - t0)
            counts["ok"] += 1
            got = response.json()["predictions"]
            counts["mismatches"] += any([_label(p) for p in got[task]] != [reference[task][i] for i in index]
                                        for task in reference)

    async with httpx.AsyncClient(base_url=url, timeout=60,
                                 limits=httpx.Limits(max_connections=clients)) as http:
        before = (await http.get("/info")).json()["stats"]["predict"]
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(http, start + args.seconds) for _ in range(clients)))
        elapsed = time.perf_counter() - start
        after = (await http.get("/info")).json()["stats"]["predict"]
    batches = after["batches"] - before["batches"]
    model_s = after["model_seconds"] - before["model_seconds"]
    return {
        "clients": clients,
        "requests_per_s": round(counts["ok"] / elapsed, 1),  # good requests answered, per second
        "texts_per_s": round(counts["ok"] * args.texts_per_request / elapsed, 1),
        **_percentiles(latencies),
        **counts,
        "model_runs": batches,
        "texts_per_model_run": round((after["texts"] - before["texts"]) / max(batches, 1), 1),
        "ms_per_model_run": round(1000 * model_s / max(batches, 1), 1),
        "model_busy": round(model_s / elapsed, 2),  # the share of the time the model thread was running
    }


if __name__ == "__main__":
    main()
