"""PPO environment speed: the gymnasium env in DummyVecEnv vs the array VecEnv, side by side.

Issue 15, requirement 2. On demo-sized data (2 symbols x 2 months of 15m bars, 256-bar episodes
over the first 60 % of the bars, the demo config's 24-dim observation; values drawn at random,
since neither env's speed depends on them) this measures, in one run on one machine:

- env-only steps per second: ``venv.step`` on pre-drawn random actions, no policy, for
  ``policy.ppo.vec_env: dummy`` (SB3's ``DummyVecEnv`` over ``TradingEnv``) and ``array``
  (:class:`trainrelay.policy.vec_env.ArrayTradingVecEnv`), at several ``n_envs``; the two kinds
  alternate and each figure is the median of ``--repeats`` timed runs of at least ``--seconds``;
- PPO timesteps per second with config/config.yaml's ``policy.ppo`` settings (one torch thread, as
  ``train_policy`` sets), for both kinds, with the time split into env steps, the rest of the
  rollout (the policy's forward passes, buffers) and PPO's update; and whether the two runs ended
  with identical parameters (they must: the envs are bit-for-bit equal); the median of
  ``--ppo-repeats`` runs per kind, kinds alternating.

    .venv/bin/python bench/ppo_env_speed.py --out bench/out/ppo_env_speed.json
    .venv/bin/python bench/ppo_env_speed.py --quick --out /tmp/ppo_env_speed.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainrelay.policy.env import TradingEnv  # noqa: E402
from trainrelay.policy.observations import SymbolSeries  # noqa: E402
from trainrelay.policy.train import _ppo_kwargs, make_vec_env  # noqa: E402

KINDS = ("dummy", "array")
BARS_PER_SYMBOL = 60 * 96  # 2 months (Jan + Feb 2024) of 15-minute bars
SYMBOLS = 2
EPISODE_BARS = 256
TRAIN_SHARE = 0.6
# the demo's observation: 3 features + 5 trend windows + 5 forecast inputs + 8 text PCs + intensity
MARKET_DIM = 3 + 5 + 5 + 8 + 1
FUNDING_EVERY_BARS = 32  # 8 h of 15m bars


def demo_market(seed: int = 0) -> tuple[list[SymbolSeries], list[tuple[int, int, int]]]:
    rng = np.random.default_rng(seed)
    series, episodes = [], []
    n = BARS_PER_SYMBOL
    for s in range(SYMBOLS):
        funding = np.zeros(n)
        funding[::FUNDING_EVERY_BARS] = rng.normal(1e-4, 1e-4, size=len(funding[::FUNDING_EVERY_BARS]))
        series.append(
            SymbolSeries(
                symbol=f"SYM{s}",
                timestamp=np.arange(n, dtype=np.int64) * 900_000,
                market_obs=np.clip(rng.normal(size=(n, MARKET_DIM)), -10, 10).astype(np.float32),
                log_return=rng.normal(0.0, 0.002, size=n),
                funding=funding,
                fc_return=np.zeros(n),
                fc_valid=np.ones(n, dtype=bool),
            )
        )
        train_end = int(n * TRAIN_SHARE) - 1
        for first in range(0, train_end, EPISODE_BARS):
            last = min(first + EPISODE_BARS - 1, train_end)
            if last > first:
                episodes.append((s, first, last))
    return series, episodes


def _venv(kind: str, market: tuple, n_envs: int, ppo_policy: dict[str, Any]) -> Any:
    series, episodes = market
    cost, scale = float(ppo_policy["trading_cost"]), float(ppo_policy["reward_scale"])
    penalty = float(ppo_policy.get("turnover_penalty", 0.0))
    return make_vec_env(
        [lambda: TradingEnv(series, episodes, cost, scale, penalty) for _ in range(n_envs)], kind
    )


def env_steps_per_second(kind: str, market: tuple, n_envs: int, policy: dict, seconds: float) -> float:
    venv = _venv(kind, market, n_envs, policy)
    venv.seed(0)
    venv.reset()
    actions = np.random.default_rng(1).uniform(-1, 1, size=(2048, n_envs, 1)).astype(np.float32)
    for action in actions[:256]:  # warm-up, untimed
        venv.step(action)
    steps, elapsed, started = 0, 0.0, time.perf_counter()
    while elapsed < seconds:
        for action in actions:
            venv.step(action)
        steps += len(actions)
        elapsed = time.perf_counter() - started
    venv.close()
    return steps * n_envs / elapsed


def check_equal(market: tuple, policy: dict, n_envs: int = 8, steps: int = 2000) -> bool:
    """The two kinds on the same seeds and actions: identical observations, rewards and dones."""
    dummy, array = (_venv(k, market, n_envs, policy) for k in KINDS)
    dummy.seed(3)
    array.seed(3)
    same = np.array_equal(dummy.reset(), array.reset())
    rng = np.random.default_rng(3)
    for _ in range(steps):
        action = rng.uniform(-1.2, 1.2, size=(n_envs, 1)).astype(np.float32)
        a, b = dummy.step(action), array.step(action)
        same = same and all(np.array_equal(x, y) for x, y in zip(a[:3], b[:3], strict=True))
    return bool(same)


def ppo_run(kind: str, market: tuple, policy: dict, seed: int, timesteps: int) -> dict[str, Any]:
    import torch
    from stable_baselines3 import PPO

    torch.set_num_threads(1)  # as train_policy
    ppo_cfg = policy["ppo"]
    venv = _venv(kind, market, int(ppo_cfg["n_envs"]), policy)
    model = PPO("MlpPolicy", venv, seed=seed, device="cpu", verbose=0, **_ppo_kwargs(ppo_cfg))
    clock = {"env": 0.0, "rollout": 0.0}
    step_wait, collect = venv.step_wait, model.collect_rollouts

    def timed_step_wait() -> Any:
        t0 = time.perf_counter()
        out = step_wait()
        clock["env"] += time.perf_counter() - t0
        return out

    def timed_collect(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = collect(*args, **kwargs)
        clock["rollout"] += time.perf_counter() - t0
        return out

    venv.step_wait = timed_step_wait
    model.collect_rollouts = timed_collect
    started = time.perf_counter()
    model.learn(total_timesteps=timesteps)
    total = time.perf_counter() - started
    venv.close()
    params = {k: v.detach().clone() for k, v in model.policy.state_dict().items()}
    return {
        "kind": kind,
        "timesteps": int(model.num_timesteps),
        "seconds": round(total, 3),
        "timesteps_per_s": round(model.num_timesteps / total, 1),
        "env_seconds": round(clock["env"], 3),
        "rollout_other_seconds": round(clock["rollout"] - clock["env"], 3),
        "update_seconds": round(total - clock["rollout"], 3),
        "_params": params,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config" / "config.yaml"))
    parser.add_argument("--n-envs", default="4,16,64", help="comma-separated n_envs for the env-only figures")
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum time of one env-only run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per env-only figure (median)")
    parser.add_argument("--ppo-timesteps", type=int, help="default: the config's policy.ppo.total_timesteps")
    parser.add_argument("--ppo-repeats", type=int, default=3, help="PPO runs per kind (median)")
    parser.add_argument(
        "--quick", action="store_true", help="short runs: 0.5 s, 1 repeat, 8192 PPO timesteps"
    )
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    policy = config["policy"]
    if args.quick:
        args.seconds, args.repeats, args.ppo_repeats = 0.5, 1, 1
        args.ppo_timesteps = args.ppo_timesteps or 8192
    timesteps = int(args.ppo_timesteps or policy["ppo"]["total_timesteps"])
    market = demo_market()

    identical_steps = check_equal(market, policy)
    env_rows = []
    for n_envs in [int(x) for x in args.n_envs.split(",") if x.strip()]:
        runs: dict[str, list[float]] = {k: [] for k in KINDS}
        for _ in range(args.repeats):
            for kind in KINDS:  # alternate, so that load from other jobs hits both kinds alike
                runs[kind].append(env_steps_per_second(kind, market, n_envs, policy, args.seconds))
        med = {k: statistics.median(v) for k, v in runs.items()}
        env_rows.append(
            {
                "n_envs": n_envs,
                "dummy_steps_per_s": round(med["dummy"]),
                "array_steps_per_s": round(med["array"]),
                "ratio": round(med["array"] / med["dummy"], 2),
                "runs": {k: [round(x) for x in v] for k, v in runs.items()},
            }
        )

    ppo_runs: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    for _ in range(args.ppo_repeats):
        for kind in KINDS:  # alternate, as above
            ppo_runs[kind].append(ppo_run(kind, market, policy, int(config["seed"]), timesteps))
    reference = ppo_runs["dummy"][0]["_params"]
    identical_params = all(
        all(bool((run["_params"][k] == reference[k]).all()) for k in reference)
        for runs in ppo_runs.values()
        for run in runs
    )
    ppo: dict[str, dict[str, Any]] = {}
    for kind, runs in ppo_runs.items():
        for run in runs:
            run.pop("_params")
        # the median run by wall time, and every run's figures
        median = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
        ppo[kind] = {**median, "runs": runs}
    ppo_ratio = round(ppo["array"]["timesteps_per_s"] / ppo["dummy"]["timesteps_per_s"], 2)

    lines = [
        f"demo-sized market: {SYMBOLS} symbols x {BARS_PER_SYMBOL} bars, {len(market[1])} train episodes "
        f"of <= {EPISODE_BARS} bars, observation {MARKET_DIM + 2}",
        f"array == dummy on the same seeds and actions (obs, rewards, dones): {identical_steps}",
        "",
        "| measure | n_envs | dummy | array | array / dummy |",
        "|---|---|---|---|---|",
    ]
    for row in env_rows:
        lines.append(
            f"| env-only steps/s | {row['n_envs']} | {row['dummy_steps_per_s']:,} | "
            f"{row['array_steps_per_s']:,} | {row['ratio']:.1f}x |"
        )
    n_envs = policy["ppo"]["n_envs"]
    d, a = ppo["dummy"], ppo["array"]
    lines.append(
        f"| PPO timesteps/s ({timesteps} timesteps) | {n_envs} | {d['timesteps_per_s']:,.0f} | "
        f"{a['timesteps_per_s']:,.0f} | {ppo_ratio:.2f}x |"
    )
    for key, label in (
        ("seconds", "PPO wall time, s"),
        ("env_seconds", "of which env steps, s"),
        ("rollout_other_seconds", "of which rest of rollout (policy forward), s"),
        ("update_seconds", "of which PPO update, s"),
    ):
        lines.append(f"| {label} | {n_envs} | {d[key]:.2f} | {a[key]:.2f} | |")
    lines.append("")
    lines.append(f"PPO parameters identical after training (dummy vs array): {identical_params}")
    print("\n".join(lines))

    if args.out:
        from trainrelay.atomic import write_json

        write_json(
            args.out,
            {
                "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "numpy": np.__version__,
                    "load_average_1m_at_end": round(os.getloadavg()[0], 2),
                },
                "settings": {
                    "seconds": args.seconds,
                    "repeats": args.repeats,
                    "ppo": policy["ppo"],
                    "ppo_timesteps": timesteps,
                    "seed": int(config["seed"]),
                },
                "identical_steps": identical_steps,
                "env_only": env_rows,
                "ppo": {**ppo, "ratio": ppo_ratio, "identical_params": identical_params},
            },
        )


if __name__ == "__main__":
    main()
