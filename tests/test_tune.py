"""The genetic hyperparameter search: parameters land in the config, the search trains the real
forecaster, the history is right, a killed search resumes, and the report charts the history."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

from tests.test_forecast_stage import tiny_config, write_inputs
from trainrelay.core.devices import resolve_device
from trainrelay.errors import ConfigError, DataError
from trainrelay.forecast.base import Forecaster
from trainrelay.forecast.inputs import load_fold
from trainrelay.forecast.training import TrainSettings
from trainrelay.tune.history import finalize
from trainrelay.tune.search import run_worker
from trainrelay.tune.space import apply_params, searched_params, with_best_params
from trainrelay.tune.study import (
    GRACE_SECONDS,
    RETRY_OF_ATTR,
    WORKER_ATTR,
    ClaimingSampler,
    open_study,
    reclaim_orphans,
)

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


def tune_config(segments: dict, **tune: Any) -> dict:
    import yaml

    config = tiny_config(segments)
    config["tune"] = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["tune"]
    config["tune"].update({"enabled": True, "population_size": 3, "generations": 2, "epochs": 1, **tune})
    config["tune"]["space"]["batch_size"] = [32, 64]
    return config


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    return write_inputs(tmp_path_factory.mktemp("segments"))


def _paths(inputs: dict) -> tuple[Path, Path, Path]:
    p = inputs["paths"]
    return p["features"], p["scaler"], p["segments"]


@pytest.fixture(scope="module")
def searched(inputs, tmp_path_factory) -> tuple[Path, dict, dict]:
    root = tmp_path_factory.mktemp("tune")
    config = tune_config(inputs["segments"])
    run_worker(*_paths(inputs), root / "tune", root / "tune" / "workers" / "0.json", config, worker=0)
    summary = finalize(root / "tune", root / "tune" / "best_params.json", root / "tuning.json", config)
    return root, summary, config


def test_apply_params_writes_the_main_model_sections(inputs) -> None:
    config = tune_config(inputs["segments"])
    params = {"lr": 0.01, "batch_size": 32, "optimizer": "adamw", "weight_decay": 0.001, "dropout": 0.25}
    out = apply_params(config, params, epochs=5)
    assert out["forecaster"]["train"] | params == out["forecaster"]["train"] | {"dropout": 0.25}
    keys = ("lr", "batch_size", "optimizer", "weight_decay", "epochs")
    assert {k: out["forecaster"]["train"][k] for k in keys} == {
        "lr": 0.01, "batch_size": 32, "optimizer": "adamw", "weight_decay": 0.001, "epochs": 5,
    }  # fmt: skip
    assert out["forecaster"]["patchtst"]["dropout"] == 0.25
    assert config["forecaster"]["train"]["lr"] == 0.003  # the input config is not modified
    dlinear = {**config, "forecaster": {**config["forecaster"], "model": "dlinear"}}
    assert "dropout" not in searched_params(dlinear)
    assert apply_params(dlinear, {"lr": 0.02})["forecaster"]["dlinear_train"]["lr"] == 0.02
    with pytest.raises(ConfigError, match="dropout applies to patchtst"):
        apply_params(dlinear, {"dropout": 0.1})
    with pytest.raises(ConfigError, match="nothing to tune"):
        apply_params({**config, "forecaster": {**config["forecaster"], "model": "naive"}}, {"lr": 0.1})
    with pytest.raises(ConfigError, match="momentum"):
        apply_params(config, {"momentum": 0.9})


def test_with_best_params(tmp_path, inputs) -> None:
    config = tune_config(inputs["segments"])
    assert with_best_params(config, None) is config
    path = tmp_path / "best_params.json"
    path.write_text(json.dumps({"params": {"lr": 0.0007, "batch_size": 32}}))
    tuned = with_best_params(config, str(path))
    assert tuned["forecaster"]["train"]["lr"] == 0.0007 and tuned["forecaster"]["train"]["batch_size"] == 32
    assert tuned["forecaster"]["train"]["epochs"] == config["forecaster"]["train"]["epochs"]
    path.write_text("{not json")
    with pytest.raises(DataError, match="rerun the tune rule"):
        with_best_params(config, path)


def test_search_history_and_best(searched, inputs) -> None:
    root, summary, config = searched
    assert summary["target"] == 6 and summary["counts"]["COMPLETE"] == 6 and summary["counts"]["FAIL"] == 0
    assert [t["trial"] for t in summary["trials"]] == list(range(6))
    assert [g["generation"] for g in summary["generations"]] == [0, 1]
    assert [g["complete"] for g in summary["generations"]] == [3, 3]
    values = [t["value"] for t in summary["trials"]]
    assert summary["best"]["value"] == min(values)
    for g in summary["generations"]:
        gen_values = [t["value"] for t in summary["trials"] if t["generation"] == g["generation"]]
        assert g["best"] == min(gen_values)
    for trial in summary["trials"]:
        assert set(trial["params"]) == {"lr", "batch_size", "optimizer", "weight_decay", "dropout"}
        assert 1e-4 <= trial["params"]["lr"] <= 1e-2 and trial["params"]["batch_size"] in (32, 64)
        assert trial["worker"] == "0" and trial["state"] == "COMPLETE"
    best = json.loads((root / "tune" / "best_params.json").read_text())
    assert best["params"] == summary["best"]["params"] and best["value"] == summary["best"]["value"]
    on_disk = json.loads((root / "tuning.json").read_text())
    assert on_disk["best"] == summary["best"] and len(on_disk["trials"]) == 6
    # A second worker on a finished study has nothing left to do.
    again = run_worker(*_paths(inputs), root / "tune", root / "w1.json", config, worker=1)
    assert again["trials_run"] == [] and again["complete"] == 6


def test_best_value_is_the_forecaster_trained_with_those_params(searched, inputs) -> None:
    """The fitness is exactly what the library's training gives for the parameters (same seed)."""
    _root, summary, config = searched
    tuned = apply_params(config, summary["best"]["params"], epochs=config["tune"]["epochs"])
    fc = tuned["forecaster"]
    _, windows, channels, _ = load_fold(*_paths(inputs), tuned)
    model = Forecaster(
        "patchtst", fc["lookback"], fc["horizon"], len(channels), fc["patchtst"], seed=tuned["seed"]
    )
    fit = model.fit(
        windows["train"], windows["val"], TrainSettings.from_config(fc["train"], "forecaster.train"),
        device=resolve_device("cpu"), seed=tuned["seed"], progress=False,
    )  # fmt: skip
    assert fit is not None
    assert fit.best_val_mse == pytest.approx(summary["best"]["value"], rel=1e-6)


