"""PPO training: outputs, the torch view for export, resume after SIGKILL, time budget, fingerprints."""

from __future__ import annotations

import copy
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from stable_baselines3 import PPO

from tests.test_policy_data import policy_config, write_inputs
from trainrelay.core.checkpointing import StateStore, TimeBudget
from trainrelay.errors import BudgetExhausted, ConfigError, DataError
from trainrelay.policy.model import load_policy
from trainrelay.policy.policy_zip import publish_policy, read_meta
from trainrelay.policy.train import (
    LOSS_COLUMNS,
    default_state_dir,
    observation_for,
    prepare,
    train_policy,
)

REPO = Path(__file__).resolve().parents[1]


def _run(paths, out: Path, config: dict, fold: int = 0, **kwargs) -> dict:
    return train_policy(
        paths, out / "ppo_policy.zip", out / "ppo.csv", config, state_dir=out / "state", fold=fold, **kwargs
    )


def _params(path: Path) -> dict[str, torch.Tensor]:
    return PPO.load(path, device="cpu").policy.state_dict()


def test_training_writes_policy_loss_csv_and_a_loadable_torch_module(tmp_path):
    paths = write_inputs(tmp_path / "in")
    config = policy_config(total_timesteps=1024, n_steps=128, n_envs=2)
    summary = _run(paths, tmp_path, config)
    assert summary["timesteps"] == 1024

    loss = pl.read_csv(tmp_path / "ppo.csv")
    assert loss.columns == LOSS_COLUMNS
    assert loss["timesteps"].to_list() == [256, 512, 768, 1024]  # one row per PPO update
    assert loss["entropy"].min() > 0 and loss["value_loss"].min() > 0
    assert loss["seconds"].is_sorted() and loss.select(pl.all().is_null().any()).row(0) == (False,) * 9

    actor, meta = load_policy(tmp_path / "ppo_policy.zip")
    assert meta["obs_dim"] == 16 and len(meta["feature_names"]) == 16
    assert meta["observation"] == {"forecasts": True, "text": True, "features": None, "trend_windows": []}
    assert meta["timesteps"] == 1024 and not actor.training and meta["fold"] == 0
    obs = np.random.default_rng(0).normal(size=(64, meta["obs_dim"])).astype(np.float32)
    with torch.no_grad():
        actions = actor(torch.from_numpy(obs))
    assert actions.shape == (64, 1) and actions.dtype == torch.float32
    expected, _ = PPO.load(tmp_path / "ppo_policy.zip", device="cpu").predict(obs, deterministic=True)
    np.testing.assert_allclose(actions.numpy(), expected, atol=1e-6)
    assert float(actions.abs().max()) <= 1.0


def test_ablation_flags_shrink_the_observation(tmp_path):
    paths = write_inputs(tmp_path / "in")
    config = policy_config(total_timesteps=256, n_steps=128, n_envs=2)
    _run(paths, tmp_path, config, observation=observation_for(config, "no_text"))
    meta = read_meta(tmp_path / "ppo_policy.zip")
    assert meta["observation"] == {"forecasts": True, "text": False, "features": None, "trend_windows": []}
    assert meta["obs_dim"] == 16 - 5 and not any(n.startswith("text") for n in meta["feature_names"])
    # a variant switches its input off and keeps the rest of the configured observation
    config["policy"]["observation"]["trend_windows"] = [16]
    assert observation_for(config, "no_forecast") == {
        "forecasts": False,
        "text": True,
        "features": None,
        "trend_windows": [16],
    }
    with pytest.raises(ConfigError, match="ablation variant 'nope'"):
        observation_for(config, "nope")


def test_subproc_vec_env_trains(tmp_path):
    paths = write_inputs(tmp_path / "in")
    config = policy_config(total_timesteps=512, n_steps=128, n_envs=2, vec_env="subproc")
    assert _run(paths, tmp_path, config)["timesteps"] == 512


def test_total_timesteps_must_be_a_multiple_of_a_rollout(tmp_path):
    paths = write_inputs(tmp_path / "in")
    with pytest.raises(ConfigError, match=r"policy\.ppo\.total_timesteps \(1000\)"):
        _run(paths, tmp_path, policy_config(total_timesteps=1000, n_steps=128, n_envs=2))


