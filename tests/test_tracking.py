"""Experiment tracking: the none backend, the not-installed warning, and W&B offline with the real package."""

from __future__ import annotations

import importlib.util
import logging

import pytest

from trainrelay import tracking


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


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is not None, reason="mlflow is installed here")
def test_missing_backend_warns_once_and_the_run_goes_on(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(tracking, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="trainrelay.tracking"):
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
