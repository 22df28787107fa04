"""Read and check the upstream files the policy stage needs (formats in docs/artifacts.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from trainrelay.errors import DataError

FORECAST_COLUMNS = ["fc_return", "fc_vol", "fc_return_1", "fc_valid"]
TEXT_COLUMNS = ["timestamp", "symbol", "embedding"]


@dataclass
class PolicyInputs:
    """Everything the observation builder reads: one long frame plus the split ranges and text."""

    frame: pl.DataFrame  # features joined with forecasts, sorted by (symbol, timestamp)
    scaler: dict
    segments: pl.DataFrame  # segments_metadata.parquet
    text: pl.DataFrame | None  # text_embeddings.parquet, None when not given


def _read_parquet(path: str | Path, what: str) -> pl.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found; run the stage that writes it first")
    try:
        return pl.read_parquet(path)
    except Exception as exc:
        raise DataError(f"{path}: cannot read {what} ({exc}); delete it and rerun its stage") from exc


def _require(frame: pl.DataFrame, columns: list[str], path: str | Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; rerun the stage that writes it")


def load_inputs(
    features_path: str | Path,
    scaler_path: str | Path,
    segments_path: str | Path,
    forecasts_path: str | Path,
    text_path: str | Path | None,
) -> PolicyInputs:
    """Read features, scaler, split metadata, forecasts and (optionally) text embeddings."""
    features = _read_parquet(features_path, "features")
    try:
        scaler = json.loads(Path(scaler_path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{scaler_path}: cannot read the scaler ({exc}); rerun the segments stage") from exc
    _require(features, ["timestamp", "symbol", "log_return", *scaler.get("features", [])], features_path)
    segments = _read_parquet(segments_path, "segments metadata")
    _require(segments, ["fold", "split", "episode", "start", "end"], segments_path)
    forecasts = _read_parquet(forecasts_path, "forecast features")
    _require(forecasts, ["timestamp", "symbol", *FORECAST_COLUMNS], forecasts_path)

    frame = features.join(
        forecasts.select(["timestamp", "symbol", *FORECAST_COLUMNS]), on=["timestamp", "symbol"], how="left"
    )
    unmatched = frame.filter(pl.col("fc_valid").is_null()).height
    if unmatched:
        raise DataError(
            f"{forecasts_path}: {unmatched} feature rows have no forecast row; "
            "rerun precompute on these features"
        )
    frame = frame.sort(["symbol", "timestamp"])

    text = None
    if text_path is not None:
        text = _read_parquet(text_path, "text embeddings")
        _require(text, TEXT_COLUMNS, text_path)
    return PolicyInputs(frame=frame, scaler=scaler, segments=segments, text=text)
