"""Real model inputs for export parity and the engine benchmark, taken from the run's own data.

Forecaster windows are cut from ``features.parquet`` exactly as the forecaster sees them: the
checkpoint's channels, scaled with the statistics stored in the checkpoint (else the checkpoint's
fold in ``scaler.json``), ``lookback`` consecutive bars of one symbol. Policy observations come
from the policy stage's own observation builder and trading environment: a deterministic rollout
of the trained policy on the test split, so position and unrealised PnL take the values the
policy itself produces.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from trainrelay import atomic
from trainrelay.errors import DataError
from trainrelay.policy.env import TradingEnv
from trainrelay.policy.inputs import load_inputs
from trainrelay.policy.observations import (
    ObservationSpec,
    build_series,
    episode_index_ranges,
    split_ranges,
)


def forecaster_windows(
    features_path: str | Path, scaler_path: str | Path, meta: dict[str, Any], count: int
) -> np.ndarray:
    """``count`` scaled input windows ``[count, lookback, n_channels]`` spread evenly over the data.

    Windows are taken per symbol at evenly spaced end rows (deterministic: no RNG) and never cross
    from one symbol into the next.
    """
    features_path, scaler_path = Path(features_path), Path(scaler_path)
    for path in (features_path, scaler_path):
        if not path.is_file():
            raise DataError(f"{path}: not found; run the segments stage first")
    lookback, channels = int(meta["lookback"]), list(meta["channels"])
    frame = pl.read_parquet(features_path)
    missing = [c for c in channels if c not in frame.columns]
    if missing:
        raise DataError(
            f"{features_path}: lacks forecaster channel(s) {', '.join(missing)}; rebuild segments"
        )
    stats = meta.get("scaling") or json.loads(scaler_path.read_text())["folds"][str(int(meta.get("fold", 0)))]
    scaled = frame.with_columns(
        [((pl.col(c) - stats["mean"][c]) / stats["std"][c]).alias(c) for c in channels]
    )
    series = [
        group.sort("timestamp").select(channels).to_numpy().astype(np.float32)
        for _, group in scaled.group_by("symbol", maintain_order=True)
    ]
    series = [s for s in series if len(s) >= lookback]
    if not series:
        raise DataError(f"{features_path}: no symbol has {lookback} bars (the forecaster lookback)")
    per_symbol = -(-count // len(series))
    windows = []
    for values in series:
        ends = np.unique(np.linspace(lookback, len(values), num=per_symbol).round().astype(np.int64))
        windows.extend(values[end - lookback : end] for end in ends)
    return np.stack(windows[:count]).astype(np.float32)


def policy_observations(
    actor: Any, meta: dict[str, Any], paths: dict[str, str | Path | None], count: int, seed: int = 0
) -> np.ndarray:
    """``[count, obs_dim]`` observations from a deterministic rollout of ``actor`` on the test split.

    ``paths`` holds features, scaler, segments, forecasts and text (None when absent), as for the
    policy stages.
    """

    inputs = load_inputs(
        paths["features"], paths["scaler"], paths["segments"], paths["forecasts"], paths.get("text")
    )
    spec = ObservationSpec.from_dict(meta["spec"])
    series = build_series(inputs, spec, meta["funding_every_hours"])
    episodes = episode_index_ranges(series, split_ranges(inputs.segments, spec.fold, "test"))
    if not episodes:
        raise DataError("segments metadata: the policy fold's test split has no episode of two bars or more")
    env = TradingEnv(series, episodes, float(meta["trading_cost"]))
    observation, _ = env.reset(seed=seed)
    rows = []
    with torch.no_grad():
        while len(rows) < count:
            rows.append(observation)
            action = actor(torch.from_numpy(observation[None, :])).numpy()[0]
            observation, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                observation, _ = env.reset()
    array = np.stack(rows).astype(np.float32)
    if array.shape[1] != int(meta["obs_dim"]):
        raise DataError(f"observations have {array.shape[1]} columns, the policy expects {meta['obs_dim']}")
    return array


def read_samples(path: str | Path, trailing_shape: tuple[int, ...], what: str) -> np.ndarray:
    """Read an ``[n, *trailing_shape]`` float32 ``.npy`` of real inputs and check it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} sample inputs not found; run the stage that writes them first")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: unreadable .npy ({exc}); rerun the stage that writes it") from exc
    if (
        array.ndim != 1 + len(trailing_shape)
        or tuple(array.shape[1:]) != tuple(trailing_shape)
        or not len(array)
    ):
        expected = ["n", *trailing_shape]
        raise DataError(f"{path}: {what} samples have shape {list(array.shape)}, expected {expected}")
    if not np.isfinite(array).all():
        raise DataError(f"{path}: {what} samples contain NaN or inf; check the upstream stage")
    return np.ascontiguousarray(array, dtype=np.float32)


def write_samples(target: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as ``.npy`` atomically (np.save would append '.npy' to a temporary name)."""
    with atomic.atomic_path(target) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
