"""The tables of a finished run, as Markdown: time per rule, forecast errors, policy per fold.

Reads only what the workflow wrote — Snakemake's ``benchmark:`` files
(``results/<run>/benchmarks/*.tsv``), ``metrics/forecaster.json`` and ``metrics/policy.json`` — so
the figures in ``docs/benchmarks.md`` are copied from a run, not retyped:

    .venv/bin/python bench/run_summary.py results/binance-futures-btc-eth --out bench/out/real_preset.json

Time per rule: wall seconds (``s``) and CPU seconds of each job, summed per rule (a rule with
wildcards, e.g. one job per fold, gives its job count). The run's wall time is not their sum when
jobs ran side by side; pass ``--wall SECONDS`` (e.g. from ``time snakemake ...``) to print it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import polars as pl

# rule name from the benchmark file name: train_policy_fold_3.tsv -> train_policy_fold
PER_JOB_SUFFIX = re.compile(r"(_no_\w+)?_\d+$")


def rule_times(bench_dir: Path) -> list[dict[str, Any]]:
    """Per rule: jobs, wall seconds, CPU seconds and the largest max RSS (MiB), slowest first."""
    rows: dict[str, dict[str, Any]] = {}
    for tsv in sorted(bench_dir.glob("*.tsv")):
        frame = pl.read_csv(tsv, separator="\t", null_values=["NA", "-"])
        rule = PER_JOB_SUFFIX.sub("", tsv.stem)
        entry = rows.setdefault(
            rule, {"rule": rule, "jobs": 0, "wall_s": 0.0, "cpu_s": 0.0, "max_rss_mib": 0.0}
        )
        entry["jobs"] += 1
        entry["wall_s"] += float(frame["s"][-1])
        entry["cpu_s"] += float(frame["cpu_time"][-1] or 0.0)
        entry["max_rss_mib"] = max(entry["max_rss_mib"], float(frame["max_rss"][-1] or 0.0))
    return sorted(rows.values(), key=lambda r: -r["wall_s"])


def forecast_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Per model and channel: test MSE, QLIKE (vol) and directional accuracy (returns)."""
    rows = []
    for model, channels in metrics.get("per_channel", {}).items():
        for channel, splits in channels.items():
            if channel == "unavailable" or not isinstance(splits, dict) or "test" not in splits:
                continue
            test = splits["test"]
            rows.append(
                {
                    "model": model,
                    "channel": channel,
                    "val_mse": splits.get("val", {}).get("mse"),
                    "test_mse": test.get("mse"),
                    "test_qlike": test.get("qlike"),
                    "test_direction": test.get("direction_accuracy"),
                }
            )
    return rows


def _interval(entry: dict[str, Any], low: str, high: str) -> str:
    return f"[{entry[low]:+.2f}, {entry[high]:+.2f}]"


def policy_rows(policy: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per fold and strategy, and pooled per strategy and ablation: Sharpe with its interval, the
    difference to buy-and-hold with its interval and p-value, return, drawdown, turnover."""

    def row(where: str, name: str, s: dict[str, Any]) -> dict[str, Any]:
        return {
            "where": where,
            "strategy": name,
            "sharpe": s["sharpe"],
            "sharpe_ci": [s["sharpe_ci_low"], s["sharpe_ci_high"]],
            "diff_vs_bh": s["sharpe_diff_vs_buy_and_hold"],
            "diff_ci": [s["sharpe_diff_ci_low"], s["sharpe_diff_ci_high"]],
            "p_value": s["sharpe_diff_p_value"],
            "return": s["cumulative_return"],
            "max_drawdown": s["max_drawdown"],
            "turnover": s["turnover"],
        }

    folds = []
    for fold in policy["folds"]:
        where = f"{fold['fold']}: {fold['start'][:10]} ({fold['test_days']:.0f} d)"
        for name, s in fold["strategies"].items():
            folds.append(row(where, name, s))
    pooled = [row("pooled", name, s) for name, s in policy["strategies"].items()]
    pooled += [row("pooled", f"ablation {name}", s) for name, s in policy.get("ablations", {}).items()]
    return folds, pooled


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(times: list[dict], forecast: list[dict], folds: list[dict], pooled: list[dict]) -> str:
    out = ["| rule | jobs | wall s | CPU s | max RSS MiB |", "|---|---:|---:|---:|---:|"]
    out += [
        f"| {r['rule']} | {r['jobs']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['max_rss_mib']:.0f} |"
        for r in times
    ]
    out += [
        "",
        "| model | channel | val MSE | test MSE | test QLIKE | test direction |",
        "|---|---|---:|---:|---:|---:|",
    ]
    out += [
        f"| {r['model']} | {r['channel']} | {_fmt(r['val_mse'], '.4f')} | {_fmt(r['test_mse'], '.4f')} "
        f"| {_fmt(r['test_qlike'], '.4f')} | {_fmt(r['test_direction'], '.3f')} |"
        for r in forecast
    ]
    header = [
        "| test block | strategy | Sharpe [95 % CI] | vs buy-and-hold [95 % CI] | p | return "
        "| max DD | turnover |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for rows in (folds, pooled):
        out += ["", *header]
        out += [
            f"| {r['where']} | {r['strategy']} "
            f"| {r['sharpe']:+.2f} [{r['sharpe_ci'][0]:+.2f}, {r['sharpe_ci'][1]:+.2f}] "
            f"| {r['diff_vs_bh']:+.2f} [{r['diff_ci'][0]:+.2f}, {r['diff_ci'][1]:+.2f}] | {r['p_value']:.2f} "
            f"| {r['return']:+.1%} | {r['max_drawdown']:.1%} | {r['turnover']:.4f} |"
            for r in rows
        ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "run", type=Path, help="the run's results folder, e.g. results/binance-futures-btc-eth"
    )
    parser.add_argument(
        "--wall", type=float, default=None, help="the whole run's wall seconds, to print beside"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the tables as JSON here")
    args = parser.parse_args(argv)
    needed = [args.run / "benchmarks", args.run / "metrics/forecaster.json", args.run / "metrics/policy.json"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        print(f"run_summary: {', '.join(missing)} missing; finish the run first", file=sys.stderr)
        return 2
    times = rule_times(args.run / "benchmarks")
    forecaster = json.loads((args.run / "metrics/forecaster.json").read_text())
    policy = json.loads((args.run / "metrics/policy.json").read_text())
    forecast = forecast_rows(forecaster)
    folds, pooled = policy_rows(policy)
    print(markdown(times, forecast, folds, pooled))
    summary = {
        "run": str(args.run),
        "wall_s": args.wall,
        "rule_wall_s_sum": sum(r["wall_s"] for r in times),
        "rules": times,
        "forecaster_kept": forecaster.get("model"),
        "forecast": forecast,
        "policy_verdict": policy.get("verdict"),
        "policy_folds": folds,
        "policy_pooled": pooled,
        "significance": policy.get("significance"),
    }
    print(
        f"\nkept forecaster: {summary['forecaster_kept']}; "
        f"sum of rule wall times {summary['rule_wall_s_sum']:.0f} s"
        + (f"; run wall time {args.wall:.0f} s" if args.wall else "")
    )
    print(f"verdict: {summary['policy_verdict']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
