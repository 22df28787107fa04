"""Small raw-data trees in the real archive layout, for the manifest and segments tests.

Bars are a seeded random walk written with :mod:`trainrelay.data.archive`, split into one zip per
calendar month exactly as Binance (and the synthetic source) lay them out.
"""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml

from trainrelay.data import archive
from trainrelay.deep_merge import deep_merge

REPO = Path(__file__).resolve().parent.parent
MARKET = "futures/um"
RAW_ROOT = "data/raw/synthetic"
UTC = dt.UTC


def klines(
    start: dt.datetime, n: int, interval: str = "3m", seed: int = 0, price: float = 100.0
) -> pl.DataFrame:
    """``n`` consecutive klines from ``start``: open = previous close, random high/low/volume."""
    rng = np.random.default_rng(seed)
    step = archive.INTERVAL_MS[interval]
    open_ms = int(start.timestamp() * 1000) + step * np.arange(n, dtype=np.int64)
    close = np.round(price * np.exp(np.cumsum(rng.normal(0.0, 0.002, n))), 4)
    open_ = np.concatenate([[price], close[:-1]])
    high = np.round(np.maximum(open_, close) * (1 + rng.uniform(0, 0.001, n)), 4)
    low = np.round(np.minimum(open_, close) * (1 - rng.uniform(0, 0.001, n)), 4)
    volume = np.round(rng.uniform(10, 100, n), 3)
    taker = np.round(volume * rng.uniform(0.2, 0.8, n), 3)
    return pl.DataFrame(
        {
            "open_time": pl.Series(open_ms).cast(pl.Datetime("ms", "UTC")),
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": volume,
            "close_time": pl.Series(open_ms + step - 1).cast(pl.Datetime("ms", "UTC")),
            "quote_volume": np.round(volume * close, 3),
            "count": rng.integers(5, 50, n),
            "taker_buy_volume": taker,
            "taker_buy_quote_volume": np.round(taker * close, 3),
        }
    )


def funding(start: dt.datetime, end: dt.datetime, seed: int = 0, every_hours: int = 8) -> pl.DataFrame:
    """Funding rates at ``start`` + k * ``every_hours`` before ``end``."""
    rng = np.random.default_rng(seed + 1000)
    step = every_hours * 3_600_000
    first, last = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    times = np.arange(first, last, step, dtype=np.int64)
    return pl.DataFrame(
        {
            "calc_time": pl.Series(times).cast(pl.Datetime("ms", "UTC")),
            "funding_interval_hours": np.full(len(times), every_hours, dtype=np.int64),
            "last_funding_rate": np.round(rng.normal(1e-4, 2e-4, len(times)), 8),
        }
    )


def by_month(frame: pl.DataFrame, column: str) -> dict[str, pl.DataFrame]:
    month = pl.col(column).dt.strftime("%Y-%m")
    return {key[0]: part.drop("_m") for key, part in frame.with_columns(month.alias("_m")).group_by("_m")}


def write_klines(workdir: Path, symbol: str, frame: pl.DataFrame, interval: str = "3m") -> list[str]:
    """Write one zip per calendar month; return their paths relative to ``workdir``."""
    paths = []
    for month, part in sorted(by_month(frame, "open_time").items()):
        rel = f"{RAW_ROOT}/{archive.kline_relpath(MARKET, symbol, interval, month)}"
        archive.write_archive(workdir / rel, archive.klines_to_csv(part.sort("open_time")))
        paths.append(rel)
    return paths


def write_funding(workdir: Path, symbol: str, frame: pl.DataFrame) -> list[str]:
    paths = []
    for month, part in sorted(by_month(frame, "calc_time").items()):
        rel = f"{RAW_ROOT}/{archive.funding_relpath(MARKET, symbol, month)}"
        archive.write_archive(workdir / rel, archive.funding_to_csv(part.sort("calc_time")))
        paths.append(rel)
    return paths


def write_events(workdir: Path) -> str:
    rel = f"{RAW_ROOT}/events/events.csv"
    (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
    (workdir / rel).write_text("timestamp,symbol,text\n1706659200000,BTCUSDT,Bitcoin rallies\n")
    return rel


def build_market(
    workdir: Path,
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT"),
    start: dt.datetime = dt.datetime(2024, 1, 30, tzinfo=UTC),
    bars: int = 2400,
    with_funding: bool = True,
) -> list[str]:
    """A raw tree of 3m klines (spanning a month boundary), funding and events; the file list."""
    files = []
    for index, symbol in enumerate(symbols):
        frame = klines(start, bars, seed=index, price=100.0 * (index + 1))
        files += write_klines(workdir, symbol, frame)
        if with_funding:
            end = start + dt.timedelta(minutes=3 * bars)
            files += write_funding(workdir, symbol, funding(start, end, seed=index))
    files.append(write_events(workdir))
    return files


def config(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The demo config with small-data settings, plus ``overrides``."""
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    base = deep_merge(
        copy.deepcopy(base),
        {
            "synthetic": {"symbols": ["BTCUSDT", "ETHUSDT"]},
            "manifest": {"min_rows": 100, "max_gaps": 0},
            "segments": {
                "split": "walk_forward",
                "folds": 2,
                "val_fraction": 0.1,
                "test_fraction": 0.2,
                "embargo_bars": 4,
                "episode_bars": 64,
            },
        },
    )
    return deep_merge(base, overrides or {})
