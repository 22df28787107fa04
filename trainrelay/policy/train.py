"""Train the PPO trading policy (Stable-Baselines3) on one walk-forward fold's train episodes, resumably.

Fold k's policy sees only fold k's train split (an expanding window: everything up to
``embargo_bars`` before fold k's val block) and is evaluated on fold k's test block, so the folds
are independent jobs (``train_policy_fold`` in rules/policy.smk).

Resume works like the forecaster's: at every rollout boundary (after PPO's update on the previous
rollout, the only point where PPO's state is consistent) the model with its optimizer, the
timesteps done, the mid-episode state and RNG of every env, the global RNGs and the loss rows so far
go to a :class:`~trainrelay.core.checkpointing.StateStore` under ``<state_dir>``. A rerun with the same
config and inputs continues from the newest state and ends with the same model an uninterrupted
run would have produced. A time budget stops at the next boundary check and raises
:class:`~trainrelay.errors.BudgetExhausted`.
"""

from __future__ import annotations

import collections
import io
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from trainrelay.atomic import write_text
from trainrelay.core import tracking
from trainrelay.core.checkpointing import StateStore, TimeBudget
from trainrelay.core.devices import resolve_device
from trainrelay.core.fingerprint import config_fingerprint, file_sha256
from trainrelay.errors import BudgetExhausted, ConfigError, DataError
from trainrelay.policy.env import TradingEnv
from trainrelay.policy.inputs import load_inputs
from trainrelay.policy.model import save_policy
from trainrelay.policy.observations import (
    ObservationSpec,
    build_series,
    episode_index_ranges,
    fit_spec,
    split_ranges,
)
from trainrelay.policy.vec_env import ArrayTradingVecEnv

log = logging.getLogger(__name__)

LOSS_COLUMNS = [
    "timesteps",
    "episode_reward",
    "policy_loss",
    "value_loss",
    "entropy",
    "approx_kl",
    "clip_fraction",
    "explained_variance",
    "seconds",
]


# The ablation variants (the {variant} wildcard): the configured observation with one input switched off.
VARIANTS = {
    "full": {},
    "no_forecast": {"forecasts": False},
    "no_text": {"text": False},
}


def observation_for(config: dict[str, Any], variant: str | None) -> dict[str, Any]:
    """The config's observation (flags, feature subset, trend windows) with a variant's flags applied."""
    observation = dict(config["policy"]["observation"])
    if variant is None:
        return observation
    if variant not in VARIANTS:
        raise ConfigError(f"ablation variant '{variant}' is not one of {', '.join(VARIANTS)}")
    return {**observation, **VARIANTS[variant]}


def default_state_dir(config: dict[str, Any], fold: int, variant: str | None = None) -> Path:
    """``<checkpoint.state_dir or results/<run>/state>/train_policy/fold<k>[/<variant>]``."""
    root = config["checkpoint"].get("state_dir") or Path("results") / config["run"] / "state"
    path = Path(root) / "train_policy" / f"fold{int(fold)}"
    return path / variant if variant else path


def make_vec_env(env_fns: list, kind: str) -> VecEnv:
    """``policy.ppo.vec_env``: ``array`` (all envs as numpy arrays, no Python per env step; bit-for-bit
    the ``dummy`` results), ``dummy`` (gymnasium envs in sequence) or ``subproc`` (one process each)."""
    if kind == "array":
        template = env_fns[0]()
        if not isinstance(template, TradingEnv):
            raise ConfigError(
                f"policy.ppo.vec_env: array steps TradingEnv only, not {type(template).__name__}"
            )
        return ArrayTradingVecEnv.like(template, len(env_fns))
    if kind == "subproc" and len(env_fns) > 1:
        return SubprocVecEnv(env_fns)
    return DummyVecEnv(env_fns)


