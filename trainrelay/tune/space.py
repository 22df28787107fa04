"""The tuned hyperparameters: how a trial draws them and where they land in the config.

Five parameters are searched: ``lr``, ``batch_size``, ``optimizer``, ``weight_decay`` (the main
model's training section, ``forecaster.train`` for PatchTST, ``forecaster.dlinear_train`` for
DLinear) and ``dropout`` (``forecaster.patchtst.dropout``; DLinear has none, so the search drops
it there). :func:`apply_params` is the single place that writes parameters into a config: each
trial trains with the config it returns and ``train_forecaster`` is given the same overrides
(:func:`with_best_params`), so the tuned model is trained exactly as its best trial was.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from trainrelay.errors import ConfigError, DataError

PARAMS = ("lr", "batch_size", "optimizer", "weight_decay", "dropout")
TRAIN_PARAMS = ("lr", "batch_size", "optimizer", "weight_decay")
TUNABLE_MODELS = ("patchtst", "dlinear")


def train_key(model: str) -> str:
    """The config section holding the training settings of ``model`` (as the forecaster stage reads it)."""
    return "train" if model == "patchtst" else f"{model}_train"


def tuned_model(config: dict[str, Any]) -> str:
    model = config["forecaster"]["model"]
    if model not in TUNABLE_MODELS:
        raise ConfigError(
            f"tune.enabled is true but forecaster.model is '{model}', which has nothing to tune; "
            f"set forecaster.model to {' or '.join(TUNABLE_MODELS)} or tune.enabled: false"
        )
    return model


def searched_params(config: dict[str, Any]) -> list[str]:
    """The parameters searched for the configured model (DLinear has no dropout)."""
    model = tuned_model(config)
    return [p for p in PARAMS if not (p == "dropout" and model != "patchtst")]


def suggest(trial: Any, space: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Draw ``names`` from ``tune.space`` with an Optuna trial: ranges are floats, lists are choices."""
    params: dict[str, Any] = {}
    for name in names:
        spec = space[name]
        if isinstance(spec, list):
            params[name] = trial.suggest_categorical(name, spec)
        else:
            params[name] = trial.suggest_float(name, spec["low"], spec["high"], log=bool(spec.get("log")))
    return params


def apply_params(config: dict[str, Any], params: dict[str, Any], epochs: int | None = None) -> dict[str, Any]:
    """A copy of ``config`` with ``params`` (and optionally the epoch count) set on the main model."""
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise ConfigError(f"tuned parameter(s) {', '.join(unknown)} unknown; allowed: {', '.join(PARAMS)}")
    out = copy.deepcopy(config)
    model = tuned_model(out)
    fc = out["forecaster"]
    section = fc[train_key(model)]
    for name in TRAIN_PARAMS:
        if name in params:
            section[name] = int(params[name]) if name == "batch_size" else params[name]
    if epochs is not None:
        section["epochs"] = int(epochs)
    if "dropout" in params:
        if model != "patchtst":
            raise ConfigError(f"tuned dropout applies to patchtst only, but forecaster.model is '{model}'")
        fc["patchtst"]["dropout"] = float(params["dropout"])
    return out


def read_best_params(path: str | Path) -> dict[str, Any]:
    """``tune/best_params.json``'s ``params``; DataError with one line when it is missing or damaged."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the tuned parameters ({exc}); rerun the tune rule") from exc
    if not isinstance(data, dict) or not isinstance(data.get("params"), dict):
        raise DataError(f"{path}: no 'params' object; rerun the tune rule")
    return data["params"]


def with_best_params(config: dict[str, Any], best_params_path: str | Path | None) -> dict[str, Any]:
    """The config ``train_forecaster`` trains with: ``config`` itself, or the tuned overrides applied.

    The epoch count stays the config's own (a search may use fewer epochs per trial than the
    final training).
    """
    if not best_params_path:
        return config
    return apply_params(config, read_best_params(best_params_path))
