"""The naive last-value baseline: every future step equals the last observed value."""

from __future__ import annotations

import torch
from torch import nn


class LastValue(nn.Module):
    def __init__(self, lookback: int, horizon: int, n_channels: int) -> None:
        super().__init__()
        self.lookback, self.horizon, self.n_channels = lookback, horizon, n_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, -1:, :].repeat(1, self.horizon, 1)
