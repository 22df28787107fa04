"""The last lines a finished `snakemake` run prints: where the report is, the chosen engines and the
policy's verdict — the three things a user looks for after a run, without opening a file.

Read from what the run wrote (only the files that exist: a run cut short with ``until`` names
what it built), so the lines are never ahead of the outputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainrelay.core.artifacts import reports_relpath, results_path


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def _engine(model: str, entry: dict[str, Any]) -> str:
    chosen = entry.get("chosen")
    if not isinstance(chosen, dict):
        return f"{model}: none met the constraints"
    p95 = chosen.get("latency_p95_ms")
    latency = f", p95 {p95:.3g} ms" if isinstance(p95, int | float) else ""
    return f"{model} -> {chosen.get('engine')} (batch {chosen.get('batch')}{latency})"


def closing_lines(results_dir: str | Path, reports_dir: str | Path) -> list[str]:
    """``report: ...``, ``engines: ...``, ``verdict: ...`` for what exists of one run."""
    results, reports = Path(results_dir), Path(reports_dir)
    lines = []
    html, pdf = reports / reports_relpath("report", "html"), reports / reports_relpath("report", "pdf")
    if html.exists():
        lines.append(f"report: {html}" + (f" (PDF: {pdf})" if pdf.exists() else ""))
    selection = _read_json(results_path(results, "benchmark", "selection"))
    if selection and isinstance(selection.get("models"), dict):
        engines = [_engine(model, entry) for model, entry in sorted(selection["models"].items())]
        lines.append("engines: " + "; ".join(engines))
    policy = _read_json(results_path(results, "evaluate_policy", "metrics"))
    if policy and policy.get("verdict"):
        lines.append(f"verdict: {policy['verdict']}")
    if not lines:
        lines.append(f"outputs: {results} (no report, engine choice or verdict yet: the run stopped earlier)")
    return lines
