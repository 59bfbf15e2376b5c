"""The report's figures, each a function of plain data returning PNG bytes (matplotlib, Agg: files only, no display).

The HTML pages embed the bytes; report.md links the ones it also writes to disk.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from thawing.store.metric_lines import SCORE, of_split

DPI = 100


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, dpi=DPI, format="png")
    _pyplot().close(fig)
    return buffer.getvalue()


def _boundaries(ax, starts: Sequence[tuple[int, str]]) -> None:
    for step, name in starts:
        ax.axvline(step, color="grey", linestyle=":", linewidth=1)
        ax.annotate(name, (step, 1), xycoords=("data", "axes fraction"), fontsize=7, rotation=90, va="top", ha="right")


def dev_curves(lines: list[dict], primary: dict[str, str], starts: Sequence[tuple[int, str]]) -> bytes | None:
    """One panel per task (its primary dev metric) and one for the selection score, against optimizer steps."""
    dev = of_split(lines, "dev")
    if not dev:
        return None
    plt = _pyplot()
    panels = list(primary.items()) + [(SCORE, "score")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (task, metric) in zip(axes[0], panels, strict=True):
        points = [(m["step"], m["metrics"][metric]) for m in dev if m["task"] == task and metric in m["metrics"]]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", markersize=3)
        _boundaries(ax, starts)
        ax.set_title("selection score" if task == SCORE else f"{task} ({metric})", fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    return _png(fig)


def smooth(values: Sequence[float], weight: float = 0.8) -> list[float]:
    """An exponential moving average, debiased at the start (as TensorBoard smooths): a task's loss records are noisy
    batch means."""
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i))
    return out


def training_loss(lines: list[dict], starts: Sequence[tuple[int, str]]) -> bytes | None:
    """Each task's training loss against steps, raw (faint) and smoothed."""
    train = [line for line in of_split(lines, "train") if isinstance(line.get("loss"), (int, float))]
    if not train:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.4))
    for task in sorted({line["task"] for line in train}):
        steps = [line["step"] for line in train if line["task"] == task]
        losses = [line["loss"] for line in train if line["task"] == task]
        (drawn,) = ax.plot(steps, smooth(losses), label=task)
        ax.plot(steps, losses, color=drawn.get_color(), alpha=0.2, linewidth=0.8)
    _boundaries(ax, starts)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (smoothed)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def learning_rates(lines: list[dict], starts: Sequence[tuple[int, str]]) -> bytes | None:
    """The learning rate of every parameter group against steps (log scale; layers coloured from bottom to top)."""
    rates: dict[str, dict[int, float]] = {}
    for line in of_split(lines, "train"):
        for group, lr in (line.get("lr") or {}).items():
            rates.setdefault(group, {})[line["step"]] = lr
    if not rates:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.4))
    layers = sorted((g for g in rates if g.startswith("layers.")), key=lambda g: int(g.split(".")[1]))
    cmap = plt.get_cmap("viridis")
    for group, points in rates.items():
        steps = sorted(points)
        color = cmap(layers.index(group) / max(1, len(layers) - 1)) if group in layers else None
        ax.plot(steps, [points[s] for s in steps], label=group, color=color, linewidth=1.2,
                linestyle="-" if group in layers else "--")
    _boundaries(ax, starts)
    if all(v > 0 for points in rates.values() for v in points.values()):
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    shown = [g for g in rates if g not in layers] + (layers if len(layers) <= 8 else [layers[0], layers[-1]])
    handles = [h for h in ax.get_lines() if h.get_label() in shown]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(alpha=0.3)
    return _png(fig)


def probes(points: dict[str, list[tuple[str, int, dict]]]) -> bytes | None:
    """One panel per probe: its headline (retention, or drift) at each probe point, start first."""
    from thawing.store.metric_lines import probe_headline

    panels = {name: [(stage, probe_headline(m)) for stage, _, m in values] for name, values in points.items()}
    panels = {name: [(s, h) for s, h in values if h is not None] for name, values in panels.items()}
    panels = {name: values for name, values in panels.items() if values}
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (name, values) in zip(axes[0], panels.items(), strict=True):
        metric = values[-1][1][0]
        ax.plot(range(len(values)), [h[1] for _, h in values], marker="o")
        ax.set_xticks(range(len(values)), [s for s, _ in values], rotation=30, fontsize=8)
        if metric.endswith("_retention"):
            ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)  # the pretrained encoder
        ax.set_title(f"{name} ({metric})", fontsize=10)
        ax.grid(alpha=0.3)
    return _png(fig)


