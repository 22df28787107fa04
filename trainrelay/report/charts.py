"""Matplotlib charts as deterministic SVG text.

Same data, same bytes: a fixed ``svg.hashsalt`` (ids), no date in the metadata, the DejaVu Sans
font shipped with matplotlib, and text drawn as paths so the PDF does not depend on system fonts.
Figures are created without pyplot so no global state leaks between charts.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import matplotlib
import polars as pl
from matplotlib.figure import Figure

_RC = {
    "svg.hashsalt": "trainrelay-report",
    "svg.fonttype": "path",
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "path.simplify": True,
}
PALETTE = ("#1f5f8b", "#d1495b", "#66a182", "#edae49", "#7d5ba6", "#00798c", "#8d6a9f", "#555555")


def _svg(fig: Figure) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    return buffer.getvalue()


def data_uri(svg: str) -> str:
    """An <img> source for the SVG: keeps each chart's ids separate inside one HTML page."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def _finite_xy(frame: pl.DataFrame, x: str, y: str) -> tuple[list[Any], list[float]]:
    pairs = [
        (a, b)
        for a, b in zip(frame[x].to_list(), frame[y].to_list(), strict=True)
        if a is not None and b is not None and math.isfinite(float(b))
    ]
    return [a for a, _ in pairs], [float(b) for _, b in pairs]


def line_chart(frame: pl.DataFrame, x: str, ys: list[str], title: str, xlabel: str, ylabel: str) -> str:
    """One line per column in ``ys`` against ``x`` (non-finite points left out)."""
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(6.4, 3.0))
        ax = fig.add_subplot()
        for index, column in enumerate(c for c in ys if c in frame.columns):
            xs, values = _finite_xy(frame, x, column)
            ax.plot(xs, values, marker="o" if len(xs) <= 30 else None, markersize=3, label=column,
                    color=PALETTE[index % len(PALETTE)])  # fmt: skip
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(frameon=False)
        return _svg(fig)


def panel_chart(frame: pl.DataFrame, x: str, ys: list[str], title: str, xlabel: str) -> str:
    """A small multiple per column in ``ys`` (PPO diagnostics have very different scales)."""
    present = [c for c in ys if c in frame.columns]
    cols = 2
    rows = max(1, math.ceil(len(present) / cols))
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(6.4, 2.0 * rows + 0.4))
        fig.suptitle(title)
        for index, column in enumerate(present):
            ax = fig.add_subplot(rows, cols, index + 1)
            xs, values = _finite_xy(frame, x, column)
            ax.plot(xs, values, color=PALETTE[index % len(PALETTE)])
            ax.set_title(column, fontsize=8)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.tick_params(labelsize=7)
        fig.tight_layout()
        return _svg(fig)


def equity_chart(frame: pl.DataFrame, max_points: int) -> str:
    """Equity per strategy over the walk-forward test windows; folds drawn as separate segments."""
    strategies = sorted(frame["strategy"].unique().to_list(), key=lambda s: (s != "policy", s))
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(6.4, 3.2))
        ax = fig.add_subplot()
        for index, strategy in enumerate(strategies):
            color = PALETTE[index % len(PALETTE)]
            part = frame.filter(pl.col("strategy") == strategy)
            for n, fold in enumerate(sorted(part["fold"].unique().to_list())):
                series = part.filter(pl.col("fold") == fold).sort("timestamp")
                step = max(1, math.ceil(series.height / max_points))
                series = series.gather_every(step)
                ax.plot(
                    series["timestamp"].to_list(),
                    series["equity"].to_list(),
                    color=color,
                    linewidth=1.8 if strategy == "policy" else 1.0,
                    label=strategy if n == 0 else None,
                )
        ax.set_title("Equity on the walk-forward test windows")
        ax.set_ylabel("equity (start = 1)")
        ax.legend(frameon=False, fontsize=8)
        fig.autofmt_xdate()
        return _svg(fig)


def bar_chart(
    labels: list[str], values: list[float | None], title: str, xlabel: str, highlight: str | None
) -> str:
    """Horizontal bars (missing values left blank); the ``highlight`` label is drawn in the accent colour."""
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(6.4, 0.35 * len(labels) + 1.0))
        ax = fig.add_subplot()
        heights = [v if v is not None and math.isfinite(v) else 0.0 for v in values]
        colors = [PALETTE[1] if label == highlight else PALETTE[0] for label in labels]
        positions = list(range(len(labels)))
        ax.barh(positions, heights, color=colors)
        ax.set_yticks(positions, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(axis="y", visible=False)
        return _svg(fig)


def tuning_chart(trials: list[dict[str, Any]]) -> str:
    """Fitness of every complete tuning trial (coloured by generation) and the best so far."""
    done = sorted(
        (t for t in trials if t.get("value") is not None and math.isfinite(float(t["value"]))),
        key=lambda t: t["trial"],
    )
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(6.4, 3.0))
        ax = fig.add_subplot()
        generations = sorted({t.get("generation") for t in done}, key=lambda g: (g is None, g or 0))
        for index, gen in enumerate(generations):
            part = [t for t in done if t.get("generation") == gen]
            ax.scatter([t["trial"] for t in part], [float(t["value"]) for t in part], s=14,
                       color=PALETTE[index % len(PALETTE)], label=f"generation {gen}")  # fmt: skip
        best, running = math.inf, []
        for t in done:
            best = min(best, float(t["value"]))
            running.append(best)
        ax.step(
            [t["trial"] for t in done],
            running,
            where="post",
            color="#222222",
            linewidth=1.2,
            label="best so far",
        )
        ax.set_title("Hyper-parameter search: validation MSE per trial")
        ax.set_xlabel("trial")
        ax.set_ylabel("validation MSE")
        ax.legend(frameon=False, fontsize=8)
        return _svg(fig)
