"""The train_forecaster and precompute stages on tiny segments files: outputs, resume, budget,
fingerprints, no look-ahead, and the load_forecaster contract."""

from __future__ import annotations

import copy
import json
import logging
import math
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from trainrelay.atomic import write_json, write_parquet
from trainrelay.data.scaling import RunningMoments
from trainrelay.data.splits import make_folds, metadata_frame
from trainrelay.errors import BudgetExhausted, ConfigError
from trainrelay.forecast.checkpoint import load_forecaster
from trainrelay.forecast.precompute import precompute_forecasts
from trainrelay.forecast.stage import train_forecaster

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
FEATURES = ["log_return", "realized_vol", "mom_4"]


def write_inputs(
    root: Path, rows: int = 900, symbols: tuple[str, ...] = ("AAA", "BBB"), seed: int = 0
) -> dict:
    """features.parquet / scaler.json / segments_metadata.parquet in the segments stage's formats."""
    rng = np.random.default_rng(seed)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    stamps = [start + timedelta(minutes=15 * i) for i in range(rows)]
    frames = []
    for k, symbol in enumerate(symbols):
        t = np.arange(rows)
        vol = 0.01 * (1.5 + np.sin(2 * np.pi * t / 96 + k))  # a daily volatility cycle
        ret = vol * rng.standard_normal(rows)
        frames.append(
            pl.DataFrame(
                {
                    "timestamp": pl.Series(stamps, dtype=pl.Datetime("ms", "UTC")),
                    "symbol": symbol,
                    "close": 100 * np.exp(np.cumsum(ret)),
                    "log_return": ret,
                    "realized_vol": vol * (1 + 0.1 * rng.standard_normal(rows)) ** 2,
                    "mom_4": np.convolve(ret, np.ones(4), "same"),
                }
            )
        )
    features = pl.concat(frames).sort("symbol", "timestamp")
    settings = {
        "split": "walk_forward",
        "folds": 1,
        "val_fraction": 0.15,
        "test_fraction": 0.15,
        "embargo_bars": 4,
        "episode_bars": 128,
        "fixed": {"train_rows": 1, "val_rows": 1, "test_rows": 1},
    }
    folds = make_folds(rows, settings)
    timeline = features.filter(pl.col("symbol") == symbols[0])["timestamp"]
    moments = RunningMoments(FEATURES)
    for symbol in symbols:
        part = features.filter(pl.col("symbol") == symbol)
        moments.add(part.slice(folds[0].train.start, folds[0].train.rows).select(FEATURES))
    scaler = {"features": FEATURES, "folds": {"0": moments.stats()}, "fitted_on": "train"}
    paths = {
        "features": root / "features.parquet",
        "scaler": root / "scaler.json",
        "segments": root / "segments_metadata.parquet",
    }
    write_parquet(paths["features"], features)
    write_json(paths["scaler"], scaler)
    write_parquet(paths["segments"], metadata_frame(timeline, folds, settings["episode_bars"]))
    return {"paths": paths, "segments": settings}


