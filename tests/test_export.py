"""ONNX export with a dynamic batch axis and parity on real-looking inputs (small modules of our own)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import polars as pl
import pytest
import torch
from torch import nn

from trainrelay.errors import DataError
from trainrelay.export import export_with_parity
from trainrelay.export.samples import forecaster_windows, read_samples, write_samples

torch.set_num_threads(1)


class PolicyMLP(nn.Module):
    """Shape of the PPO actor: [batch, obs_dim] -> [batch, 1] in [-1, 1]."""

    def __init__(self, obs_dim: int = 9) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(self.net(torch.clamp(x, -10, 10)), -1.0, 1.0)


class PatchingForecaster(nn.Module):
    """Transformer-ish: instance norm, unfold into patches, one attention layer, flatten head."""

    def __init__(self, lookback: int = 32, horizon: int = 4, channels: int = 2, patch: int = 8, d: int = 16):
        super().__init__()
        self.patch, self.stride = patch, patch // 2
        self.n_patches = (lookback - patch) // self.stride + 1
        self.embed = nn.Linear(patch, d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d * self.n_patches, horizon)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        series = x.transpose(1, 2)
        mean, std = series.mean(-1, keepdim=True), series.std(-1, keepdim=True) + 1e-5
        patches = ((series - mean) / std).unfold(-1, self.patch, self.stride)  # [B, C, N, P]
        tokens = self.embed(patches).reshape(batch * self.channels, self.n_patches, -1)
        attended, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        tokens = self.norm(tokens + attended).reshape(batch, self.channels, -1)
        return (self.head(tokens) * std + mean).transpose(1, 2)


def _dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.mark.parametrize(
    ("module", "sample_shape"),
    [(PolicyMLP(), (9,)), (PatchingForecaster(), (32, 2))],
    ids=["mlp", "patching-transformer"],
)
def test_export_has_dynamic_batch_and_matches_torch(tmp_path, module, sample_shape):
    torch.manual_seed(0)
    module.eval()
    inputs = np.random.default_rng(0).normal(size=(16, *sample_shape)).astype(np.float32)
    target = tmp_path / "model.onnx"
    report = export_with_parity(module, inputs, target, tolerance=1e-5, opset=18, batch_sizes=(1, 7))

    model = onnx.load(str(target))
    onnx.checker.check_model(model, full_check=True)
    assert isinstance(_dims(model.graph.input[0])[0], str)  # symbolic batch axis
    assert _dims(model.graph.input[0])[1:] == list(sample_shape)
    assert report["passed"] is True
    assert report["rel_l2"] < 1e-5 and report["max_abs_err"] < 1e-4
    assert report["inputs"] == [[1, *sample_shape], [7, *sample_shape]]
    assert report["opset"] >= 18 and report["exporter"] in ("dynamo", "torchscript")
    assert not list(tmp_path.glob(".tmp-*"))

    # A batch size never seen in export or parity runs and matches too.
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    batch = np.repeat(inputs, 2, axis=0)[:23]
    (got,) = session.run(None, {"x": batch})
    with torch.no_grad():
        expected = module(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


class DriftingModule(nn.Module):
    """Adds a Python-side counter: the export freezes its value, eager keeps counting."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.linear(x) + float(self.calls)


def test_parity_failure_is_a_one_line_data_error_and_leaves_no_file(tmp_path):
    inputs = np.ones((4, 4), dtype=np.float32)
    target = tmp_path / "drift.onnx"
    with pytest.raises(DataError) as caught:
        export_with_parity(DriftingModule().eval(), inputs, target, tolerance=1e-4)
    assert "differs from torch" in str(caught.value) and "\n" not in str(caught.value)
    assert str(target) in str(caught.value)
    assert not target.exists()


