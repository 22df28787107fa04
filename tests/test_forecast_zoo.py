"""The LSTM and TCN through the shared model interface, `forecaster.model: auto`, and the
per-channel table of metrics/forecaster.json."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import onnx
import pytest
import torch

from tests.test_forecast_stage import run_stage, tiny_config, write_inputs
from trainrelay.errors import ConfigError
from trainrelay.export import export_with_parity
from trainrelay.export.samples import forecaster_windows
from trainrelay.forecast.base import MODELS, TRAINABLE, Forecaster, build_module
from trainrelay.forecast.checkpoint import load_forecaster
from trainrelay.forecast.tcn import TCNParams, receptive_field

torch.set_num_threads(1)
SMALL = {"lstm": {"hidden_size": 8, "num_layers": 2, "dropout": 0.1}, "tcn": {"channels": 8, "levels": 2}}


@pytest.mark.parametrize("name", ["lstm", "tcn"])
def test_zoo_models_map_lookback_to_horizon_and_learn(name: str) -> None:
    module = build_module(name, 32, 6, 3, SMALL[name]).eval()
    out = module(torch.randn(5, 32, 3))
    assert out.shape == (5, 6, 3) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert name in MODELS and Forecaster(name, 32, 6, 3, SMALL[name]).trainable


def test_unknown_zoo_hyperparameter_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"forecaster\.lstm"):
        build_module("lstm", 32, 4, 1, {"hidden": 8})
    with pytest.raises(ConfigError, match=r"forecaster\.tcn"):
        build_module("tcn", 32, 4, 1, {"kernel_size": 1})


def test_tcn_is_causal_and_its_receptive_field_is_as_documented() -> None:
    params = TCNParams(channels=4, levels=3, kernel_size=3, dropout=0.0)
    field = receptive_field(params)
    assert field == 29
    torch.manual_seed(0)  # a random init can leave one path dead after a ReLU; fix the draw
    tcn = build_module("tcn", 64, 2, 1, params.as_dict()).eval()
    x = torch.randn(1, 64, 1)
    with torch.no_grad():
        base = tcn.blocks(x.transpose(1, 2))
        early = x.clone()
        early[:, : 64 - field] += 5.0  # outside the last bar's receptive field
        late = x.clone()
        late[:, 64 - field] += 5.0  # the oldest bar inside it
        assert torch.equal(tcn.blocks(early.transpose(1, 2))[..., -1], base[..., -1])
        assert not torch.equal(tcn.blocks(late.transpose(1, 2))[..., -1], base[..., -1])
        # and no output sees a later bar: changing bar 40 leaves outputs 0..39 alone
        later = x.clone()
        later[:, 40] += 5.0
        assert torch.equal(tcn.blocks(later.transpose(1, 2))[..., :40], base[..., :40])


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory) -> tuple:
    root = tmp_path_factory.mktemp("zoo")
    inputs = write_inputs(root / "segments", rows=700)
    config = tiny_config(inputs["segments"], model="auto")
    metrics = run_stage(inputs, root / "out", config, root / "state")
    return inputs, config, metrics, root


def test_auto_keeps_the_trained_model_with_the_lowest_val_mse(auto_run) -> None:
    _, _, metrics, root = auto_run
    val = {m: metrics["models"][m]["val_mse"] for m in TRAINABLE}
    assert metrics["model"] == min(val, key=val.__getitem__)
    selection = metrics["selection"]
    assert selection["mode"] == "auto" and selection["kept"] == metrics["model"]
    assert selection["reason"] == "lowest validation MSE of 4 models (all channels, scaled)"
    assert selection["candidates"] == list(TRAINABLE) and selection["val_mse"] == val
    _, meta = load_forecaster(root / "out" / "forecaster.pt")
    assert meta["model"] == metrics["model"] and meta["selection"] == selection["reason"]
    assert meta["val_mse"] == metrics["models"][metrics["model"]]["val_mse"]
    # every trainable model left its own resumable state
    for name in TRAINABLE:
        assert list((root / "state" / "train_forecaster" / name).glob("state-*.pt")), name
    kept = metrics["models"][metrics["model"]]
    assert metrics["beats_naive"] == (kept["test_mse"] < metrics["models"]["naive"]["test_mse"])


def test_per_channel_table_has_every_model_baseline_split_and_metric(auto_run) -> None:
    _, _, metrics, root = auto_run
    assert json.loads((root / "out" / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    table = metrics["per_channel"]
    assert list(table) == [*MODELS, "har_rv", "zero"]
    assert (metrics["vol_channel"], metrics["return_channel"]) == ("realized_vol", "log_return")
    for model in MODELS:
        assert set(table[model]) == {"log_return", "realized_vol"}
        for split in ("val", "test"):
            ret, vol = table[model]["log_return"][split], table[model]["realized_vol"][split]
            assert set(ret) == {"mse", "direction_accuracy"} and set(vol) == {"mse", "qlike"}
            assert 0.0 <= ret["direction_accuracy"] <= 1.0 and vol["qlike"] >= 0.0
        # the channel MSEs average to the overall MSE (two channels, equal counts; float32 vs
        # float64 differences)
        for split in ("val", "test"):
            mean = np.mean([table[model][c][split]["mse"] for c in ("log_return", "realized_vol")])
            assert mean == pytest.approx(metrics["models"][model][f"{split}_mse"], rel=1e-6)
    assert set(table["har_rv"]) == {"realized_vol"} and set(table["zero"]) == {"log_return"}
    for split in ("val", "test"):
        assert math.isfinite(table["har_rv"]["realized_vol"][split]["qlike"])
        zero = table["zero"]["log_return"][split]
        assert zero["direction_accuracy"] is None and zero["mse"] > 0
    assert "no sign" in table["zero"]["log_return"]["unavailable"]["direction_accuracy"]
    har = metrics["baselines"]["har_rv"]
    # 15-minute bars: a day is 96 bars; HAR keeps its week and month despite the 32-bar lookback,
    # and the tiny series (far less than a month) gives every window a short history
    assert har["bars_per_day"] == 96 and har["windows_bars"] == [96, 672, 2880]
    assert har["short_history_share"] == {"train": 1.0, "val": 1.0, "test": 1.0}
    assert set(metrics["metric_notes"]) == {"mse", "qlike", "direction_accuracy"}


def test_a_named_model_is_kept_even_when_another_scores_better(auto_run, tmp_path) -> None:
    inputs, config, metrics, _ = auto_run
    worst = max(TRAINABLE, key=lambda m: metrics["models"][m]["val_mse"])
    named = copy.deepcopy(config)
    named["forecaster"]["model"] = worst
    out = run_stage(inputs, tmp_path, named, tmp_path / "state")
    assert out["model"] == worst and out["selection"]["mode"] == "configured"
    for model, values in metrics["models"].items():  # the same models with the same seed
        assert out["models"][model] == pytest.approx(values, rel=1e-6), model
    bad = copy.deepcopy(config)
    bad["forecaster"]["model"] = "gru"
    with pytest.raises(ConfigError, match=r"forecaster\.model 'gru' must be auto or one of"):
        run_stage(inputs, tmp_path, bad, tmp_path / "state")


@pytest.mark.parametrize("name", ["lstm", "tcn"])
def test_trained_zoo_models_export_to_onnx_with_parity(auto_run, tmp_path, name: str) -> None:
    """The export stage's path: load the checkpoint, real windows, export, ORT vs torch."""
    inputs, config, _, _ = auto_run
    named = copy.deepcopy(config)
    named["forecaster"]["model"] = name
    run_stage(inputs, tmp_path, named, tmp_path / "state")
    module, meta = load_forecaster(tmp_path / "forecaster.pt")
    assert meta["model"] == name
    p = inputs["paths"]
    samples = forecaster_windows(p["features"], p["scaler"], meta, 16)
    settings = config["benchmark"]["export"]
    report = export_with_parity(
        module,
        samples,
        tmp_path / f"{name}.onnx",
        tolerance=float(settings["tolerance"]),
        opset=int(settings["opset"]),
        batch_sizes=tuple(settings["parity_batches"]),
    )
    assert report["passed"] is True and report["rel_l2"] < 1e-5
    graph = onnx.load(str(tmp_path / f"{name}.onnx")).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis


def test_every_trained_model_honours_the_time_budget(auto_run, tmp_path) -> None:
    """Not only the kept model: with naive kept (nothing to train) the budget stops PatchTST."""
    from trainrelay.errors import BudgetExhausted

    inputs, config, _, _ = auto_run
    named = copy.deepcopy(config)
    named["forecaster"]["model"] = "naive"
    named["checkpoint"]["time_budget_minutes"] = 1e-6
    with pytest.raises(BudgetExhausted, match="rerun the same command"):
        run_stage(inputs, tmp_path, named, tmp_path / "state")
    assert list((tmp_path / "state" / "train_forecaster" / "patchtst").glob("state-*.pt"))
