"""The study's report, from study.json alone: study.md, study.png and report/index.html.

Every scenario's task metrics are shown against the `frozen` baseline (the pretrained encoder as a fixed feature
extractor): a task that falls below it under a plan has lost what the pretrained encoder gave it. The report ends
with the design's claims, each checked against the numbers (`claims.py`).
"""

from __future__ import annotations

from pathlib import Path

from thawing.errors import InputError
from thawing.reporting import figures
from thawing.reporting import html as H
from thawing.store.atomic import atomic_path, write_text
from thawing.store.metric_lines import probe_headline
from thawing.store.run_dir import INDEX_HTML, REPORT, REPORT_MD, STUDY_PNG, RunDir
from thawing.study.claims import BASELINE, Claim, check_claims


def study_json(name: str, seeds: list[int], rows: dict, reference: str | None, isolated: bool) -> dict:
    """study.json: the rows with what is derived from several of them (each task against its single-task run), and
    the claims."""
    rows = with_single_task(rows)
    return {
        "config": name,
        "seeds": seeds,
        "reference": reference,
        "memory": "each scenario in its own process" if isolated else "in-process: CPU memory not measured",
        "scenarios": rows,
        "claims": [c.to_json() for c in check_claims(rows, reference)],
    }


def with_single_task(rows: dict) -> dict:
    """Each scenario's tasks against the same task trained alone (`single:<task>`), where that ran: the ratio and the
    difference of the primary metric on the task's final split."""
    singles = {r["task"]: r for r in rows.values() if r.get("kind") == "single-task"}
    out = {}
    for name, row in rows.items():
        versus = {}
        for task, single in singles.items():
            metric = row["primary"].get(task)
            if row.get("kind") == "single-task" or metric is None:
                continue
            mine, alone = row["tasks"][task][metric], single["tasks"][task][metric]
            versus[task] = {"metric": metric, "single": alone, "difference": mine - alone,
                            "ratio": mine / alone if alone else None}
        out[name] = {**row, "vs_single": versus} if versus else {k: v for k, v in row.items() if k != "vs_single"}
    return out


def write_study_report(path: str | Path) -> Path:
    """study.md, study.png and report/index.html from study.json; returns the study.md path."""
    study = RunDir(path)
    data = study.read_json(study.study_json)
    rows = with_single_task(data["scenarios"])
    if not rows:
        raise InputError("study.json holds no scenario", path=study.study_json)
    claims = check_claims(rows, data.get("reference"))
    bars = figures.scenario_bars("final metric per task", "final metric", metric_series(rows))
    if bars:
        with atomic_path(study.study_png) as tmp:
            tmp.write_bytes(bars)
    write_text(study.study_md, markdown(study.path.name, data, rows, claims, bars is not None))
    with study.replacing(study.path / REPORT) as tmp:
        (tmp / INDEX_HTML).write_text(page(study.path.name, data, rows, claims, bars))
    return study.study_md


# ---------------------------------------------------------------------------------------------- cells and tables


def _range(values: list | None) -> str:
    return f" [{values[0]:.4f}-{values[1]:.4f}]" if values and values[0] != values[1] else ""


def task_cells(rows: dict, name: str) -> list[str]:
    """Scenario `name`'s primary metric per task (the mean, and its range over seeds when there are several), with
    its change against the frozen baseline when that ran."""
    base, row = rows.get(BASELINE), rows[name]
    cells = []
    for task, metric in first_primary(rows).items():
        if task not in row["tasks"]:
            cells.append("")
            continue
        value = row["tasks"][task][metric]
        spread = _range(row.get("spread", {}).get("tasks", {}).get(task, {}).get(metric))
        delta = f" ({value - base['tasks'][task][metric]:+.4f})" if base and name != BASELINE else ""
        cells.append(f"{value:.4f}{spread}{delta}")
    return cells


def first_primary(rows: dict) -> dict[str, str]:
    """Every task of the study with its primary metric (single-task scenarios hold one each)."""
    out: dict[str, str] = {}
    for row in rows.values():
        out.update({t: m for t, m in row["primary"].items() if t not in out})
    return out