class Branchy(nn.Module):
    """Data-dependent control flow: torch.export refuses it, the TorchScript tracer records one branch."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.linear(x)
        return -self.linear(x)


class Eigenvalues(nn.Module):
    """An operator neither exporter can write to ONNX."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigvals(x.reshape(x.shape[0], 2, 2)).real


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_torchscript_is_the_fallback_when_dynamo_refuses(tmp_path, caplog):
    inputs = np.random.default_rng(0).uniform(0.1, 1.0, (16, 4)).astype(np.float32)  # the traced branch
    report = export_with_parity(Branchy().eval(), inputs, tmp_path / "b.onnx", tolerance=1e-5)
    assert report["exporter"] == "torchscript" and report["passed"]
    assert "with the dynamo exporter failed" in caplog.text


def test_unexportable_module_is_one_clean_line_and_leaves_no_file(tmp_path):
    inputs = np.random.default_rng(0).uniform(size=(8, 4)).astype(np.float32)
    target = tmp_path / "eig.onnx"
    with pytest.raises(DataError) as caught:
        export_with_parity(Eigenvalues().eval(), inputs, target, tolerance=1e-4)
    message = str(caught.value)
    assert message.startswith(f"{target}: ONNX export failed (dynamo: ") and "; torchscript: " in message
    assert "linalg_eigvals" in message and "\n" not in message and "\x1b" not in message
    assert not target.exists() and not list(tmp_path.iterdir())


def test_non_finite_inputs_are_rejected(tmp_path):
    inputs = np.full((4, 9), np.nan, dtype=np.float32)
    with pytest.raises(DataError, match="NaN"):
        export_with_parity(PolicyMLP().eval(), inputs, tmp_path / "m.onnx", tolerance=1e-4)


def test_forecaster_windows_are_scaled_per_symbol_and_never_cross(tmp_path):
    rows = 40
    ts = pl.datetime_range(
        pl.datetime(2024, 1, 1, time_zone="UTC"),
        pl.datetime(2024, 1, 1, 9, 45, time_zone="UTC"),
        "15m",
        eager=True,
    ).cast(pl.Datetime("ms", "UTC"))
    frames = []
    for k, symbol in enumerate(["AAA", "BBB"]):
        values = np.arange(rows, dtype=np.float64) + 1000.0 * k  # symbol identity encoded in the level
        frames.append(
            pl.DataFrame(
                {"timestamp": ts, "symbol": symbol, "close": values, "log_return": values, "vol": values * 2}
            )
        )
    features = tmp_path / "features.parquet"
    pl.concat(frames).write_parquet(features)
    scaler = {
        "features": ["log_return", "vol"],
        "folds": {"0": {"mean": {"log_return": 10.0, "vol": 0.0}, "std": {"log_return": 2.0, "vol": 4.0}}},
        "fitted_on": "train",
    }
    scaler_path = tmp_path / "scaler.json"
    scaler_path.write_text(json.dumps(scaler))

    windows = forecaster_windows(features, scaler_path, {"lookback": 8, "channels": ["log_return", "vol"]}, 6)
    assert windows.shape == (6, 8, 2) and windows.dtype == np.float32
    raw = windows[..., 0] * 2.0 + 10.0  # undo the fold-0 scaling of log_return
    np.testing.assert_allclose(windows[..., 1] * 4.0, raw * 2.0, rtol=1e-6)
    for window in raw:
        # consecutive bars of one symbol: a step of exactly 1, never the 1000 jump between symbols
        np.testing.assert_allclose(np.diff(window), 1.0, atol=1e-3)
    levels = sorted({int(w[0] // 1000) for w in raw})
    assert levels == [0, 1]  # both symbols contribute


def test_samples_roundtrip_and_shape_check(tmp_path):
    path = tmp_path / "obs.npy"
    data = np.arange(30, dtype=np.float32).reshape(10, 3)
    write_samples(path, data)
    np.testing.assert_array_equal(read_samples(path, (3,), "policy observation"), data)
    with pytest.raises(DataError, match=r"expected \['n', 4\]"):
        read_samples(path, (4,), "policy observation")
    with pytest.raises(DataError, match="not found"):
        read_samples(tmp_path / "missing.npy", (3,), "policy observation")
