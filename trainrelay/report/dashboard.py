"""The dashboard's data: ``python -m trainrelay dashboard --results results/<run> --out
reports/dashboard/data/dashboard-state.json [--persist-run-history --run-id ID]``.

A *snapshot* is everything the static page ``reports/dashboard/index.html`` shows for one run:
stage status (from the validation checklist), loss curves, metrics and the engine choice. With
``--persist-run-history`` the snapshot is kept as ``data/runs/<run_id>.json`` and the state file
lists every persisted run, so the page shows the run history. A run still in progress works too:
whatever is missing is shown as "not run".
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from pathlib import Path
from typing import Any

import polars as pl

from trainrelay.atomic import write_json
from trainrelay.core.artifacts import results_path, results_relpath
from trainrelay.errors import ConfigError, DataError, TrainrelayError
from trainrelay.report.inputs import SPECS, read_artifact
from trainrelay.report.validate import stage_status, validate_run
from trainrelay.report.values import jsonable, records

log = logging.getLogger(__name__)

RUN_ID_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
MAX_CURVE_POINTS = 500
STATE_VERSION = 1


def _optional(results: Path, name: str) -> Any:
    """A parsed artifact, or None when it is absent or unreadable (the page says "not run")."""
    path = results / SPECS[name].relpath
    if not path.is_file():
        return None
    try:
        return read_artifact(path, SPECS[name])
    except DataError as exc:
        log.warning("dashboard: %s", exc)
        return None


def _curve(frame: pl.DataFrame | None, x: str) -> dict[str, list[Any]] | None:
    """Columns of a loss log as lists, thinned to at most MAX_CURVE_POINTS rows (last row kept)."""
    if frame is None or frame.height == 0:
        return None
    step = max(1, math.ceil(frame.height / MAX_CURVE_POINTS))
    thinned = frame.gather_every(step)
    if thinned[x][-1] != frame[x][-1]:
        thinned = pl.concat([thinned, frame.tail(1)], how="vertical_relaxed")
    numeric = [c for c in frame.columns if frame[c].dtype.is_numeric()]
    return {c: jsonable(thinned[c].cast(pl.Float64).to_list()) if c != x else jsonable(thinned[c].to_list())
            for c in numeric}  # fmt: skip


def _validation(results: Path, reports: Path | None) -> dict[str, Any]:
    """results/<run>/validation.json when the validate rule wrote it, else the checklist run now."""
    path = results_path(results, "validate", "validation")
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and isinstance(data.get("checks"), list):
                data.setdefault("stages", stage_status(data["checks"]))
                return {**data, "source": results_relpath("validate", "validation")}
        except json.JSONDecodeError as exc:
            log.warning("dashboard: %s is not valid JSON (%s); validating now", path, exc)
    return {**validate_run(results, reports), "source": "checked by the dashboard"}


def _chosen_label(chosen: dict[str, Any] | None) -> str | None:
    if not chosen:
        return None
    return (
        " · ".join(str(chosen.get(k, "?")) for k in ("engine", "device", "precision"))
        + f" · batch {chosen.get('batch', '?')}"
    )


def build_snapshot(
    results_dir: str | Path, run_id: str, reports_dir: str | Path | None = None
) -> dict[str, Any]:
    """Everything the page shows for one run, JSON-safe."""
    results = Path(results_dir)
    if not results.is_dir():
        raise DataError(f"{results}: results directory does not exist; run the workflow first")
    validation = _validation(results, Path(reports_dir) if reports_dir else None)
    manifest = _optional(results, "manifest")
    forecaster = _optional(results, "forecaster_metrics")
    policy = _optional(results, "policy_metrics")
    selection = _optional(results, "selection")
    benchmark = _optional(results, "benchmark")
    engines = []
    for model, entry in sorted(((selection or {}).get("models") or {}).items()):
        entry = entry or {}
        engines.append(
            {
                "model": model,
                "chosen": entry.get("chosen"),
                "label": _chosen_label(entry.get("chosen")),
                "reasoning": [str(line) for line in entry.get("reasoning", [])],
            }
        )
    bench_rows = None
    if benchmark is not None:
        keep = ["model", "engine", "device", "precision", "batch", "status", "reason", "latency_p50_ms",
                "latency_p95_ms", "throughput_sps", "peak_rss_mb"]  # fmt: skip
        bench_rows = records(benchmark.select(keep).sort("model", "engine", "device", "precision", "batch"))
    checks = validation["checks"]
    snapshot = {
        "version": STATE_VERSION,
        "run_id": run_id,
        "run": results.name,
        "data_through": manifest["last_ts"].max() if manifest is not None and manifest.height else None,
        "validation": {
            "passed": bool(validation["passed"]),
            "source": validation["source"],
            "checks_passed": sum(1 for c in checks if c["passed"]),
            "checks_total": len(checks),
            "checks": checks,
        },
        "stages": validation["stages"],
        "losses": {
            "forecaster": _curve(_optional(results, "forecaster_loss"), "epoch"),
            "ppo": _curve(_optional(results, "ppo_loss"), "timesteps"),
        },
        "metrics": {
            "forecaster": (forecaster or {}).get("models"),
            "policy": (policy or {}).get("strategies"),
            "verdict": (policy or {}).get("verdict"),
            # test length, trials, deflated Sharpe and the trivial-policy flag behind the verdict
            "significance": (policy or {}).get("significance"),
        },
        "engines": engines,
        "benchmark": bench_rows,
    }
    return jsonable(snapshot)


def _summary(snapshot: dict[str, Any], persisted: bool) -> dict[str, Any]:
    return {
        "run_id": snapshot["run_id"],
        "run": snapshot["run"],
        "passed": snapshot["validation"]["passed"],
        "checks_passed": snapshot["validation"]["checks_passed"],
        "checks_total": snapshot["validation"]["checks_total"],
        "data_through": snapshot["data_through"],
        "engines": {e["model"]: e["label"] for e in snapshot["engines"]},
        "snapshot": f"runs/{snapshot['run_id']}.json" if persisted else None,
    }


def _persisted(runs_dir: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(runs_dir.glob("*.json")):
        try:
            snapshot = json.loads(path.read_text(encoding="utf-8"))
            out.append(_summary(snapshot, persisted=True))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            log.warning("dashboard: skipping unreadable run snapshot %s (%s)", path, exc)
    return out


def write_dashboard(
    results_dir: str | Path,
    out: str | Path,
    run_id: str | None = None,
    persist_run_history: bool = False,
    reports_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Write the state file (and the run's snapshot when persisting); return the state."""
    results = Path(results_dir)
    run_id = run_id or results.name
    if not RUN_ID_RE.match(run_id):
        raise ConfigError(f"dashboard run id {run_id!r} may only hold letters, digits, '_', '.', '-'")
    out = Path(out)
    runs_dir = out.parent / "runs"
    snapshot = build_snapshot(results, run_id, reports_dir)
    if persist_run_history:
        write_json(runs_dir / f"{run_id}.json", snapshot)
    runs = [r for r in _persisted(runs_dir) if r["run_id"] != run_id or persist_run_history]
    if not persist_run_history:
        runs.append(_summary(snapshot, persisted=False))
    runs.sort(key=lambda r: r["run_id"])
    state = {
        "version": STATE_VERSION,
        "current_run": run_id,
        "runs": runs,
        "current": snapshot,
    }
    write_json(out, state)
    log.info("dashboard state for run %s written to %s (%d runs in history)", run_id, out, len(runs))
    return state


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``dashboard`` subcommand's options (the CLI wires the subcommand)."""
    parser.add_argument("--results", required=True, help="the run's results directory, e.g. results/demo")
    parser.add_argument(
        "--out", required=True, help="state file, e.g. reports/dashboard/data/dashboard-state.json"
    )
    parser.add_argument(
        "--run-id", default=None, help="name of this run in the history (default: the run name)"
    )
    parser.add_argument(
        "--persist-run-history",
        action="store_true",
        help="keep this run's snapshot under data/runs/<run_id>.json",
    )
    parser.add_argument(
        "--reports", default=None, help="the run's reports directory (default: reports/<run>)"
    )


def run_dashboard(args: argparse.Namespace) -> int:
    """CLI entry: 0 on success, 1 with one line on a user error."""
    try:
        state = write_dashboard(
            args.results, args.out, args.run_id, args.persist_run_history, getattr(args, "reports", None)
        )
    except TrainrelayError as exc:
        print(f"trainrelay dashboard: {exc}", file=sys.stderr)
        return 1
    current = state["current"]
    print(
        f"trainrelay dashboard: run {current['run_id']}: {current['validation']['checks_passed']}/"
        f"{current['validation']['checks_total']} checks passed; {len(state['runs'])} run(s) in {args.out}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainrelay dashboard", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_dashboard(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
