"""The ``train_forecaster`` stage: train on fold ``forecaster.fold``, resumable, and score baselines.

Trains ``forecaster.model`` (PatchTST by default) on the fold's train split with early stopping on
its val split, scores it and both other models (DLinear and the naive last value) on val and test,
and writes ``checkpoints/forecaster.pt``, ``artifacts/loss/forecaster.csv`` and
``metrics/forecaster.json``. Mid-training state goes to ``<state_dir>/train_forecaster/`` and is
resumed only when the fingerprint of (forecaster + segments config, seed, features sha256) matches.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import polars as pl
import torch

from trainrelay.atomic import atomic_path, write_json
from trainrelay.checkpointing import StateStore, TimeBudget
from trainrelay.devices import resolve_device
from trainrelay.errors import DataError
from trainrelay.fingerprint import config_fingerprint, file_sha256
from trainrelay.forecast.base import MODELS, Forecaster
from trainrelay.forecast.checkpoint import save_forecaster
from trainrelay.forecast.inputs import load_fold
from trainrelay.forecast.training import FitResult, TrainSettings

log = logging.getLogger(__name__)

LOSS_COLUMNS = ["epoch", "train_loss", "val_loss", "lr", "seconds"]


def training_fingerprint(config: dict[str, Any], features_path: str | Path) -> str:
    """What must be equal for saved state to be resumed (not checkpoint timing or device)."""
    return config_fingerprint(
        {
            "forecaster": config["forecaster"],
            "segments": config["segments"],
            "seed": config["seed"],
            "features_sha256": file_sha256(features_path),
        }
    )


def _hparams(fc: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(fc.get(name) or {}) if name != "naive" else {}


def _settings(fc: dict[str, Any], name: str) -> TrainSettings:
    key = "train" if name == "patchtst" else f"{name}_train"
    return TrainSettings.from_config(fc.get(key) or fc["train"], f"forecaster.{key}")


def write_loss_csv(path: str | Path, history: list[dict[str, float]]) -> None:
    frame = pl.DataFrame(history, schema={c: pl.Int64 if c == "epoch" else pl.Float64 for c in LOSS_COLUMNS})
    with atomic_path(path) as tmp:
        frame.write_csv(tmp, float_precision=8)


def train_forecaster(
    features_path: str | Path,
    scaler_path: str | Path,
    segments_path: str | Path,
    checkpoint_out: str | Path,
    loss_out: str | Path,
    metrics_out: str | Path,
    config: dict[str, Any],
    state_dir: str | Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the stage; returns the metrics written to ``metrics_out``."""
    fc, seed = config["forecaster"], int(config["seed"])
    ckpt = config["checkpoint"]
    # The session's deadline, not a fresh budget: a job that starts after it stops here, before
    # loading anything, and a later one gets only what earlier jobs left.
    budget = TimeBudget(every_minutes=ckpt["every_minutes"], budget_minutes=ckpt["time_budget_minutes"])
    budget.check_start("train_forecaster")
    device = resolve_device(config["device"])
    _, windows, channels, scaler = load_fold(features_path, scaler_path, segments_path, config)
    log.info(
        "forecaster: fold %d, channels %s, windows train %d / val %d / test %d, device %s",
        fc["fold"],
        channels,
        len(windows["train"]),
        len(windows["val"]),
        len(windows["test"]),
        device,
    )
    store = StateStore(
        Path(state_dir) / "train_forecaster", training_fingerprint(config, features_path), keep=ckpt["keep"]
    )

    main = fc["model"]
    order = [main, *[m for m in MODELS if m != main]]  # the saved model first: it owns the state/budget
    models: dict[str, dict[str, float]] = {}
    main_fit: FitResult | None = None
    main_forecaster: Forecaster | None = None
    for name in order:
        forecaster = Forecaster(
            name, fc["lookback"], fc["horizon"], len(channels), _hparams(fc, name), seed=seed
        )
        is_main = name == main
        fit = forecaster.fit(
            windows["train"],
            windows["val"],
            _settings(fc, name),
            device=device,
            seed=seed,
            store=store if is_main else None,
            budget=budget if is_main else None,
            progress=progress,
        )
        val, test = forecaster.score(windows["val"], device), forecaster.score(windows["test"], device)
        models[name] = {
            "val_mse": val["mse"],
            "val_mae": val["mae"],
            "test_mse": test["mse"],
            "test_mae": test["mae"],
        }
        if not all(math.isfinite(v) for v in models[name].values()):
            raise DataError(
                f"forecaster: {name} produced non-finite metrics {models[name]}; check the features"
            )
        log.info("forecaster %s: val mse %.5f, test mse %.5f", name, val["mse"], test["mse"])
        if is_main:
            main_fit, main_forecaster = fit, forecaster

    assert main_forecaster is not None
    history = main_fit.history if main_fit is not None else []
    stats = scaler["folds"][str(fc["fold"])]
    scaling = {"mean": {c: stats["mean"][c] for c in channels}, "std": {c: stats["std"][c] for c in channels}}
    metrics = {
        "models": models,
        "model": main,
        "horizon": fc["horizon"],
        "lookback": fc["lookback"],
        "channels": channels,
        "fold": fc["fold"],
        "windows": {k: len(v) for k, v in windows.items()},
        "best_epoch": main_fit.best_epoch if main_fit else None,
        "epochs_run": main_fit.epochs_run if main_fit else 0,
        "train_seconds": main_fit.train_seconds if main_fit else 0.0,
        "samples_per_second": main_fit.samples_per_second if main_fit else None,
        "resources": main_fit.resources if main_fit else None,  # GPU utilisation on CUDA (NVML)
        "device": str(device),
        "resumed_from_epoch": main_fit.resumed_from_epoch if main_fit else None,
        "beats_naive": models[main]["val_mse"] < models["naive"]["val_mse"],
    }
    main_forecaster.module.to("cpu")
    save_forecaster(
        checkpoint_out,
        main_forecaster,
        channels,
        scaling,
        extra={"fold": fc["fold"], "best_epoch": metrics["best_epoch"], "val_mse": models[main]["val_mse"]},
    )
    write_loss_csv(loss_out, history)
    write_json(metrics_out, metrics)
    _track(config, metrics, history, checkpoint_out)
    return metrics


def _track(
    config: dict[str, Any], metrics: dict[str, Any], history: list[dict[str, float]], ckpt: Any
) -> None:
    """Log to the optional experiment tracker (W&B / MLflow) when the workflow configures one."""
    from trainrelay import tracking

    with tracking.start(config, stage="forecaster") as t:
        t.log_params({"forecaster": config["forecaster"], "seed": config["seed"]})
        for row in history:
            t.log_metrics({k: row[k] for k in ("train_loss", "val_loss", "lr")}, step=int(row["epoch"]))
        flat = {f"{m}.{k}": v for m, vals in metrics["models"].items() for k, v in vals.items()}
        t.log_metrics(flat)
        t.log_artifact(str(ckpt))


def set_threads(threads: int | None) -> None:
    """Use the rule's ``threads`` for torch on the CPU (Snakemake's cores budget)."""
    if threads:
        torch.set_num_threads(int(threads))
