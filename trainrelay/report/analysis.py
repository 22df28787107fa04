"""The report's derived numbers: data summary, metrics vs baselines, engine deltas vs the baseline
engine, constraint evaluation and recommendations. Pure functions of the parsed inputs.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from trainrelay.benchmark.constraints import check_row
from trainrelay.report.inputs import FORECAST_METRICS, POLICY_INTERVALS, POLICY_METRICS, RunInputs
from trainrelay.report.values import finite, records

ENGINE_KEYS = ("model", "engine", "device", "precision", "batch")


# Stretches of missing bars listed in the report; base_manifest.parquet has them all.
MISSING_ROWS_SHOWN = 30


def data_summary(inputs: RunInputs) -> dict[str, Any]:
    manifest = inputs.manifest
    by_kind = (
        manifest.group_by("kind", "symbol", "interval", maintain_order=False)
        .agg(
            pl.len().alias("files"),
            pl.col("rows").sum(),
            pl.col("gaps").sum(),
            pl.col("bytes").sum(),
            pl.col("first_ts").min().alias("first"),
            pl.col("last_ts").max().alias("last"),
        )
        .sort("kind", "symbol", "interval", nulls_last=True)
    )
    segments = (
        inputs.segments.group_by("fold", "split")
        .agg(
            pl.len().alias("episodes"),
            pl.col("rows").sum(),
            pl.col("start").min(),
            pl.col("end").max(),
        )
        .with_columns(
            pl.col("split").replace_strict({"train": 0, "val": 1, "test": 2}, default=3).alias("_order")
        )
        .sort("fold", "_order", "split")
        .drop("_order")
    )
    missing = (
        manifest.filter(pl.col("missing").list.len() > 0)
        .select("kind", "symbol", "interval", "missing")
        .explode("missing")
        .unnest("missing")
        .sort("first", "symbol", "kind", "interval")
        if "missing" in manifest.columns
        else pl.DataFrame()
    )
    return {
        "files": manifest.height,
        "missing": records(missing.head(MISSING_ROWS_SHOWN)),
        "missing_stretches": missing.height,
        "symbols": sorted(manifest["symbol"].drop_nulls().unique().to_list()),
        "kinds": sorted(manifest["kind"].drop_nulls().unique().to_list()),
        "rows": int(manifest["rows"].sum()),
        "bytes": int(manifest["bytes"].sum()),
        "gaps": int(manifest["gaps"].sum()),
        "first_ts": manifest["first_ts"].min(),
        "last_ts": manifest["last_ts"].max(),
        "by_kind": records(by_kind),
        "folds": int(inputs.segments["fold"].n_unique()),
        "segments": records(segments),
    }


def _model_order(name: str) -> tuple[int, str]:
    return (2 if name == "naive" else 0 if name == "patchtst" else 1, name)


def forecast_table(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model with its change in test MSE/MAE vs the naive baseline (negative = better);
    ``kept`` marks the model train_forecaster saved (chosen on validation with ``model: auto``)."""
    models = metrics["models"]
    naive = models["naive"]
    kept = metrics.get("model")
    rows = []
    for name in sorted(models, key=_model_order):
        row: dict[str, Any] = {"model": name, "kept": name == kept}
        row.update({key: models[name].get(key) for key in FORECAST_METRICS})
        for key in ("test_mse", "test_mae"):
            base, value = naive.get(key), row[key]
            row[f"{key}_vs_naive_pct"] = (
                (value - base) / base * 100.0 if finite(base) and finite(value) and base != 0 else None
            )
        rows.append(row)
    return rows


CHANNEL_METRICS = ("mse", "qlike", "direction_accuracy")


