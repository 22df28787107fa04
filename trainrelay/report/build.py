"""Build ``reports/<run>/report.{html,pdf,json}`` and ``metrics.csv`` from a run's artifacts.

Two views in one document: the *simple* view (which engine to deploy, the key numbers, why and
how, the recommendations, and the engines that could not run on this machine: one table, with
how to enable each; it fits on two PDF pages) and the *technical* view (run metadata, data,
training curves, metrics vs baselines, the benchmark of every engine that ran, deltas vs the
baseline engine, constraint evaluation, the selection's reasoning, the inputs' digests).

Deterministic: everything shown comes from the inputs (no clock, no hostname), charts are
deterministic SVG and JSON is written with sorted keys, so rebuilding from the same inputs gives
identical HTML, JSON and CSV bytes; the PDF's fonts and font subsets are pinned too
(:mod:`trainrelay.report.pdf`).
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import jinja2
import polars as pl

from trainrelay import __version__
from trainrelay.atomic import write_json, write_text
from trainrelay.config import text_events_configured
from trainrelay.core.fingerprint import config_fingerprint
from trainrelay.errors import ConfigError
from trainrelay.report import analysis, charts
from trainrelay.report.cost import report_section
from trainrelay.report.deploy import deploy_instructions
from trainrelay.report.inputs import RunInputs, load_run_inputs
from trainrelay.report.pdf import write_pdf
from trainrelay.report.values import (
    breakable,
    code_spans,
    flatten,
    fmt,
    fmt_pct,
    fmt_when,
    jsonable,
    records,
    table_of,
)

log = logging.getLogger(__name__)

_HERE = Path(__file__).parent
DEFAULT_BASELINE = {"engine": "torch_eager_cpu", "device": "cpu", "precision": "fp32"}


def current_git_commit(repo_dir: str | Path = ".") -> str:
    """``git rev-parse HEAD`` of ``repo_dir``, or "unknown" outside a git repository."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repo_dir,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else "unknown"


def _report_settings(config: dict[str, Any]) -> tuple[dict[str, str], int]:
    section = config.get("report") or {}
    baseline = {**DEFAULT_BASELINE, **(section.get("baseline") or {})}
    for key in ("engine", "device", "precision"):
        if not isinstance(baseline[key], str) or not baseline[key]:
            raise ConfigError(
                f"config report.baseline.{key} must be a non-empty string (e.g. {DEFAULT_BASELINE[key]})"
            )
    max_points = section.get("equity_max_points", 400)
    if not isinstance(max_points, int) or max_points < 10:
        raise ConfigError("config report.equity_max_points must be an integer >= 10")
    return baseline, max_points


def text_inputs(config: dict[str, Any]) -> dict[str, Any]:
    """Whether the policy saw text, and why not: a run without news says so instead of showing zeros."""
    if (config.get("policy") or {}).get("observation", {}).get("text"):
        return {"used": True, "reason": None}
    if not text_events_configured(config):
        reason = f"no text events for this data (source {config['source']}, events.path not set)"
    else:
        reason = "turned off in the config (policy.observation.text: false)"
    return {"used": False, "reason": reason}


