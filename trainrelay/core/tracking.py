"""Optional experiment tracking: ``tracking.backend: none | wandb | mlflow``.

    with tracking.start(config, stage="policy") as t:
        t.log_params({...}); t.log_metrics({...}, step); t.log_artifact(path)

Both backends work without internet: W&B in offline mode (``WANDB_MODE=offline`` unless the
environment says otherwise) with its files under ``results/<run>/tracking``, MLflow with a local file
store at ``results/<run>/tracking/mlruns`` (view it with ``MLFLOW_ALLOW_FILE_STORE=true mlflow ui
--backend-store-uri results/<run>/tracking/mlruns``). Credentials (``WANDB_API_KEY``,
``MLFLOW_TRACKING_*``) come only from environment variables, read by the libraries themselves. A
backend that is not installed gives one warning per process and the run goes on untracked.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

log = logging.getLogger(__name__)

_warned: set[str] = set()


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: both backends show flat keys best."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class Tracker:
    """The ``none`` backend; the others override the three calls."""

    backend = "none"

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path) -> None:
        pass


class WandbTracker(Tracker):
    backend = "wandb"

    def __init__(self, wandb: Any, run: Any) -> None:
        self._wandb = wandb
        self.run = run

    def log_params(self, params: dict[str, Any]) -> None:
        self.run.config.update(flatten(params), allow_val_change=True)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.run.log(dict(metrics), step=step)

    def log_artifact(self, path: str | Path) -> None:
        path = Path(path).resolve()
        self.run.save(str(path), base_path=str(path.parent), policy="now")


class MlflowTracker(Tracker):
    backend = "mlflow"

    def __init__(self, mlflow: Any) -> None:
        self._mlflow = mlflow

    def log_params(self, params: dict[str, Any]) -> None:
        self._mlflow.log_params({k: str(v) for k, v in flatten(params).items()})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: str | Path) -> None:
        self._mlflow.log_artifact(str(path))


def _import_backend(backend: str) -> Any | None:
    """The backend's module, or None after one warning per process when it is not installed."""
    try:
        return importlib.import_module(backend)
    except ImportError as exc:
        if backend not in _warned:
            _warned.add(backend)
            log.warning(
                "tracking.backend is %s but it is not installed (%s); continuing without tracking",
                backend,
                exc,
            )
        return None


def tracking_dir(config: dict[str, Any]) -> Path:
    return Path("results") / config["run"] / "tracking"


@contextlib.contextmanager
def start(config: dict[str, Any], stage: str, directory: str | Path | None = None) -> Iterator[Tracker]:
    """Open a tracking run for ``stage``; ``directory`` defaults to ``results/<run>/tracking``."""
    settings = config.get("tracking") or {"backend": "none"}
    backend = settings.get("backend", "none")
    directory = Path(directory) if directory is not None else tracking_dir(config)
    name = f"{config['run']}-{stage}"
    project = settings.get("project", "trainrelay")
    module = _import_backend(backend) if backend in ("wandb", "mlflow") else None
    if module is None:
        yield Tracker()
    elif backend == "wandb":
        directory.mkdir(parents=True, exist_ok=True)
        # offline unless the user's environment asks for online (and then supplies WANDB_API_KEY)
        mode = os.environ.get("WANDB_MODE", "offline")
        run = module.init(
            project=project, name=name, group=config["run"], job_type=stage, dir=str(directory), mode=mode
        )
        try:
            yield WandbTracker(module, run)
        finally:
            run.finish()
    else:
        # An explicit MLFLOW_TRACKING_URI (a team server, a database) wins over the local file store.
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        creating: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if not uri:
            # The file store keeps each run in its own folder, so parallel jobs (policy folds, Slurm
            # tasks on a shared filesystem) never contend for one SQLite file. MLflow >= 3.13 refuses
            # it unless this opt-out is set; it stays supported, in maintenance mode.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (directory / "mlruns").resolve().as_uri()
            directory.mkdir(parents=True, exist_ok=True)
            # Creating the store and the experiment is check-then-write: folds starting together on
            # a fresh store each made their own experiment of the same name. One at a time.
            creating = FileLock(directory / "mlruns.lock")
        with creating:
            module.set_tracking_uri(uri)
            module.set_experiment(project)
        with module.start_run(run_name=name, tags={"stage": stage, "run": config["run"]}):
            yield MlflowTracker(module)
