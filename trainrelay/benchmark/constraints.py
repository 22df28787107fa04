"""Deployment constraints from the config, checked against one benchmark row.

A constraint is ``{metric: {"max": x}}`` or ``{metric: {"min": x}}`` (both allowed) on a numeric
column of ``metrics.parquet``. Besides the configured ones, a row must have run (``status ok``)
and be correct (its output within its precision's tolerance of the torch fp32 reference).
A value that was not measured fails its constraint, except GPU columns on a CPU engine, which
uses no GPU and passes them.
"""

from __future__ import annotations

import math
from typing import Any

from trainrelay.errors import ConfigError

CONSTRAINABLE = (
    "latency_mean_ms",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "throughput_sps",
    "cpu_util_pct",
    "gpu_util_pct",
    "vram_mb",
    "peak_rss_mb",
    "rel_l2_error",
    "build_seconds",
)
GPU_ONLY = ("gpu_util_pct", "vram_mb")


def validate_constraints(constraints: dict[str, Any]) -> None:
    for metric, bounds in constraints.items():
        if metric not in CONSTRAINABLE:
            choices = ", ".join(CONSTRAINABLE)
            raise ConfigError(
                f"benchmark.constraints.{metric} is not a benchmark metric; use one of {choices}"
            )
        if not isinstance(bounds, dict) or not bounds or set(bounds) - {"min", "max"}:
            raise ConfigError(f"benchmark.constraints.{metric} must be a mapping with 'min' and/or 'max'")


def describe(constraints: dict[str, Any]) -> list[str]:
    """``["latency_p95_ms <= 50", ...]`` in config order."""
    parts = []
    for metric, bounds in constraints.items():
        if bounds.get("min") is not None:
            parts.append(f"{metric} >= {bounds['min']:g}")
        if bounds.get("max") is not None:
            parts.append(f"{metric} <= {bounds['max']:g}")
    return parts


def check_row(row: dict[str, Any], constraints: dict[str, Any]) -> list[dict[str, Any]]:
    """One check per bound: ``{"constraint", "value", "passed", "note"}``, the implicit ones first."""
    ok = row["status"] == "ok"
    checks = [
        {
            "constraint": "status == ok",
            "value": row["status"],
            "passed": ok,
            "note": row.get("reason") if not ok else None,
        },
        {
            "constraint": "correct (rel_l2_error <= tolerance)",
            "value": row.get("correct"),
            "passed": bool(ok and row.get("correct")),
            "note": None
            if not ok
            else f"rel_l2_error {row['rel_l2_error']:.3g}, tolerance {row['tolerance']:.3g}",
        },
    ]
    for metric, bounds in constraints.items():
        value = row.get(metric)
        for side in ("min", "max"):
            bound = bounds.get(side)
            if bound is None:
                continue
            label = f"{metric} {'>=' if side == 'min' else '<='} {bound:g}"
            if value is None:
                free = metric in GPU_ONLY and row["device"] == "cpu"
                note = "CPU engine: uses no GPU" if free else "not measured"
                checks.append({"constraint": label, "value": None, "passed": free and ok, "note": note})
                continue
            if not math.isfinite(value):
                checks.append({"constraint": label, "value": None, "passed": False, "note": "not finite"})
                continue
            passed = value >= bound if side == "min" else value <= bound
            checks.append(
                {"constraint": label, "value": float(value), "passed": bool(ok and passed), "note": None}
            )
    return checks