def kept_forecast(forecast: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The saved model's row; older metrics without ``model`` fall back to the first trained one."""
    kept = next((row for row in forecast if row.get("kept")), None)
    return kept or next((row for row in forecast if row["model"] != "naive"), None)


def forecast_channel_table(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (model or baseline, channel): val/test MSE (scaled), QLIKE (vol channel),
    directional accuracy (return channel); None where a metric does not apply, with ``note``
    saying why where train_forecaster recorded a reason (the zero forecast has no direction).
    Empty for metrics written before the per-channel table existed."""
    table = metrics.get("per_channel") or {}
    kept = metrics.get("model")
    rows = []
    for model in sorted(table, key=lambda m: (m not in metrics["models"], _model_order(m))):
        for channel, entry in sorted(table[model].items()):
            row: dict[str, Any] = {"model": model, "channel": channel, "kept": model == kept}
            for split in ("val", "test"):
                for key in CHANNEL_METRICS:
                    row[f"{split}_{key}"] = (entry.get(split) or {}).get(key)
            unavailable = entry.get("unavailable") or {}
            row["note"] = "; ".join(f"{k}: {v}" for k, v in sorted(unavailable.items())) or None
            rows.append(row)
    return rows


def policy_table(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per strategy: point metrics, intervals and the Sharpe/return at each cost multiple.

    Flat (``sharpe_cost_0x``, ``cumulative_return_cost_2x``, ...) so metrics.csv and the tables get
    one scalar per cell; fields a policy.json lacks (written before the intervals) are None.
    """
    strategies = metrics["strategies"]
    order = {"policy": 0, "buy_and_hold": 1, "forecast_sign": 2, "flat": 3}
    rows = []
    for name in sorted(strategies, key=lambda n: (order.get(n, 9), n)):
        values = strategies[name]
        row: dict[str, Any] = {"strategy": name, **{key: values.get(key) for key in POLICY_METRICS}}
        row.update({key: values.get(key) for key in POLICY_INTERVALS})
        for multiple, point in sorted((values.get("cost_sensitivity") or {}).items()):
            row[f"sharpe_cost_{multiple}"] = point.get("sharpe")
            row[f"cumulative_return_cost_{multiple}"] = point.get("cumulative_return")
        rows.append(row)
    return rows


def policy_significance(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The facts behind the verdict (test length, trials, DSR, trivial-policy flag, bootstrap), or
    None for a policy.json written before the intervals."""
    facts = metrics.get("significance")
    if not isinstance(facts, dict):
        return None
    deflated = facts.get("deflated_sharpe") or {}
    trials = facts.get("trials") or {}
    trivial = facts.get("trivial_policy") or {}
    boot = facts.get("bootstrap") or {}
    return {
        "confidence": facts.get("confidence"),
        "test_days": facts.get("test_days"),
        "min_test_days": facts.get("min_test_days"),
        "too_short": facts.get("too_short"),
        "trials": trials.get("count"),
        "trials_source": trials.get("source"),
        "deflated_sharpe": deflated.get("dsr"),
        "expected_max_sharpe": deflated.get("expected_max_sharpe"),
        "skewness": deflated.get("skewness"),
        "kurtosis": deflated.get("kurtosis"),
        "trivial": trivial.get("flag"),
        "trivial_kind": trivial.get("kind"),
        "share_long": trivial.get("share_long"),
        "share_flat": trivial.get("share_flat"),
        "return_correlation_with_buy_and_hold": trivial.get("return_correlation_with_buy_and_hold"),
        "replications": boot.get("replications"),
        "mean_block_bars": boot.get("mean_block_bars"),
        "seed": boot.get("seed"),
    }


def _norm(text: Any) -> str:
    return str(text).strip().lower().replace("-", "_").replace(" ", "_")


def engine_label(row: dict[str, Any]) -> str:
    return f"{row['engine']} · {row['device']} · {row['precision']} · batch {row['batch']}"


def benchmark_rows(benchmark: pl.DataFrame) -> list[dict[str, Any]]:
    return records(benchmark.sort("model", "engine", "device", "precision", "batch", "status"))


# What makes an engine that could not run here run: the first rule whose test matches the engine
# name (lower case) and the benchmark's reason wins. The one place the report's advice lives.
_GPU_ELSEWHERE = "or run the workflow on a GPU pod (`--workflow-profile runpod`, docs/runpod.md)"
_HOW_TO_ENABLE: tuple[tuple[Any, str], ...] = (
    (
        lambda engine, reason: "no torch module" in reason,
        "give the benchmark the model's torch checkpoint (`--checkpoint`); the workflow always does",
    ),
    (
        lambda engine, reason: "did not register" in reason,
        "onnxruntime-gpu is installed but its CUDA/cuDNN libraries did not load: install the CUDA "
        "build of torch, whose nvidia-* wheels carry them (docs/engines.md, GPU setup)",
    ),
    (
        lambda engine, reason: "tensorrt" in engine or "tensorrt" in reason,
        "needs a CUDA GPU and TensorRT: `make setup-gpu` on a GPU machine installs onnxruntime-gpu "
        f"and TensorRT (`pip install tensorrt-cu12`, from NVIDIA's index), {_GPU_ELSEWHERE}",
    ),
    (
        lambda engine, reason: engine.startswith("ort") and ("cuda" in engine or "cuda" in reason),
        f"needs a CUDA GPU and onnxruntime-gpu: `make setup-gpu` on a GPU machine, {_GPU_ELSEWHERE}",
    ),
    (
        lambda engine, reason: "cuda" in engine or "cuda" in reason,
        "needs a CUDA GPU and the CUDA build of torch: `make setup-gpu` on a GPU machine "
        f"(docs/local-cuda.md), {_GPU_ELSEWHERE}",
    ),
)
_HOW_TO_FALLBACK = "see the reason; docs/engines.md lists what each engine needs"


def how_to_enable(engine: str, reason: str | None) -> str:
    """One sentence on how to make ``engine`` run where the benchmark gave ``reason`` for not running it."""
    engine_l, reason_l = str(engine).lower(), str(reason or "").lower()
    return next((advice for test, advice in _HOW_TO_ENABLE if test(engine_l, reason_l)), _HOW_TO_FALLBACK)


def engines_not_run(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The engines the benchmark could not run on this machine (status ``unavailable``): one row per
    reason, naming its engines, the models and batches they stand for, and how to enable them.

    The report shows these once, in their own table, instead of one row per engine, model and batch
    in every benchmark table. ``failed`` rows (the engine ran, then broke) stay in the detail tables.
    """
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        if row["status"] != "unavailable":
            continue
        reason = str(row["reason"] or "no reason recorded")
        advice = how_to_enable(row["engine"], row["reason"])
        entry = groups.setdefault((reason, advice), {"engines": {}, "models": set(), "batches": set()})
        entry["engines"][str(row["engine"])] = f"{row['device']}, {row['precision']}"
        entry["models"].add(str(row["model"]))
        entry["batches"].add(row["batch"])
    out = [
        {
            "engines": [{"engine": e, "where": entry["engines"][e]} for e in sorted(entry["engines"])],
            "reason": reason,
            "how_to_enable": advice,
            "models": sorted(entry["models"]),
            "batches": sorted(entry["batches"]),
        }
        for (reason, advice), entry in groups.items()
    ]
    return sorted(out, key=lambda e: (e["engines"][0]["engine"], e["reason"]))


def not_run_line(engine: str, reason: Any) -> str:
    """The selection's reasoning line for an engine that was not measured (trainrelay.benchmark.select)."""
    return f"{engine} was not measured: {reason}."


def engine_deltas(rows: list[dict[str, Any]], baseline: dict[str, str]) -> list[dict[str, Any]]:
    """Each measured row against the baseline engine's row for the same model and batch.

    ``speedup_p50`` > 1 means faster than the baseline; ``vram_mb`` is the engine's own GPU memory.
    """
    ok = [row for row in rows if row["status"] == "ok"]

    def is_base(row: dict[str, Any]) -> bool:
        return _norm(row["engine"]) == _norm(baseline["engine"]) and _norm(row["device"]) == _norm(
            baseline["device"]
        )

    out = []
    for row in ok:
        bases = [b for b in ok if is_base(b) and b["model"] == row["model"] and b["batch"] == row["batch"]]
        bases.sort(key=lambda b: (_norm(b["precision"]) != _norm(baseline["precision"]), str(b["precision"])))
        base = bases[0] if bases else None
        delta: dict[str, Any] = {key: row[key] for key in ENGINE_KEYS}
        delta["is_baseline"] = base is row
        delta["baseline"] = engine_label(base) if base else None

        def ratio(num: Any, den: Any) -> float | None:
            return num / den if finite(num) and finite(den) and den != 0 else None

        delta["latency_p50_ms"] = row["latency_p50_ms"]
        delta["speedup_p50"] = ratio(base["latency_p50_ms"], row["latency_p50_ms"]) if base else None
        delta["speedup_p95"] = ratio(base["latency_p95_ms"], row["latency_p95_ms"]) if base else None
        delta["throughput_ratio"] = ratio(row["throughput_sps"], base["throughput_sps"]) if base else None
        # The engine's own GPU memory (over a baseline). No process-RSS difference: RSS only grows
        # while engines are measured one after another, so it would rank them by measuring order.
        delta["vram_mb"] = row["vram_mb"] if finite(row.get("vram_mb")) else None
        delta["note"] = None if base else "no baseline row for this model and batch"
        out.append(delta)
    return out


def configured_constraints(selection: dict[str, Any]) -> dict[str, Any]:
    """``selection.json["constraints"]["configured"]``: ``{metric: {"min"|"max": x}}``."""
    constraints = selection.get("constraints") or {}
    configured = constraints.get("configured", {}) if isinstance(constraints, dict) else {}
    return configured if isinstance(configured, dict) else {}


def _check_note(check: dict[str, Any]) -> str:
    if check["note"]:
        return str(check["note"])
    return f"measured {check['value']:.4g}" if finite(check["value"]) else str(check["value"])


def evaluate_constraints(rows: list[dict[str, Any]], selection: dict[str, Any]) -> list[dict[str, Any]]:
    """Every benchmark row against the constraints the selection used, with the benchmark's own
    checker (trainrelay.benchmark.constraints), so the report cannot disagree with the choice."""
    configured = configured_constraints(selection)
    out = []
    for row in rows:
        checks = check_row(row, configured)
        notes = [f"{c['constraint']}: {_check_note(c)}" for c in checks if not c["passed"]]
        out.append(
            {
                **{key: row[key] for key in ENGINE_KEYS},
                "status": row["status"],
                "checks": [
                    {"constraint": c["constraint"], "passed": bool(c["passed"]), "note": c["note"]}
                    for c in checks
                ],
                "meets_all": all(c["passed"] for c in checks),
                "notes": notes,
            }
        )
    return out


def _chosen_key(chosen: dict[str, Any] | None) -> tuple[str, ...] | None:
    if not chosen:
        return None
    return tuple(_norm(chosen.get(key)) for key in ("engine", "device", "precision", "batch"))


def chosen_engines(inputs: RunInputs, deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The selection's choice per model with its measured row and speed-up vs the baseline."""
    out = []
    rows = benchmark_rows(inputs.benchmark)
    for model, entry in sorted(inputs.selection["models"].items()):
        entry = entry or {}
        # shown once, in the table of engines not run, not in every model's reasoning
        not_run = {
            not_run_line(r["engine"], r["reason"])
            for r in rows
            if r["model"] == model and r["status"] == "unavailable"
        }
        chosen = entry.get("chosen")
        key = _chosen_key(chosen)
        measured = next(
            (r for r in rows if r["model"] == model and r["status"] == "ok" and
             tuple(_norm(r[k]) for k in ("engine", "device", "precision", "batch")) == key),
            None,
        )  # fmt: skip
        delta = next(
            (d for d in deltas if d["model"] == model and
             tuple(_norm(d[k]) for k in ("engine", "device", "precision", "batch")) == key),
            None,
        )  # fmt: skip
        out.append(
            {
                "model": model,
                "chosen": chosen,
                "label": engine_label({**{k: "?" for k in ENGINE_KEYS}, **chosen}) if chosen else None,
                "measured": measured,
                "speedup_p50": delta["speedup_p50"] if delta else None,
                "baseline": delta["baseline"] if delta else None,
                "reasoning": [str(line) for line in entry.get("reasoning", [])],
                "reasoning_shown": [str(line) for line in entry.get("reasoning", []) if line not in not_run],
            }
        )
    return out


def recommendations(
    inputs: RunInputs,
    forecast: list[dict[str, Any]],
    policy: list[dict[str, Any]],
    chosen: list[dict[str, Any]],
) -> list[str]:
    """Plain sentences derived from the numbers; each names what to do next."""
    out: list[str] = []
    for entry in chosen:
        if entry["chosen"] is None:
            out.append(
                f"No engine met every constraint for the {entry['model']}: relax the constraints in "
                "config `benchmark` or run the benchmark on a machine with the missing engines."
            )
        elif finite(entry["speedup_p50"]) and entry["speedup_p50"] > 1.0:
            out.append(
                f"Deploy the {entry['model']} with {entry['label']}: "
                f"{entry['speedup_p50']:.2f}× the baseline's "
                "median-latency speed."
            )
        elif entry["measured"] is not None:
            out.append(
                f"Deploy the {entry['model']} with {entry['label']} (no faster engine met the constraints)."
            )
    best = kept_forecast(forecast)
    if best is not None and finite(best["test_mse_vs_naive_pct"]):
        if best["test_mse_vs_naive_pct"] >= 0:
            out.append(
                f"The {best['model']} forecaster does not beat the naive baseline on test MSE "
                f"({best['test_mse_vs_naive_pct']:+.1f} %): do not trade on its forecasts; "
                "revisit features or lookback."
            )
        else:
            out.append(
                f"The {best['model']} forecaster improves test MSE by "
                f"{-best['test_mse_vs_naive_pct']:.1f} % over naive."
            )
    out += _policy_recommendations(inputs.policy_metrics, policy)
    for model in ("forecaster", "policy"):
        if inputs.onnx_parity[model].get("passed") is not True:
            out.append(
                f"ONNX parity failed for the {model}: do not deploy its ONNX file; check export_onnx's log."
            )
    rows = benchmark_rows(inputs.benchmark)
    not_run = sorted({r["engine"] for r in rows if r["status"] == "unavailable"})
    if not_run:
        out.append(
            f"{len(not_run)} engine{'s' if len(not_run) != 1 else ''} could not run on this machine "
            f"({', '.join(not_run)}): the table “Engines not run on this machine” says why and how "
            "to enable each."
        )
    failed = sorted({(r["engine"], r["reason"] or "no reason") for r in rows if r["status"] == "failed"})
    for engine, reason in failed:
        out.append(f"{engine} was tried and failed: {reason}.")
    if inputs.policy_metrics.get("ablations") is None:
        out.append(
            "Ablations were not run; enable them to see what the forecast and text features contribute."
        )
    return out


def _policy_recommendations(metrics: dict[str, Any], policy: list[dict[str, Any]]) -> list[str]:
    """What to do with the policy, from its intervals (never from a bare Sharpe comparison)."""
    by_name = {row["strategy"]: row for row in policy}
    mine, hold = by_name["policy"], by_name["buy_and_hold"]
    facts = policy_significance(metrics)
    if facts is None or not finite(mine.get("sharpe_diff_ci_low")):
        if finite(mine["sharpe"]) and finite(hold["sharpe"]):
            return [
                f"The policy's Sharpe ({mine['sharpe']:.2f}) vs buy-and-hold ({hold['sharpe']:.2f}) has no "
                "interval in this policy.json: rerun evaluate_policy before judging it; keep it in paper "
                "trading."
            ]
        return []
    out = []
    low, high = mine["sharpe_diff_ci_low"], mine["sharpe_diff_ci_high"]
    interval = f"difference {mine['sharpe_diff_vs_buy_and_hold']:+.2f}, 95 % CI {low:.2f} to {high:.2f}"
    dsr = facts["deflated_sharpe"]
    if facts["trivial"]:
        kind = str(facts["trivial_kind"]).replace("_", " ")
        out.append(f"The policy is a trivial strategy in disguise ({kind}): run that strategy instead.")
    if facts["too_short"]:
        out.append(
            f"The walk-forward test covers {facts['test_days']:.1f} days, fewer than the "
            f"{facts['min_test_days']:.0f} a verdict needs: too short to tell ({interval}); add data "
            "(more test blocks follow automatically) and keep the policy in paper trading."
        )
    elif low > 0 and finite(dsr) and dsr >= 0.95:
        out.append(
            f"The policy beats buy-and-hold on Sharpe ({interval}) and its deflated Sharpe ratio "
            f"{dsr:.2f} survives the {facts['trials']} configurations tried."
        )
    elif low > 0:
        shown = f"{dsr:.2f}" if finite(dsr) else "undefined"
        out.append(
            f"The policy beats buy-and-hold on Sharpe ({interval}) but its deflated Sharpe ratio ({shown}) "
            f"does not survive the {facts['trials']} configurations tried: keep it in paper trading."
        )
    elif high < 0:
        out.append(f"The policy trails buy-and-hold on Sharpe ({interval}): do not deploy it.")
    else:
        out.append(
            f"The policy is not distinguishable from buy-and-hold on Sharpe ({interval}): keep it in "
            "paper trading."
        )
    return out