def _ppo_kwargs(ppo: dict[str, Any]) -> dict[str, Any]:
    arch = list(ppo["net_arch"])
    return {
        "n_steps": ppo["n_steps"],
        "batch_size": ppo["batch_size"],
        "n_epochs": ppo["n_epochs"],
        "learning_rate": ppo["learning_rate"],
        "gamma": ppo["gamma"],
        "gae_lambda": ppo["gae_lambda"],
        "clip_range": ppo["clip_range"],
        "ent_coef": ppo["ent_coef"],
        "vf_coef": ppo["vf_coef"],
        "max_grad_norm": ppo["max_grad_norm"],
        "policy_kwargs": {"net_arch": {"pi": arch, "vf": arch}, "log_std_init": ppo["log_std_init"]},
        # gSDE: exploration noise that is a function of the observation, redrawn every
        # sde_sample_freq steps (-1: once per rollout), so exploring does not flip the position
        # (and pay the trading cost) at every bar the way independent Gaussian noise does
        "use_sde": bool(ppo.get("use_sde", False)),
        "sde_sample_freq": int(ppo.get("sde_sample_freq", -1)),
    }


class _StateCallback(BaseCallback):
    """Records a loss row and saves the resumable state at every rollout boundary; enforces the budget."""

    def __init__(
        self,
        save_state: Any,
        budget: TimeBudget,
        rows: list[dict],
        seconds_before: float,
        done: int,
        resume_noise: dict[str, Any] | None = None,
    ):
        super().__init__()
        self._save_state = save_state
        self._resume_noise = resume_noise
        self._budget = budget
        self.rows = rows
        self._seconds_before = seconds_before
        self._started = time.monotonic()
        self._last_boundary = done
        self.budget_hit = False

    def seconds(self) -> float:
        return self._seconds_before + time.monotonic() - self._started

    def _record_row(self) -> None:
        values = self.model.logger.name_to_value
        episodes = [info["r"] for info in self.model.ep_info_buffer or []]
        self.rows.append(
            {
                "timesteps": int(self.model.num_timesteps),
                "episode_reward": float(np.mean(episodes)) if episodes else None,
                "policy_loss": float(values["train/policy_gradient_loss"]),
                "value_loss": float(values["train/value_loss"]),
                "entropy": -float(values["train/entropy_loss"]),
                "approx_kl": float(values["train/approx_kl"]),
                "clip_fraction": float(values["train/clip_fraction"]),
                "explained_variance": float(values["train/explained_variance"]),
                "seconds": round(self.seconds(), 3),
            }
        )

    def _boundary(self) -> None:
        if self.model.num_timesteps <= self._last_boundary:
            return  # the boundary a resumed run starts at was recorded before the kill
        self._last_boundary = self.model.num_timesteps
        self._record_row()
        self._save_state(self.model, self.rows, self.seconds())
        self._budget.mark_saved()

    def _on_rollout_start(self) -> None:
        # here PPO has finished its update on the previous rollout: a consistent point to save
        if self._resume_noise is not None:
            # PPO redrew the gSDE noise just before this call, from the restored RNG; put back the
            # noise (and RNG) the interrupted run had at this boundary so that the runs stay equal
            _set_noise(self.model, self._resume_noise)
            self._resume_noise = None
        self._boundary()
        if self._budget.exhausted():
            self.budget_hit = True

    def _on_step(self) -> bool:
        if not self.budget_hit and self._budget.exhausted():
            self.budget_hit = True  # the partial rollout is dropped; the last boundary state is kept
        return not self.budget_hit

    def _on_training_end(self) -> None:
        if not self.budget_hit:
            self._boundary()


def _noise(model: PPO) -> dict[str, Any] | None:
    """gSDE's current exploration matrices (not part of the saved model) and the torch RNG after them."""
    if not model.use_sde:
        return None
    dist = model.policy.action_dist
    return {
        "exploration_mat": dist.exploration_mat.detach().clone(),
        "exploration_matrices": dist.exploration_matrices.detach().clone(),
        "torch_rng": torch.get_rng_state(),
    }


def _set_noise(model: PPO, noise: dict[str, Any]) -> None:
    dist = model.policy.action_dist
    dist.exploration_mat = noise["exploration_mat"].to(model.device)
    dist.exploration_matrices = noise["exploration_matrices"].to(model.device)
    torch.set_rng_state(noise["torch_rng"])


