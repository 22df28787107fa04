"""Orchestration: choose cut times, recompute per cut, compare, tabulate, write JSON.

What "at or before t" means per stage (docs/lookahead.md):

- features, forecast features, embeddings: every row whose timestamp is <= t.
- splits (``segments_metadata.parquet``): every row. The perturbation keeps every timestamp, so the
  split boundaries (which depend only on the number of bars) must not move.
- scaler, observation spec (fitted per fold on its train rows): a fold whose train rows all end at or
  before t (train end <= t) must get identical statistics; a fold still training after t is fitted on
  data after t by design and is not compared.
- observations, positions: rows <= t of the folds whose train end <= t (a fold's observations are
  scaled with that fold's train statistics, so a fold still training after t differs everywhere
  by design). A position is compared at its decision time (the close of the bar it is chosen at).
- forecaster windows: the train and val windows of ``forecaster.fold`` (what training fits and
  early-stops on) must be identical once t >= that fold's val end.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from trainrelay.atomic import write_json
from trainrelay.errors import ConfigError, TrainrelayError
from trainrelay.lookahead.compare import StageResult, compare_frames, compare_values, flatten, iso
from trainrelay.lookahead.perturb import perturb_raw
from trainrelay.lookahead.recompute import Outputs, RunFiles, recompute
from trainrelay.policy.policy_zip import read_meta

log = logging.getLogger(__name__)

# Pipeline order: a leak is reported at the first stage it shows in (upstream of everything it taints).
STAGES = [
    "features",
    "splits",
    "scaler",
    "embeddings",
    "forecaster_windows",
    "forecasts",
    "observation_spec",
    "observations",
    "positions",
]
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)


class LookaheadLeak(TrainrelayError):
    """Something at or before a cut time changed when only data after it was replaced."""


@dataclass
class Cut:
    timestamp: datetime
    label: str


@dataclass
class Report:
    results: str
    cuts: list[Cut]
    stages: list[StageResult]
    reproduced: list[dict[str, Any]] = field(default_factory=list)
    atol: float = 0.0
    seed: int = 0

    @property
    def leaks(self) -> list[StageResult]:
        return [r for r in self.stages if r.leaked]

    def first_leak(self) -> StageResult | None:
        for stage in STAGES:
            found = [r for r in self.stages if r.stage == stage and r.leaked]
            if found:
                return min(found, key=lambda r: r.cut)
        return None

    def to_json(self) -> dict[str, Any]:
        leak = self.first_leak()
        return {
            "results": self.results,
            "passed": leak is None,
            "leak": leak.to_json() if leak else None,
            "message": leak_line(leak) if leak else None,
            "cuts": [{"timestamp": iso(c.timestamp), "label": c.label} for c in self.cuts],
            "stages": [r.to_json() for r in self.stages],
            "baseline_reproduces_run": self.reproduced,
            "tolerance": {"atol": self.atol, "why": "exact: same code, same process, same batch layout"},
            "perturbation": {
                "seed": self.seed,
                "what": "every raw record after the cut replaced: re-seeded random-walk klines (outage bars "
                "kept), redrawn funding rates, shuffled/re-timed text events, redrawn series values",
            },
        }


def leak_line(r: StageResult) -> str:
    where = f", {r.detail}" if r.detail else ""
    return (
        f"look-ahead in stage '{r.stage}': column '{r.column}' changed at {iso(r.first_timestamp)}"  # type: ignore[arg-type]
        f"{where} when only data after the cut {iso(r.cut)} was replaced ({r.changed} of {r.compared} "
        "compared rows changed)"
    )


def _timeline(features: pl.DataFrame) -> list[datetime]:
    return features["timestamp"].unique().sort().to_list()


def _split_bounds(metadata: pl.DataFrame) -> dict[tuple[int, str], tuple[datetime, datetime]]:
    spans = metadata.group_by("fold", "split").agg(pl.col("start").min(), pl.col("end").max())
    return {(int(r["fold"]), r["split"]): (r["start"], r["end"]) for r in spans.iter_rows(named=True)}


def choose_cuts(timeline: list[datetime], metadata: pl.DataFrame, count: int) -> list[Cut]:
    """``count`` cut times, most telling first: the middle of every fold's test block, every fold's
    train end (the scaler's boundary, exactly), the middle of the first train block; then evenly
    spaced ones. The last bar is never a cut (nothing after it to change)."""
    bounds = _split_bounds(metadata)
    folds = sorted({f for f, _ in bounds})
    position = {ts: i for i, ts in enumerate(timeline)}
    wanted: list[tuple[int, str]] = []
    for fold in folds:
        start, end = bounds[(fold, "test")]
        wanted.append(((position[start] + position[end]) // 2, f"fold {fold} test block"))
    for fold in folds:
        wanted.append((position[bounds[(fold, "train")][1]], f"fold {fold} train end"))
    wanted.append((position[bounds[(folds[0], "train")][1]] // 2, "train block"))
    n = len(timeline)
    for k in range(1, count + 1):
        wanted.append((k * (n - 1) // (count + 1), "evenly spaced"))
    chosen: dict[int, str] = {}
    for row, label in wanted:
        if len(chosen) == count:
            break
        if 0 <= row < n - 1 and row not in chosen:
            chosen[row] = label
    return [Cut(timeline[row], label) for row, label in sorted(chosen.items())]


def given_cuts(timeline: list[datetime], stamps: list[str]) -> list[Cut]:
    """Cuts from ISO times, each moved back to the last bar close at or before it."""
    cuts = []
    for text in stamps:
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"--at '{text}': not an ISO time such as 2024-01-20T12:00Z") from None
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
        earlier = [ts for ts in timeline if ts <= when]
        if not earlier or earlier[-1] >= timeline[-1]:
            raise ConfigError(
                f"--at '{text}': outside the data ({iso(timeline[0])} .. {iso(timeline[-1])}, the last bar "
                "excluded); pick a time inside it"
            )
        cuts.append(Cut(earlier[-1], "given"))
    return cuts


def _frame_result(
    stage: str,
    cut: Cut,
    base: pl.DataFrame,
    pert: pl.DataFrame,
    keys: list[str],
    atol: float,
    time: str = "timestamp",
    upto: datetime | None = None,
    detail: str | None = None,
) -> StageResult:
    diff = compare_frames(base, pert, upto or cut.timestamp, keys, time=time, atol=atol)
    where = detail
    if diff.changed and diff.symbol is not None:
        where = f"{detail}, symbol {diff.symbol}" if detail else f"symbol {diff.symbol}"
    return StageResult(
        stage=stage,
        cut=cut.timestamp,
        compared=diff.compared,
        changed=diff.changed,
        first_timestamp=diff.first_timestamp,
        column=diff.column,
        detail=where,
        reached=diff.reached,
    )


def _merge(stage: str, cut: Cut, parts: list[StageResult], skipped: str) -> StageResult:
    """Per-fold results of one stage at one cut as one row (the earliest change wins)."""
    if not parts:
        return StageResult(stage=stage, cut=cut.timestamp, skipped=skipped)
    out = StageResult(
        stage=stage,
        cut=cut.timestamp,
        compared=sum(p.compared for p in parts),
        changed=sum(p.changed for p in parts),
        reached=sum(p.reached or 0 for p in parts),
        detail=", ".join(p.detail for p in parts if p.detail and not p.changed) or None,
    )
    changed = [p for p in parts if p.changed]
    if changed:
        first = min(changed, key=lambda p: p.first_timestamp)  # type: ignore[arg-type,return-value]
        out.first_timestamp, out.column, out.detail = first.first_timestamp, first.column, first.detail
    return out


def _fitted(
    stage: str, cut: Cut, base: dict[int, dict], pert: dict[int, dict], ends: dict[int, datetime], atol: float
) -> StageResult:
    """A per-fold fitted object (scaler stats, observation spec): folds with train end <= cut."""
    folds = [f for f in sorted(base) if f in ends and ends[f] <= cut.timestamp]
    if not folds:
        return StageResult(
            stage=stage, cut=cut.timestamp, skipped="every fold's train rows reach past the cut"
        )
    out = StageResult(stage=stage, cut=cut.timestamp, compared=len(folds), detail=f"folds {folds}")
    for fold in folds:
        names = compare_values(flatten(base[fold]), flatten(pert.get(fold, {})), atol)
        if names:
            out.changed += 1
            if out.column is None:
                out.first_timestamp, out.column = ends[fold], names[0]
                out.detail = f"fold {fold} (train end {iso(ends[fold])}); {len(names)} value(s) differ"
    return out


def compare_cut(
    base: Outputs, pert: Outputs, cut: Cut, config: dict[str, Any], atol: float
) -> list[StageResult]:
    bounds = _split_bounds(base.metadata)
    train_end = {f: end for (f, split), (_, end) in bounds.items() if split == "train"}
    t = cut.timestamp
    results = [
        _frame_result("features", cut, base.features, pert.features, ["symbol", "timestamp"], atol),
        _frame_result(
            "splits",
            cut,
            base.metadata,
            pert.metadata,
            ["fold", "split", "episode"],
            atol,
            time="start",
            upto=FAR_FUTURE,
            detail="every row (timestamps are kept, so no boundary may move)",
        ),
        _fitted(
            "scaler",
            cut,
            {int(k): v for k, v in base.scaler["folds"].items()},
            {int(k): v for k, v in pert.scaler["folds"].items()},
            train_end,
            atol,
        ),
    ]
    if base.embeddings is not None and pert.embeddings is not None:
        results.append(
            _frame_result(
                "embeddings", cut, base.embeddings, pert.embeddings, ["timestamp", "symbol", "text"], atol
            )
        )
    else:
        results.append(StageResult(stage="embeddings", cut=t, skipped="the run has no embeddings"))
    if base.forecaster_windows is not None and pert.forecaster_windows is not None:
        fold = int(config["forecaster"]["fold"])
        val_end = bounds[(fold, "val")][1]
        if val_end <= t:
            results.append(
                _frame_result(
                    "forecaster_windows",
                    cut,
                    base.forecaster_windows,
                    pert.forecaster_windows,
                    ["split", "window", "element"],
                    atol,
                    detail=f"forecaster.fold {fold} train+val windows",
                )
            )
        else:
            results.append(
                StageResult(
                    stage="forecaster_windows",
                    cut=t,
                    skipped=f"forecaster.fold {fold}'s val block ends after the cut ({iso(val_end)})",
                )
            )
    else:
        results.append(StageResult(stage="forecaster_windows", cut=t, skipped="the run has no forecaster"))
    if base.forecasts is not None and pert.forecasts is not None:
        results.append(
            _frame_result("forecasts", cut, base.forecasts, pert.forecasts, ["symbol", "timestamp"], atol)
        )
    else:
        results.append(StageResult(stage="forecasts", cut=t, skipped="the run has no forecast features"))
    if not base.specs:
        for stage in ("observation_spec", "observations", "positions"):
            results.append(StageResult(stage=stage, cut=t, skipped="the run has no fold policies"))
        return results
    results.append(_fitted("observation_spec", cut, base.specs, pert.specs, train_end, atol))
    done = [f for f in sorted(base.specs) if train_end[f] <= t]
    skipped = "every fold's train rows reach past the cut"
    results.append(
        _merge(
            "observations",
            cut,
            [
                _frame_result(
                    "observations",
                    cut,
                    base.observations[f],
                    pert.observations[f],
                    ["symbol", "timestamp"],
                    atol,
                    detail=f"fold {f}",
                )
                for f in done
            ],
            skipped,
        )
    )
    results.append(
        _merge(
            "positions",
            cut,
            [
                _frame_result(
                    "positions",
                    cut,
                    base.positions[f],
                    pert.positions[f],
                    ["symbol", "timestamp"],
                    atol,
                    detail=f"fold {f}",
                )
                for f in done
            ],
            skipped,
        )
    )
    return results


def reproduces(run: RunFiles, base: Outputs) -> list[dict[str, Any]]:
    """Does the in-process baseline equal the run's own files? (Proof the check runs the run's code.)"""
    checks: list[tuple[str, Any, Any]] = [
        (str(run.features), pl.read_parquet(run.features), base.features),
        (str(run.scaler), json.loads(run.scaler.read_text(encoding="utf-8")), base.scaler),
        (str(run.metadata), pl.read_parquet(run.metadata), base.metadata),
    ]
    if run.embeddings is not None and base.embeddings is not None:
        checks.append((str(run.embeddings), pl.read_parquet(run.embeddings), base.embeddings))
    if run.forecasts is not None and base.forecasts is not None:
        checks.append((str(run.forecasts), pl.read_parquet(run.forecasts), base.forecasts))
    if base.specs:
        for fold, path in sorted(run.policies.items()):
            checks.append((f"{path} (observation spec)", read_meta(path)["spec"], base.specs[fold]))
    out = []
    for name, stored, recomputed in checks:
        same = stored.equals(recomputed) if isinstance(stored, pl.DataFrame) else stored == recomputed
        entry: dict[str, Any] = {"file": name, "reproduced": bool(same)}
        if not same:
            entry["max_abs_difference"] = _max_difference(stored, recomputed)
        out.append(entry)
        if not same:
            log.warning(
                "look-ahead: recomputing %s did not give the run's file (other code or config?)", name
            )
    return out


def _max_difference(stored: Any, recomputed: Any) -> float | None:
    """Largest absolute difference of the numbers in two tables or specs; None when their shapes differ."""
    if isinstance(stored, pl.DataFrame):
        if stored.columns != recomputed.columns or stored.height != recomputed.height:
            return None
        numeric = [c for c, dtype in stored.schema.items() if dtype.is_float()]
        if not numeric:
            return None
        a = stored.select(numeric).to_numpy().astype(float)
        b = recomputed.select(numeric).to_numpy().astype(float)
        return float(np.nanmax(np.abs(a - b))) if a.size else 0.0
    a, b = flatten(stored), flatten(recomputed)
    if set(a) != set(b):
        return None
    gaps = [abs(a[k] - b[k]) for k in a if isinstance(a[k], float | int) and isinstance(b[k], float | int)]
    return float(max(gaps)) if gaps else None


def run_lookahead(
    results: str | Path,
    config: dict[str, Any],
    cuts: int = 5,
    at: list[str] | None = None,
    workdir: str | Path | None = None,
    device: str | None = None,
    atol: float = 0.0,
    seed: int | None = None,
) -> Report:
    """Perturb the raw data after each cut, recompute, compare; the report (no exception on a leak)."""
    results = Path(results)
    run = RunFiles.find(results)
    workdir = Path(workdir) if workdir is not None else results.resolve().parent.parent
    seed = int(config["seed"]) if seed is None else int(seed)
    manifest = pl.read_parquet(run.manifest)
    original = [str(workdir / p) for p in manifest["path"].to_list()]
    missing = [p for p in original if not Path(p).is_file()]
    if missing:
        raise ConfigError(
            f"{missing[0]}: raw file of the manifest not found; run the command from the workflow folder "
            "or give --workdir"
        )
    with tempfile.TemporaryDirectory(prefix="trainrelay-lookahead-") as tmp:
        scratch = Path(tmp)
        log.info("look-ahead: baseline recomputation of %s", results)
        base = recompute(run, config, original, scratch / "baseline", device)
        timeline = _timeline(base.features)
        chosen = given_cuts(timeline, at) if at else choose_cuts(timeline, base.metadata, cuts)
        if not chosen:
            raise ConfigError("--cuts: no cut time fits the data; use --cuts 1 or more")
        report = Report(
            results=str(results),
            cuts=chosen,
            stages=[],
            reproduced=reproduces(run, base),
            atol=atol,
            seed=seed,
        )
        for index, cut in enumerate(chosen):
            log.info(
                "look-ahead: cut %d/%d at %s (%s)", index + 1, len(chosen), iso(cut.timestamp), cut.label
            )
            raw_root = scratch / f"cut{index}" / "raw"
            raw = perturb_raw(manifest, workdir, raw_root, cut.timestamp, seed)
            pert = recompute(run, config, raw, scratch / f"cut{index}" / "out", device)
            stages = compare_cut(base, pert, cut, config, atol)
            features = stages[0]
            if not features.reached:
                raise TrainrelayError(
                    f"look-ahead: replacing the raw data after {iso(cut.timestamp)} changed no feature row "
                    "after it; the perturbation did not reach the features (this is a bug)"
                )
            report.stages.extend(stages)
    return report


def format_table(report: Report) -> str:
    """The per stage x cut table the command prints."""
    header = ["stage", "cut", "compared", "changed", "first changed", "column", "reached", "note"]
    rows = [header]
    labels = {c.timestamp: c.label for c in report.cuts}
    order = {s: i for i, s in enumerate(STAGES)}
    for r in sorted(report.stages, key=lambda r: (order[r.stage], r.cut)):
        rows.append(
            [
                r.stage,
                f"{iso(r.cut)} {labels.get(r.cut, '')}".strip(),
                "-" if r.skipped else str(r.compared),
                "-" if r.skipped else str(r.changed),
                iso(r.first_timestamp) if r.first_timestamp else "-",
                r.column or "-",
                "-" if r.reached is None else str(r.reached),
                r.skipped or (r.detail if r.changed else "") or "",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def write_report(report: Report, path: str | Path) -> None:
    write_json(path, report.to_json())
