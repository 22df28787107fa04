"""The standard ETT long-horizon protocol (Informer / Autoformer / PatchTST), on our own code.

Rows split 12/4/4 months of 30 days (hourly borders 8640 / 11520 / 14400, 15-minute x4), a
standard scaler fitted on the train rows over all columns, the "M" setting (every column in and
out), MSE and MAE on scaled values averaged over all windows, steps and channels. Validation and
test windows may look back ``lookback`` rows into the previous split, as in the original loaders;
every test window is scored (no ``drop_last``). For comparison with published tables the payload
also scores the subset the official loaders score: their test ``DataLoader`` (batch 128, no shuffle,
``drop_last=True``) never sees the last ``windows % 128`` windows.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from trainrelay.errors import DataError
from trainrelay.forecast.base import Forecaster
from trainrelay.forecast.patchtst import PatchTSTParams
from trainrelay.forecast.training import TrainSettings
from trainrelay.forecast.windows import WindowSet, forecast_windows

log = logging.getLogger(__name__)

HOURLY_BORDERS = (8640, 11520, 14400)  # end rows of train, val, test (12/4/4 months of 30 days)

# The paper's published settings (README of the data folder; PatchTST/42 scripts).
PAPER_PATCHTST = {
    "hourly": PatchTSTParams(n_layers=3, n_heads=4, d_model=16, d_ff=128, dropout=0.3, head_dropout=0.0),
    "minute": PatchTSTParams(n_layers=3, n_heads=16, d_model=128, d_ff=256, dropout=0.2, head_dropout=0.0),
}
PAPER_TRAIN = {
    "hourly": TrainSettings(epochs=100, batch_size=128, lr=1e-4, schedule="type3", patience=100),
    "minute": TrainSettings(
        epochs=100, batch_size=128, lr=1e-4, schedule="onecycle", pct_start=0.4, patience=20
    ),
}
# DLinear's own scripts (LTSF-Linear, scripts/EXP-LongForecasting/Linear): ETTh1 batch 32 at lr
# 0.005, ETTm1 batch 8 at lr 1e-4; run_longExp.py's defaults: 10 epochs, patience 3, type1.
PAPER_DLINEAR_TRAIN = {
    "hourly": TrainSettings(epochs=10, batch_size=32, lr=0.005, schedule="type1", patience=3),
    "minute": TrainSettings(epochs=10, batch_size=8, lr=1e-4, schedule="type1", patience=3),
}
PAPER_TEST_BATCH = 128  # the official test loader's batch size (drop_last=True)


def paper_loader_windows(windows: WindowSet, batch_size: int = PAPER_TEST_BATCH) -> WindowSet:
    """The windows an official test loader scores: whole batches only, in order."""
    kept = len(windows) // batch_size * batch_size
    return WindowSet(
        windows.data, windows.starts[:kept], windows.lookback, windows.horizon, windows.series_starts
    )


def read_ett(path: str | Path) -> tuple[np.ndarray, list[str], int]:
    """Values ``[rows, 7]`` (float64), column names, and rows per hour (1 hourly, 4 for 15-minute)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"ETT file {path} not found; pass --data with the path of ETTh1.csv or ETTm1.csv")
    try:
        frame = pl.read_csv(path, try_parse_dates=True)
    except (pl.exceptions.PolarsError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path} is not a readable CSV ({first}); use the unmodified ETT file") from None
    if "date" not in frame.columns or frame.height < 3:
        raise DataError(f"{path} is not an ETT csv (needs a 'date' column and rows); use the unmodified file")
    step = frame["date"].diff().drop_nulls().median()
    per_hour = round(3600 / step.total_seconds()) if step is not None else 0
    if per_hour not in (1, 4):
        raise DataError(f"{path}: rows are {step} apart; the ETT protocol needs hourly or 15-minute rows")
    columns = [c for c in frame.columns if c != "date"]
    for column in columns:
        if not frame[column].dtype.is_numeric():
            values = frame[column].cast(pl.Float64, strict=False)
            row = (values.is_null() & frame[column].is_not_null()).arg_max()
            row = row if row is not None else values.is_null().arg_max()
            raise DataError(
                f"{path}: column {column!r}, data row {row + 1} (line {row + 2}): "
                f"{frame[column][row]!r} is not a number; use the unmodified ETT file"
            )
    return frame.select(columns).to_numpy().astype(np.float64), columns, per_hour


