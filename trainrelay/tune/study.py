"""The Optuna study behind ``tune``: persistent storage, the NSGA-II sampler, and crash recovery.

The study lives in a file under ``results/<run>/tune/`` so that a killed search resumes: every
finished trial is in the storage and is never run again. Two storages:

* ``sqlite`` (``study.db``): Optuna's RDB storage. Fine for one machine, one or several worker
  processes (a 60 s lock timeout). SQLite's file locking is unreliable on network filesystems
  (NFS, Lustre), so do not point several cluster nodes at one ``study.db``.
* ``journal`` (``study.journal``): Optuna's append-only journal file with an open(2)-based lock,
  which Optuna recommends for distributed optimisation over NFS.

A worker killed mid-trial leaves that trial RUNNING. Each trial records the worker that runs it;
a restarted worker (Snakemake never runs two jobs of one ``{worker}`` at once) marks its own
leftover RUNNING trials FAIL and queues their parameters again, so nothing is lost. On SQLite, a
heartbeat additionally fails trials of workers that never come back (after the grace period) and
:class:`optuna.storages.RetryHeartbeatStaleTrialCallback` requeues them.
"""

from __future__ import annotations

import logging
import random
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.samplers import NSGAIISampler
from optuna.samplers.nsgaii import (
    BLXAlphaCrossover,
    SBXCrossover,
    SPXCrossover,
    UNDXCrossover,
    UniformCrossover,
    VSBXCrossover,
)
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

from trainrelay.errors import ConfigError

log = logging.getLogger(__name__)

STORAGE_FILES = {"sqlite": "study.db", "journal": "study.journal"}
CROSSOVERS = {
    "uniform": UniformCrossover,
    "blxalpha": BLXAlphaCrossover,
    "sbx": SBXCrossover,
    "vsbx": VSBXCrossover,
    "undx": UNDXCrossover,
    "spx": SPXCrossover,
}
WORKER_ATTR = "trainrelay:worker"
RETRY_OF_ATTR = "trainrelay:retry_of"
GENERATION_ATTR = "NSGAIISampler:generation"  # where Optuna's GA samplers keep a trial's generation
HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 180


def study_name(config: dict[str, Any]) -> str:
    return f"{config['run']}-forecaster"


def storage_path(study_dir: str | Path, kind: str) -> Path:
    if kind not in STORAGE_FILES:
        raise ConfigError(f"tune.storage '{kind}' must be one of {', '.join(STORAGE_FILES)}")
    return Path(study_dir) / STORAGE_FILES[kind]


def open_storage(study_dir: str | Path, kind: str) -> optuna.storages.BaseStorage:
    path = storage_path(study_dir, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "journal":
        backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
        return optuna.storages.JournalStorage(backend)
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5 but long supported
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url=f"sqlite:///{path.resolve()}",
                    engine_kwargs={"connect_args": {"timeout": 60}},
                    heartbeat_interval=HEARTBEAT_SECONDS,
                    grace_period=GRACE_SECONDS,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                        max_retry=2
                    ),
                )
        except sqlalchemy.exc.OperationalError:
            # Workers that start together race to create the tables of a new study.db; the loser
            # finds them half made and simply opens the storage again.
            if attempt == 4:
                raise
            time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


def make_sampler(tune: dict[str, Any], seed: int) -> NSGAIISampler:
    """NSGA-II with the configured population, mutation and crossover (single objective: a plain GA)."""
    name = tune["crossover"]
    if name not in CROSSOVERS:
        raise ConfigError(f"tune.crossover '{name}' must be one of {', '.join(CROSSOVERS)}")
    with warnings.catch_warnings():  # Optuna marks every crossover but uniform "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        crossover = CROSSOVERS[name]()
    if tune["population_size"] < crossover.n_parents:
        raise ConfigError(
            f"tune.population_size {tune['population_size']} is below the {crossover.n_parents} parents "
            f"that crossover '{name}' needs; raise it or choose another crossover"
        )
    return NSGAIISampler(
        population_size=int(tune["population_size"]),
        mutation_prob=tune["mutation_prob"],
        crossover=crossover,
        crossover_prob=float(tune["crossover_prob"]),
        seed=seed,
    )


def open_study(
    study_dir: str | Path, config: dict[str, Any]
) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
    """Create the study, or load it when a previous (interrupted) search left one."""
    tune = config["tune"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(study_dir, tune["storage"])
    study = optuna.create_study(
        study_name=study_name(config),
        storage=storage,
        sampler=make_sampler(tune, int(config["seed"])),
        direction="minimize",
        load_if_exists=True,
    )
    return study, storage


def target_trials(tune: dict[str, Any]) -> int:
    return int(tune["population_size"]) * int(tune["generations"])


def count(study: optuna.Study, *states: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


class ClaimingSampler(optuna.samplers.BaseSampler):
    """The study's sampler, which first marks each new trial as this worker's.

    ``Study.ask`` creates a trial, then calls the sampler's ``before_trial`` (for NSGA-II it builds
    the population, which takes a while under load) and only then runs the objective. A worker
    killed in that window used to leave a RUNNING trial without an owner, which no rerun reclaimed
    (a test killed one there on a busy machine). Claiming it in ``before_trial``, before any
    sampling work, leaves only a single storage read between creation and claim.
    """

    def __init__(self, inner: optuna.samplers.BaseSampler, worker: str) -> None:
        self.inner = inner
        self.worker = worker

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        study._storage.set_trial_user_attr(trial._trial_id, WORKER_ATTR, self.worker)
        self.inner.before_trial(study, trial)

    # The rest delegates with Optuna's own signatures.
    def infer_relative_search_space(self, study: optuna.Study, trial: Any) -> Any:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: Any, search_space: Any) -> Any:
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: Any, param_name: str, param_distribution: Any
    ) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: Any, state: Any, values: Any) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def reclaim_orphans(
    study: optuna.Study, storage: optuna.storages.BaseStorage, worker: str, now: float | None = None
) -> list[int]:
    """Fail this worker's trials left RUNNING by a killed run and queue their parameters again.

    A RUNNING trial that no worker has claimed for longer than the heartbeat grace period was cut
    between its creation and its claim (see :class:`ClaimingSampler`): any worker takes it over.
    """
    now = time.time() if now is None else now
    reclaimed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get(WORKER_ATTR)
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        unclaimed_too_long = owner is None and now - started > GRACE_SECONDS
        if owner != worker and not unclaimed_too_long:
            continue
        # FrozenTrial exposes its storage id only as _trial_id; Optuna's own stale-trial code uses it too.
        storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        # A trial cut while still sampling holds only the parameters drawn so far; the sampler fills
        # in the rest when the retry runs.
        study.enqueue_trial(trial.params, user_attrs={RETRY_OF_ATTR: trial.number}, skip_if_exists=False)
        reclaimed.append(trial.number)
    if reclaimed:
        log.warning(
            "tune worker %s: trial(s) %s were cut off by a previous run; queued again", worker, reclaimed
        )
    return reclaimed