def build_context(inputs: RunInputs, config: dict[str, Any], git_commit: str) -> dict[str, Any]:
    """Every number and sentence of the report, JSON-safe (this is report.json)."""
    baseline, _max_points = _report_settings(config)
    run = str(config.get("run") or inputs.results_dir.name)
    data = analysis.data_summary(inputs)
    forecast = analysis.forecast_table(inputs.forecaster_metrics)
    policy = analysis.policy_table(inputs.policy_metrics)
    bench_rows = analysis.benchmark_rows(inputs.benchmark)
    deltas = analysis.engine_deltas(bench_rows, baseline)
    constraints = analysis.evaluate_constraints(bench_rows, inputs.selection)
    chosen = analysis.chosen_engines(inputs, deltas)
    recommendations = analysis.recommendations(inputs, forecast, policy, chosen)
    # The nested forecaster tables get their own sections; the flat facts go in the training list.
    nested = ("models", "per_channel", "baselines", "metric_notes", "selection", "training")
    facts = {k: v for k, v in inputs.forecaster_metrics.items() if k not in nested}
    by_strategy = {row["strategy"]: row for row in policy}
    best_model = analysis.kept_forecast(forecast)
    naive = next(row for row in forecast if row["model"] == "naive")
    simple_models = [
        {**entry, "deploy": deploy_instructions(entry["model"], entry["chosen"], run)} for entry in chosen
    ]
    context = {
        "run": run,
        "trainrelay_version": __version__,
        "git_commit": git_commit,
        "config_fingerprint": config_fingerprint(config),
        # the resolved config: `python -m trainrelay diff` compares two runs key by key from it
        "config": config,
        "data_through": data["last_ts"],
        "environment": inputs.environment,
        "data": data,
        "embeddings": inputs.embeddings_meta,
        "text_inputs": text_inputs(config),
        "training": {
            "forecaster": facts,
            "forecaster_epochs": inputs.forecaster_loss.height,
            "forecaster_final": records(inputs.forecaster_loss.tail(1))[0]
            if inputs.forecaster_loss.height
            else None,
            "ppo_rows": inputs.ppo_loss.height,
            "ppo_final": records(inputs.ppo_loss.tail(1))[0] if inputs.ppo_loss.height else None,
        },
        "tuning": inputs.tuning,
        "forecast": forecast,
        "forecast_channels": analysis.forecast_channel_table(inputs.forecaster_metrics),
        "forecast_selection": inputs.forecaster_metrics.get("selection"),
        "forecast_baselines": inputs.forecaster_metrics.get("baselines"),
        "policy": {
            "table": policy,
            "verdict": inputs.policy_metrics.get("verdict"),
            "folds": inputs.policy_metrics.get("folds") or [],
            "ablations": inputs.policy_metrics.get("ablations"),
            "significance": analysis.policy_significance(inputs.policy_metrics),
        },
        "onnx_parity": inputs.onnx_parity,
        "benchmark": {
            "rows": bench_rows,
            "not_run": analysis.engines_not_run(bench_rows),
            "baseline": baseline,
            "deltas": deltas,
            "constraints": analysis.configured_constraints(inputs.selection),
            "constraint_labels": list(
                dict.fromkeys(c["constraint"] for r in constraints for c in r["checks"])
            ),
            "evaluation": constraints,
        },
        "selection": chosen,
        "recommendations": recommendations,
        "simple": {
            "models": simple_models,
            "forecast": {
                "model": best_model["model"] if best_model else None,
                "test_mse": best_model["test_mse"] if best_model else None,
                "naive_test_mse": naive["test_mse"],
                "vs_naive_pct": best_model["test_mse_vs_naive_pct"] if best_model else None,
            },
            "policy": {
                "sharpe": by_strategy["policy"]["sharpe"],
                "buy_and_hold_sharpe": by_strategy["buy_and_hold"]["sharpe"],
                "cumulative_return": by_strategy["policy"]["cumulative_return"],
                "max_drawdown": by_strategy["policy"]["max_drawdown"],
                "verdict": inputs.policy_metrics.get("verdict"),
            },
        },
        "sources": inputs.sources,
        # what the run cost so far, from the benchmark files of the jobs that feed the report
        "cost": report_section(inputs.results_dir, config),
    }
    return jsonable(context)


def build_charts(inputs: RunInputs, context: dict[str, Any], max_points: int) -> dict[str, str]:
    """SVG text per chart name."""
    ppo_columns = [c for c in inputs.ppo_loss.columns if c != "timesteps"]
    forecast = context["forecast"]
    ok_rows = [r for r in context["benchmark"]["rows"] if r["status"] == "ok"]
    chosen_labels = {e["label"] for e in context["selection"] if e["label"]}
    out = {
        "forecaster_loss": charts.line_chart(
            inputs.forecaster_loss, "epoch", ["train_loss", "val_loss"], "Forecaster loss", "epoch", "loss"
        ),
        "ppo": charts.panel_chart(inputs.ppo_loss, "timesteps", ppo_columns, "PPO training", "timesteps"),
        "forecast_mse": charts.bar_chart(
            [row["model"] for row in forecast], [row["test_mse"] for row in forecast],
            "Test MSE by model (lower is better)", "test MSE", "naive",
        ),
        "equity": charts.equity_chart(inputs.equity_curve, max_points),
    }  # fmt: skip
    if context["tuning"]:
        out["tuning"] = charts.tuning_chart(context["tuning"].get("trials") or [])
    for model in sorted({r["model"] for r in ok_rows}):
        rows = [r for r in ok_rows if r["model"] == model]
        labels = [analysis.engine_label(r) for r in rows]
        highlight = next((label for label in labels if label in chosen_labels), None)
        out[f"latency_{model}"] = charts.bar_chart(
            labels, [r["latency_p50_ms"] for r in rows], f"{model}: median latency (ms, lower is better)",
            "latency p50 (ms)", highlight,
        )  # fmt: skip
    return out


