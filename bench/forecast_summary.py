"""Table of ``forecast_accuracy.py`` results, with mean and spread over seeds.

    python bench/forecast_summary.py docs/bench-results/etth1_*.json --out summary.json

One row per result file and model, then, for every (data, horizon, lookback, model) run with
more than one seed, the mean and sample standard deviation of its test MSE, and the run that
validation alone would pick (lowest val MSE) with its test score.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from trainrelay.atomic import write_json

MODELS = ("patchtst", "dlinear", "naive")


def rows_of(paths: list[Path]) -> list[dict[str, Any]]:
    rows = []
    for path in paths:
        result = json.loads(path.read_text())
        for model in MODELS:
            entry = result.get(model)
            if not isinstance(entry, dict):
                continue
            paper = entry.get("paper_loader") or {}
            rows.append(
                {
                    "file": path.name,
                    "data": result["data"],
                    "horizon": result["horizon"],
                    "lookback": result["lookback"],
                    "seed": result["seed"],
                    "model": model,
                    "val_mse": entry["val_mse"],
                    "test_mse": entry["test_mse"],
                    "test_mae": entry["test_mae"],
                    "paper_test_mse": paper.get("test_mse"),
                    "paper_test_mae": paper.get("test_mae"),
                    "best_epoch": entry.get("best_epoch"),
                    "epochs_run": entry.get("epochs_run"),
                    "seconds": entry["seconds"],
                }
            )
    return rows


def seed_groups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if row["epochs_run"] is None:  # nothing trained (the last value): seeds change nothing
            continue
        groups.setdefault((row["data"], row["horizon"], row["lookback"], row["model"]), []).append(row)
    out = []
    for (data, horizon, lookback, model), members in sorted(groups.items()):
        seeds = sorted({m["seed"] for m in members})
        if len(seeds) < 2:
            continue
        tests = [m["test_mse"] for m in members]
        chosen = min(members, key=lambda m: m["val_mse"])
        out.append(
            {
                "data": data,
                "horizon": horizon,
                "lookback": lookback,
                "model": model,
                "seeds": seeds,
                "test_mse_mean": statistics.mean(tests),
                "test_mse_std": statistics.stdev(tests),
                "test_mse_min": min(tests),
                "test_mse_max": max(tests),
                "val_chosen_seed": chosen["seed"],
                "val_chosen_test_mse": chosen["test_mse"],
                "val_chosen_test_mae": chosen["test_mae"],
            }
        )
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="forecast_accuracy.py JSON files")
    parser.add_argument("--out", type=Path, help="summary JSON")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.results if not p.is_file()]
    if missing:
        print(f"forecast_summary: error: not found: {', '.join(missing)}", file=sys.stderr)
        return 1
    rows = rows_of(args.results)
    columns = ["data", "horizon", "lookback", "seed", "model", "val_mse", "test_mse", "test_mae"]
    columns += ["paper_test_mse", "best_epoch", "epochs_run", "seconds"]
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(_fmt(row[c]) for c in columns))
    groups = seed_groups(rows)
    for g in groups:
        print(
            f"{g['data']} H={g['horizon']} L={g['lookback']} {g['model']}: {len(g['seeds'])} seeds, test MSE "
            f"{g['test_mse_mean']:.4f} +- {g['test_mse_std']:.4f} (min {g['test_mse_min']:.4f}, max "
            f"{g['test_mse_max']:.4f}); lowest val MSE: seed {g['val_chosen_seed']}, test "
            f"{g['val_chosen_test_mse']:.4f}"
        )
    if args.out:
        write_json(args.out, {"rows": rows, "seed_groups": groups})
    return 0


if __name__ == "__main__":
    sys.exit(main())
