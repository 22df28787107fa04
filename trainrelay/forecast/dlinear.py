"""DLinear (Zeng et al., AAAI 2023): moving-average decomposition, one linear map per part.

The shared (not per-channel) variant of the paper: a trend from a replicate-padded moving
average, the remainder as the seasonal part, each mapped lookback -> horizon by a linear layer.
Maps ``[batch, lookback, channels]`` to ``[batch, horizon, channels]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from trainrelay.errors import ConfigError


@dataclass(frozen=True)
class DLinearParams:
    kernel_size: int = 25

    def as_dict(self) -> dict:
        return asdict(self)


class DLinear(nn.Module):
    def __init__(self, lookback: int, horizon: int, n_channels: int, params: DLinearParams) -> None:
        super().__init__()
        if params.kernel_size < 1 or params.kernel_size % 2 == 0:
            raise ConfigError(f"forecaster.dlinear.kernel_size ({params.kernel_size}) must be odd and >= 1")
        self.lookback, self.horizon, self.n_channels = lookback, horizon, n_channels
        self.params = params
        half = (params.kernel_size - 1) // 2
        self.pad = nn.ReplicationPad1d((half, half))
        self.average = nn.AvgPool1d(params.kernel_size, stride=1)
        # torch's default init, as in the official code (its average-of-lookback init is commented out)
        self.seasonal = nn.Linear(lookback, horizon)
        self.trend = nn.Linear(lookback, horizon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        series = x.transpose(1, 2)  # [B, C, L]
        trend = self.average(self.pad(series))
        out = self.seasonal(series - trend) + self.trend(trend)
        return out.transpose(1, 2)