class _BudgetOfFiveSaves(TimeBudget):
    """A budget that runs out once five states are saved (five rollout boundaries).

    How many rollouts fit in a wall-clock budget depends on the machine; this makes the run save
    exactly five states, more than ``checkpoint.keep`` (3), so pruning must happen. The real clock
    (the session deadline) still counts as well.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self.saves = 0

    def mark_saved(self) -> None:
        super().mark_saved()
        self.saves += 1

    def exhausted(self) -> bool:
        return self.saves >= 5 or super().exhausted()


def test_time_budget_saves_and_rerun_resumes_then_other_config_starts_fresh(tmp_path, caplog, monkeypatch):
    paths = write_inputs(tmp_path / "in")
    config = policy_config(total_timesteps=16384, n_steps=128, n_envs=2)
    keep = config["checkpoint"]["keep"]
    assert keep == 3
    config["checkpoint"]["time_budget_minutes"] = 60.0  # never reached: the five saves end the run
    monkeypatch.delenv("TRAINRELAY_DEADLINE", raising=False)  # no session deadline from outside
    monkeypatch.setattr("trainrelay.policy.train.TimeBudget", _BudgetOfFiveSaves)
    saved: list[int] = []
    real_save = StateStore.save

    def spy(store: StateStore, state: dict, step: int) -> Path:
        saved.append(step)
        return real_save(store, state, step)

    monkeypatch.setattr(StateStore, "save", spy)
    with pytest.raises(
        BudgetExhausted, match=r"reached after 1280 of 16384 PPO timesteps.*rerun the same command"
    ):
        _run(paths, tmp_path, config)
    per_rollout = 128 * 2
    assert saved == [per_rollout * k for k in range(1, 6)]  # five states written, one per rollout
    states = sorted(p.name for p in (tmp_path / "state").glob("state-*.pt"))
    # exactly `keep` remain, and they are the newest three of the five
    assert states == [f"state-{step:010d}.pt" for step in saved[-keep:]]
    for name, step in zip(states, saved[-keep:], strict=True):
        assert torch.load(tmp_path / "state" / name, weights_only=False)["step"] == step
    assert not (tmp_path / "ppo_policy.zip").exists()
    monkeypatch.undo()

    config["checkpoint"]["time_budget_minutes"] = None  # not part of the fingerprint: resumes
    with caplog.at_level(logging.INFO, logger="trainrelay"):
        _run(paths, tmp_path, config)
    assert "resumed PPO at" in caplog.text
    rows = pl.read_csv(tmp_path / "ppo.csv")["timesteps"].to_list()
    assert rows == list(range(256, 16384 + 1, 256))  # no gap, no repeat across the stop

    caplog.clear()
    other = policy_config(total_timesteps=512, n_steps=128, n_envs=2, learning_rate=1e-3)
    with caplog.at_level(logging.INFO):
        _run(paths, tmp_path, other)
    assert "made with another config; starting fresh" in caplog.text
    assert pl.read_csv(tmp_path / "ppo.csv")["timesteps"].to_list() == [256, 512]


_CHILD = """
import sys, torch
from pathlib import Path
from tests.test_policy_data import policy_config, write_inputs
from trainrelay.policy.train import train_policy
root = Path(sys.argv[1]); out = Path(sys.argv[2])
paths = {k: root / v for k, v in [("features", "features.parquet"), ("scaler", "scaler.json"),
         ("segments", "segments.parquet"), ("forecasts", "forecasts.parquet"), ("text", "text.parquet")]}