def weight_changes(points: dict[str, list[tuple[str, int, dict]]]) -> bytes | None:
    """Drift probes' relative weight-norm change per group (rows) at each probe point (columns)."""
    drift = {name: [(stage, m["weight_norm_change"]) for stage, _, m in values
                    if isinstance(m.get("weight_norm_change"), dict)]
             for name, values in points.items()}
    drift = {name: values for name, values in drift.items() if values}
    if not drift:
        return None
    name, values = next(iter(drift.items()))  # one drift probe measures the whole encoder; the first stands for all
    groups = list(dict.fromkeys(g for _, change in values for g in change))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(2 + 0.9 * len(values), 1 + 0.22 * len(groups)))
    grid = [[change.get(g, 0.0) for _, change in values] for g in groups]
    image = ax.imshow(grid, aspect="auto", cmap="magma")
    ax.set_xticks(range(len(values)), [s for s, _ in values], rotation=30, fontsize=8)
    ax.set_yticks(range(len(groups)), groups, fontsize=7)
    ax.set_title(f"{name}: relative weight-norm change", fontsize=10)
    fig.colorbar(image, ax=ax)
    return _png(fig)


def confusion_matrix(task: str, split: str, labels: list[str], matrix: list[list[int]], limit: int = 25) -> bytes:
    """Gold (rows) against predicted (columns) counts; past `limit` labels, the most frequent gold labels only."""
    plt = _pyplot()
    order = sorted(range(len(labels)), key=lambda i: -sum(matrix[i]))[:limit]
    order.sort()
    grid = [[matrix[i][j] for j in order] for i in order]
    names = [labels[i] for i in order]
    size = 2.5 + 0.35 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    ax.imshow(grid, cmap="Blues")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                        color="white" if value > max(map(max, grid)) / 2 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    shown = "" if len(order) == len(labels) else f", {len(order)} of {len(labels)} labels"
    ax.set_title(f"{task} on {split}{shown}", fontsize=10)
    return _png(fig)


def per_type_f1(task: str, split: str, types: dict[str, dict]) -> bytes:
    """F1 per entity type (or per label), with its support in the tick label."""
    plt = _pyplot()
    names = list(types)
    fig, ax = plt.subplots(figsize=(2.5 + 0.5 * len(names), 3))
    bars = ax.bar(range(len(names)), [types[n]["f1"] for n in names], color="tab:green")
    ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(names)), [f"{n}\n(n={types[n]['support']})" for n in names], fontsize=7)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("F1")
    ax.set_title(f"{task} on {split}: F1 per type", fontsize=10)
    return _png(fig)


def scenario_bars(title: str, ylabel: str, series: dict[str, dict[str, tuple[float, float, float]]],
                  zoom: bool = True) -> bytes | None:
    """Grouped bars: for each x (a task, a probe, ...) one bar per scenario, with its seed range as an error bar.

    `series` is {x: {scenario: (mean, low, high)}}. `zoom` starts the axis near the lowest value, so the differences
    show rather than the distance from 0.
    """
    series = {x: bars for x, bars in series.items() if bars}
    if not series:
        return None
    plt = _pyplot()
    scenarios = list(dict.fromkeys(s for bars in series.values() for s in bars))
    width = 0.8 / len(scenarios)
    fig, ax = plt.subplots(figsize=(2.5 + 1.2 * len(series) * len(scenarios) ** 0.5, 3.4))
    values = [v for bars in series.values() for v, _, _ in bars.values()]
    for i, scenario in enumerate(scenarios):
        xs = [j + (i - (len(scenarios) - 1) / 2) * width for j, x in enumerate(series) if scenario in series[x]]
        got = [series[x][scenario] for x in series if scenario in series[x]]
        # Clamped: the mean of equal seeds can land an ulp outside their range (3 x 0.79 / 3 > 0.79).
        errors = [[max(0.0, m - lo) for m, lo, _ in got], [max(0.0, hi - m) for m, _, hi in got]]
        bars = ax.bar(xs, [m for m, _, _ in got], width, label=scenario,
                      yerr=errors if any(map(any, errors)) else None, capsize=2)
        ax.bar_label(bars, fmt="%.3g", fontsize=6, rotation=90, padding=2)
    ax.set_xticks(range(len(series)), list(series), fontsize=8)
    if zoom and values and min(values) > 0:
        span = max(values) - min(values)
        ax.set_ylim(max(0.0, min(values) - max(0.1, span)), max(values) + max(0.06, 0.3 * span))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)