def tiny_config(segments: dict, model: str = "patchtst", **train: Any) -> dict:
    """The demo config shrunk to the tiny inputs; ``model`` is kept (``auto``: chosen on val)."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["device"] = "cpu"
    config["segments"] = segments
    fc = config["forecaster"]
    fc.update(lookback=32, horizon=8, model=model)
    fc["patchtst"].update(patch_len=8, stride=4, d_model=8, n_heads=2, n_layers=1, d_ff=16, dropout=0.1)
    fc["dlinear"]["kernel_size"] = 5
    fc["train"].update({"epochs": 3, "batch_size": 64, "lr": 0.003, "patience": 3, **train})
    fc["dlinear_train"].update(epochs=2, batch_size=64)
    fc["lstm"].update(hidden_size=8)
    fc["tcn"].update(channels=8, levels=2)
    for key in ("lstm_train", "tcn_train"):
        fc[key].update(epochs=2, batch_size=64)
    config["checkpoint"].update(every_minutes=30, time_budget_minutes=None, keep=3)
    return config


def run_stage(inputs: dict, out: Path, config: dict, state: Path) -> dict:
    p = inputs["paths"]
    return train_forecaster(
        p["features"],
        p["scaler"],
        p["segments"],
        out / "forecaster.pt",
        out / "loss.csv",
        out / "metrics.json",
        config,
        state_dir=state,
        progress=False,
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    return write_inputs(tmp_path_factory.mktemp("segments"))


@pytest.fixture(scope="module")
def trained(inputs, tmp_path_factory) -> tuple[Path, dict, dict]:
    out = tmp_path_factory.mktemp("train")
    config = tiny_config(inputs["segments"])
    metrics = run_stage(inputs, out, config, out / "state")
    return out, metrics, config


def test_stage_writes_checkpoint_loss_and_metrics(trained) -> None:
    out, metrics, _ = trained
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert set(metrics["models"]) == {"patchtst", "dlinear", "lstm", "tcn", "naive"}
    for values in metrics["models"].values():
        assert set(values) == {"val_mse", "val_mae", "test_mse", "test_mae"}
        assert all(math.isfinite(v) and v > 0 for v in values.values())
    assert metrics["channels"] == ["log_return", "realized_vol"]
    assert (metrics["horizon"], metrics["lookback"], metrics["epochs_run"]) == (8, 32, 3)
    assert 1 <= metrics["best_epoch"] <= 3
    assert metrics["resumed_from_epoch"] is None and metrics["device"] == "cpu"
    assert metrics["samples_per_second"] > 0 and metrics["train_seconds"] > 0
    # resources sampled while training: a CPU run has CPU time and RSS, and no GPU figures
    resources = metrics["resources"]
    assert 0 < resources["cpu_util_pct"] <= 100 * (torch.get_num_threads() + 1)
    assert resources["peak_rss_mb"] > 100  # the interpreter with torch loaded
    assert resources["gpu_util_pct"] is None and resources["vram_mb"] is None
    # the last value is a poor forecast of noisy returns: the trained model must beat it
    assert metrics["models"]["patchtst"]["val_mse"] < metrics["models"]["naive"]["val_mse"]
    loss = pl.read_csv(out / "loss.csv")
    assert loss.columns == ["epoch", "train_loss", "val_loss", "lr", "seconds"]
    assert loss["epoch"].to_list() == [1, 2, 3]
    assert min(loss["val_loss"]) == pytest.approx(metrics["models"]["patchtst"]["val_mse"], rel=1e-5)


def test_load_forecaster_rebuilds_the_eval_module(trained) -> None:
    out, _metrics, _ = trained
    module, meta = load_forecaster(out / "forecaster.pt")
    assert not module.training
    assert (meta["model"], meta["lookback"], meta["horizon"]) == ("patchtst", 32, 8)
    assert meta["channels"] == ["log_return", "realized_vol"] and meta["n_channels"] == 2
    assert meta["hparams"]["d_model"] == 8 and set(meta["scaling"]) == {"mean", "std"}
    y = module(torch.zeros(3, 32, 2))
    assert y.shape == (3, 8, 2) and y.dtype == torch.float32


def test_precompute_has_one_row_per_bar_and_no_lookahead(trained, inputs, tmp_path) -> None:
    out, _, config = trained
    p = inputs["paths"]
    first = precompute_forecasts(out / "forecaster.pt", p["features"], tmp_path / "a.parquet", config)
    features = pl.read_parquet(p["features"])
    assert first.select("timestamp", "symbol").equals(features.select("timestamp", "symbol"))
    assert first.columns == ["timestamp", "symbol", "fc_return", "fc_vol", "fc_return_1", "fc_valid"]
    for _, part in first.group_by("symbol"):
        assert not part["fc_valid"][:31].any() and part["fc_valid"][31:].all()
        assert (part[:31].select("fc_return", "fc_vol", "fc_return_1").to_numpy() == 0.0).all()
    assert (first["fc_vol"] >= 0).all() and first.filter("fc_valid")["fc_vol"].min() > 0

    # Rewrite everything after bar t of one symbol: nothing at or before t may change.
    t = features["timestamp"].unique().sort()[500]
    later = (pl.col("symbol") == "AAA") & (pl.col("timestamp") > t)
    changed = features.with_columns(
        [pl.when(later).then(pl.col(c) * -3.0 + 0.05).otherwise(pl.col(c)).alias(c) for c in FEATURES]
    )
    write_parquet(tmp_path / "changed.parquet", changed)
    second = precompute_forecasts(
        out / "forecaster.pt", tmp_path / "changed.parquet", tmp_path / "b.parquet", config
    )
    upto = pl.col("timestamp") <= t
    assert first.filter(upto).equals(second.filter(upto))
    assert not first.filter(later).equals(second.filter(later))  # the change did reach later rows
    bbb = pl.col("symbol") == "BBB"
    assert first.filter(bbb).equals(second.filter(bbb))  # and never another symbol


def test_precompute_needs_the_return_and_vol_channels(trained, inputs, tmp_path) -> None:
    out, _, config = trained
    bad = copy.deepcopy(config)
    bad["forecaster"]["vol_channel"] = "mom_4"
    with pytest.raises(ConfigError, match=r"forecaster\.vol_channel"):
        precompute_forecasts(out / "forecaster.pt", inputs["paths"]["features"], tmp_path / "x.parquet", bad)


def test_unknown_channel_is_a_config_error(inputs, tmp_path) -> None:
    config = tiny_config(inputs["segments"])
    config["forecaster"]["channels"] = ["log_return", "nope"]
    with pytest.raises(ConfigError, match=r"forecaster\.channels: nope"):
        run_stage(inputs, tmp_path, config, tmp_path / "state")


def test_budget_stop_saves_state_and_a_rerun_resumes(inputs, tmp_path, caplog) -> None:
    config = tiny_config(inputs["segments"])
    config["checkpoint"]["time_budget_minutes"] = 1e-6
    with pytest.raises(
        BudgetExhausted, match=r"time budget of 1e-06 min reached after epoch 0.*rerun the same"
    ):
        run_stage(inputs, tmp_path / "out", config, tmp_path / "state")
    assert list((tmp_path / "state" / "train_forecaster" / "patchtst").glob("state-*.pt"))
    assert not (tmp_path / "out" / "metrics.json").exists()
    config["checkpoint"]["time_budget_minutes"] = None  # a fresh session: the budget starts again
    with caplog.at_level(logging.INFO):
        metrics = run_stage(inputs, tmp_path / "out", config, tmp_path / "state")
    assert "resuming from epoch 1 batch 1" in caplog.text
    assert metrics["resumed_from_epoch"] == 1 and metrics["epochs_run"] == 3


def test_changed_config_starts_fresh(trained, inputs, tmp_path, caplog) -> None:
    out, metrics, config = trained
    with caplog.at_level(logging.INFO):
        again = run_stage(inputs, tmp_path, config, out / "state")  # same config: the finished state
    assert again["resumed_from_epoch"] == 4 and "patchtst: resuming from epoch 4" in caplog.text
    assert "dlinear: resuming from epoch 3" in caplog.text  # every trained model has its own state
    assert again["models"] == metrics["models"]
    caplog.clear()
    changed = copy.deepcopy(config)
    changed["forecaster"]["train"]["lr"] = 0.002
    with caplog.at_level(logging.INFO):
        fresh = run_stage(inputs, tmp_path, changed, out / "state")
    assert fresh["resumed_from_epoch"] is None and "patchtst: resuming" not in caplog.text
    assert "made with another config; starting fresh" in caplog.text
    # the fingerprint is per model: PatchTST's lr leaves DLinear's finished state valid
    assert "dlinear: resuming from epoch 3" in caplog.text


CHILD = """
import json, logging, sys, torch
torch.set_num_threads(1)
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from trainrelay.forecast.stage import train_forecaster
args = json.load(open(sys.argv[1]))
train_forecaster(*args["paths"], config=args["config"], state_dir=args["state"], progress=False)
"""


def _child(tmp: Path, inputs: dict, config: dict, name: str) -> tuple[list[str], Path, Path]:
    p, out = inputs["paths"], tmp / name
    args = {
        "paths": [
            str(p["features"]),
            str(p["scaler"]),
            str(p["segments"]),
            str(out / "forecaster.pt"),
            str(out / "loss.csv"),
            str(out / "metrics.json"),
        ],
        "config": config,
        "state": str(tmp / f"state-{name}"),
    }
    (tmp / f"{name}.json").write_text(json.dumps(args))
    return (
        [sys.executable, "-c", CHILD, str(tmp / f"{name}.json")],
        out,
        tmp / f"state-{name}" / "train_forecaster",
    )


def test_sigkill_mid_epoch_then_rerun_resumes_and_matches(inputs, tmp_path) -> None:
    """With ``auto`` every model trains; the run is killed while the LSTM (third) trains: the rerun
    skips the finished PatchTST and DLinear, resumes the LSTM mid-way, and ends where an
    uninterrupted run ends."""
    config = tiny_config(inputs["segments"], model="auto", epochs=4, patience=4)
    config["forecaster"]["lstm_train"].update(epochs=4, patience=4, batch_size=32)
    config["checkpoint"]["every_minutes"] = 0.002  # a state every ~0.1 s, between batches
    reference_cmd, reference_out, _ = _child(tmp_path, inputs, config, "reference")
    subprocess.run(reference_cmd, check=True, capture_output=True, cwd=REPO, timeout=120)
    reference = json.loads((reference_out / "metrics.json").read_text())

    cmd, out, state_root = _child(tmp_path, inputs, config, "killed")
    state_dir = state_root / "lstm"
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while not list(state_dir.glob("state-*.pt")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert not (out / "metrics.json").exists()
    saved = torch.load(sorted(state_dir.glob("state-*.pt"))[-1], weights_only=False)["state"]
    assert saved["batch"] > 0 or saved["epoch"] > 0

    rerun = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert f"lstm: resuming from epoch {saved['epoch'] + 1} batch" in rerun.stderr
    assert "patchtst: resuming from epoch 5 batch 0" in rerun.stderr  # finished: not trained again
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["training"]["lstm"]["resumed_from_epoch"] is not None
    assert resumed["training"]["tcn"]["resumed_from_epoch"] is None  # not started when killed
    assert resumed["model"] == reference["model"]
    for model, fit in reference["training"].items():
        for key in ("best_epoch", "epochs_run"):
            assert resumed["training"][model][key] == fit[key], (model, key)
    for model, values in reference["models"].items():
        for key, value in values.items():
            assert resumed["models"][model][key] == pytest.approx(value, rel=1e-4), (model, key)
    assert resumed["per_channel"].keys() == reference["per_channel"].keys()
    epochs = reference["training"][reference["model"]]["epochs_run"]
    assert pl.read_csv(out / "loss.csv")["epoch"].to_list() == list(range(1, epochs + 1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_with_bf16_autocast(inputs, tmp_path) -> None:
    config = tiny_config(inputs["segments"])
    config["device"] = "cuda"
    metrics = run_stage(inputs, tmp_path, config, tmp_path / "state")
    assert metrics["device"].startswith("cuda")
    # NVML sampled the GPU while it trained (nvidia-ml-py is in the GPU requirements)
    assert metrics["resources"]["gpu_util_pct"] is not None, metrics["resources"]["notes"]
    assert metrics["resources"]["vram_mb"] > 0
    assert all(math.isfinite(v) for m in metrics["models"].values() for v in m.values())
    precompute_forecasts(
        tmp_path / "forecaster.pt", inputs["paths"]["features"], tmp_path / "fc.parquet", config
    )


def test_test_span_all_folds_scores_every_later_test_block() -> None:
    """all_folds: test runs from the fold's test start to the last fold's test end; fold: its own."""
    from trainrelay.forecast.inputs import split_bounds

    day = timedelta(days=1)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    rows = []
    for fold in range(3):  # test blocks of 10 days each, one after another
        test_start = t0 + (30 + 10 * fold) * day
        rows += [
            (fold, "train", 0, t0, test_start - 6 * day, 1),
            (fold, "val", 0, test_start - 5 * day, test_start - 1 * day, 1),
            (fold, "test", 0, test_start, test_start + 9 * day, 1),
        ]
    segments = pl.DataFrame(rows, schema=["fold", "split", "episode", "start", "end", "rows"], orient="row")
    ms = lambda t: np.datetime64(t.replace(tzinfo=None), "ms")  # noqa: E731
    own = split_bounds(segments, 0)
    spanned = split_bounds(segments, 0, "all_folds")
    assert own["test"] == (ms(t0 + 30 * day), ms(t0 + 39 * day))
    assert spanned["test"] == (ms(t0 + 30 * day), ms(t0 + 59 * day))  # through fold 2's test
    assert spanned["train"] == own["train"] and spanned["val"] == own["val"]
    assert split_bounds(segments, 1, "all_folds")["test"] == (ms(t0 + 40 * day), ms(t0 + 59 * day))
    with pytest.raises(ConfigError, match="test_span"):
        split_bounds(segments, 0, "everything")