def _capture(model: PPO, venv: VecEnv, rows: list[dict], seconds: float) -> dict[str, Any]:
    buffer = io.BytesIO()
    model.save(buffer)
    return {
        "model": buffer.getvalue(),
        "num_timesteps": int(model.num_timesteps),
        "episode_num": int(model._episode_num),
        "last_obs": np.array(model._last_obs, copy=True),
        "last_episode_starts": np.array(model._last_episode_starts, copy=True),
        "ep_info_buffer": list(model.ep_info_buffer or []),
        "env_states": venv.env_method("get_state"),
        "noise": _noise(model),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        "rows": list(rows),
        "seconds": seconds,
    }


def _restore(state: dict[str, Any], venv: VecEnv, device: torch.device) -> PPO:
    model = PPO.load(io.BytesIO(state["model"]), env=venv, device=device)
    model.num_timesteps = state["num_timesteps"]
    model._episode_num = state["episode_num"]
    model._last_obs = state["last_obs"]
    model._last_episode_starts = state["last_episode_starts"]
    model.ep_info_buffer = collections.deque(state["ep_info_buffer"], maxlen=model._stats_window_size)
    model.ep_success_buffer = collections.deque(maxlen=model._stats_window_size)
    for index, env_state in enumerate(state["env_states"]):
        venv.env_method("set_state", env_state, indices=[index])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return model


def _write_loss_csv(rows: list[dict], target: str | Path) -> None:
    frame = pl.DataFrame(rows, schema={c: pl.Float64 for c in LOSS_COLUMNS}).with_columns(
        pl.col("timesteps").cast(pl.Int64)
    )
    buffer = io.StringIO()
    frame.write_csv(buffer, float_precision=8)
    write_text(target, buffer.getvalue())


def _resolve_device(requested: str) -> torch.device:
    return resolve_device(requested)


def prepare(
    paths: dict[str, str | Path | None], policy_cfg: dict[str, Any], observation: dict[str, Any], fold: int
) -> tuple[ObservationSpec, list, list[tuple[int, int, int]]]:
    """Fit the observation recipe and build the train episodes of ``fold``."""
    inputs = load_inputs(
        paths["features"], paths["scaler"], paths["segments"], paths["forecasts"], paths.get("text")
    )
    if observation["text"] and inputs.text is None:
        raise DataError(
            "policy.observation.text is true but no text_embeddings.parquet was given; set it false"
        )
    if observation["text"] and inputs.text is not None and inputs.text.height == 0:
        raise DataError(
            f"{paths.get('text')}: no text events, so the text observation would be zeros posing as news; "
            "set policy.observation.text: false (and drop no_text from policy.ablations) or give events"
        )
    fold = int(fold)
    spec = fit_spec(inputs, fold, observation, policy_cfg["text"])
    series = build_series(inputs, spec, policy_cfg["funding_every_hours"])
    episodes = episode_index_ranges(series, split_ranges(inputs.segments, fold, "train"))
    if not episodes:
        raise DataError(f"fold {fold} has no train episode of two or more bars; check segments.episode_bars")
    return spec, series, episodes


