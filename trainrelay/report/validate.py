"""The required-artifact checklist of a run: ``python -m trainrelay validate --results results/<run>``.

Every check opens its file: it must exist, parse with the library that reads it downstream, and
hold the expected columns/keys with finite numbers. The result is
``{"passed": bool, "checks": [{"name", "stage", "passed", "detail"}], "stages": [...]}``; the
validate rule writes it to ``results/<run>/validation.json`` and the dashboard shows it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx
import polars as pl

from trainrelay.atomic import write_json
from trainrelay.core.artifacts import reports_dir, reports_relpath, results_path, results_relpath
from trainrelay.errors import DataError, TrainrelayError
from trainrelay.report.inputs import FORECAST_METRICS, POLICY_METRICS, SPECS, read_artifact

# The interval fields every strategy row must carry (see trainrelay/policy/significance.py).
VERDICT_INTERVALS = (
    "sharpe_ci_low",
    "sharpe_ci_high",
    "sharpe_diff_ci_low",
    "sharpe_diff_ci_high",
    "sharpe_diff_p_value",
)

log = logging.getLogger(__name__)

STAGES = (
    "environment", "manifest", "segments", "embeddings", "train_forecaster", "precompute", "train_policy",
    "evaluate_policy", "export_onnx", "benchmark", "report",
)  # fmt: skip
BENCHMARK_STATUSES = {"ok", "unavailable", "failed"}


@dataclass(frozen=True)
class Check:
    name: str
    stage: str
    passed: bool
    detail: str
    missing: bool = False  # the file was absent (vs present but wrong)


class _Failed(Exception):
    """A check's own failure: the message becomes the check's detail."""


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _load(results: Path, name: str) -> Any:
    spec = SPECS[name]
    path = results / spec.relpath
    if not path.is_file():
        raise FileNotFoundError(spec.relpath)
    try:
        return read_artifact(path, spec)
    except DataError as exc:
        raise _Failed(str(exc).replace(f"{path}: ", "")) from exc


def _numeric_finite(frame: pl.DataFrame, columns: Iterable[str], where: str, allow_nan: bool = False) -> None:
    """Columns must be numeric; no infinities; NaN/null only when ``allow_nan`` (then >= 1 finite)."""
    for column in columns:
        series = frame[column]
        if not series.dtype.is_numeric():
            raise _Failed(f"{where}: column {column} is {series.dtype}, not numeric")
        values = series.cast(pl.Float64)
        if values.is_infinite().any():
            raise _Failed(f"{where}: column {column} has infinite values")
        bad = values.is_nan().sum() + values.null_count()
        if bad and not allow_nan:
            raise _Failed(f"{where}: column {column} has {bad} NaN/null values")
        if values.is_finite().sum() == 0:
            raise _Failed(f"{where}: column {column} has no finite value")


def _rows(frame: pl.DataFrame, where: str) -> None:
    if frame.height == 0:
        raise _Failed(f"{where}: no rows")


# --- one function per check; each returns its detail line or raises _Failed / FileNotFoundError ---


def _environment(results: Path) -> str:
    env = _load(results, "environment")
    return f"python {env['python']}, cuda_available={env['cuda_available']}"


def _manifest(results: Path) -> str:
    frame = _load(results, "manifest")
    _rows(frame, "base_manifest.parquet")
    if frame["sha256"].null_count():
        raise _Failed("base_manifest.parquet: some files have no sha256")
    _numeric_finite(frame, ("rows", "bytes"), "base_manifest.parquet")
    # gaps are counted for bar data only; funding and event files have none by definition
    bars = frame.filter(pl.col("kind").is_in(["klines", "series"]))
    if bars.height:
        _numeric_finite(bars, ("gaps",), "base_manifest.parquet (bar files)")
    return f"{frame.height} files, {int(frame['rows'].sum())} rows"


def _segments(results: Path) -> str:
    frame = _load(results, "segments")
    _rows(frame, "segments_metadata.parquet")
    for fold in sorted(frame["fold"].unique().to_list()):
        splits = set(frame.filter(pl.col("fold") == fold)["split"].to_list())
        if not {"train", "val", "test"} <= splits:
            raise _Failed(
                f"segments_metadata.parquet: fold {fold} lacks {sorted({'train', 'val', 'test'} - splits)}"
            )
    return f"{frame['fold'].n_unique()} folds, {frame.height} episodes"


def _features(results: Path) -> str:
    path = results_path(results, "segments", "features")
    if not path.is_file():
        raise FileNotFoundError(results_relpath("segments", "features"))
    try:
        schema = pl.read_parquet_schema(path)
        scaler = json.loads((results_path(results, "segments", "scaler")).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(results_relpath("segments", "scaler")) from None
    except Exception as exc:
        raise _Failed(f"features.parquet or scaler.json unreadable ({exc})") from exc
    missing = [c for c in ("timestamp", "symbol") if c not in schema]
    if missing:
        raise _Failed(f"features.parquet: missing column(s) {', '.join(missing)}")
    if not isinstance(scaler, dict) or not {"features", "folds"} <= set(scaler):
        raise _Failed("scaler.json: needs keys features and folds")
    absent = [c for c in scaler["features"] if c not in schema]
    if absent:
        raise _Failed(f"features.parquet lacks scaler features {', '.join(absent)}")
    # close/log_return exist for price sources only (an ETT-style `files` series has neither)
    price = [c for c in ("close", "log_return") if c in schema]
    frame = pl.read_parquet(path, columns=list(dict.fromkeys([*price, *scaler["features"]])))
    _numeric_finite(frame, frame.columns, "features.parquet")
    return f"{len(scaler['features'])} features, {frame.height} rows, scaler for {len(scaler['folds'])} folds"


def _embeddings(results: Path) -> str:
    path = results_path(results, "embeddings", "embeddings")
    if not path.is_file():
        return "not run (optional)"
    try:
        frame = pl.read_parquet(path)
    except Exception as exc:
        raise _Failed(f"text_embeddings.parquet unreadable ({exc})") from exc
    missing = [c for c in ("timestamp", "symbol", "text", "embedding") if c not in frame.columns]
    if missing:
        raise _Failed(f"text_embeddings.parquet: missing column(s) {', '.join(missing)}")
    if frame.height:
        flat = frame["embedding"].explode().cast(pl.Float64)
        if flat.null_count() or not flat.is_finite().all():
            raise _Failed("text_embeddings.parquet: non-finite embedding values")
    return f"{frame.height} rows embedded"


def _torch_archive(path: Path, rel: str) -> str:
    """A torch.save file is a zip archive with data.pkl; every member's CRC must match."""
    if not path.is_file():
        raise FileNotFoundError(rel)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            names = archive.namelist()
    except zipfile.BadZipFile as exc:
        raise _Failed(f"{rel}: not a torch checkpoint archive ({exc})") from exc
    if bad:
        raise _Failed(f"{rel}: member {bad} is corrupt")
    if not any(name.endswith("data.pkl") for name in names):
        raise _Failed(f"{rel}: archive has no data.pkl (not written by torch.save)")
    # imported here: torch takes 1.4 s to import (measured); only a checkpoint check needs it, the rest of
    # the checklist reads files
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return f"loads with torch ({path.stat().st_size} bytes)"
    except Exception as exc:  # non-tensor objects inside are allowed; integrity was checked above
        size = path.stat().st_size
        return f"intact torch archive ({size} bytes; weights_only load refused: {type(exc).__name__})"