def _memory(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} s"


def final_table(rows: dict) -> tuple[list[str], list[list[str]]]:
    tasks = first_primary(rows)
    header = ["scenario", *(f"{t} ({m})" for t, m in tasks.items()), "score"]
    body = [[name, *task_cells(rows, name), f"{row['score']:.4f}{_range(row.get('spread', {}).get('score'))}"]
            for name, row in rows.items()]
    return header, body


def split_table(rows: dict) -> tuple[list[str], list[list[str]]]:
    """Each task's primary metric of the final model on dev and on test."""
    body = []
    for name, row in rows.items():
        for task, metric in row["primary"].items():
            values = [row.get(split, {}).get(task, {}).get(metric) for split in ("dev", "test")]
            body.append([name, task, metric, *("" if v is None else f"{v:.4f}" for v in values)])
    return ["scenario", "task", "metric", "dev", "test"], body


def probe_table(rows: dict) -> tuple[list[str], list[list[str]]]:
    """Each probe's headline (retention, or drift) and raw value at the end, per scenario."""
    probes = list(dict.fromkeys(p for row in rows.values() for p in (row.get("probes") or {})))
    body = []
    for name, row in rows.items():
        cells = []
        for probe in probes:
            metrics = (row.get("probes") or {}).get(probe) or {}
            head = probe_headline(metrics)
            raw = [f"{k} {v:.4f}" for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not k.startswith("pretrained_") and (not head or k != head[0])]
            cells.append(("" if head is None else f"{head[0]} {head[1]:.4f}" + _range(
                row.get("spread", {}).get("probes", {}).get(probe, {}).get(head[0]))) + (
                f" ({', '.join(raw)})" if raw else ""))
        body.append([name, *cells])
    return ["scenario", *probes], body if probes else []


def cost_table(rows: dict) -> tuple[list[str], list[list[str]]]:
    header = ["scenario", "trainable parameters", "updates", "training time", "end to end", "probe time",
              "peak CPU memory", "peak GPU memory"]
    body = [[name, f"{row['trainable_params']:,}", f"{row.get('updates', 0):.0f}", _seconds(row.get("wall_s")),
             _seconds(row.get("process_s")), _seconds(row.get("probe_seconds")), _memory(row.get("rss_peak_bytes")),
             _memory(row.get("gpu_peak_bytes"))] for name, row in rows.items()]
    return header, body


def balance_table(rows: dict) -> tuple[list[str], list[list[str]]]:
    """Each task's share of the updates and its metric against its single-task run, where known."""
    tasks = list(first_primary(rows))
    body = []
    for name, row in rows.items():
        share, versus = row.get("task_share") or {}, row.get("vs_single") or {}
        if not share and not versus:
            continue
        cells = []
        for task in tasks:
            parts = [f"{share[task]:.1%} of updates"] if task in share else []
            if task in versus and versus[task].get("ratio") is not None:
                parts.append(f"{versus[task]['ratio']:.1%} of single-task")
            cells.append(", ".join(parts))
        body.append([name, *cells])
    return ["scenario", *tasks], body


def md_table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in body]


# ---------------------------------------------------------------------------------------------- series for the bars


def _bar(row: dict, value: float | None, *path: str) -> tuple[float, float, float] | None:
    if value is None:
        return None
    spread = row.get("spread", {})
    for key in path:
        spread = spread.get(key, {}) if isinstance(spread, dict) else {}
    low, high = spread if isinstance(spread, list) else (value, value)
    return value, low, high


def metric_series(rows: dict) -> dict:
    return {f"{t}\n({m})": {n: b for n, r in rows.items()
                            if (b := _bar(r, r["tasks"].get(t, {}).get(m), "tasks", t, m))}
            for t, m in first_primary(rows).items()}


def score_series(rows: dict) -> dict:
    return {"selection score": {n: b for n, r in rows.items() if (b := _bar(r, r.get("score"), "score"))}}