def train_policy(
    paths: dict[str, str | Path | None],
    policy_out: str | Path,
    loss_out: str | Path,
    config: dict[str, Any],
    state_dir: str | Path,
    fold: int,
    observation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train (or resume) PPO on ``fold``'s train split; write ``policy_out`` (zip with meta) and ``loss_out``.

    ``paths``: features, scaler, segments, forecasts, text (None: no text file). ``observation``
    overrides ``config["policy"]["observation"]`` (the ablation variants).
    """
    policy_cfg = config["policy"]
    ppo_cfg = policy_cfg["ppo"]
    observation = dict(observation if observation is not None else policy_cfg["observation"])
    seed = int(config["seed"])
    total = int(ppo_cfg["total_timesteps"])
    per_rollout = int(ppo_cfg["n_steps"]) * int(ppo_cfg["n_envs"])
    if total % per_rollout:
        raise ConfigError(
            f"policy.ppo.total_timesteps ({total}) must be a multiple of n_steps x n_envs ({per_rollout}) "
            "so that training stops exactly there"
        )
    # The session's deadline, not a fresh budget: a job that starts after it (the forecaster or
    # earlier folds used the budget) stops here, before building anything or touching its state.
    budget = TimeBudget(
        every_minutes=float(config["checkpoint"]["every_minutes"]),
        budget_minutes=config["checkpoint"]["time_budget_minutes"],
    )
    budget.check_start(f"PPO fold {int(fold)}")
    # One intra-op thread: a 64-wide MLP gains nothing from more, and on a busy machine extra threads
    # made PPO ~10x slower (measured: 32k timesteps 10 s with 1 thread, 100 s with 2 on 2 loaded cores).
    torch.set_num_threads(1)
    device = _resolve_device(policy_cfg["device"])

    spec, series, episodes = prepare(paths, policy_cfg, observation, fold)
    cost, scale = float(policy_cfg["trading_cost"]), float(policy_cfg["reward_scale"])
    penalty = float(policy_cfg.get("turnover_penalty", 0.0))
    env_fns = [
        (lambda: TradingEnv(series, episodes, cost, scale, penalty)) for _ in range(int(ppo_cfg["n_envs"]))
    ]
    venv = make_vec_env(env_fns, ppo_cfg["vec_env"])

    inputs_hash = {k: file_sha256(v) for k, v in sorted(paths.items()) if v is not None}
    fingerprint = config_fingerprint(
        {
            "policy": policy_cfg,
            "observation": observation,
            "fold": int(fold),
            "seed": seed,
            "inputs": inputs_hash,
        }
    )
    store = StateStore(state_dir, fingerprint, keep=int(config["checkpoint"]["keep"]))
    state = store.latest()
    try:
        if state is not None:
            model = _restore(state, venv, device)
            rows, seconds_before = list(state["rows"]), float(state["seconds"])
            log.info("resumed PPO at %d of %d timesteps", model.num_timesteps, total)
        else:
            model = PPO("MlpPolicy", venv, seed=seed, device=device, verbose=0, **_ppo_kwargs(ppo_cfg))
            rows, seconds_before = [], 0.0

        def save_state(m: PPO, r: list[dict], seconds: float) -> None:
            store.save(_capture(m, venv, r, seconds), step=int(m.num_timesteps))

        callback = _StateCallback(
            save_state,
            budget,
            rows,
            seconds_before,
            int(model.num_timesteps),
            resume_noise=state.get("noise") if state is not None else None,
        )
        remaining = max(0, total - int(model.num_timesteps))
        with tracking.start(config, stage="policy") as tracker:
            tracker.log_params({"observation": observation, **ppo_cfg, "seed": seed, "fold": int(fold)})
            if remaining > 0:
                model.learn(
                    total_timesteps=remaining,
                    callback=callback,
                    log_interval=None,
                    reset_num_timesteps=state is None,
                )
            if callback.budget_hit and store.latest() is None:
                # A rerun is a new session whose budget starts with this job, so it gets more time
                # than it had here (after earlier jobs); only a budget too short for one rollout
                # on its own needs raising.
                raise BudgetExhausted(
                    f"time budget of {budget.budget_minutes} min ran out before the first PPO rollout "
                    "finished, so nothing was saved; rerun the same command (a new session, whose budget "
                    "this job gets first); if it stops here again, raise checkpoint.time_budget_minutes"
                )
            if callback.budget_hit:
                raise BudgetExhausted(
                    f"time budget of {budget.budget_minutes} min reached after {callback._last_boundary} of "
                    f"{total} PPO timesteps; state saved to {state_dir} — rerun the same command to resume"
                )
            for row in callback.rows:
                tracker.log_metrics({k: v for k, v in row.items() if v is not None}, step=row["timesteps"])
            meta = {
                "obs_dim": spec.obs_dim,
                "observation": observation,
                "fold": int(fold),
                "feature_names": spec.names(),
                "spec": spec.to_dict(),
                "trading_cost": cost,
                "reward_scale": scale,
                "turnover_penalty": penalty,
                "funding_every_hours": policy_cfg["funding_every_hours"],
                "timesteps": int(model.num_timesteps),
                "seed": seed,
            }
            save_policy(model, meta, policy_out)
            _write_loss_csv(callback.rows, loss_out)
            tracker.log_artifact(policy_out)
            tracker.log_artifact(loss_out)
    finally:
        venv.close()
    return {"timesteps": int(model.num_timesteps), "seconds": callback.seconds(), "rows": len(callback.rows)}