def ett_windows(
    values: np.ndarray, per_hour: int, lookback: int, horizon: int
) -> tuple[dict[str, WindowSet], np.ndarray, np.ndarray]:
    """Train/val/test windows of the scaled series, and the train-only scaler's mean and std."""
    train_end, val_end, test_end = (b * per_hour for b in HOURLY_BORDERS)
    if len(values) < test_end:
        raise DataError(f"ETT data has {len(values)} rows; the protocol needs {test_end}")
    mean = values[:train_end].mean(axis=0)
    std = values[:train_end].std(axis=0)  # population std, as sklearn's StandardScaler
    scaled = ((values[:test_end] - mean) / std).astype(np.float32)
    ranges = {"train": (0, train_end), "val": (train_end, val_end), "test": (val_end, test_end)}
    sets = {name: forecast_windows([scaled], [rng], lookback, horizon) for name, rng in ranges.items()}
    return sets, mean, std


def run_protocol(
    path: str | Path,
    horizon: int,
    lookback: int = 336,
    *,
    models: tuple[str, ...] = ("patchtst", "dlinear", "naive"),
    epochs: int | None = None,
    patience: int | None = None,
    hold_epochs: int | None = None,
    seed: int = 2021,
    device: torch.device | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and score each model with the paper's settings; return the benchmark JSON payload."""
    device = device or torch.device("cpu")
    values, columns, per_hour = read_ett(path)
    kind = "hourly" if per_hour == 1 else "minute"
    sets, _, _ = ett_windows(values, per_hour, lookback, horizon)
    started, cpu_started = time.perf_counter(), time.process_time()
    result: dict[str, Any] = {
        "data": Path(path).name,
        "horizon": horizon,
        "lookback": lookback,
        "channels": columns,
        "windows": {k: len(v) for k, v in sets.items()},
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": list(os.getloadavg()),
        "seed": seed,
    }
    for name in models:
        model_started, model_cpu = time.perf_counter(), time.process_time()
        if name == "patchtst":
            hparams = PAPER_PATCHTST[kind].as_dict()
            settings = PAPER_TRAIN[kind]
        elif name == "dlinear":
            hparams, settings = {"kernel_size": 25}, PAPER_DLINEAR_TRAIN[kind]
        else:
            hparams, settings = {}, PAPER_TRAIN[kind]
        if name != "dlinear":
            settings = replace(
                settings,
                epochs=epochs if epochs is not None else settings.epochs,
                patience=patience if patience is not None else settings.patience,
                hold_epochs=hold_epochs if hold_epochs is not None else settings.hold_epochs,
            )
        forecaster = Forecaster(name, lookback, horizon, len(columns), hparams, seed=seed)
        fit = forecaster.fit(
            sets["train"], sets["val"], settings, device=device, seed=seed, progress=progress
        )
        val = forecaster.score(sets["val"], device)
        test = forecaster.score(sets["test"], device)
        paper_test = paper_loader_windows(sets["test"])
        paper = forecaster.score(paper_test, device)
        entry: dict[str, Any] = {
            "test_mse": test["mse"],
            "test_mae": test["mae"],
            "val_mse": val["mse"],
            "val_mae": val["mae"],
            # comparable with the published tables only: every test window is the protocol's score
            "paper_loader": {"test_mse": paper["mse"], "test_mae": paper["mae"], "windows": len(paper_test)},
            "seconds": time.perf_counter() - model_started,
            "cpu_seconds": time.process_time() - model_cpu,
            "hparams": hparams,
        }
        if fit is not None:
            entry.update(
                train=settings.as_dict(),
                best_epoch=fit.best_epoch,
                epochs_run=fit.epochs_run,
                samples_per_second=fit.samples_per_second,
                history=fit.history,  # per epoch: train loss, val MSE, lr, seconds
                resources=fit.resources,
            )
        log.info(
            "%s H=%d: test mse %.4f mae %.4f (val %.4f)", name, horizon, test["mse"], test["mae"], val["mse"]
        )
        result[name] = entry
    result["seconds"] = time.perf_counter() - started
    # CPU seconds of this process: with other jobs on the machine, cpu_seconds / threads is what
    # the wall time would have been on idle cores.
    result["cpu_seconds"] = time.process_time() - cpu_started
    result["load_average_at_end"] = list(os.getloadavg())
    return result
