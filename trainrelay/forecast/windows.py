"""Sliding windows over one or more multichannel series, gathered in batches by index.

A window is ``lookback`` input rows followed by ``horizon`` target rows of the same series; it
never crosses from one series (symbol) into another. Windows belong to a split by their
*targets*: every target row lies in the split's row range, while the inputs may reach back into
earlier rows (the standard ETT protocol's ``border - lookback``). The series are kept as one
concatenated float32 tensor and windows are gathered with one indexing op per batch, which is
much cheaper than a per-sample DataLoader on small CPUs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class WindowSet:
    data: torch.Tensor  # [rows, channels] float32, all series concatenated
    starts: torch.Tensor  # int64 [windows]: first input row of each window in ``data``
    lookback: int
    horizon: int
    # int64 [series]: first row of each series in ``data``, so history never crosses symbols
    series_starts: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.starts.numel())

    @property
    def n_channels(self) -> int:
        return int(self.data.shape[1])

    def to(self, device: torch.device) -> WindowSet:
        """A copy on ``device`` (through pinned memory for CUDA), so batches are gathered there."""
        if self.data.device == device:
            return self
        move = (
            (lambda t: t.pin_memory().to(device, non_blocking=True))
            if device.type == "cuda"
            else (lambda t: t.to(device))
        )
        return WindowSet(move(self.data), move(self.starts), self.lookback, self.horizon, self.series_starts)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs ``[b, lookback, C]`` and targets ``[b, horizon, C]`` of the windows ``index``."""
        offsets = torch.arange(self.lookback + self.horizon, device=self.data.device)
        rows = self.starts[index.to(self.starts.device)].unsqueeze(1) + offsets
        window = self.data[rows]
        return window[:, : self.lookback], window[:, self.lookback :]


def forecast_windows(
    series: Sequence[np.ndarray],
    target_ranges: Sequence[tuple[int, int]],
    lookback: int,
    horizon: int,
) -> WindowSet:
    """Windows whose targets lie in ``[lo, hi)`` of each series (rows of that series).

    ``series[i]`` is ``[rows_i, channels]``; ``target_ranges[i]`` the split's rows in it.
    Window count per series: ``hi - max(lo, lookback) - horizon + 1`` (never negative).
    """
    chunks, starts, offset, series_starts = [], [], 0, []
    for values, (lo, hi) in zip(series, target_ranges, strict=True):
        series_starts.append(offset)
        first = max(0, lo - lookback)
        last = min(hi, len(values)) - lookback - horizon
        if last >= first:
            starts.append(np.arange(first, last + 1, dtype=np.int64) + offset)
        chunks.append(np.asarray(values, dtype=np.float32))
        offset += len(values)
    data = torch.from_numpy(np.concatenate(chunks)) if chunks else torch.zeros((0, 0))
    index = torch.from_numpy(np.concatenate(starts)) if starts else torch.zeros(0, dtype=torch.int64)
    return WindowSet(
        data=data,
        starts=index,
        lookback=lookback,
        horizon=horizon,
        series_starts=torch.tensor(series_starts, dtype=torch.int64),
    )


def trailing_windows(values: np.ndarray, lookback: int) -> torch.Tensor:
    """Every full input window of one series ending at rows ``lookback-1 .. rows-1``: ``[n, L, C]``.

    A strided view (no copy): window ``k`` holds rows ``k .. k+lookback-1``, i.e. only data up to
    its last row.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    if len(tensor) < lookback:
        return tensor.new_zeros((0, lookback, tensor.shape[1]))
    return tensor.unfold(0, lookback, 1).transpose(1, 2)
