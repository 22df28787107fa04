"""The forecaster models: shapes, the paper's mechanics, the shared interface and ONNX export."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from trainrelay.errors import ConfigError
from trainrelay.export.onnx_export import export_module
from trainrelay.forecast.base import Forecaster, build_module
from trainrelay.forecast.patchtst import PatchTST, PatchTSTParams, patch_count

torch.set_num_threads(1)

SMALL = {"patch_len": 8, "stride": 4, "d_model": 8, "n_heads": 2, "n_layers": 2, "d_ff": 16, "dropout": 0.1}


def test_patch_count_matches_the_paper() -> None:
    # L=336, P=16, S=8 with end padding: 42 patches (PatchTST/42); L=512: 64 (PatchTST/64)
    assert patch_count(336, 16, 8) == 42
    assert patch_count(512, 16, 8) == 64


@pytest.mark.parametrize("name", ["patchtst", "dlinear", "lstm", "tcn", "naive"])
def test_models_map_lookback_to_horizon(name: str) -> None:
    hparams = SMALL if name == "patchtst" else ({"kernel_size": 5} if name == "dlinear" else {})
    module = build_module(name, 32, 6, 3, hparams).eval()
    out = module(torch.randn(5, 32, 3))
    assert out.shape == (5, 6, 3)
    assert torch.isfinite(out).all()


def test_naive_repeats_the_last_value() -> None:
    x = torch.arange(2 * 10 * 2, dtype=torch.float32).reshape(2, 10, 2)
    out = build_module("naive", 10, 4, 2, {})(x)
    assert torch.equal(out, x[:, -1:, :].repeat(1, 4, 1))


def test_patchtst_revin_makes_forecasts_scale_and_shift_equivariant() -> None:
    torch.manual_seed(0)
    model = PatchTST(32, 8, 2, PatchTSTParams(**SMALL)).eval()
    x = torch.randn(4, 32, 2)
    with torch.no_grad():
        base, moved = model(x), model(3.0 * x + 5.0)
    torch.testing.assert_close(moved, 3.0 * base + 5.0, rtol=1e-4, atol=1e-4)


def test_patchtst_is_channel_independent() -> None:
    torch.manual_seed(0)
    model = PatchTST(32, 8, 3, PatchTSTParams(**SMALL)).eval()
    x = torch.randn(2, 32, 3)
    changed = x.clone()
    changed[:, :, 2] = torch.randn(2, 32)
    with torch.no_grad():
        a, b = model(x), model(changed)
    torch.testing.assert_close(a[:, :, :2], b[:, :, :2])
    assert not torch.allclose(a[:, :, 2], b[:, :, 2])


def test_sincos_positions_are_fixed_buffers() -> None:
    model = PatchTST(32, 8, 1, PatchTSTParams(**SMALL, positions="sincos"))
    assert "positions" in dict(model.named_buffers())
    assert "positions" not in dict(model.named_parameters())


def test_bad_hyperparameters_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="n_heads"):
        build_module("patchtst", 32, 4, 1, {**SMALL, "d_model": 9})
    with pytest.raises(ConfigError, match=r"forecaster\.patchtst"):
        build_module("patchtst", 32, 4, 1, {"nonsense": 1})
    with pytest.raises(ConfigError, match=r"forecaster\.model"):
        build_module("gru", 32, 4, 1, {})  # not in the zoo (lstm and tcn are)


def test_get_state_and_load_state_round_trip() -> None:
    a = Forecaster("patchtst", 32, 6, 2, SMALL, seed=1)
    b = Forecaster.from_state(a.get_state())
    x = torch.randn(3, 32, 2)
    torch.testing.assert_close(a.predict(x), b.predict(x))
    c = Forecaster("patchtst", 32, 6, 2, SMALL, seed=1)
    torch.testing.assert_close(a.predict(x), c.predict(x))  # the seed fixes the initial weights


def test_cpu_dropout_keeps_the_expected_share() -> None:
    from trainrelay.forecast.patchtst import Dropout

    drop = Dropout(0.3).train()
    out = drop(torch.ones(200_000))
    assert abs(float((out == 0).float().mean()) - 0.3) < 0.01
    assert abs(float(out.mean()) - 1.0) < 0.02
    assert torch.equal(drop.eval()(torch.ones(5)), torch.ones(5))


@pytest.mark.parametrize("with_prev", [False, True])
def test_residual_attention_is_the_textbook_formula(with_prev: bool) -> None:
    """softmax(q k^T / sqrt(d_head) + previous scores) v per head, written out with einsum."""
    from trainrelay.forecast.patchtst import ResidualAttention

    torch.manual_seed(3)
    n, length, d, heads = 5, 7, 8, 2
    attn = ResidualAttention(d, heads, dropout=0.0).eval()
    x = torch.randn(n, length, d)
    prev = torch.randn(n, heads, length, length) if with_prev else None
    out, scores = attn(x, prev)

    q, k, v = attn.qkv(x).view(n, length, 3, heads, d // heads).unbind(2)
    expected_scores = torch.einsum("nihe,njhe->nhij", q, k) / (d // heads) ** 0.5
    if prev is not None:
        expected_scores = expected_scores + prev
    context = torch.einsum("nhij,njhe->nihe", torch.softmax(expected_scores, -1), v).reshape(n, length, d)
    torch.testing.assert_close(scores, expected_scores)
    torch.testing.assert_close(out, attn.out(context))


@pytest.mark.parametrize("name", ["patchtst", "dlinear", "naive"])
def test_onnx_export_with_dynamic_batch_matches_torch(name: str, tmp_path) -> None:
    hparams = SMALL if name == "patchtst" else ({"kernel_size": 5} if name == "dlinear" else {})
    torch.manual_seed(0)
    module = build_module(name, 32, 6, 3, hparams).eval()
    # The product's export path: dynamo exporter first, full onnx.checker, symbolic batch axis.
    result = export_module(module, torch.randn(2, 32, 3), tmp_path / f"{name}.onnx")
    assert result.exporter == "dynamo", result
    path = result.path
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((7, 32, 3)).astype(np.float32)  # another batch size
    (got,) = session.run(None, {"x": x})
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
