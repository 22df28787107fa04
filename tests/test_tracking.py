"""Experiment tracking: the none backend, the not-installed warning, W&B offline and MLflow's file store,
both with the real packages."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainrelay.core import tracking


def _config(backend: str) -> dict:
    return {"run": "trk", "tracking": {"backend": backend, "project": "trainrelay-test"}}


def test_none_backend_writes_nothing(tmp_path):
    with tracking.start(_config("none"), stage="policy", directory=tmp_path / "t") as t:
        t.log_params({"a": {"b": 1}})
        t.log_metrics({"x": 1.0}, step=1)
        t.log_artifact(tmp_path)
    assert t.backend == "none" and not (tmp_path / "t").exists()


def test_flatten_nested_params():
    assert tracking.flatten({"ppo": {"n_steps": 8, "net": [1]}, "seed": 3}) == {
        "ppo.n_steps": 8,
        "ppo.net": [1],
        "seed": 3,
    }


def test_missing_backend_warns_once_and_the_run_goes_on(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(tracking, "_warned", set())
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what a venv without mlflow does: ImportError
    with caplog.at_level(logging.WARNING, logger="trainrelay.core.tracking"):
        for _ in range(2):
            with tracking.start(_config("mlflow"), stage="policy", directory=tmp_path) as t:
                t.log_metrics({"x": 1.0}, step=0)
    warnings = [r for r in caplog.records if "not installed" in r.getMessage()]
    assert len(warnings) == 1
    assert "tracking.backend is mlflow" in warnings[0].getMessage()
    assert t.backend == "none"


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed")
@pytest.mark.filterwarnings("ignore::UserWarning:pydantic")
def test_wandb_offline_run_keeps_params_metrics_and_artifact_locally(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    artifact = tmp_path / "ppo.csv"
    artifact.write_text("timesteps,episode_reward\n256,0.5\n")
    with tracking.start(_config("wandb"), stage="policy", directory=tmp_path / "tracking") as t:
        assert t.backend == "wandb"
        assert t.run.settings.mode == "offline"
        t.log_params({"ppo": {"n_steps": 128}, "seed": 3})
        t.log_metrics({"episode_reward": 0.5}, step=256)
        t.log_artifact(artifact)
        run_dir = t.run.dir
        assert dict(t.run.config)["ppo.n_steps"] == 128
    runs = list((tmp_path / "tracking" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert (runs[0] / "files" / "ppo.csv").read_text() == artifact.read_text()
    assert list(runs[0].glob("run-*.wandb")), "the offline run log that `wandb sync` uploads later"
    assert str(runs[0]) in run_dir


MLFLOW_JOB = """
import sys
import time
from pathlib import Path

import mlflow  # imported before the barrier: the jobs then start their runs within milliseconds
from trainrelay.core import tracking

directory, fold = Path(sys.argv[1]), int(sys.argv[2])
(directory / f"ready-{fold}").touch()
while not (directory / "go").exists():
    time.sleep(0.001)
config = {"run": "trk", "tracking": {"backend": "mlflow", "project": "trainrelay-test"}}
with tracking.start(config, stage=f"policy-fold{fold}", directory=directory) as t:
    assert t.backend == "mlflow"
    t.log_params({"ppo": {"n_steps": 128}, "fold": fold})
    for step in range(20):
        t.log_metrics({"episode_reward": fold + step / 10}, step=step)
"""


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed")
def test_mlflow_file_store_keeps_params_metrics_and_artifact(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # MLflow >= 3.13 refuses it otherwise
    artifact = tmp_path / "ppo.csv"
    artifact.write_text("timesteps,episode_reward\n256,0.5\n")
    with tracking.start(_config("mlflow"), stage="policy", directory=tmp_path / "tracking") as t:
        assert t.backend == "mlflow"
        t.log_params({"ppo": {"n_steps": 128}, "seed": 3})
        t.log_metrics({"episode_reward": 0.5}, step=256)
        t.log_metrics({"episode_reward": 0.75}, step=512)
        t.log_artifact(artifact)
    client = MlflowClient((tmp_path / "tracking" / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("trainrelay-test").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "trk-policy"
    assert run.data.params == {"ppo.n_steps": "128", "seed": "3"}
    assert run.data.tags["stage"] == "policy" and run.data.tags["run"] == "trk"
    history = client.get_metric_history(run.info.run_id, "episode_reward")
    assert [(m.step, m.value) for m in history] == [(256, 0.5), (512, 0.75)]
    assert os.environ["MLFLOW_ALLOW_FILE_STORE"] == "true"  # set by tracking.start, read by the client
    (listed,) = client.list_artifacts(run.info.run_id)
    assert listed.path == "ppo.csv"
    local = client.download_artifacts(run.info.run_id, "ppo.csv", str(tmp_path / "back"))
    assert Path(local).read_text() == artifact.read_text()


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed")
def test_parallel_jobs_log_to_one_mlflow_store(tmp_path, monkeypatch):
    """Policy folds tracking at once on a fresh store (-j4, Slurm tasks) share one experiment and
    each keep their whole run."""
    from mlflow.tracking import MlflowClient

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(Path(tracking.__file__).parents[1])
    jobs = [
        subprocess.Popen([sys.executable, "-c", MLFLOW_JOB, str(tmp_path), str(fold)], env=env)
        for fold in range(4)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < len(jobs):
        assert time.monotonic() < deadline and all(job.poll() is None for job in jobs)
        time.sleep(0.01)
    (tmp_path / "go").touch()
    assert [job.wait(timeout=120) for job in jobs] == [0] * 4
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for this process's client
    client = MlflowClient((tmp_path / "mlruns").as_uri())
    # One experiment of that name, not one per job that found none when it started.
    names = sorted(e.name for e in client.search_experiments())
    assert names == ["Default", "trainrelay-test"], names
    runs = client.search_runs([client.get_experiment_by_name("trainrelay-test").experiment_id])
    assert sorted(r.data.params["fold"] for r in runs) == ["0", "1", "2", "3"]
    for run in runs:
        fold = int(run.data.params["fold"])
        history = client.get_metric_history(run.info.run_id, "episode_reward")
        assert [m.value for m in history] == [fold + step / 10 for step in range(20)]


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed")
def test_policy_training_tracks_every_ppo_update_in_mlflow(tmp_path, monkeypatch):
    """The real PPO stage with tracking.backend mlflow: the store holds what ppo.csv holds."""
    import polars as pl
    from mlflow.tracking import MlflowClient

    from tests.test_policy_data import policy_config, write_inputs
    from trainrelay.policy.train import train_policy

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # the store is results/<run>/tracking/mlruns under the workdir
    paths = write_inputs(tmp_path / "in")
    config = policy_config(total_timesteps=512, n_steps=128, n_envs=2)
    config["tracking"] = {"backend": "mlflow", "project": "trainrelay-test"}
    train_policy(paths, tmp_path / "p.zip", tmp_path / "ppo.csv", config, state_dir=tmp_path / "s", fold=1)
    client = MlflowClient((tmp_path / "results" / config["run"] / "tracking" / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("trainrelay-test").experiment_id])
    assert run.data.params["fold"] == "1" and run.data.params["n_steps"] == "128"
    loss = pl.read_csv(tmp_path / "ppo.csv")
    history = client.get_metric_history(run.info.run_id, "value_loss")
    assert [m.step for m in history] == loss["timesteps"].to_list() == [256, 512]
    assert [m.value for m in history] == pytest.approx(loss["value_loss"].to_list(), rel=1e-6)
