"""Where every stage's files live: the one table of artifact paths.

``rules/*.smk`` declare their outputs from it (``results_file(rule, output)`` in common.smk), and
the report, the validation checklist, the dashboard, the run diff, the look-ahead check and the
closing lines find a run's files through it, so a file is spelled in one place.
tests/test_artifact_table.py checks that the rules declare exactly these outputs.

Paths are relative: ``RESULTS`` entries to ``results/<run>/``, ``REPORTS`` entries to
``reports/<run>/``. A name in braces is a Snakemake wildcard (``{fold}``, ``{variant}``,
``{worker}``) or, for the deployment bundle, its file name (``{bundle}``).
"""

from __future__ import annotations

from pathlib import Path

# rule -> output name (as the rule's `output:` names it) -> path under results/<run>/
RESULTS: dict[str, dict[str, str]] = {
    "environment": {"environment": "environment.json"},
    "manifest": {"manifest": "manifest/base_manifest.parquet"},
    "segments": {
        "features": "segments/features.parquet",
        "scaler": "segments/scaler.json",
        "metadata": "segments/segments_metadata.parquet",
    },
    "embeddings": {
        "embeddings": "embeddings/text_embeddings.parquet",
        "meta": "embeddings/embeddings_meta.json",
    },
    "tune_worker": {"worker": "tune/workers/{worker}.json"},
    "tune": {"best_params": "tune/best_params.json", "tuning": "metrics/tuning.json"},
    "train_forecaster": {
        "checkpoint": "checkpoints/forecaster.pt",
        "loss": "artifacts/loss/forecaster.csv",
        "metrics": "metrics/forecaster.json",
    },
    "precompute": {"forecasts": "features/forecast_features.parquet"},
    "train_policy_fold": {
        "policy": "checkpoints/folds/{fold}/ppo_policy.zip",
        "loss": "artifacts/loss/folds/{fold}/ppo.csv",
    },
    "train_policy": {"policy": "checkpoints/ppo_policy.zip", "loss": "artifacts/loss/ppo.csv"},
    "train_policy_ablation": {
        "policy": "checkpoints/ablation/{variant}/folds/{fold}/ppo_policy.zip",
        "loss": "artifacts/loss/ablation/{variant}/folds/{fold}/ppo.csv",
    },
    "evaluate_ablation": {"metrics": "metrics/ablation/{variant}.json"},
    "evaluate_policy": {"metrics": "metrics/policy.json", "equity_curve": "metrics/equity_curve.parquet"},
    "export_onnx": {
        "forecaster": "models/forecaster.onnx",
        "policy": "models/policy.onnx",
        "parity": "models/onnx_parity.json",
        "forecaster_inputs": "models/forecaster_inputs.npy",
        "policy_inputs": "models/policy_inputs.npy",
    },
    "benchmark": {
        "metrics": "benchmark/metrics.parquet",
        "csv": "benchmark/metrics.csv",
        "raw": "benchmark/raw_samples.parquet",
        "selection": "benchmark/selection.json",
    },
    "package": {"bundle": "package/{bundle}"},
    "release": {"bundle": "release/{bundle}"},
    "validate": {"validation": "validation.json"},
}

# rule -> output name -> path under reports/<run>/
REPORTS: dict[str, dict[str, str]] = {
    "report": {
        "html": "report.html",
        "pdf": "report.pdf",
        "json": "report.json",
        "csv": "metrics.csv",
    },
}


class _KeepMissing(dict):
    """format_map helper: a wildcard not given stays ``{name}`` for Snakemake to fill."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def results_relpath(rule: str, output: str, **wildcards: object) -> str:
    """``results_relpath("segments", "features")`` -> ``segments/features.parquet``; the wildcards
    given are filled in, the others are left in braces."""
    try:
        path = RESULTS[rule][output]
    except KeyError:
        raise KeyError(f"no results artifact {rule}.{output} in trainrelay/core/artifacts.py") from None
    return path.format_map(_KeepMissing({k: str(v) for k, v in wildcards.items()}))


def reports_relpath(rule: str, output: str) -> str:
    """``reports_relpath("report", "html")`` -> ``report.html`` (under reports/<run>/)."""
    try:
        return REPORTS[rule][output]
    except KeyError:
        raise KeyError(f"no reports artifact {rule}.{output} in trainrelay/core/artifacts.py") from None


def results_path(results_dir: str | Path, rule: str, output: str, **wildcards: object) -> Path:
    """The file in a run's results folder (``results/<run>``, or an imported run's folder)."""
    return Path(results_dir) / results_relpath(rule, output, **wildcards)


def reports_dir(root: str | Path, run: str) -> Path:
    """``<root>/reports/<run>``: a run's reports folder under a workdir (or under an imported run's
    folder, which keeps its reports inside)."""
    return Path(root) / "reports" / run


def reports_path(root: str | Path, run: str, rule: str, output: str) -> Path:
    """``reports_path(".", "demo", "report", "html")`` -> ``reports/demo/report.html``."""
    return reports_dir(root, run) / reports_relpath(rule, output)
