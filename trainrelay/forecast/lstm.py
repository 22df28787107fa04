"""An LSTM forecaster: a (stacked) LSTM encoder over the lookback and one linear head.

The seed documents' model zoo names LSTM/GRU/TCN next to the transformers; this is the plainest
member that fits the shared interface. The LSTM reads all channels of a bar together (input size
= channels, unlike PatchTST's channel independence: a recurrent cell is cheap per step and the
cross-channel state is what it can add), and the last hidden state is mapped to every horizon
step of every channel at once (direct multi-step, no autoregressive feedback, so training and
ONNX inference are one forward pass). Maps scaled float32 ``[batch, lookback, channels]`` to
``[batch, horizon, channels]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from trainrelay.errors import ConfigError


@dataclass(frozen=True)
class LSTMParams:
    hidden_size: int = 32
    num_layers: int = 1
    dropout: float = 0.0  # between stacked layers (torch ignores it with one layer)

    def as_dict(self) -> dict:
        return asdict(self)


class LSTMForecaster(nn.Module):
    def __init__(self, lookback: int, horizon: int, n_channels: int, params: LSTMParams) -> None:
        super().__init__()
        if params.hidden_size < 1 or params.num_layers < 1:
            raise ConfigError("forecaster.lstm: hidden_size and num_layers must be >= 1")
        if not 0.0 <= params.dropout < 1.0:
            raise ConfigError(f"forecaster.lstm.dropout ({params.dropout}) must be in [0, 1)")
        self.lookback, self.horizon, self.n_channels = lookback, horizon, n_channels
        self.params = params
        self.encoder = nn.LSTM(
            input_size=n_channels,
            hidden_size=params.hidden_size,
            num_layers=params.num_layers,
            dropout=params.dropout if params.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.head = nn.Linear(params.hidden_size, horizon * n_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.encoder(x)  # [B, L, hidden]
        return self.head(out[:, -1]).view(-1, self.horizon, self.n_channels)