def _forecaster_checkpoint(results: Path) -> str:
    return _torch_archive(
        results_path(results, "train_forecaster", "checkpoint"),
        results_relpath("train_forecaster", "checkpoint"),
    )


def _forecaster_loss(results: Path) -> str:
    frame = _load(results, "forecaster_loss")
    _rows(frame, "forecaster.csv")
    _numeric_finite(frame, ("epoch", "train_loss"), "forecaster.csv")
    _numeric_finite(frame, ("val_loss",), "forecaster.csv", allow_nan=True)
    return f"{frame.height} epochs, final train_loss {frame['train_loss'][-1]:.4g}"


def _forecaster_metrics(results: Path) -> str:
    data = _load(results, "forecaster_metrics")
    models = data["models"]
    if not isinstance(models, dict) or "naive" not in models or len(models) < 2:
        raise _Failed("forecaster.json: models must hold the trained model(s) and naive")
    for model, values in models.items():
        bad = [k for k in FORECAST_METRICS if not _finite((values or {}).get(k))]
        if bad:
            raise _Failed(f"forecaster.json: models.{model} has no finite {', '.join(bad)}")
    kept = data.get("model")
    if kept not in models:
        raise _Failed(f"forecaster.json: model (the kept one) is {kept!r}, not one of models")
    reason = (data.get("selection") or {}).get("reason")
    if not isinstance(reason, str) or not reason:
        raise _Failed("forecaster.json: selection.reason (why the kept model was kept) is missing")
    _forecaster_channels(data, models)
    return f"models {', '.join(sorted(models))}; kept {kept} ({reason})"