config = policy_config(total_timesteps=int(sys.argv[3]), n_steps=128, n_envs=2)
train_policy(paths, out / "ppo_policy.zip", out / "ppo.csv", config, state_dir=out / "state", fold=0)
"""


def _child(data: Path, out: Path, total: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(data), str(out), str(total)], cwd=REPO, env=env
    )


def test_sigkill_mid_training_then_rerun_finishes_like_an_uninterrupted_run(tmp_path):
    data = tmp_path / "in"
    write_inputs(data)
    total = 8192
    killed, reference = tmp_path / "killed", tmp_path / "reference"

    proc = _child(data, killed, total)
    deadline = time.monotonic() + 120
    while not list((killed / "state").glob("state-*.pt")) and time.monotonic() < deadline:
        assert proc.poll() is None, "training ended before any state was saved"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "ppo_policy.zip").exists(), "the run finished before the kill: nothing was tested"

    resumed = _child(data, killed, total)
    # the uninterrupted reference runs here meanwhile (same code, same seed, one thread)
    paths = {k: data / f"{k}.parquet" for k in ("features", "segments", "forecasts", "text")}
    paths["scaler"] = data / "scaler.json"
    config = policy_config(total_timesteps=total, n_steps=128, n_envs=2)
    _run(paths, reference, config)
    assert resumed.wait(timeout=300) == 0

    meta = read_meta(killed / "ppo_policy.zip")
    assert meta["timesteps"] == total
    a, b = pl.read_csv(killed / "ppo.csv"), pl.read_csv(reference / "ppo.csv")
    assert a["timesteps"].to_list() == list(range(256, total + 1, 256))
    # training is deterministic on CPU: the resumed run's losses and weights match the reference
    np.testing.assert_allclose(a["value_loss"].to_numpy(), b["value_loss"].to_numpy(), rtol=1e-4)
    np.testing.assert_allclose(a["episode_reward"].to_numpy(), b["episode_reward"].to_numpy(), rtol=1e-4)
    pa, pb = _params(killed / "ppo_policy.zip"), _params(reference / "ppo_policy.zip")
    for name in pa:
        torch.testing.assert_close(pa[name], pb[name], atol=1e-5, rtol=1e-4)


def test_each_fold_trains_on_its_own_expanding_train_split(tmp_path):
    """Fold k's episodes end at fold k's train end (before its val/test); fold 1 sees more history."""
    paths = write_inputs(tmp_path / "in")
    cfg = policy_config()["policy"]
    obs = cfg["observation"]
    spec0, _, ep0 = prepare(paths, cfg, obs, 0)
    spec1, _, ep1 = prepare(paths, cfg, obs, 1)
    assert (spec0.fold, spec1.fold) == (0, 1)
    assert max(hi for _, _, hi in ep0) == 383 and max(hi for _, _, hi in ep1) == 471  # SPLITS' train ends
    assert len(ep1) > len(ep0)
    # each fold's forecast standardisation is fitted on its own train rows
    assert spec0.forecast_mean != spec1.forecast_mean

    config = policy_config(total_timesteps=256, n_steps=128, n_envs=2)
    _run(paths, tmp_path / "f1", config, fold=1)
    meta = read_meta(tmp_path / "f1" / "ppo_policy.zip")
    assert meta["fold"] == 1 and meta["spec"]["fold"] == 1


def test_state_dirs_are_per_fold_and_variant(tmp_path):
    config = policy_config()
    assert default_state_dir(config, 1) == Path("results/policytest/state/train_policy/fold1")
    assert default_state_dir(config, 0, "no_text") == Path(
        "results/policytest/state/train_policy/fold0/no_text"
    )
    config["checkpoint"]["state_dir"] = str(tmp_path)
    assert default_state_dir(config, 2) == tmp_path / "train_policy" / "fold2"


def test_publish_copies_the_fold_policy_and_rejects_other_files(tmp_path):
    paths = write_inputs(tmp_path / "in")
    _run(paths, tmp_path / "f", policy_config(total_timesteps=256, n_steps=128, n_envs=2), fold=1)
    src = tmp_path / "f"
    publish_policy(src / "ppo_policy.zip", src / "ppo.csv", tmp_path / "out.zip", tmp_path / "out.csv")
    assert (tmp_path / "out.zip").read_bytes() == (src / "ppo_policy.zip").read_bytes()
    assert (tmp_path / "out.csv").read_bytes() == (src / "ppo.csv").read_bytes()
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a trainrelay policy file"):
        publish_policy(tmp_path / "bad.zip", src / "ppo.csv", tmp_path / "x.zip", tmp_path / "x.csv")
    with pytest.raises(DataError, match="loss CSV not found"):
        publish_policy(src / "ppo_policy.zip", tmp_path / "nope.csv", tmp_path / "x.zip", tmp_path / "x.csv")
    assert not (tmp_path / "x.zip").exists()


def test_gsde_policy_exports_the_same_deterministic_actions(tmp_path):
    """With gSDE exploration the deterministic action is still the actor's mean, clipped like predict()."""
    paths = write_inputs(tmp_path / "in")
    config = policy_config(total_timesteps=512, n_steps=128, n_envs=2, use_sde=True, sde_sample_freq=-1)
    _run(paths, tmp_path, config)
    model = PPO.load(tmp_path / "ppo_policy.zip", device="cpu")
    assert model.use_sde
    actor, meta = load_policy(tmp_path / "ppo_policy.zip")
    obs = np.random.default_rng(1).normal(size=(32, meta["obs_dim"])).astype(np.float32) * 3
    with torch.no_grad():
        actions = actor(torch.from_numpy(obs)).numpy()
    expected, _ = model.predict(obs, deterministic=True)
    np.testing.assert_allclose(actions, expected, atol=1e-6)
    # the benchmark deep-copies the module per engine; gSDE's noise must not get in the way
    with torch.no_grad():
        copied = copy.deepcopy(actor)(torch.from_numpy(obs)).numpy()
    np.testing.assert_array_equal(copied, actions)


def test_gsde_run_stopped_by_the_budget_resumes_to_the_same_weights(tmp_path):
    """gSDE's exploration noise is not in the SB3 zip; the state carries it so a resume stays exact."""
    paths = write_inputs(tmp_path / "in")
    config = policy_config(total_timesteps=4096, n_steps=128, n_envs=2, use_sde=True, sde_sample_freq=-1)
    _run(paths, tmp_path / "reference", config)
    stopped = dict(config, checkpoint={**config["checkpoint"], "time_budget_minutes": 0.004})
    with pytest.raises(BudgetExhausted):
        _run(paths, tmp_path / "resumed", stopped)
    _run(paths, tmp_path / "resumed", config)
    a = pl.read_csv(tmp_path / "resumed" / "ppo.csv")
    b = pl.read_csv(tmp_path / "reference" / "ppo.csv")
    np.testing.assert_allclose(a["value_loss"].to_numpy(), b["value_loss"].to_numpy(), rtol=1e-4)
    pa, pb = (
        _params(tmp_path / "resumed" / "ppo_policy.zip"),
        _params(tmp_path / "reference" / "ppo_policy.zip"),
    )
    for name in pa:
        torch.testing.assert_close(pa[name], pb[name], atol=1e-5, rtol=1e-4)
