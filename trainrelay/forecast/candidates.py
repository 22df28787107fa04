"""How the PatchTST candidates export to ONNX: our compact module vs ``transformers``' PatchTST.

    python -m trainrelay.forecast.candidates --out export_check.json

For each candidate (and DLinear / naive) at the paper's ETTh1 shape (L=336, H=96, 7 channels)
it tries ``torch.onnx.export`` with ``dynamo=False`` and ``dynamo=True`` and a dynamic batch
axis, runs ``onnx.checker`` (full check), runs the model in ONNX Runtime at another batch size
and compares with torch, and counts parameters, graph nodes and CPU forward time. The result
backs the model choice in docs/forecaster.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from transformers import PatchTSTConfig, PatchTSTForPrediction

from trainrelay.atomic import write_json
from trainrelay.forecast.base import build_module
from trainrelay.forecast.protocol import PAPER_PATCHTST, PAPER_TRAIN, ett_windows, read_ett
from trainrelay.forecast.training import evaluate, fit_module

LOOKBACK, HORIZON, CHANNELS = 336, 96, 7


class HFPatchTST(nn.Module):
    """``transformers.PatchTSTForPrediction`` with the paper's ETTh1 settings, [B, L, C] -> [B, H, C]."""

    def __init__(self) -> None:
        super().__init__()

        p = PAPER_PATCHTST["hourly"]
        config = PatchTSTConfig(
            num_input_channels=CHANNELS,
            context_length=LOOKBACK,
            prediction_length=HORIZON,
            patch_length=p.patch_len,
            patch_stride=p.stride,
            d_model=p.d_model,
            num_attention_heads=p.n_heads,
            num_hidden_layers=p.n_layers,
            ffn_dim=p.d_ff,
            dropout=p.dropout,
            head_dropout=p.head_dropout,
            scaling="std",
            norm_type="batchnorm",
            positional_encoding_type="random",
            share_embedding=True,
            do_mask_input=False,
            loss="mse",
            pooling_type=None,  # None: the paper's flatten head
        )
        self.model = PatchTSTForPrediction(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(past_values=x).prediction_outputs


def candidates() -> dict[str, nn.Module]:
    return {
        "patchtst_trainrelay": build_module(
            "patchtst", LOOKBACK, HORIZON, CHANNELS, PAPER_PATCHTST["hourly"].as_dict()
        ),
        "patchtst_transformers": HFPatchTST(),
        "dlinear": build_module("dlinear", LOOKBACK, HORIZON, CHANNELS, {"kernel_size": 25}),
        "naive": build_module("naive", LOOKBACK, HORIZON, CHANNELS, {}),
    }


def _forward_ms(module: nn.Module, x: torch.Tensor, repeats: int = 5) -> float:
    with torch.no_grad():
        module(x)
        started = time.perf_counter()
        for _ in range(repeats):
            module(x)
    return (time.perf_counter() - started) / repeats * 1000


def check_export(module: nn.Module, dynamo: bool, directory: Path) -> dict[str, Any]:
    module.eval()
    path = directory / f"m-{dynamo}.onnx"
    example = (torch.randn(2, LOOKBACK, CHANNELS),)
    entry: dict[str, Any] = {"dynamo": dynamo}
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if dynamo:
                batch = torch.export.Dim("batch", min=1, max=4096)
                torch.onnx.export(
                    module,
                    example,
                    str(path),
                    dynamo=True,
                    input_names=["x"],
                    output_names=["y"],
                    dynamic_shapes={"x": {0: batch}},
                )
            else:
                torch.onnx.export(
                    module,
                    example,
                    str(path),
                    dynamo=False,
                    input_names=["x"],
                    output_names=["y"],
                    dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                    opset_version=17,
                )
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        entry["checker"] = "passed"
        entry["nodes"] = len(model.graph.node)
        entry["ops"] = sorted({n.op_type for n in model.graph.node})
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((5, LOOKBACK, CHANNELS)).astype(np.float32)
        (got,) = session.run(None, {session.get_inputs()[0].name: x})
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()
        entry["max_abs_diff_vs_torch_batch5"] = float(np.abs(got - want).max())
        entry["ok"] = bool(got.shape == want.shape and np.allclose(got, want, rtol=1e-4, atol=1e-4))
    except Exception as exc:  # recorded, not raised: a failed export is a finding
        entry["ok"] = False
        entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    return entry


def compare_accuracy(data: str | Path, epochs: int, seed: int = 2021) -> dict[str, Any]:
    """Both PatchTST candidates trained the same way on ETTh1 (H=96) for ``epochs`` epochs."""

    values, _, per_hour = read_ett(data)
    sets, _, _ = ett_windows(values, per_hour, LOOKBACK, HORIZON)
    settings = replace(PAPER_TRAIN["hourly"], epochs=epochs)
    cpu = torch.device("cpu")
    out: dict[str, Any] = {"epochs": epochs, "train": settings.as_dict()}
    for name in ("patchtst_trainrelay", "patchtst_transformers"):
        torch.manual_seed(seed)
        module = candidates()[name]
        started = time.process_time()
        fit = fit_module(module, sets["train"], sets["val"], settings, device=cpu, seed=seed, progress=False)
        out[name] = {
            "val_mse": fit.best_val_mse,
            "test_mse": evaluate(module, sets["test"], cpu)["mse"],
            "cpu_seconds": time.process_time() - started,
            "val_by_epoch": [h["val_loss"] for h in fit.history],
        }
    return out


def run(out: str | Path) -> dict[str, Any]:
    torch.manual_seed(0)
    result: dict[str, Any] = {
        "shape": {"lookback": LOOKBACK, "horizon": HORIZON, "channels": CHANNELS},
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
    }
    x = torch.randn(128, LOOKBACK, CHANNELS)
    for name, module in candidates().items():
        module.eval()
        with tempfile.TemporaryDirectory() as tmp:
            result[name] = {
                "parameters": sum(p.numel() for p in module.parameters()),
                "cpu_forward_ms_batch128": _forward_ms(module, x),
                "exports": [check_export(module, dynamo, Path(tmp)) for dynamo in (False, True)],
            }
    write_json(out, result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--accuracy-data", help="ETTh1.csv: also train both PatchTSTs for --epochs and compare"
    )
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    if args.accuracy_data:
        torch.set_num_threads(1)
        write_json(args.out, compare_accuracy(args.accuracy_data, args.epochs))
        print(Path(args.out).read_text())
    else:
        print(json.dumps(run(args.out), indent=1))
