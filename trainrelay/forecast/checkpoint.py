"""``forecaster.pt``: everything needed to rebuild the trained forecaster without the config.

The file holds the model name, shape, hyperparameters, weights, the channel names and the
fold's scaler statistics of those channels (so inference can scale inputs and unscale outputs),
plus a format tag. :func:`load_forecaster` gives the export and benchmark stages an eval-mode
module mapping float32 ``[batch, lookback, n_channels]`` (scaled) -> ``[batch, horizon, n_channels]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainrelay.atomic import atomic_path
from trainrelay.errors import DataError
from trainrelay.forecast.base import Forecaster

FORMAT = "trainrelay-forecaster/1"


def save_forecaster(
    path: str | Path,
    forecaster: Forecaster,
    channels: list[str],
    scaling: dict[str, dict[str, float]],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the checkpoint atomically; ``scaling`` = {"mean": {ch: x}, "std": {ch: x}}."""
    payload = {
        "format": FORMAT,
        "forecaster": forecaster.get_state(),
        "channels": list(channels),
        "scaling": scaling,
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> tuple[Forecaster, dict[str, Any]]:
    """The :class:`Forecaster` (eval mode, CPU) and its meta data."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError as exc:
        raise DataError(f"{path} not found; run the train_forecaster rule first") from exc
    except Exception as exc:
        raise DataError(f"{path} is unreadable ({exc}); rerun the train_forecaster rule") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DataError(f"{path} is not a {FORMAT} checkpoint; rerun the train_forecaster rule")
    state = payload["forecaster"]
    forecaster = Forecaster.from_state(state)
    meta = {
        "model": state["model"],
        "lookback": state["lookback"],
        "horizon": state["horizon"],
        "n_channels": state["n_channels"],
        "channels": payload["channels"],
        "hparams": state["hparams"],
        "scaling": payload["scaling"],
        **payload["extra"],
    }
    return forecaster, meta


def load_forecaster(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Eval-mode module ``[batch, lookback, C]`` (scaled float32) -> ``[batch, horizon, C]``, and meta
    (model, lookback, horizon, n_channels, channels, hparams, scaling, training info)."""
    forecaster, meta = load_checkpoint(path)
    return forecaster.module.eval(), meta
