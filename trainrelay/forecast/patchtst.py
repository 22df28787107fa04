"""PatchTST (Nie et al., ICLR 2023) as a compact torch module.

Follows the paper's supervised model: RevIN instance normalisation (no affine), channel
independence (every channel is its own univariate sequence with shared weights), patches of
``patch_len`` with ``stride`` after replicate-padding the end by ``stride``, a linear patch
embedding plus learned (or fixed sin-cos) positions, a Transformer encoder with BatchNorm and
residual attention (each layer adds the previous layer's pre-softmax scores, as in the official
code), and a flatten head. Built from plain matmuls so that it exports cleanly to ONNX with a
dynamic batch axis.

Maps float32 ``[batch, lookback, channels]`` (scaled) to ``[batch, horizon, channels]``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from trainrelay.errors import ConfigError


@dataclass(frozen=True)
class PatchTSTParams:
    patch_len: int = 16
    stride: int = 8
    d_model: int = 16
    n_heads: int = 4
    n_layers: int = 3
    d_ff: int = 128
    dropout: float = 0.3
    head_dropout: float = 0.0
    revin: bool = True
    positions: str = "learned"  # learned | sincos

    def as_dict(self) -> dict:
        return asdict(self)


def patch_count(lookback: int, patch_len: int, stride: int) -> int:
    """Patches after padding the end by ``stride`` (42 for the paper's 336/16/8)."""
    return (lookback - patch_len) // stride + 2


class Dropout(nn.Dropout):
    """Dropout whose CPU mask comes from ``rand_like``: torch's CPU ``bernoulli_`` took half of a
    PatchTST training step on 2 cores; same distribution, same eval-mode identity (nothing in ONNX)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return super().forward(x)
        # The mask is built in place in float (0 or 1/(1-p)) so that the forward is one multiply
        # and no bool tensor is converted; the same draws, so the same mask, as rand >= p.
        return x * torch.rand_like(x).ge_(self.p).mul_(1.0 / (1.0 - self.p))


class RevIN(nn.Module):
    """Instance normalisation over time per series; undone on the forecast."""

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def normalise(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean = x.mean(dim=-1, keepdim=True)
        std = torch.sqrt(x.var(dim=-1, keepdim=True, unbiased=False) + self.eps)
        return (x - mean) / std, mean, std


class ResidualAttention(nn.Module):
    """Multi-head self-attention that adds the previous layer's scores before the softmax."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ConfigError(
                f"forecaster.patchtst.d_model ({d_model}) must be divisible by n_heads ({n_heads})"
            )
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(d_model, 3 * d_model)  # one matmul for queries, keys and values
        self.out = nn.Sequential(nn.Linear(d_model, d_model), Dropout(dropout))

    def forward(self, x: torch.Tensor, prev: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        n, length, d = x.shape
        h, heads = self.n_heads, n * self.n_heads
        qkv = self.qkv(x).view(n, length, 3, h, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, heads, length, self.head_dim)
        # The score tensor ([n, heads, tokens, tokens]) is the largest in the model and CPU
        # training is bound by passes over it: baddbmm adds the previous scores while writing
        # it, instead of a second pass.
        if prev is None:
            scores = torch.bmm(q * self.scale, k.transpose(1, 2))
        else:
            scores = torch.baddbmm(prev.view(heads, length, length), q, k.transpose(1, 2), alpha=self.scale)
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights, v).view(n, h, length, -1).transpose(1, 2).reshape(n, length, d)
        return self.out(context), scores.view(n, h, length, length)


class TokenBatchNorm(nn.Module):
    """BatchNorm over the model dimension of ``[n, tokens, d_model]`` (the paper's choice over LayerNorm)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics over every (sequence, token) per feature: the same as BatchNorm1d on
        # [n, d, tokens], without two transposes.
        return self.norm(x.reshape(-1, x.shape[-1])).view(x.shape)


class EncoderLayer(nn.Module):
    def __init__(self, p: PatchTSTParams) -> None:
        super().__init__()
        self.attn = ResidualAttention(p.d_model, p.n_heads, p.dropout)
        self.drop_attn = Dropout(p.dropout)
        self.norm_attn = TokenBatchNorm(p.d_model)
        self.ff = nn.Sequential(
            nn.Linear(p.d_model, p.d_ff), nn.GELU(), Dropout(p.dropout), nn.Linear(p.d_ff, p.d_model)
        )
        self.drop_ff = Dropout(p.dropout)
        self.norm_ff = TokenBatchNorm(p.d_model)

    def forward(self, x: torch.Tensor, prev: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        attended, scores = self.attn(x, prev)
        x = self.norm_attn(x + self.drop_attn(attended))
        x = self.norm_ff(x + self.drop_ff(self.ff(x)))
        return x, scores


def sincos_positions(length: int, d_model: int) -> torch.Tensor:
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div)[:, : d_model // 2]
    # Same scale as the official code's normalised sin-cos table.
    return (table - table.mean()) / (table.std() * 10)


class PatchTST(nn.Module):
    def __init__(self, lookback: int, horizon: int, n_channels: int, params: PatchTSTParams) -> None:
        super().__init__()
        p = params
        if p.patch_len > lookback:
            raise ConfigError(
                f"forecaster.patchtst.patch_len ({p.patch_len}) exceeds forecaster.lookback ({lookback})"
            )
        if p.positions not in ("learned", "sincos"):
            raise ConfigError(f"forecaster.patchtst.positions '{p.positions}' must be learned or sincos")
        self.lookback, self.horizon, self.n_channels = lookback, horizon, n_channels
        self.params = p
        self.n_patches = patch_count(lookback, p.patch_len, p.stride)
        self.revin = RevIN() if p.revin else None
        # Patch k covers steps k*stride .. k*stride+patch_len-1 of the series padded at the end by
        # repeating its last value; clamping the index does both in one gather (Tensor.unfold has
        # no ONNX export with a dynamic batch).
        starts = torch.arange(self.n_patches).unsqueeze(1) * p.stride
        index = (starts + torch.arange(p.patch_len)).clamp(max=lookback - 1)
        self.register_buffer("patch_index", index, persistent=False)
        self.embed = nn.Linear(p.patch_len, p.d_model)
        if p.positions == "learned":
            self.positions = nn.Parameter(torch.empty(self.n_patches, p.d_model).uniform_(-0.02, 0.02))
        else:
            self.register_buffer("positions", sincos_positions(self.n_patches, p.d_model))
        self.drop_in = Dropout(p.dropout)
        self.layers = nn.ModuleList(EncoderLayer(p) for _ in range(p.n_layers))
        self.head = nn.Sequential(
            nn.Flatten(start_dim=-2), nn.Linear(p.d_model * self.n_patches, horizon), Dropout(p.head_dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        series = x.transpose(1, 2)  # [B, C, L]: each channel is its own sequence
        if self.revin is not None:
            series, mean, std = self.revin.normalise(series)
        patches = series[..., self.patch_index]  # [B, C, N, P]
        tokens = self.embed(patches).reshape(-1, self.n_patches, self.params.d_model) + self.positions
        tokens = self.drop_in(tokens)
        scores = None
        for layer in self.layers:
            tokens, scores = layer(tokens, scores)
        tokens = tokens.reshape(batch, -1, self.n_patches, self.params.d_model).transpose(-1, -2)
        out = self.head(tokens)  # [B, C, H]
        if self.revin is not None:
            out = out * std + mean
        return out.transpose(1, 2)