def probe_series(rows: dict) -> dict:
    out: dict = {}
    for name, row in rows.items():
        for probe, metrics in (row.get("probes") or {}).items():
            head = probe_headline(metrics)
            if head and (b := _bar(row, head[1], "probes", probe, head[0])):
                out.setdefault(f"{probe}\n({head[0]})", {})[name] = b
    return out


def time_series(rows: dict) -> dict:
    return {label: {n: b for n, r in rows.items() if (b := _bar(r, r.get(key), key))}
            for label, key in (("training", "wall_s"), ("end to end", "process_s"))}


# ---------------------------------------------------------------------------------------------- markdown and html


def _intro(data: dict) -> list[str]:
    seeds = data.get("seeds") or [None]
    lines = ["Final metrics of each scenario: each task's primary metric on test where the task has it, else dev."]
    if len(seeds) > 1:
        lines.append(f"Means over seeds {', '.join(map(str, seeds))}, with their range in square brackets.")
    if BASELINE in data["scenarios"]:
        lines.append(f"In parentheses: the change against the {BASELINE} baseline, the pretrained encoder as it came.")
    lines.append("Training time is the stages' own; end to end runs from loading the data and model to the final "
                 "model's results (caching and scoring included); peak memory is that span's high-water mark, "
                 f"{data.get('memory', 'not recorded')}.")
    return lines


def _claim_text(claim: Claim) -> str:
    return f"{claim.line()} **{claim.status.capitalize()}.**"


def markdown(title: str, data: dict, rows: dict, claims: list[Claim], png: bool) -> str:
    lines = [f"# {title}", "", *_intro(data), "", *md_table(*final_table(rows))]
    links = ", ".join(f"[{n}]({r['run']}/{REPORT}/{REPORT_MD})" for n, r in rows.items())
    lines += ["", f"Runs: {links}.", "", "## Dev and test", "", *md_table(*split_table(rows))]
    header, body = probe_table(rows)
    if body:
        lines += ["", "## Retention probes", "", *md_table(header, body)]
    lines += ["", "## Cost", "", *md_table(*cost_table(rows))]
    header, body = balance_table(rows)
    if body:
        lines += ["", "## Task balance", "", *md_table(header, body)]
    if png:
        lines += ["", f"![final metrics per scenario]({STUDY_PNG})"]
    lines += ["", f"All figures: [{REPORT}/{INDEX_HTML}]({REPORT}/{INDEX_HTML})", "", "## Claims", ""]
    lines += [f"- {_claim_text(c)}" for c in claims]
    return "\n".join(lines) + "\n"


def page(title: str, data: dict, rows: dict, claims: list[Claim], metric_png: bytes | None) -> str:
    blocks = [*(H.paragraph(line) for line in _intro(data)), H.heading("Final metrics"), H.table(*final_table(rows)),
              H.figure(figures.scenario_bars("selection score", "score", score_series(rows)),
                       "selection score per scenario (error bars: range over seeds)"),
              H.figure(metric_png, "each task's final primary metric per scenario"),
              H.heading("Dev and test"), H.table(*split_table(rows))]
    header, body = probe_table(rows)
    if body:
        blocks += [H.heading("Retention probes"), H.table(header, body),
                   H.figure(figures.scenario_bars("retention (drift for drift probes)", "at the end",
                                                  probe_series(rows), zoom=False),
                            "what each scenario kept of the pretrained encoder (1.0: all of it)")]
    blocks += [H.heading("Cost"), H.table(*cost_table(rows)),
               H.figure(figures.scenario_bars("time per scenario", "seconds", time_series(rows), zoom=False),
                        "training time (the stages) and end to end per scenario")]
    header, body = balance_table(rows)
    if body:
        blocks += [H.heading("Task balance"), H.table(header, body)]
    blocks += [H.heading("Claims"), H.items((c.line(), c.status) for c in claims)]
    return H.page(title, blocks)