def test_journal_storage(tmp_path, inputs) -> None:
    config = tune_config(inputs["segments"], storage="journal", population_size=2, generations=1)
    out = run_worker(*_paths(inputs), tmp_path / "tune", tmp_path / "w0.json", config, worker=0)
    assert out["complete"] == 2 and (tmp_path / "tune" / "study.journal").stat().st_size > 0
    summary = finalize(tmp_path / "tune", tmp_path / "best.json", tmp_path / "tuning.json", config)
    assert summary["storage"] == "journal" and summary["counts"]["COMPLETE"] == 2


def test_bad_space_and_missing_study(tmp_path, inputs) -> None:
    config = tune_config(inputs["segments"])
    config["tune"]["space"]["lr"] = {"low": 0.0, "high": 0.1, "log": True}
    with pytest.raises(ConfigError, match=r"tune.space.lr"):
        run_worker(*_paths(inputs), tmp_path / "tune", tmp_path / "w.json", config)
    config = tune_config(inputs["segments"], crossover="undx", population_size=2)
    with pytest.raises(ConfigError, match="parents"):
        run_worker(*_paths(inputs), tmp_path / "tune", tmp_path / "w.json", config)
    with pytest.raises(DataError, match="tune_worker"):
        finalize(
            tmp_path / "empty", tmp_path / "b.json", tmp_path / "t.json", tune_config(inputs["segments"])
        )


WORKER_SCRIPT = """
import json, sys, torch
torch.set_num_threads(1)
from trainrelay.tune.search import run_worker
args = json.loads(sys.argv[1])
run_worker(*args["paths"], args["study"], args["out"], args["config"], worker=0)
"""