def _forecaster_channels(data: dict[str, Any], models: dict[str, Any]) -> None:
    """Every model has a finite val/test MSE per channel; QLIKE on the vol channel and directional
    accuracy on the return channel exist (null only with a recorded reason)."""
    table = data.get("per_channel")
    channels = data.get("channels")
    if not isinstance(table, dict) or not isinstance(channels, list):
        raise _Failed("forecaster.json: per_channel (models x channels x split x metric) is missing")
    required = {data.get("vol_channel"): "qlike", data.get("return_channel"): "direction_accuracy"}
    for model in list(models) + [m for m in table if m not in models]:
        own = table.get(model)
        if not isinstance(own, dict):
            raise _Failed(f"forecaster.json: per_channel.{model} is missing")
        # a torch model forecasts every channel; a baseline (HAR-RV, zero) only its own
        for channel in channels if model in models else list(own):
            entry = own.get(channel) or {}
            unavailable = entry.get("unavailable") or {}
            for split in ("val", "test"):
                values = entry.get(split) or {}
                if not _finite(values.get("mse")):
                    raise _Failed(f"forecaster.json: per_channel.{model}.{channel}.{split} has no finite mse")
                extra = required.get(channel)
                if extra and not _finite(values.get(extra)) and extra not in unavailable:
                    raise _Failed(
                        f"forecaster.json: per_channel.{model}.{channel}.{split}.{extra} is missing "
                        "and no reason is recorded"
                    )


