"""One ``tune`` worker: run genetic-search trials against the shared study until it is complete.

Each trial trains the configured forecaster (``forecaster.model``) with the library's own training
code (:class:`trainrelay.forecast.base.Forecaster`) on fold ``forecaster.fold``'s train split, with
the trial's hyperparameters written into the config by :func:`trainrelay.tune.space.apply_params`;
its fitness is the best validation MSE (the same early-stopping score ``train_forecaster`` uses).
Every trial starts from the same seed, so trials differ only in their hyperparameters.

Several workers (the rule's ``{worker}`` wildcard, e.g. one Slurm job each) may run at once on the
same storage; each keeps starting trials until ``population_size x generations`` trials are
complete. A worker that is killed and restarted resumes: completed trials are kept and its
interrupted one is queued again (:func:`trainrelay.tune.study.reclaim_orphans`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from trainrelay.atomic import write_json
from trainrelay.core.checkpointing import TimeBudget
from trainrelay.core.devices import resolve_device
from trainrelay.errors import BudgetExhausted, ConfigError, DataError
from trainrelay.forecast.base import Forecaster
from trainrelay.forecast.inputs import load_fold
from trainrelay.forecast.training import TrainSettings
from trainrelay.tune.space import apply_params, searched_params, suggest, train_key, tuned_model
from trainrelay.tune.study import (
    WORKER_ATTR,
    ClaimingSampler,
    count,
    open_study,
    reclaim_orphans,
    target_trials,
)

log = logging.getLogger(__name__)


def check_space(tune: dict[str, Any], names: list[str]) -> None:
    space = tune["space"]
    missing = [n for n in names if n not in space]
    if missing:
        raise ConfigError(
            f"tune.space lacks {', '.join(missing)}; give a range or a list of choices for each"
        )
    for name in names:
        spec = space[name]
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"tune.space.{name}: the list of choices is empty")
        elif spec["low"] >= spec["high"] or (spec.get("log") and spec["low"] <= 0):
            raise ConfigError(f"tune.space.{name}: needs low < high (and low > 0 with log: true), got {spec}")


def run_worker(
    features_path: str | Path,
    scaler_path: str | Path,
    segments_path: str | Path,
    study_dir: str | Path,
    worker_out: str | Path,
    config: dict[str, Any],
    worker: str | int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Run trials until the study holds its target of complete trials; write ``worker_out``."""
    tune, seed, worker = config["tune"], int(config["seed"]), str(worker)
    ckpt = config["checkpoint"]
    # The session's deadline (shared with every other job of this snakemake run), checked before
    # the study is opened: a worker that starts after it claims no trial.
    budget = TimeBudget(every_minutes=ckpt["every_minutes"], budget_minutes=ckpt["time_budget_minutes"])
    budget.check_start(f"tune worker {worker}")
    model = tuned_model(config)
    names = searched_params(config)
    check_space(tune, names)
    device = resolve_device(config["device"])
    _, windows, channels, _ = load_fold(features_path, scaler_path, segments_path, config)
    study, storage = open_study(study_dir, config)
    reclaimed = reclaim_orphans(study, storage, worker)
    study.sampler = ClaimingSampler(study.sampler, worker)
    target = target_trials(tune)

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, worker)
        params = suggest(trial, tune["space"], names)
        fc = apply_params(config, params, epochs=tune["epochs"])["forecaster"]
        key = train_key(model)
        settings = TrainSettings.from_config(fc[key], f"forecaster.{key}")
        forecaster = Forecaster(model, fc["lookback"], fc["horizon"], len(channels), fc[model], seed=seed)
        started = time.perf_counter()
        fit = forecaster.fit(
            windows["train"], windows["val"], settings, device=device, seed=seed, progress=progress
        )
        assert fit is not None  # tuned_model() admits trainable models only
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 3))
        trial.set_user_attr("epochs_run", fit.epochs_run)
        trial.set_user_attr("best_epoch", fit.best_epoch)
        log.info(
            "tune trial %d (worker %s): val mse %.6f with %s", trial.number, worker, fit.best_val_mse, params
        )
        return float(fit.best_val_mse)

    ran: list[int] = []
    failed = 0
    while (done := count(study, TrialState.COMPLETE)) < target:
        if budget.exhausted():
            raise BudgetExhausted(
                f"tune worker {worker}: the session's time budget of {budget.budget_minutes:g} min reached "
                f"with {done} of {target} trials complete; the study is saved in {study_dir} — rerun the "
                "same command to resume"
            )
        # A trial whose training diverges (DataError: non-finite loss) is a legitimate FAIL of the
        # search, recorded in the history; anything else is a bug and stops the worker.
        finished: list[optuna.trial.FrozenTrial] = []
        study.optimize(
            objective, n_trials=1, catch=(DataError,), callbacks=[lambda _s, t, out=finished: out.append(t)]
        )
        ran += [t.number for t in finished]
        failed += sum(t.state == TrialState.FAIL for t in finished)
        if failed >= max(3, target):
            raise DataError(
                f"tune worker {worker}: {failed} trials failed (training diverged); narrow tune.space "
                "(e.g. a lower lr range)"
            )
    summary = {
        "worker": worker,
        "trials_run": sorted(ran),
        "reclaimed": reclaimed,
        "complete": count(study, TrialState.COMPLETE),
        "target": target,
    }
    write_json(worker_out, summary)
    log.info(
        "tune worker %s: ran %d trial(s); study has %d/%d complete",
        worker,
        len(ran),
        summary["complete"],
        target,
    )
    return summary
