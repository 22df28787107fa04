"""The ``train_forecaster`` stage: train on fold ``forecaster.fold``, resumable, and score baselines.

Trains every torch model (PatchTST, DLinear, LSTM, TCN; the naive last value has nothing to learn)
on the fold's train split with early stopping on its val split, scores each on val and test —
overall and per channel — next to the non-torch baselines (HAR-RV for the volatility channel, the
zero forecast for the return channel), and keeps one: with ``forecaster.model: auto`` the trained
model with the lowest validation MSE (all channels, scaled), otherwise the named one. Writes
``checkpoints/forecaster.pt`` (the kept model), ``artifacts/loss/forecaster.csv`` (its history)
and ``metrics/forecaster.json``. Each trainable model keeps its mid-training state in
``<state_dir>/train_forecaster/<model>/``, resumed only when the fingerprint of (that model's
sections, shape, channels, segments config, seed, features sha256) matches — so a killed run
resumes the model it was training and skips the ones it finished.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import polars as pl

from trainrelay.atomic import atomic_path, write_json
from trainrelay.core import tracking
from trainrelay.core.checkpointing import StateStore, TimeBudget
from trainrelay.core.devices import resolve_device
from trainrelay.core.fingerprint import config_fingerprint, file_sha256
from trainrelay.errors import ConfigError, DataError
from trainrelay.forecast import baselines
from trainrelay.forecast import metrics as fm
from trainrelay.forecast.base import MODELS, TRAINABLE, Forecaster
from trainrelay.forecast.checkpoint import save_forecaster
from trainrelay.forecast.inputs import load_fold
from trainrelay.forecast.training import FitResult, TrainSettings, overall_errors, predict_windows
from trainrelay.forecast.windows import WindowSet

log = logging.getLogger(__name__)

LOSS_COLUMNS = ["epoch", "train_loss", "val_loss", "lr", "seconds"]
SPLITS = ("val", "test")


def _hparams(fc: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(fc.get(name) or {}) if name != "naive" else {}


def _train_key(name: str) -> str:
    return "train" if name == "patchtst" else f"{name}_train"


def _settings(fc: dict[str, Any], name: str) -> TrainSettings:
    key = _train_key(name)
    return TrainSettings.from_config(fc.get(key) or fc["train"], f"forecaster.{key}")


def training_fingerprint(
    config: dict[str, Any], features_sha256: str, model: str, channels: list[str]
) -> str:
    """What must be equal for ``model``'s saved state to be resumed (not checkpoint timing or
    device). Per model: changing the LSTM's settings does not throw away PatchTST's state."""
    fc = config["forecaster"]
    return config_fingerprint(
        {
            "model": model,
            "hparams": _hparams(fc, model),
            "train": fc.get(_train_key(model)) or fc["train"],
            "shape": {"lookback": fc["lookback"], "horizon": fc["horizon"], "fold": fc["fold"]},
            "channels": channels,
            "segments": config["segments"],
            "seed": config["seed"],
            "features_sha256": features_sha256,
        }
    )


def write_loss_csv(path: str | Path, history: list[dict[str, float]]) -> None:
    frame = pl.DataFrame(history, schema={c: pl.Int64 if c == "epoch" else pl.Float64 for c in LOSS_COLUMNS})
    with atomic_path(path) as tmp:
        frame.write_csv(tmp, float_precision=8)


def _role(fc: dict[str, Any], key: str, channels: list[str]) -> str | None:
    """``forecaster.<key>`` when it is one of the forecast channels (ETT data has neither)."""
    name = fc.get(key)
    return name if name in channels else None


def _baseline_scores(
    fc: dict[str, Any],
    config: dict[str, Any],
    windows: dict[str, WindowSet],
    channels: list[str],
    scaling: dict[str, dict[str, float]],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-channel scores and fit facts of HAR-RV (vol channel) and the zero forecast (returns)."""
    vol, ret = _role(fc, "vol_channel", channels), _role(fc, "return_channel", channels)
    scores: dict[str, Any] = {}
    info: dict[str, Any] = {}
    roles = {"vol_channel": vol, "return_channel": ret}
    if vol is None:
        info["har_rv"] = {"skipped": f"forecaster.vol_channel '{fc.get('vol_channel')}' is not forecast"}
    else:
        har_cfg = fc.get("har") or {}
        days = tuple(har_cfg.get("days") or baselines.DEFAULT_DAYS)
        interval = str(config["intervals"]["bar"])
        c = channels.index(vol)
        har = baselines.HARRV.from_config(days, interval)
        har.fit(har.design(windows["train"], c, "train"), baselines.channel_windows(windows["train"], c)[1])
        entry: dict[str, Any] = {}
        for split in SPLITS:
            _, y = baselines.channel_windows(windows[split], c)
            forecast = har.predict(har.design(windows[split], c, split))
            entry[split] = fm.channel_scores(forecast, y, vol, scaling, **roles)
        scores["har_rv"] = {vol: entry}
        info["har_rv"] = {"channel": vol, **har.fit_info(interval, days)}
    if ret is None:
        info["zero"] = {"skipped": f"forecaster.return_channel '{fc.get('return_channel')}' is not forecast"}
    else:
        c = channels.index(ret)
        entry = {}
        for split in SPLITS:
            _, y = baselines.channel_windows(windows[split], c)
            pred = baselines.zero_forecast(len(y), y.shape[1], ret, scaling)
            entry[split] = fm.channel_scores(pred, y, ret, scaling, **roles)
            entry[split]["direction_accuracy"] = None  # sign(0) is no call: not 0 (nor 0.5) right
        entry["unavailable"] = {"direction_accuracy": baselines.ZERO_NO_DIRECTION}
        scores["zero"] = {ret: entry}
        info["zero"] = {"channel": ret, "forecast": "0 (unscaled) at every horizon step"}
    return scores, info


