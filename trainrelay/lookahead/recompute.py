"""Recompute a finished run's stages in-process, from a set of raw files, through the rules' own code.

The functions called are the ones the rules' scripts call (``build_segments``, ``embed_events``,
``precompute_forecasts``, ``load_inputs``/``fit_spec``/``build_series``, ``strategy_positions``) or,
for the forecaster's training windows, ``load_fold``, which ``train_forecaster`` starts with. The
trained models are the run's own files (``checkpoints/forecaster.pt``, ``checkpoints/folds/<k>/
ppo_policy.zip``): retraining is not part of the check; what training *reads* is (the forecaster's
train/val windows, the policy's fitted observation recipe and its train-row observations).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from trainrelay.core.artifacts import results_path, results_relpath
from trainrelay.data.segments import build_segments
from trainrelay.errors import DataError
from trainrelay.policy.inputs import load_inputs

log = logging.getLogger(__name__)


@dataclass
class RunFiles:
    """The finished run's files the check reads (``None``: the run stopped before that stage)."""

    results: Path
    manifest: Path
    features: Path
    scaler: Path
    metadata: Path
    embeddings: Path | None
    forecaster: Path | None
    forecasts: Path | None
    policies: dict[int, Path]

    @classmethod
    def find(cls, results: Path) -> RunFiles:
        def present(relative: str) -> Path | None:
            path = results / relative
            return path if path.is_file() else None

        manifest = results_path(results, "manifest", "manifest")
        if not manifest.is_file():
            raise DataError(f"{manifest}: not found; run the workflow up to segments first (--results?)")
        segments = results / "segments"
        for name in ("features.parquet", "scaler.json", "segments_metadata.parquet"):
            if not (segments / name).is_file():
                raise DataError(f"{segments / name}: not found; run the workflow up to segments first")
        policies = {}
        folds_dir = results / "checkpoints" / "folds"
        if folds_dir.is_dir():
            for child in sorted(folds_dir.iterdir()):
                if child.name.isdigit() and (child / "ppo_policy.zip").is_file():
                    policies[int(child.name)] = child / "ppo_policy.zip"
        return cls(
            results=results,
            manifest=manifest,
            features=segments / "features.parquet",
            scaler=segments / "scaler.json",
            metadata=segments / "segments_metadata.parquet",
            embeddings=present(results_relpath("embeddings", "embeddings")),
            forecaster=present(results_relpath("train_forecaster", "checkpoint")),
            forecasts=present(results_relpath("precompute", "forecasts")),
            policies=policies,
        )


@dataclass
class Outputs:
    """Every compared output of one recomputation (baseline or perturbed)."""

    features: pl.DataFrame
    scaler: dict[str, Any]
    metadata: pl.DataFrame
    embeddings: pl.DataFrame | None = None
    forecasts: pl.DataFrame | None = None
    # forecaster.fold's train+val windows: one row per window element (timestamp, symbol, channels)
    forecaster_windows: pl.DataFrame | None = None
    specs: dict[int, dict[str, Any]] = field(default_factory=dict)  # fit_spec per fold
    observations: dict[int, pl.DataFrame] = field(default_factory=dict)
    positions: dict[int, pl.DataFrame] = field(default_factory=dict)


def _device_config(config: dict[str, Any], device: str | None) -> dict[str, Any]:
    return config if device is None else {**config, "device": device}


def _events_path(manifest: pl.DataFrame, raw_files: list[str]) -> str | None:
    events = manifest.filter(pl.col("kind") == "events")["path"].to_list()
    if not events:
        return None
    logical = events[0]
    return next(p for p in raw_files if Path(p).as_posix().endswith("/" + logical) or p == logical)


def forecaster_windows(paths: dict[str, Path], config: dict[str, Any]) -> pl.DataFrame:
    """What ``train_forecaster`` fits and early-stops on: every element of forecaster.fold's train and
    val windows, as (split, window, timestamp, symbol, channels...) rows."""
    # imported here: the forecast/policy stack pulls in torch and SB3 (2 s to import, measured); a run that
    # stopped before this stage never needs it
    from trainrelay.forecast.inputs import load_fold

    series, windows, channels, _ = load_fold(paths["features"], paths["scaler"], paths["metadata"], config)
    stamps = np.concatenate([s.timestamps.astype("datetime64[ms]").astype(np.int64) for s in series])
    symbols = np.concatenate([np.full(len(s.timestamps), s.symbol, dtype=object) for s in series])
    parts = []
    for split in ("train", "val"):
        ws = windows[split]
        if not len(ws):
            continue
        offsets = np.arange(ws.lookback + ws.horizon)
        rows = (ws.starts.numpy()[:, None] + offsets).reshape(-1)
        values = ws.data.numpy()[rows]
        parts.append(
            pl.DataFrame(
                {
                    "split": split,
                    "window": np.repeat(np.arange(len(ws)), len(offsets)),
                    "element": np.tile(offsets, len(ws)),
                    "timestamp": stamps[rows],
                    "symbol": symbols[rows].astype(str),
                    **{c: values[:, i] for i, c in enumerate(channels)},
                }
            ).with_columns(pl.col("timestamp").cast(pl.Datetime("ms", "UTC")))
        )
    return pl.concat(parts) if parts else pl.DataFrame()


@contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """BLAS limited to one thread, as in ``train_policy_fold`` (``threads: 1``: Snakemake caps the
    job's BLAS threads). The text PCA's SVD differs in the last bits between thread counts, so this
    makes the refit spec equal the one stored in the policy file, not merely equal between cuts."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # without it the comparison between cuts is still exact (same process)
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def policy_frames(
    policy_path: Path, inputs: Any, fold: int, config: dict[str, Any]
) -> tuple[dict[str, Any], pl.DataFrame, pl.DataFrame]:
    """(refitted observation spec, observations, positions of every strategy) of fold ``fold``.

    The observations and positions use the spec stored in the policy file, as ``evaluate_policy``
    does; the refit (``fit_spec`` on these inputs, as ``train_policy_fold`` does) is compared on its own.
    """
    # imported here: the forecast/policy stack pulls in torch and SB3 (2 s to import, measured); a run that
    # stopped before this stage never needs it
    from trainrelay.policy.evaluate import block_windows, strategy_positions
    from trainrelay.policy.model import load_policy
    from trainrelay.policy.observations import ObservationSpec, build_series, fit_spec

    actor, meta = load_policy(policy_path)
    stored = ObservationSpec.from_dict(meta["spec"])
    with _single_threaded_blas():
        refit = fit_spec(inputs, fold, meta["observation"], config["policy"]["text"]).to_dict()
    series = build_series(inputs, stored, meta["funding_every_hours"])
    names = stored.market_names()
    observations = pl.concat(
        [
            pl.DataFrame(
                {
                    "timestamp": s.timestamp,
                    "symbol": s.symbol,
                    **{n: s.market_obs[:, i] for i, n in enumerate(names)},
                }
            )
            for s in series
        ]
    ).with_columns(pl.col("timestamp").cast(pl.Datetime("ms", "UTC")))
    windows = block_windows(series, inputs.segments, fold, "test")
    positions = strategy_positions(actor, windows, float(meta["trading_cost"]))
    # a position is decided at the close of bar i (timestamp[i]) and held over bar i+1
    frames = [
        pl.DataFrame(
            {
                "timestamp": w.timestamp[:-1],
                "symbol": w.symbol,
                **{name: positions[name][i] for name in positions},
            }
        )
        for i, w in enumerate(windows)
    ]
    positions_frame = pl.concat(frames).with_columns(pl.col("timestamp").cast(pl.Datetime("ms", "UTC")))
    return refit, observations, positions_frame


def recompute(
    run: RunFiles,
    config: dict[str, Any],
    raw_files: list[str],
    scratch: Path,
    device: str | None = None,
) -> Outputs:
    """Run every stage the finished run has, from ``raw_files``, writing into ``scratch``."""
    config = _device_config(config, device)
    manifest = pl.read_parquet(run.manifest)
    scratch.mkdir(parents=True, exist_ok=True)
    paths = {
        "features": scratch / "features.parquet",
        "scaler": scratch / "scaler.json",
        "metadata": scratch / "segments_metadata.parquet",
    }
    build_segments(run.manifest, paths["features"], paths["scaler"], paths["metadata"], config, raw_files)
    out = Outputs(
        features=pl.read_parquet(paths["features"]),
        scaler=json.loads(paths["scaler"].read_text(encoding="utf-8")),
        metadata=pl.read_parquet(paths["metadata"]),
    )
    text_path = None
    if run.embeddings is not None:
        # imported here: embed loads torch and transformers (2 s, measured); only runs with text embeddings
        # need it
        from trainrelay.data.embeddings import embed_events

        events = _events_path(manifest, raw_files)
        if events is None:
            raise DataError(f"{run.manifest}: the run has embeddings but its manifest lists no events file")
        text_path = scratch / "text_embeddings.parquet"
        embed_events(
            events,
            text_path,
            config["embeddings"],
            device=config["device"],
            seed=int(config["seed"]),
            meta_json=scratch / "embeddings_meta.json",
        )
        out.embeddings = pl.read_parquet(text_path)
    if run.forecaster is None:
        return out
    # imported here: the forecast/policy stack pulls in torch and SB3 (2 s to import, measured); a run that
    # stopped before this stage never needs it
    from trainrelay.forecast.precompute import precompute_forecasts

    out.forecaster_windows = forecaster_windows(paths, config)
    if run.forecasts is None:  # the run stopped at train_forecaster (e.g. the ETT preset)
        return out
    paths["forecasts"] = scratch / "forecast_features.parquet"
    out.forecasts = precompute_forecasts(run.forecaster, paths["features"], paths["forecasts"], config)
    if not run.policies:
        return out
    inputs = load_inputs(paths["features"], paths["scaler"], paths["metadata"], paths["forecasts"], text_path)
    for fold, policy in sorted(run.policies.items()):
        spec, observations, positions = policy_frames(policy, inputs, fold, config)
        out.specs[fold] = spec
        out.observations[fold] = observations
        out.positions[fold] = positions
    return out
