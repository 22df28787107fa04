"""Choose one engine and batch per model from measured rows, and say why in sentences.

Order of decision: (1) keep the configurations that meet every constraint; (2) rank them by the
model's objective — ``latency`` (lowest p95 latency) or ``throughput`` (most samples/s);
(3) configurations within ``tie_tolerance`` (relative) of the best count as tied; among them a
configuration using materially more GPU memory than the least (``vram_mb``, the engine's own
over a baseline; a CPU engine uses none) drops out; (4) remaining ties go to the earlier engine
in the configured order, then the smaller batch. Peak RSS never breaks a tie: it is the whole
process's, and it only grows as engines are measured in config order, so it would rank engines by
when they were measured, not by what they use. Nothing here prefers a device: a CPU engine wins
whenever it measured best.
"""

from __future__ import annotations

from typing import Any

from trainrelay.benchmark.constraints import check_row, describe

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
        f"process peak RSS {row['peak_rss_mb']:.0f} MB"
    )


def _failure(check: dict[str, Any]) -> str:
    if check["value"] is None or check["note"]:
        return f"{check['constraint']} ({check['note']})"
    return f"{check['constraint']} (measured {check['value']:.4g})"


# A GPU memory difference breaks a tie only when it is material: more than MEMORY_MARGIN_MB and
# more than MEMORY_MARGIN_REL above the least. Smaller differences are within allocator rounding
# (torch's 2 MiB segments, ONNX Runtime's arena chunks) and what other processes on the GPU did
# between the baseline and the peak, so they say nothing about the engine.
MEMORY_MARGIN_MB = 50.0
MEMORY_MARGIN_REL = 0.10


def _gpu_memory(row: dict[str, Any]) -> float | None:
    """The configuration's own GPU memory in MB: none for a CPU engine, None when not measured."""
    return 0.0 if row["device"] == "cpu" else row["vram_mb"]


def _gpu_memory_text(row: dict[str, Any]) -> str:
    memory = _gpu_memory(row)
    if row["device"] == "cpu":
        return "no GPU memory"
    return "VRAM not measured" if memory is None else f"{memory:.0f} MB VRAM"


def _materially_more(memory: float, least: float) -> bool:
    return memory - least > MEMORY_MARGIN_MB and memory > least * (1 + MEMORY_MARGIN_REL)


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def _break_tie(tied: list[dict[str, Any]], engine_order: list[str]) -> tuple[dict[str, Any], str]:
    """The winner among tied configurations and the clause saying what decided it."""
    order = {name: i for i, name in enumerate(engine_order)}
    tied = sorted(tied, key=lambda r: (order.get(r["engine"], len(order)), r["batch"]))
    memory = [_gpu_memory(r) for r in tied]
    unmeasured = [r for r, m in zip(tied, memory, strict=True) if m is None]
    least = 0.0
    kept, heavier = tied, []
    if not unmeasured:  # one unknown value makes every comparison with it unknown: memory cannot decide
        measured = [float(m or 0.0) for m in memory]  # every one is a number here
        least = min(measured)
        heavy = [_materially_more(m, least) for m in measured]
        kept = [r for r, h in zip(tied, heavy, strict=True) if not h]
        heavier = [r for r, h in zip(tied, heavy, strict=True) if h]
    chosen = kept[0]
    if len(kept) == 1:
        against = "; ".join(f"{_where(r)}: {_gpu_memory_text(r)}" for r in heavier)
        return chosen, (
            f"the tie goes to the one using materially less GPU memory, {_where(chosen)} with "
            f"{_gpu_memory_text(chosen)} ({against})"
        )
    clauses = []
    if heavier:
        clauses.append(
            f"{_join([_where(r) for r in heavier])} {'drops' if len(heavier) == 1 else 'drop'} out for "
            f"using materially more GPU memory ({'; '.join(_gpu_memory_text(r) for r in heavier)} "
            f"against {least:.0f} MB)"
        )
    if unmeasured:
        why = f"GPU memory was not measured for {_join([_where(r) for r in unmeasured])}"
    elif all(r["device"] == "cpu" for r in kept):
        why = "they run on the CPU, where no engine's own memory is measured (peak RSS is the process's)"
    else:
        listed = "; ".join(f"{_where(r)}: {_gpu_memory_text(r)}" for r in kept)
        why = (
            f"their GPU memory differs by no more than {MEMORY_MARGIN_MB:.0f} MB or "
            f"{MEMORY_MARGIN_REL:.0%} ({listed})"
        )
    if kept[1]["engine"] != chosen["engine"]:
        by = f"the earlier engine in the configured order, {_where(chosen)}"
    else:
        by = f"the smaller batch, {_where(chosen)}"
    clauses.append(
        f"memory does not separate {'the rest' if heavier else 'them'} because {why}, so the tie goes to {by}"
    )
    return chosen, "; ".join(clauses)


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
    reasoning.append(
        f"Objective {objective}: {wording} wins; {_where(best)} is best with {metric} {value(best):.4g}."
    )
    chosen, how = _break_tie(tied, engine_order)
    if len(tied) > 1:
        listed = _join([f"{_where(r)} ({value(r):.4g})" for r in tied])
        reasoning.append(f"Within {tie_tolerance:.0%} of the best and so tied: {listed}; {how}.")
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