def metrics_rows(context: dict[str, Any]) -> pl.DataFrame:
    """The report's numbers in long form: section, subject, metric, value (text, repr for floats)."""
    rows: list[tuple[str, str, str, Any]] = []
    for row in context["forecast"]:
        rows += [("forecast", row["model"], k, v) for k, v in row.items() if k != "model"]
    for row in context["forecast_channels"]:
        subject = f"{row['model']}/{row['channel']}"
        rows += [("forecast_channel", subject, k, v) for k, v in row.items() if k not in ("model", "channel")]
    for row in context["policy"]["table"]:
        rows += [("policy", row["strategy"], k, v) for k, v in row.items() if k != "strategy"]
    for name, values in sorted((context["policy"]["ablations"] or {}).items()):
        rows += [("ablation", name, k, v) for k, v in flatten(values).items()]
    for model in ("forecaster", "policy"):
        rows += [("onnx_parity", model, k, v) for k, v in flatten(context["onnx_parity"][model]).items()]

    def subject(row: dict[str, Any]) -> str:
        return f"{row['model']}/{row['engine']}/{row['device']}/{row['precision']}/batch{row['batch']}"

    skip = {"model", "engine", "device", "precision", "batch"}
    for row in context["benchmark"]["rows"]:
        rows += [("benchmark", subject(row), k, v) for k, v in row.items() if k not in skip]
    for row in context["benchmark"]["deltas"]:
        rows += [("delta_vs_baseline", subject(row), k, row[k])
                 for k in ("speedup_p50", "speedup_p95", "throughput_ratio", "vram_mb")]  # fmt: skip
    for row in context["benchmark"]["evaluation"]:
        rows.append(("constraints", subject(row), "meets_all", row["meets_all"]))
    for entry in context["selection"]:
        rows.append(("selection", entry["model"], "chosen", entry["label"]))
        rows.append(("selection", entry["model"], "speedup_p50", entry["speedup_p50"]))

    def text(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        return repr(value) if isinstance(value, float) else str(value)

    return pl.DataFrame(
        {
            "section": [r[0] for r in rows],
            "subject": [r[1] for r in rows],
            "metric": [r[2] for r in rows],
            "value": [text(r[3]) for r in rows],
        },
        schema={"section": pl.String, "subject": pl.String, "metric": pl.String, "value": pl.String},
    )


def render_html(context: dict[str, Any], svgs: dict[str, str]) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = fmt
    env.filters["pct"] = fmt_pct
    env.filters["flatten"] = flatten
    env.filters["when"] = fmt_when
    env.filters["table_of"] = table_of
    env.filters["breakable"] = breakable
    env.filters["code_spans"] = code_spans
    css = (_HERE / "templates" / "report.css").read_text(encoding="utf-8")
    images = {name: charts.data_uri(svg) for name, svg in svgs.items()}
    return env.get_template("report.html.j2").render(r=context, css=css, charts=images)


def build_report(
    results_dir: str | Path,
    outputs: dict[str, str | Path],
    config: dict[str, Any],
    git_commit: str,
) -> dict[str, Any]:
    """Read ``results_dir``, write ``outputs`` (keys html, pdf, json, csv); return the report context."""
    missing = {"html", "pdf", "json", "csv"} - set(outputs)
    if missing:
        raise ConfigError(
            f"report outputs lack {', '.join(sorted(missing))} (the rule must name html, pdf, json, csv)"
        )
    _baseline, max_points = _report_settings(config)
    inputs = load_run_inputs(results_dir)
    context = build_context(inputs, config, git_commit)
    svgs = build_charts(inputs, context, max_points)
    html = render_html(context, svgs)
    write_json(outputs["json"], context)
    write_text(outputs["csv"], metrics_rows(context).write_csv())
    write_text(outputs["html"], html)
    write_pdf(html, outputs["pdf"], base_url=_HERE / "templates")
    log.info("report for run %s written to %s", context["run"], Path(outputs["html"]).parent)
    return context
