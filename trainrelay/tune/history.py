"""Summarise a finished study: ``tune/best_params.json`` and ``metrics/tuning.json``.

``tuning.json`` is the fitness history the report charts: one row per trial (``trial``,
``generation``, ``params``, ``value`` = validation MSE or null, ``state``, ``worker``, ``seconds``),
per-generation best/median, the best trial, and the search settings. Trials are sorted by number
and JSON keys are sorted, so the same study gives the same bytes.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from trainrelay.atomic import write_json
from trainrelay.errors import DataError
from trainrelay.tune.space import searched_params, train_key, tuned_model
from trainrelay.tune.study import (
    GENERATION_ATTR,
    RETRY_OF_ATTR,
    WORKER_ATTR,
    open_study,
    storage_path,
    target_trials,
)

log = logging.getLogger(__name__)


def _row(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {
        "trial": trial.number,
        "generation": trial.system_attrs.get(GENERATION_ATTR),
        "params": dict(sorted(trial.params.items())),
        "value": trial.value if trial.state == TrialState.COMPLETE else None,
        "state": trial.state.name,
        "worker": trial.user_attrs.get(WORKER_ATTR),
        "seconds": trial.user_attrs.get("seconds"),
        "retry_of": trial.user_attrs.get(RETRY_OF_ATTR),
    }


def _generations(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for gen in sorted({r["generation"] for r in rows if r["generation"] is not None}):
        values = [r["value"] for r in rows if r["generation"] == gen and r["value"] is not None]
        out.append(
            {
                "generation": gen,
                "complete": len(values),
                "best": min(values) if values else None,
                "median": statistics.median(values) if values else None,
            }
        )
    return out


def summarize_study(study: optuna.Study, config: dict[str, Any]) -> dict[str, Any]:
    tune = config["tune"]
    model = tuned_model(config)
    rows = [_row(t) for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)]
    complete = [r for r in rows if r["state"] == TrialState.COMPLETE.name]
    if not complete:
        raise DataError(f"tune study {study.study_name}: no trial completed; check the tune worker logs")
    best = min(complete, key=lambda r: (r["value"], r["trial"]))
    key = train_key(model)
    defaults = {p: config["forecaster"][key][p] for p in ("lr", "batch_size", "optimizer", "weight_decay")}
    if model == "patchtst":
        defaults["dropout"] = config["forecaster"]["patchtst"]["dropout"]
    return {
        "objective": (
            f"validation MSE of forecaster.model {model} on fold {config['forecaster']['fold']} (minimise)"
        ),
        "model": model,
        "study": study.study_name,
        "storage": tune["storage"],
        "sampler": {
            "name": "NSGAIISampler",
            "optuna": optuna.__version__,
            "population_size": tune["population_size"],
            "generations": tune["generations"],
            "mutation_prob": tune["mutation_prob"],
            "crossover": tune["crossover"],
            "crossover_prob": tune["crossover_prob"],
            "seed": config["seed"],
        },
        "epochs_per_trial": tune["epochs"]
        if tune["epochs"] is not None
        else config["forecaster"][key]["epochs"],
        "space": {name: tune["space"][name] for name in searched_params(config)},
        "defaults": defaults,
        "target": target_trials(tune),
        "counts": {state.name: sum(r["state"] == state.name for r in rows) for state in TrialState},
        "trials": rows,
        "generations": _generations(rows),
        "best": best,
    }


def finalize(
    study_dir: str | Path, best_params_out: str | Path, tuning_out: str | Path, config: dict[str, Any]
) -> dict[str, Any]:
    """Read the study the workers filled; write the best parameters and the fitness history."""
    path = storage_path(study_dir, config["tune"]["storage"])
    if not path.is_file():
        raise DataError(f"{path}: the tune study is missing; run the tune_worker jobs first")
    study, _storage = open_study(study_dir, config)
    summary = summarize_study(study, config)
    best = summary["best"]
    write_json(
        best_params_out,
        {"params": best["params"], "value": best["value"], "trial": best["trial"], "model": summary["model"]},
    )
    write_json(tuning_out, summary)
    log.info("tune: best trial %d, val mse %.6f, params %s", best["trial"], best["value"], best["params"])
    return summary
