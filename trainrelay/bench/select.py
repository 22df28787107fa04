"""Choose one engine and batch per model from measured rows, and say why in sentences.

Order of decision: (1) keep the configurations that meet every constraint; (2) rank them by the
model's objective — ``latency`` (lowest p95 latency) or ``throughput`` (most samples/s);
(3) configurations within ``tie_tolerance`` (relative) of the best count as tied, and the one
using less memory wins (GPU memory first, then peak RSS); (4) remaining ties go to the earlier
engine in the configured order, then the smaller batch. Nothing here prefers a device: a CPU
engine wins whenever it measured best.
"""

from __future__ import annotations

from typing import Any

from trainrelay.bench.constraints import check_row, describe

OBJECTIVES = {
    "latency": ("latency_p95_ms", "lowest p95 latency", False),
    "throughput": ("throughput_sps", "highest throughput", True),
}


def _where(row: dict[str, Any]) -> str:
    return f"{row['engine']} at batch {row['batch']}"


def _summary(row: dict[str, Any]) -> str:
    if row["vram_mb"] is not None:
        vram = f"{row['vram_mb']:.0f} MB VRAM"
    else:
        vram = "no GPU memory" if row["device"] == "cpu" else "VRAM not measured"
    return (
        f"p95 {row['latency_p95_ms']:.3f} ms, {row['throughput_sps']:.0f} samples/s, {vram}, "
        f"peak RSS {row['peak_rss_mb']:.0f} MB"
    )


def _failure(check: dict[str, Any]) -> str:
    if check["value"] is None or check["note"]:
        return f"{check['constraint']} ({check['note']})"
    return f"{check['constraint']} (measured {check['value']:.4g})"


def _memory_key(row: dict[str, Any]) -> tuple[float, float]:
    return (row["vram_mb"] or 0.0, row["peak_rss_mb"] or 0.0)


def select_model(
    rows: list[dict[str, Any]],
    constraints: dict[str, Any],
    objective: str,
    tie_tolerance: float,
    engine_order: list[str],
) -> dict[str, Any]:
    """``{"chosen": {...} | None, "candidates": [...], "reasoning": [...]}`` for one model's rows."""
    metric, wording, higher_better = OBJECTIVES[objective]
    reasoning: list[str] = []
    candidates, passing, unavailable_said = [], [], set()
    for row in rows:
        checks = check_row(row, constraints)
        meets = all(c["passed"] for c in checks)
        candidates.append({**row, "checks": checks, "meets_all": meets})
        if row["status"] == "unavailable":
            if row["engine"] not in unavailable_said:
                unavailable_said.add(row["engine"])
                reasoning.append(f"{row['engine']} was not measured: {row['reason']}.")
            continue
        if row["status"] == "failed":
            reasoning.append(f"{_where(row)} failed: {row['reason']}.")
            continue
        failed = [c for c in checks if not c["passed"]]
        if failed:
            reasoning.append(f"{_where(row)} fails {'; '.join(_failure(c) for c in failed)}.")
        if meets:
            passing.append(row)

    measured = sum(1 for r in rows if r["status"] == "ok")
    reasoning.append(f"{len(passing)} of {measured} measured configurations meet all constraints.")
    if not passing:
        reasoning.append("No configuration meets all constraints, so no engine is chosen for this model.")
        return {"chosen": None, "candidates": candidates, "reasoning": reasoning}

    def value(row: dict[str, Any]) -> float:
        return float(row[metric])

    best = max(passing, key=value) if higher_better else min(passing, key=value)
    bound = value(best) * (1 - tie_tolerance) if higher_better else value(best) * (1 + tie_tolerance)
    tied = [r for r in passing if (value(r) >= bound if higher_better else value(r) <= bound)]
    order = {name: i for i, name in enumerate(engine_order)}
    tied.sort(key=lambda r: (*_memory_key(r), order.get(r["engine"], len(order)), r["batch"]))
    chosen = tied[0]
    reasoning.append(
        f"Objective {objective}: {wording} wins; {_where(best)} is best with {metric} {value(best):.4g}."
    )
    if len(tied) > 1:
        others = ", ".join(f"{_where(r)} ({value(r):.4g})" for r in tied[1:])
        reasoning.append(
            f"Within {tie_tolerance:.0%} of the best and so tied: {_where(chosen)} and {others}; "
            f"the tie goes to the one using less memory, {_where(chosen)}."
        )
    reasoning.append(
        f"Chosen: {_where(chosen)} on {chosen['device']} ({chosen['precision']}): {_summary(chosen)}."
    )
    other_device = [r for r in passing if r["device"] != chosen["device"]]
    if other_device:
        rival = max(other_device, key=value) if higher_better else min(other_device, key=value)
        reasoning.append(
            f"The best {rival['device'].upper()} configuration, {_where(rival)}, measured {metric} "
            f"{value(rival):.4g} against {value(chosen):.4g}."
        )
    keep = (
        "engine",
        "device",
        "precision",
        "batch",
        "latency_p95_ms",
        "throughput_sps",
        "vram_mb",
        "peak_rss_mb",
        "rel_l2_error",
    )
    return {"chosen": {k: chosen[k] for k in keep}, "candidates": candidates, "reasoning": reasoning}


def select_engines(rows: list[dict[str, Any]], settings: dict[str, Any], models: list[str]) -> dict[str, Any]:
    """The whole ``selection.json``: constraints plus one decision per model."""
    constraints = settings["constraints"]
    result: dict[str, Any] = {
        "constraints": {"configured": constraints, "described": describe(constraints)},
        "models": {},
    }
    for model in models:
        model_rows = [r for r in rows if r["model"] == model]
        result["models"][model] = select_model(
            model_rows,
            constraints,
            settings["objective"][model],
            float(settings["tie_tolerance"]),
            list(settings["engines"]),
        )
        result["models"][model]["objective"] = settings["objective"][model]
    return result