def test_killed_search_resumes(tmp_path, inputs) -> None:
    """SIGKILL a worker mid-trial: the rerun keeps every finished trial and reruns the cut one."""
    config = tune_config(inputs["segments"], population_size=2, generations=3, epochs=3)
    study_dir = tmp_path / "tune"
    names = searched_params(config)
    paths = [str(p) for p in _paths(inputs)]
    args = {"paths": paths, "study": str(study_dir), "out": str(tmp_path / "w.json"),
            "config": config}  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, json.dumps(args)], env=env, cwd=REPO)
    killed_running: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            if not (study_dir / "study.db").exists():
                continue
            try:
                study, _ = open_study(study_dir, config)
                complete = study.get_trials(states=(TrialState.COMPLETE,))
                # Wait until a trial has drawn all its parameters, i.e. it is training, not sampling.
                running = [
                    t
                    for t in study.get_trials(states=(TrialState.RUNNING,))
                    if WORKER_ATTR in t.user_attrs and set(t.params) == set(names)
                ]
            except (KeyError, optuna.exceptions.StorageInternalError):  # the study is being created
                continue
            if len(complete) >= 2 and running:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                # What was running at the moment of death (the trial seen above may just have ended).
                study, _ = open_study(study_dir, config)
                killed_running = [t.number for t in study.get_trials(states=(TrialState.RUNNING,))]
                break
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert killed_running, "the worker finished before it could be killed mid-trial"
    study, _ = open_study(study_dir, config)
    before = {t.number: t.value for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert len(before) < 6

    summary = run_worker(*_paths(inputs), study_dir, tmp_path / "w.json", config, worker=0)
    assert summary["reclaimed"] == killed_running
    study, _ = open_study(study_dir, config)
    after = {t.number: t.value for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert len(after) == 6 and all(after[n] == v for n, v in before.items())  # nothing finished was redone
    cut = study.trials[killed_running[0]]
    assert cut.state == TrialState.FAIL
    retry = [t for t in study.trials if t.user_attrs.get(RETRY_OF_ATTR) == cut.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    # The retry keeps every parameter the cut trial had drawn. If the kill landed while the next trial
    # was still sampling (the trial seen running may just have ended), the rest are drawn afresh.
    assert retry[0].params.items() >= cut.params.items() and set(retry[0].params) == set(names)
    assert set(summary["trials_run"]).isdisjoint(before)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask() stands in for optimize()
def test_trial_cut_while_sampling_is_retried_with_its_drawn_params(tmp_path, inputs) -> None:
    """A worker killed between two suggest calls leaves a RUNNING trial with some parameters only."""
    from trainrelay.tune.space import suggest
    from trainrelay.tune.study import reclaim_orphans

    config = tune_config(inputs["segments"])
    names = searched_params(config)
    study, storage = open_study(tmp_path / "tune", config)
    cut = study.ask()
    cut.set_user_attr(WORKER_ATTR, "0")
    drawn = suggest(cut, config["tune"]["space"], names[:2])  # the kill lands here
    assert reclaim_orphans(study, storage, "0") == [cut.number]
    retry = study.ask()
    params = suggest(retry, config["tune"]["space"], names)
    assert retry.user_attrs[RETRY_OF_ATTR] == cut.number
    assert params.items() >= drawn.items() and set(params) == set(names)
    assert study.trials[cut.number].state == TrialState.FAIL


def test_report_shows_tuning_history(searched, tmp_path) -> None:
    from tests.fixtures_run import build_results_tree, fixture_config
    from trainrelay.report.build import build_report

    root, _summary, _config = searched
    results = build_results_tree(tmp_path / "run")
    (results / "metrics" / "tuning.json").write_bytes((root / "tuning.json").read_bytes())
    outputs = {k: tmp_path / f"a/report.{k}" for k in ("html", "pdf", "json")} | {
        "csv": tmp_path / "a/metrics.csv"
    }
    report = build_report(results, outputs, fixture_config(), git_commit="unknown")
    html = outputs["html"].read_text()
    assert report["tuning"]["best"]["trial"] == _summary["best"]["trial"]
    assert 'alt="tuning history"' in html and "not run" not in html.split("Hyper-parameter tuning")[1][:200]
    again = {k: tmp_path / f"b/{p.name}" for k, p in outputs.items()}
    build_report(results, again, fixture_config(), git_commit="unknown")
    assert again["html"].read_bytes() == outputs["html"].read_bytes()
    assert again["json"].read_bytes() == outputs["json"].read_bytes()


def test_a_trial_is_claimed_before_sampling_and_an_unclaimed_one_is_reclaimed_after_grace() -> None:
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    study.sampler = ClaimingSampler(study.sampler, "1")
    claimed = study.ask()  # what Study.optimize does before the objective runs
    assert storage.get_trial(claimed._trial_id).user_attrs[WORKER_ATTR] == "1"
    # A trial cut between creation and claim: nobody's. Fresh, it may be a live worker's own.
    unclaimed = storage.create_new_trial(study._study_id)
    started = storage.get_trial(unclaimed).datetime_start.timestamp()
    assert reclaim_orphans(study, storage, "0", now=started + 1) == []
    assert reclaim_orphans(study, storage, "0", now=started + GRACE_SECONDS + 1) == [
        storage.get_trial(unclaimed).number
    ]
    # worker 1's claimed trial is still running and still its own
    assert storage.get_trial(claimed._trial_id).state == TrialState.RUNNING