def _policy_checkpoint(results: Path) -> str:
    rel = results_relpath("train_policy", "policy")
    path = results / rel
    if not path.is_file():
        raise FileNotFoundError(rel)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            names = set(archive.namelist())
            data = json.loads(archive.read("data")) if "data" in names else None
    except (zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise _Failed(f"{rel}: not a stable-baselines3 save ({exc})") from exc
    if bad:
        raise _Failed(f"{rel}: member {bad} is corrupt")
    if data is None or "policy.pth" not in names:
        raise _Failed(f"{rel}: lacks data/policy.pth (not written by stable-baselines3 .save())")
    return f"stable-baselines3 save, {len(names)} members"


def _ppo_loss(results: Path) -> str:
    frame = _load(results, "ppo_loss")
    _rows(frame, "ppo.csv")
    _numeric_finite(frame, ("timesteps",), "ppo.csv")
    if not frame["timesteps"].is_sorted():
        raise _Failed("ppo.csv: timesteps are not increasing")
    # early rows may lack an episode reward (no episode finished yet): NaN allowed, >= 1 finite value
    numeric = [c for c in frame.columns if c != "timesteps" and frame[c].dtype.is_numeric()]
    _numeric_finite(frame, numeric, "ppo.csv", allow_nan=True)
    return f"{frame.height} rows up to {int(frame['timesteps'][-1])} timesteps"


def _policy_metrics(results: Path) -> str:
    data = _load(results, "policy_metrics")
    strategies = data["strategies"]
    for name in ("policy", "buy_and_hold"):
        values = strategies.get(name) if isinstance(strategies, dict) else None
        if not isinstance(values, dict):
            raise _Failed(f"policy.json: strategies.{name} missing")
        bad = [k for k in POLICY_METRICS if not _finite(values.get(k))]
        # A verdict without its uncertainty is not a result: the interval and the paired difference
        # must be numbers (the deflated Sharpe is the policy's alone, null for the baselines).
        bad += [k for k in VERDICT_INTERVALS if not _finite(values.get(k))]
        if bad:
            raise _Failed(f"policy.json: strategies.{name} has no finite {', '.join(bad)}")
    if not isinstance(data.get("significance"), dict):
        raise _Failed("policy.json: no significance block (rerun evaluate_policy)")
    mine, hold = strategies["policy"], strategies["buy_and_hold"]
    return (
        f"policy sharpe {mine['sharpe']:.3g} (95 % CI {mine['sharpe_ci_low']:.3g} to "
        f"{mine['sharpe_ci_high']:.3g}) vs buy_and_hold {hold['sharpe']:.3g}"
    )


def _equity(results: Path) -> str:
    frame = _load(results, "equity_curve")
    _rows(frame, "equity_curve.parquet")
    _numeric_finite(frame, ("equity",), "equity_curve.parquet")
    if "policy" not in set(frame["strategy"].to_list()):
        raise _Failed("equity_curve.parquet: no rows for strategy policy")
    return f"{frame.height} rows, {frame['strategy'].n_unique()} strategies"


def _onnx_model(model: str) -> Callable[[Path], str]:
    def check(results: Path) -> str:
        rel = results_relpath("export_onnx", model)
        if not (results / rel).is_file():
            raise FileNotFoundError(rel)

        try:
            onnx.checker.check_model(str(results / rel), full_check=True)
        except Exception as exc:
            raise _Failed(f"{rel}: onnx checker failed ({str(exc).splitlines()[0]})") from exc
        return "onnx.checker passed"

    return check


def _parity(results: Path) -> str:
    data = _load(results, "onnx_parity")
    parts = []
    for model in ("forecaster", "policy"):
        entry = data[model]
        if not isinstance(entry, dict) or entry.get("passed") is not True:
            raise _Failed(f"onnx_parity.json: {model} parity did not pass ({entry})")
        if not _finite(entry.get("max_abs_err")):
            raise _Failed(f"onnx_parity.json: {model}.max_abs_err is not a finite number")
        parts.append(f"{model} max_abs_err {entry['max_abs_err']:.2g}")
    return ", ".join(parts)


def _benchmark(results: Path) -> str:
    frame = _load(results, "benchmark")
    _rows(frame, results_relpath("benchmark", "metrics"))
    statuses = set(frame["status"].to_list())
    if statuses - BENCHMARK_STATUSES:
        raise _Failed(f"metrics.parquet: unknown status {sorted(statuses - BENCHMARK_STATUSES)}")
    ok = frame.filter(pl.col("status") == "ok")
    _numeric_finite(ok, ("latency_p50_ms", "latency_p95_ms", "throughput_sps"), "metrics.parquet (ok rows)")
    unexplained = frame.filter(
        (pl.col("status") != "ok") & (pl.col("reason").is_null() | (pl.col("reason") == ""))
    )
    if unexplained.height:
        raise _Failed(f"metrics.parquet: {unexplained.height} unavailable/failed rows without a reason")
    measured = set(ok["model"].to_list())
    lacking = [m for m in ("forecaster", "policy") if m not in measured]
    if lacking:
        raise _Failed(f"metrics.parquet: no engine measured for {', '.join(lacking)}")
    # torch eager on the CPU runs everywhere and is the report's reference: unavailable is a bug
    baseline = ok.filter(pl.col("engine") == "torch_eager_cpu")
    no_baseline = [m for m in ("forecaster", "policy") if m not in set(baseline["model"].to_list())]
    if no_baseline:
        raise _Failed(f"metrics.parquet: baseline torch_eager_cpu not measured for {', '.join(no_baseline)}")
    return f"{ok.height} measured rows, {frame.height - ok.height} unavailable/failed"


def _selection(results: Path) -> str:
    data = _load(results, "selection")
    models = data["models"]
    parts = []
    for model in ("forecaster", "policy"):
        entry = models.get(model) if isinstance(models, dict) else None
        if not isinstance(entry, dict) or "chosen" not in entry:
            raise _Failed(f"selection.json: models.{model}.chosen missing")
        chosen = entry["chosen"]
        if chosen is not None and not (isinstance(chosen, dict) and chosen.get("engine")):
            raise _Failed(f"selection.json: models.{model}.chosen must be null or name an engine")
        parts.append(f"{model}: {chosen['engine'] if chosen else 'none qualified'}")
    return "; ".join(parts)


def _report_file(reports: Path, output: str, test: Callable[[Path], str]) -> Callable[[Path], str]:
    def check(_results: Path) -> str:
        path = reports / reports_relpath("report", output)
        if not path.is_file():
            raise FileNotFoundError(str(path))
        return test(path)

    return check


def _html(path: Path) -> str:
    text = path.read_text(encoding="utf-8", errors="replace")
    if (
        "<html" not in text
        or "</html>" not in text
        or 'id="technical"' not in text
        or 'id="simple"' not in text
    ):
        raise _Failed(f"{path.name}: not a complete report (simple and technical views)")
    return f"{len(text)} characters"


def _pdf(path: Path) -> str:
    data = path.read_bytes()
    if not data.startswith(b"%PDF-") or b"%%EOF" not in data[-1024:]:
        raise _Failed(f"{path.name}: not a complete PDF")
    return f"{len(data)} bytes"


def _report_json(path: Path) -> str:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise _Failed(f"{path.name}: invalid JSON ({exc})") from exc
    missing = [k for k in ("run", "simple", "benchmark", "recommendations") if k not in data]
    if missing:
        raise _Failed(f"{path.name}: missing key(s) {', '.join(missing)}")
    return f"run {data['run']}"


def _metrics_csv(path: Path) -> str:
    try:
        frame = pl.read_csv(path, infer_schema=False)
    except Exception as exc:
        raise _Failed(f"{path.name}: unreadable ({exc})") from exc
    if frame.columns != ["section", "subject", "metric", "value"] or frame.height == 0:
        raise _Failed(f"{path.name}: expected columns section,subject,metric,value and rows")
    return f"{frame.height} rows"


def _optional_precompute(results: Path) -> str:
    rel = results_relpath("precompute", "forecasts")
    path = results / rel
    if not path.is_file():
        raise FileNotFoundError(rel)
    try:
        frame = pl.read_parquet(path)
    except Exception as exc:
        raise _Failed(f"{rel}: unreadable ({exc})") from exc
    _rows(frame, rel)
    floats = [c for c, t in frame.schema.items() if t.is_float()]
    _numeric_finite(frame, floats, rel)
    return f"{frame.height} rows, {len(frame.columns)} columns"


def _check_list(reports: Path) -> list[tuple[str, str, Callable[[Path], str]]]:
    return [
        (results_relpath("environment", "environment"), "environment", _environment),
        ("base_manifest.parquet", "manifest", _manifest),
        ("segments_metadata.parquet", "segments", _segments),
        ("features.parquet + scaler.json", "segments", _features),
        ("text_embeddings.parquet", "embeddings", _embeddings),
        ("forecaster checkpoint", "train_forecaster", _forecaster_checkpoint),
        ("forecaster loss", "train_forecaster", _forecaster_loss),
        ("forecaster metrics", "train_forecaster", _forecaster_metrics),
        ("forecast features", "precompute", _optional_precompute),
        ("policy checkpoint", "train_policy", _policy_checkpoint),
        ("ppo loss", "train_policy", _ppo_loss),
        ("policy metrics", "evaluate_policy", _policy_metrics),
        ("equity curve", "evaluate_policy", _equity),
        ("forecaster.onnx", "export_onnx", _onnx_model("forecaster")),
        ("policy.onnx", "export_onnx", _onnx_model("policy")),
        ("onnx parity passed", "export_onnx", _parity),
        ("benchmark metrics", "benchmark", _benchmark),
        ("engine selection", "benchmark", _selection),
        (reports_relpath("report", "html"), "report", _report_file(reports, "html", _html)),
        (reports_relpath("report", "pdf"), "report", _report_file(reports, "pdf", _pdf)),
        (reports_relpath("report", "json"), "report", _report_file(reports, "json", _report_json)),
        (reports_relpath("report", "csv"), "report", _report_file(reports, "csv", _metrics_csv)),
    ]


def default_reports_dir(results_dir: Path) -> Path:
    """``results/<run>`` -> ``reports/<run>`` (the two trees are siblings in the workdir)."""
    return reports_dir(results_dir.parent.parent, results_dir.name)


def stage_status(checks: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Per stage: done (all checks pass), failed (a file is wrong) or missing (a file is absent)."""
    out = []
    for stage in STAGES:
        mine = [c for c in checks if c["stage"] == stage]
        if not mine:
            continue
        if all(c["passed"] for c in mine):
            status = "done"
        elif any(not c["passed"] and not c.get("missing") for c in mine):
            status = "failed"
        else:
            status = "missing"
        out.append({"stage": stage, "status": status})
    return out


def validate_run(results_dir: str | Path, reports_dir: str | Path | None = None) -> dict[str, Any]:
    """Run every check on a run's artifacts; never raises for a bad artifact (it becomes a failed check)."""
    results = Path(results_dir)
    if not results.is_dir():
        raise DataError(f"{results}: results directory does not exist; run the workflow first")
    reports = Path(reports_dir) if reports_dir is not None else default_reports_dir(results)
    checks: list[Check] = []
    for name, stage, func in _check_list(reports):
        try:
            checks.append(Check(name, stage, True, func(results)))
        except FileNotFoundError as exc:
            checks.append(Check(name, stage, False, f"missing: {exc.args[0]}", missing=True))
        except _Failed as exc:
            checks.append(Check(name, stage, False, str(exc)))
        except Exception as exc:  # a file that breaks its reader is a failed check, not a crash
            log.debug("check %s raised", name, exc_info=True)
            first = (str(exc).strip().splitlines() or [""])[0]
            checks.append(Check(name, stage, False, f"unreadable: {type(exc).__name__}: {first}"))
    rows = [asdict(check) for check in checks]
    return {
        "passed": all(check.passed for check in checks),
        "results": str(results),
        "reports": str(reports),
        "checks": rows,
        "stages": stage_status(rows),
    }


def write_validation(result: dict[str, Any], target: str | Path) -> None:
    write_json(target, result)


def failed_summary(result: dict[str, Any]) -> str:
    """One line naming every failed check (used for the error and the exit message)."""
    failed = [c for c in result["checks"] if not c["passed"]]
    return "; ".join(f"{c['name']} ({c['detail']})" for c in failed)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``validate`` subcommand's options (the CLI wires the subcommand)."""
    parser.add_argument("--results", required=True, help="the run's results directory, e.g. results/demo")
    parser.add_argument(
        "--reports", default=None, help="the run's reports directory (default: reports/<run>)"
    )
    parser.add_argument(
        "--out", default=None, help="also write the result JSON here, e.g. results/demo/validation.json"
    )


def run_validate(args: argparse.Namespace) -> int:
    """CLI entry: print each check, write ``--out`` when given; 0 when every check passed, else 1."""
    try:
        result = validate_run(args.results, getattr(args, "reports", None))
    except TrainrelayError as exc:
        print(f"trainrelay validate: {exc}", file=sys.stderr)
        return 1
    for check in result["checks"]:
        mark = "ok  " if check["passed"] else "FAIL"
        print(f"{mark} {check['stage']:<17} {check['name']}: {check['detail']}")
    if getattr(args, "out", None):
        write_validation(result, args.out)
    failed = [c for c in result["checks"] if not c["passed"]]
    if failed:
        print(
            f"trainrelay validate: {len(failed)} check(s) failed: {failed_summary(result)}", file=sys.stderr
        )
        return 1
    print(f"trainrelay validate: all {len(result['checks'])} checks passed")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainrelay validate", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_validate(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
