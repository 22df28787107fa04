"""A temporal convolutional network (Bai, Kolter & Koltun 2018) forecaster.

Residual blocks of two causal dilated ``Conv1d`` layers (left padding only, so the output at bar
t sees bars <= t), ReLU and dropout, dilations 1, 2, 4, ... per block, a 1x1 convolution on the
skip path where the width changes. Weight normalisation is left out: it adds a reparametrisation
that the ONNX exporters trace as extra ops and that small, short-trained models do not need. The
features at the last bar (whose receptive field is ``1 + 2 (kernel_size - 1) (2**levels - 1)``
bars, capped by the lookback) go through one linear head to every horizon step of every channel.
Maps scaled float32 ``[batch, lookback, channels]`` to ``[batch, horizon, channels]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from trainrelay.errors import ConfigError


@dataclass(frozen=True)
class TCNParams:
    channels: int = 16  # hidden width of every block
    levels: int = 3  # residual blocks; block i has dilation 2**i
    kernel_size: int = 3
    dropout: float = 0.1

    def as_dict(self) -> dict:
        return asdict(self)


def receptive_field(params: TCNParams) -> int:
    """Bars the last output sees: two convolutions per block, each adding (k - 1) * dilation."""
    return 1 + 2 * (params.kernel_size - 1) * (2**params.levels - 1)


class CausalConv(nn.Module):
    """``Conv1d`` padded on the left only: no output sees a later input."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.left = (kernel_size - 1) * dilation
        self.conv = nn.Conv1d(c_in, c_out, kernel_size, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.pad(x, (self.left, 0)))


class TemporalBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel_size: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            CausalConv(c_in, c_out, kernel_size, dilation),
            nn.ReLU(),
            nn.Dropout(dropout),
            CausalConv(c_out, c_out, kernel_size, dilation),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class TCN(nn.Module):
    def __init__(self, lookback: int, horizon: int, n_channels: int, params: TCNParams) -> None:
        super().__init__()
        if params.channels < 1 or params.levels < 1 or params.kernel_size < 2:
            raise ConfigError("forecaster.tcn: channels and levels must be >= 1, kernel_size >= 2")
        if not 0.0 <= params.dropout < 1.0:
            raise ConfigError(f"forecaster.tcn.dropout ({params.dropout}) must be in [0, 1)")
        self.lookback, self.horizon, self.n_channels = lookback, horizon, n_channels
        self.params = params
        widths = [n_channels] + [params.channels] * params.levels
        self.blocks = nn.Sequential(
            *[
                TemporalBlock(widths[i], widths[i + 1], params.kernel_size, 2**i, params.dropout)
                for i in range(params.levels)
            ]
        )
        self.head = nn.Linear(params.channels, horizon * n_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.blocks(x.transpose(1, 2))  # [B, hidden, L]
        return self.head(features[:, :, -1]).view(-1, self.horizon, self.n_channels)