def _choose(mode: str, models: dict[str, dict[str, float]]) -> tuple[str, dict[str, Any]]:
    """The kept model and why: lowest val MSE among the trained models, or the configured one."""
    candidates = [m for m in TRAINABLE if m in models]
    val = {m: models[m]["val_mse"] for m in candidates}
    if mode == "auto":
        kept = min(candidates, key=lambda m: (val[m], candidates.index(m)))  # ties: MODELS order
        reason = f"lowest validation MSE of {len(candidates)} models (all channels, scaled)"
    else:
        kept, reason = mode, f"named by forecaster.model ({mode})"
    return kept, {
        "mode": "auto" if mode == "auto" else "configured",
        "kept": kept,
        "reason": reason,
        "candidates": candidates,
        "val_mse": val,
    }


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
    mode = str(fc["model"])
    if mode != "auto" and mode not in MODELS:
        raise ConfigError(f"forecaster.model '{mode}' must be auto or one of {', '.join(MODELS)}")
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
    stats = scaler["folds"][str(fc["fold"])]
    scaling = {"mean": {c: stats["mean"][c] for c in channels}, "std": {c: stats["std"][c] for c in channels}}
    roles = {
        "vol_channel": _role(fc, "vol_channel", channels),
        "return_channel": _role(fc, "return_channel", channels),
    }
    features_sha = file_sha256(features_path)
    state_root = Path(state_dir) / "train_forecaster"

    # A named model trains first, so a time budget is spent on it before the comparisons.
    order = [mode, *[m for m in MODELS if m != mode]] if mode != "auto" else list(MODELS)
    models: dict[str, dict[str, float]] = {}
    per_channel: dict[str, Any] = {}
    fits: dict[str, FitResult | None] = {}
    forecasters: dict[str, Forecaster] = {}
    for name in order:
        forecaster = Forecaster(
            name, fc["lookback"], fc["horizon"], len(channels), _hparams(fc, name), seed=seed
        )
        store = None
        if forecaster.trainable:
            fingerprint = training_fingerprint(config, features_sha, name, channels)
            store = StateStore(state_root / name, fingerprint, keep=ckpt["keep"])
        settings = _settings(fc, name)
        fits[name] = forecaster.fit(
            windows["train"],
            windows["val"],
            settings,
            device=device,
            seed=seed,
            store=store,
            budget=budget if store is not None else None,
            progress=progress,
        )
        forecaster.module.to(device)
        scores, per_channel[name] = {}, {}
        for split in SPLITS:
            batch = settings.eval_batch_size
            pred, target = predict_windows(forecaster.module, windows[split], device, batch)
            scores[split] = overall_errors(pred, target)
            for channel, values in fm.per_channel(pred, target, channels, scaling, **roles).items():
                per_channel[name].setdefault(channel, {})[split] = values
        models[name] = {
            "val_mse": scores["val"]["mse"],
            "val_mae": scores["val"]["mae"],
            "test_mse": scores["test"]["mse"],
            "test_mae": scores["test"]["mae"],
        }
        if not all(math.isfinite(v) for v in models[name].values()):
            raise DataError(
                f"forecaster: {name} produced non-finite metrics {models[name]}; check the features"
            )
        val_mse, test_mse = models[name]["val_mse"], models[name]["test_mse"]
        log.info("forecaster %s: val mse %.5f, test mse %.5f", name, val_mse, test_mse)
        forecaster.module.to("cpu")
        forecasters[name] = forecaster

    baseline_scores, baseline_info = _baseline_scores(fc, config, windows, channels, scaling)
    per_channel.update(baseline_scores)
    kept, selection = _choose(mode, models)
    log.info("forecaster: keeping %s (%s)", kept, selection["reason"])
    kept_fit = fits[kept]
    history = kept_fit.history if kept_fit is not None else []
    metrics = {
        "models": {m: models[m] for m in MODELS},
        "model": kept,
        "selection": selection,
        "per_channel": {m: per_channel[m] for m in [*MODELS, *sorted(baseline_scores)]},
        "baselines": baseline_info,
        "metric_notes": fm.notes(),
        "vol_channel": roles["vol_channel"],
        "return_channel": roles["return_channel"],
        "horizon": fc["horizon"],
        "lookback": fc["lookback"],
        "channels": channels,
        "fold": fc["fold"],
        "windows": {k: len(v) for k, v in windows.items()},
        "best_epoch": kept_fit.best_epoch if kept_fit else None,
        "epochs_run": kept_fit.epochs_run if kept_fit else 0,
        "train_seconds": kept_fit.train_seconds if kept_fit else 0.0,
        "samples_per_second": kept_fit.samples_per_second if kept_fit else None,
        "resources": kept_fit.resources if kept_fit else None,  # GPU utilisation on CUDA (NVML)
        "device": str(device),
        "resumed_from_epoch": kept_fit.resumed_from_epoch if kept_fit else None,
        "training": {
            m: {
                "best_epoch": f.best_epoch,
                "epochs_run": f.epochs_run,
                "train_seconds": f.train_seconds,
                "resumed_from_epoch": f.resumed_from_epoch,
            }
            for m, f in ((m, fits[m]) for m in MODELS)
            if f is not None
        },
        # On test, not val: val chose the kept model among several, so its val MSE is the
        # optimistic one; test is the split nothing was chosen on.
        "beats_naive": models[kept]["test_mse"] < models["naive"]["test_mse"],
        "beats_naive_val": models[kept]["val_mse"] < models["naive"]["val_mse"],
    }
    save_forecaster(
        checkpoint_out,
        forecasters[kept],
        channels,
        scaling,
        extra={
            "fold": fc["fold"],
            "best_epoch": metrics["best_epoch"],
            "val_mse": models[kept]["val_mse"],
            "selection": selection["reason"],
        },
    )
    write_loss_csv(loss_out, history)
    write_json(metrics_out, metrics)
    _track(config, metrics, history, checkpoint_out)
    return metrics


def _track(
    config: dict[str, Any], metrics: dict[str, Any], history: list[dict[str, float]], ckpt: Any
) -> None:
    """Log to the optional experiment tracker (W&B / MLflow) when the workflow configures one."""
    with tracking.start(config, stage="forecaster") as t:
        t.log_params({"forecaster": config["forecaster"], "seed": config["seed"]})
        for row in history:
            t.log_metrics({k: row[k] for k in ("train_loss", "val_loss", "lr")}, step=int(row["epoch"]))
        flat = {f"{m}.{k}": v for m, vals in metrics["models"].items() for k, v in vals.items()}
        t.log_metrics(flat)
        t.log_artifact(str(ckpt))
