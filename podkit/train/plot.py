"""`podkit plot`: training curves from RUN/metrics.jsonl, one PNG per thing shown.

losses.png (every loss term and the total), lr.png, the figures each training method
declares (`Hook.figures`: DST's feedback with collage iterations marked, Dynamic R-CNN's IoU
threshold and SmoothL1 beta), and one PNG for every other logged value (a list, such as
per-level weights, gets a line per element).
"""

from __future__ import annotations

import json
from pathlib import Path

from podkit.train.hooks import Panel
from podkit.train.methods import METHODS

PLAIN = {"iter", "loss", "lr", "time", "data_time"}  # no figure of their own


def method_figures() -> dict[str, tuple[Panel, ...]]:
    """Every method's figures, by PNG name (AVW and RLO share a class and declare none)."""
    return {name: panels for m in METHODS.values() for name, panels in m.figures.items()}


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.jsonl (is this a run folder?)")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {number} is not JSON ({exc.msg})") from None
            check_row(row, path, number)
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no logged iterations yet")
    return rows


REQUIRED = ("iter", "loss", "lr")


def check_row(row, path: Path, number: int) -> None:
    """A metrics line is an object with iter, loss and lr, whose values are numbers, lists of
    numbers or null (strings are labels: skipped); one line naming the file, line and key."""
    if not isinstance(row, dict):
        raise ValueError(f"{path}: line {number} is a JSON {type(row).__name__}, not an object")
    for key in REQUIRED:
        if key not in row:
            raise ValueError(f"{path}: line {number} has no '{key}'")
    for key, value in row.items():
        items = value if isinstance(value, list) else [value]
        numeric = all(v is None or isinstance(v, (int, float)) for v in items)
        scalar = key in REQUIRED or key.startswith("loss")
        if scalar and (not numeric or isinstance(value, list) or value is None and key in REQUIRED):
            raise ValueError(f"{path}: line {number}: '{key}' is {value!r}, not a number")
        if isinstance(value, list) and not numeric:
            raise ValueError(f"{path}: line {number}: '{key}' holds {value!r}, not numbers")


def plot_run(run: str | Path, out: str | Path | None = None) -> list[Path]:
    """Write the PNGs for a run folder into `out` (default: the run folder); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run)
    out = Path(out) if out is not None else run
    out.mkdir(parents=True, exist_ok=True)
    rows = read_metrics(run / "metrics.jsonl")
    iters = [r["iter"] for r in rows]
    written = []

    def series(key):
        pairs = [(r["iter"], r[key]) for r in rows if r.get(key) is not None]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)

    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ["loss"] + sorted(k for k in rows[-1] if k.startswith("loss_")):
        ax.plot(*series(key), label=key, lw=2 if key == "loss" else 1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(f"{run.name}: losses")
    save(fig, "losses.png")

    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(iters, [r["lr"] for r in rows])
    ax.set_xlabel("iteration")
    ax.set_ylabel("learning rate")
    save(fig, "lr.png")

    figures = method_figures()
    for name, panels in figures.items():
        # the panels the run logged (Dynamic R-CNN's DSL-only ablation has no threshold)
        shown = [p for p in panels if any(key in r for r in rows for key in p.keys)]
        if shown:
            fig, axes = plt.subplots(1, len(shown), figsize=(4.5 * len(shown) + 2, 3.5))
            for ax, panel in zip([axes] if len(shown) == 1 else axes, shown, strict=True):
                draw_panel(ax, panel, series)
            save(fig, name)

    drawn = {k for panels in figures.values() for p in panels for k in (*p.keys, p.marks) if k}
    for key in sorted({k for r in rows for k in r} - PLAIN - drawn):
        if key.startswith("loss_"):
            continue
        xs, values = series(key)
        if not values or not all(isinstance(v, (int, float, list)) for v in values):
            continue
        fig, ax = plt.subplots(figsize=(7, 3.5))
        if isinstance(values[0], list):
            for j in range(len(values[0])):
                ax.plot(xs, [v[j] for v in values], label=f"{key}[{j}]")
            ax.legend(fontsize=8)
        else:
            ax.plot(xs, values)
        ax.set_xlabel("iteration")
        ax.set_title(key)
        save(fig, f"{key}.png")
    return written


def draw_panel(ax, panel: Panel, series) -> None:
    """One method panel: its keys as lines (the first solid), its marks as ticks at 0."""
    for k, key in enumerate(panel.keys):
        xs, ys = series(key)
        if ys:
            label = panel.labels[k] if panel.labels else None
            ax.plot(xs, ys, lw=1, color=f"C{k}", ls="-" if k == 0 else "--", label=label)
    if panel.marks:
        xs, flags = series(panel.marks)
        ticks = [x for x, f in zip(xs, flags, strict=True) if f]
        label = panel.marks_label or panel.marks
        ax.scatter(ticks, [0.0] * len(ticks), marker="|", s=60, color="C3", label=label)
    if panel.labels or panel.marks:
        ax.legend(fontsize=8)
    ax.set_xlabel("iteration")
    ax.set_title(panel.title)
