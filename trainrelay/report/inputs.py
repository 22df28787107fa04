"""The run artifacts the report reads, and loading them with one-line errors.

Each input is an :class:`ArtifactSpec`: where it lives under ``results/<run>/``, which rule
writes it, and the columns or keys it must have. :mod:`trainrelay.report.validate` checks the same
specs, so the report and the validator agree on what a complete run is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from trainrelay.core.artifacts import results_relpath
from trainrelay.core.fingerprint import file_sha256
from trainrelay.errors import DataError, first_line

BENCHMARK_COLUMNS = (
    "model", "engine", "device", "precision", "batch", "status", "reason", "build_seconds",
    "rel_l2_error", "tolerance", "correct", "latency_mean_ms", "latency_p50_ms", "latency_p95_ms",
    "latency_p99_ms", "throughput_sps", "cpu_util_pct", "gpu_util_pct", "vram_mb", "peak_rss_mb",
)  # fmt: skip
FORECAST_METRICS = ("val_mse", "val_mae", "test_mse", "test_mae")
POLICY_METRICS = ("sharpe", "max_drawdown", "cumulative_return", "turnover", "hit_rate")
# The uncertainty evaluate_policy adds to every strategy (docs/policy.md, "How the verdict is
# computed"). Shown when present; not required, so a policy.json written before them still loads
# (and deflated_sharpe is null for the baselines by design).
POLICY_INTERVALS = (
    "sharpe_ci_low", "sharpe_ci_high", "sharpe_diff_vs_buy_and_hold", "sharpe_diff_ci_low",
    "sharpe_diff_ci_high", "sharpe_diff_p_value", "probabilistic_sharpe", "deflated_sharpe",
)  # fmt: skip


@dataclass(frozen=True)
class ArtifactSpec:
    """One file of a run: the ``rule`` that writes it and the rule's ``output`` name (its path comes
    from the artifact table, trainrelay/core/artifacts.py), and its shape."""

    name: str
    rule: str
    output: str
    fmt: str  # parquet | csv | json
    columns: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    required: bool = True

    @property
    def relpath(self) -> str:
        """Where the file lives under results/<run>/."""
        return results_relpath(self.rule, self.output)


SPECS: dict[str, ArtifactSpec] = {
    spec.name: spec
    for spec in (
        ArtifactSpec(
            "manifest",
            "manifest",
            "manifest",
            "parquet",
            columns=(
                "path",
                "kind",
                "symbol",
                "interval",
                "month",
                "rows",
                "first_ts",
                "last_ts",
                "gaps",
                "bytes",
                "sha256",
            ),
        ),
        ArtifactSpec(
            "segments",
            "segments",
            "metadata",
            "parquet",
            columns=("fold", "split", "episode", "start", "end", "rows"),
        ),
        ArtifactSpec(
            "environment",
            "environment",
            "environment",
            "json",
            keys=("python", "cuda_available"),
        ),
        ArtifactSpec(
            "forecaster_loss",
            "train_forecaster",
            "loss",
            "csv",
            columns=("epoch", "train_loss", "val_loss"),
        ),
        ArtifactSpec(
            "forecaster_metrics",
            "train_forecaster",
            "metrics",
            "json",
            keys=("models",),
        ),
        ArtifactSpec(
            "ppo_loss",
            "train_policy",
            "loss",
            "csv",
            columns=("timesteps", "episode_reward"),
        ),
        ArtifactSpec(
            "policy_metrics",
            "evaluate_policy",
            "metrics",
            "json",
            keys=("strategies", "verdict"),
        ),
        ArtifactSpec(
            "equity_curve",
            "evaluate_policy",
            "equity_curve",
            "parquet",
            columns=("fold", "timestamp", "strategy", "equity"),
        ),
        ArtifactSpec(
            "onnx_parity",
            "export_onnx",
            "parity",
            "json",
            keys=("forecaster", "policy"),
        ),
        ArtifactSpec(
            "benchmark",
            "benchmark",
            "metrics",
            "parquet",
            columns=BENCHMARK_COLUMNS,
        ),
        ArtifactSpec(
            "selection",
            "benchmark",
            "selection",
            "json",
            keys=("constraints", "models"),
        ),
        ArtifactSpec(
            "embeddings_meta",
            "embeddings",
            "meta",
            "json",
            keys=("model", "dim", "rows"),
            required=False,
        ),
        ArtifactSpec(
            "tuning",
            "tune",
            "tuning",
            "json",
            keys=("trials", "best", "sampler"),
            required=False,
        ),
    )
}


def read_artifact(path: Path, spec: ArtifactSpec) -> pl.DataFrame | dict[str, Any]:
    """Parse one artifact and check its columns/keys; raise DataError with one line otherwise."""
    if not path.is_file():
        raise DataError(f"{path}: required input is missing; build it with rule `{spec.rule}` first")
    try:
        if spec.fmt == "parquet":
            data: Any = pl.read_parquet(path)
        elif spec.fmt == "csv":
            data = pl.read_csv(path, infer_schema_length=None)
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
    except Exception as exc:
        reason = first_line(exc, type(exc).__name__)
        raise DataError(f"{path}: cannot be read as {spec.fmt} ({reason}); rerun rule `{spec.rule}`") from exc
    if spec.fmt == "json":
        if not isinstance(data, dict):
            raise DataError(
                f"{path}: expected a JSON object, found {type(data).__name__}; rerun rule `{spec.rule}`"
            )
        missing = [key for key in spec.keys if key not in data]
        what = "key"
    else:
        missing = [col for col in spec.columns if col not in data.columns]
        what = "column"
    if missing:
        raise DataError(f"{path}: missing {what}(s) {', '.join(missing)}; rerun rule `{spec.rule}`")
    return data


@dataclass(frozen=True)
class RunInputs:
    """Everything the report shows, parsed; optional inputs are None when the stage did not run."""

    results_dir: Path
    manifest: pl.DataFrame
    segments: pl.DataFrame
    environment: dict[str, Any]
    forecaster_loss: pl.DataFrame
    forecaster_metrics: dict[str, Any]
    ppo_loss: pl.DataFrame
    policy_metrics: dict[str, Any]
    equity_curve: pl.DataFrame
    onnx_parity: dict[str, Any]
    benchmark: pl.DataFrame
    selection: dict[str, Any]
    embeddings_meta: dict[str, Any] | None = None
    tuning: dict[str, Any] | None = None
    sources: dict[str, str] = field(default_factory=dict)  # relpath -> sha256 of every file read


def _require_mapping(data: dict[str, Any], path: Path, dotted: str, keys: tuple[str, ...]) -> None:
    node: Any = data
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        raise DataError(f"{path}: field `{dotted}` must be an object")
    missing = [key for key in keys if key not in node]
    if missing:
        raise DataError(f"{path}: field `{dotted}` lacks {', '.join(missing)}")


def load_run_inputs(results_dir: str | Path) -> RunInputs:
    """Read every report input under ``results_dir``; a missing required file fails with one line."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise DataError(f"{results_dir}: results directory does not exist; run the workflow first")
    loaded: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, spec in SPECS.items():
        path = results_dir / spec.relpath
        if not spec.required and not path.is_file():
            loaded[name] = None
            continue
        loaded[name] = read_artifact(path, spec)
        sources[spec.relpath] = file_sha256(path)

    forecaster_path = results_dir / SPECS["forecaster_metrics"].relpath
    _require_mapping(loaded["forecaster_metrics"], forecaster_path, "models", ("naive",))
    for model, values in loaded["forecaster_metrics"]["models"].items():
        _require_mapping(loaded["forecaster_metrics"], forecaster_path, f"models.{model}", FORECAST_METRICS)
        if not isinstance(values, dict):
            raise DataError(f"{forecaster_path}: field `models.{model}` must be an object")
    policy_path = results_dir / SPECS["policy_metrics"].relpath
    _require_mapping(loaded["policy_metrics"], policy_path, "strategies", ("policy", "buy_and_hold"))
    for strategy in loaded["policy_metrics"]["strategies"]:
        _require_mapping(loaded["policy_metrics"], policy_path, f"strategies.{strategy}", POLICY_METRICS)
    parity_path = results_dir / SPECS["onnx_parity"].relpath
    for model in ("forecaster", "policy"):
        _require_mapping(loaded["onnx_parity"], parity_path, model, ("passed",))
    selection_path = results_dir / SPECS["selection"].relpath
    _require_mapping(loaded["selection"], selection_path, "models", ())
    _require_mapping(loaded["selection"], selection_path, "constraints", ())
    return RunInputs(results_dir=results_dir, sources=dict(sorted(sources.items())), **loaded)
