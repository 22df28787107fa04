"""One small interface for every forecaster: ``fit`` / ``predict`` / ``get_state`` / ``load_state``.

All models are torch modules mapping scaled float32 ``[batch, lookback, channels]`` to
``[batch, horizon, channels]``, so the naive baseline, DLinear, PatchTST, the LSTM and the TCN share
training, evaluation, checkpoints and ONNX export. ``build_module`` makes one by name. The
volatility and return baselines that are not torch modules (HAR-RV, the zero forecast) live in
:mod:`trainrelay.forecast.baselines`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from trainrelay.core.checkpointing import StateStore, TimeBudget
from trainrelay.core.sampler import ResourceSampler, gpu_memory_used_mb
from trainrelay.errors import ConfigError
from trainrelay.forecast.dlinear import DLinear, DLinearParams
from trainrelay.forecast.lstm import LSTMForecaster, LSTMParams
from trainrelay.forecast.naive import LastValue
from trainrelay.forecast.patchtst import PatchTST, PatchTSTParams
from trainrelay.forecast.tcn import TCN, TCNParams
from trainrelay.forecast.training import FitResult, TrainSettings, evaluate, fit_module
from trainrelay.forecast.windows import WindowSet

MODELS = ("patchtst", "dlinear", "lstm", "tcn", "naive")
# What `forecaster.model: auto` chooses among: every model with weights to learn. The naive last
# value is the yardstick (`beats_naive`), not a candidate.
TRAINABLE = ("patchtst", "dlinear", "lstm", "tcn")


def build_module(
    name: str, lookback: int, horizon: int, n_channels: int, hparams: dict[str, Any]
) -> nn.Module:
    """The torch module of model ``name`` with hyperparameters ``hparams`` (its config section)."""
    try:
        if name == "patchtst":
            return PatchTST(lookback, horizon, n_channels, PatchTSTParams(**hparams))
        if name == "dlinear":
            return DLinear(lookback, horizon, n_channels, DLinearParams(**hparams))
        if name == "lstm":
            return LSTMForecaster(lookback, horizon, n_channels, LSTMParams(**hparams))
        if name == "tcn":
            return TCN(lookback, horizon, n_channels, TCNParams(**hparams))
        if name == "naive":
            return LastValue(lookback, horizon, n_channels)
    except TypeError as exc:  # an unknown hyperparameter name
        raise ConfigError(f"forecaster.{name}: {exc}") from exc
    raise ConfigError(f"forecaster.model '{name}' must be one of {', '.join(MODELS)}")


class Forecaster:
    """A named model plus its shape; trainable models are fitted with the shared training loop."""

    def __init__(
        self,
        name: str,
        lookback: int,
        horizon: int,
        n_channels: int,
        hparams: dict[str, Any],
        seed: int | None = None,
    ) -> None:
        if seed is not None:  # the initial weights are part of what a seed reproduces
            torch.manual_seed(seed)
        self.name = name
        self.lookback, self.horizon, self.n_channels = lookback, horizon, n_channels
        self.hparams = dict(hparams)
        self.module = build_module(name, lookback, horizon, n_channels, self.hparams)

    @property
    def trainable(self) -> bool:
        return any(True for _ in self.module.parameters())

    def fit(
        self,
        train: WindowSet,
        val: WindowSet,
        settings: TrainSettings,
        *,
        device: torch.device,
        seed: int,
        store: StateStore | None = None,
        budget: TimeBudget | None = None,
        progress: bool = True,
    ) -> FitResult | None:
        """Train on ``train``, early-stop on ``val``; None for a model with nothing to learn."""
        if not self.trainable:
            self.module.to(device).eval()
            return None
        # CPU time over wall time, peak RSS and, on CUDA, NVML utilisation and VRAM while training:
        # the figures that say whether the accelerator was kept busy.
        index = device.index or 0
        baseline = gpu_memory_used_mb(index) if device.type == "cuda" else None
        with ResourceSampler(interval_s=0.2, gpu_baseline_mb=baseline, device_index=index) as sampler:
            result = fit_module(
                self.module,
                train,
                val,
                settings,
                device=device,
                seed=seed,
                store=store,
                budget=budget,
                progress=progress,
                label=self.name,
            )
        assert sampler.usage is not None
        result.resources = asdict(sampler.usage)
        return result

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
        """Forecasts ``[n, horizon, C]`` (CPU, float32) for inputs ``[n, lookback, C]``, in batches."""
        self.module.eval()
        device = next(self.module.buffers(), next(self.module.parameters(), torch.empty(0))).device
        outs = [
            self.module(x[lo : lo + batch_size].to(device, non_blocking=True)).float().cpu()
            for lo in range(0, len(x), batch_size)
        ]
        return torch.cat(outs) if outs else x.new_zeros((0, self.horizon, self.n_channels))

    def score(self, windows: WindowSet, device: torch.device, batch_size: int = 128) -> dict[str, float]:
        self.module.to(device)
        return evaluate(self.module, windows, device, batch_size)

    def get_state(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "lookback": self.lookback,
            "horizon": self.horizon,
            "n_channels": self.n_channels,
            "hparams": self.hparams,
            "state_dict": {k: v.detach().cpu() for k, v in self.module.state_dict().items()},
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["state_dict"])
        self.module.eval()

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Forecaster:
        forecaster = cls(
            state["model"], state["lookback"], state["horizon"], state["n_channels"], state["hparams"]
        )
        forecaster.load_state(state)
        return forecaster
