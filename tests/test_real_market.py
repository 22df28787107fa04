"""The real-market preset on the shared Binance data: its defects are handled and reported, not hidden.

Runs real ``snakemake`` up to the segments stage with ``config/presets/binance-futures-btc-eth.yaml``
exactly as written (its ``../shared/...`` data folder resolves next to the copied checkout), and the
spot 2023 folder with its 3m bars. Skipped where the shared data folder is absent.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest
import yaml

from tests.conftest import REPO, copy_workflow, run_snakemake
from trainrelay.report.analysis import data_summary

SHARED = (REPO / "../shared").resolve()
DATA = SHARED / "data/crypto/freqtrade/binance"
RUN = "binance-futures-btc-eth"
PRESET = "config/presets/binance-futures-btc-eth.yaml"
UTC = dt.UTC

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared market data not found at {DATA}")


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("real")
    (root / "shared").symlink_to(SHARED)  # the preset's ../shared/... resolves as in a real checkout
    return copy_workflow(root / "trainrelay")


@pytest.fixture(scope="module")
def futures(checkout: Path) -> Path:
    run_snakemake(checkout, f"results/{RUN}/segments/features.parquet", "--configfile", PRESET)
    return checkout / "results" / RUN


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_the_futures_outage_is_listed_in_the_manifest_and_the_report(futures: Path) -> None:
    manifest = pl.read_parquet(futures / "manifest/base_manifest.parquet")
    klines = manifest.filter(pl.col("kind") == "klines").sort("symbol")
    assert klines["symbol"].to_list() == ["BTCUSDT", "ETHUSDT"]
    assert klines["rows"].to_list() == [70_176, 70_176] and klines["gaps"].to_list() == [4, 4]
    for stretches in klines["missing"].to_list():
        assert [(g["first"], g["last"], g["bars"], g["cause"]) for g in stretches] == [
            (_at("2024-10-28 20:00"), _at("2024-10-28 20:45"), 4, "outage")
        ]
    segments = pl.read_parquet(futures / "segments/segments_metadata.parquet")
    summary = data_summary(SimpleNamespace(manifest=manifest, segments=segments))
    assert summary["missing_stretches"] == 2
    assert {(row["symbol"], row["bars"], row["cause"]) for row in summary["missing"]} == {
        ("BTCUSDT", 4, "outage"),
        ("ETHUSDT", 4, "outage"),
    }


def test_no_return_spans_the_outage_and_realized_vol_is_garman_klass(futures: Path) -> None:
    features = pl.read_parquet(futures / "segments/features.parquet")
    assert "up_share" not in features.columns and "log_trades" not in features.columns
    btc = features.filter(pl.col("symbol") == "BTCUSDT")
    # Bars opening 20:00..20:45 (closing 20:15..21:00) are outage bars: gone, not quiet.
    closes = set(btc["timestamp"].to_list())
    assert not closes & {_at("2024-10-28 20:15") + dt.timedelta(minutes=15 * k) for k in range(4)}
    after = btc.filter(pl.col("timestamp") == _at("2024-10-28 21:15")).row(0, named=True)
    before = btc.filter(pl.col("timestamp") == _at("2024-10-28 20:00")).row(0, named=True)
    assert after["log_return"] == 0.0 and math.log(after["close"] / before["close"]) != 0.0
    # realized_vol of a bar from its own OHLC (the raw bar opening 2024-03-01 12:00)
    raw = pl.read_parquet(next((futures.parent.parent / "data/raw").rglob("BTCUSDT-15m.parquet")))
    bar = raw.filter(pl.col("open_time") == _at("2024-03-01 12:00")).row(0, named=True)
    ours = btc.filter(pl.col("timestamp") == _at("2024-03-01 12:15"))["realized_vol"].item()
    gk = (
        0.5 * math.log(bar["high"] / bar["low"]) ** 2
        - (2 * math.log(2) - 1) * math.log(bar["close"] / bar["open"]) ** 2
    )
    assert ours == pytest.approx(math.sqrt(max(gk, 0.0)), rel=1e-12)


def test_six_monthly_test_blocks_end_at_the_last_bar(futures: Path) -> None:
    meta = pl.read_parquet(futures / "segments/segments_metadata.parquet")
    test = meta.filter(pl.col("split") == "test").group_by("fold").agg(pl.col("start").min()).sort("fold")
    assert [f"{t:%Y-%m}" for t in test["start"]] == [f"2024-{m:02d}" for m in range(7, 13)]
    assert meta["end"].max() == _at("2025-01-01 00:00")
    fold0 = meta.filter(pl.col("fold") == 0)
    train_end = fold0.filter(pl.col("split") == "train")["end"].max()
    assert train_end < test["start"][0] - dt.timedelta(days=14)  # the forecaster's data: before val and test


def test_spot_3m_bars_feed_the_intra_bar_features_and_the_halt_is_listed(checkout: Path) -> None:
    override = checkout / "spot.yaml"
    override.write_text(
        yaml.safe_dump(
            {
                "run": "spot2023",
                "freqtrade": {"trading_mode": "spot", "pairs": ["BTC/USDT", "ETH/USDT"], "funding": False},
                "intervals": {"fine": "3m", "bar": "15m"},
                "manifest": {"required_kinds": ["klines"], "min_rows": 1000},
                "policy": {"funding_every_hours": None},
            }
        )
    )
    run_snakemake(
        checkout, "results/spot2023/segments/features.parquet", "--configfile", PRESET, str(override)
    )
    manifest = pl.read_parquet(checkout / "results/spot2023/manifest/base_manifest.parquet")
    fine = manifest.filter((pl.col("symbol") == "BTCUSDT") & (pl.col("interval") == "3m")).row(0, named=True)
    halt = [g for g in fine["missing"] if g["first"].date() == dt.date(2023, 3, 24)]
    assert [(g["first"], g["last"], g["bars"], g["cause"]) for g in halt] == [
        (_at("2023-03-24 11:30"), _at("2023-03-24 12:39"), 24, "outage"),
        (_at("2023-03-24 12:42"), _at("2023-03-24 13:57"), 26, "missing"),
    ]
    features = pl.read_parquet(checkout / "results/spot2023/segments/features.parquet")
    assert "up_share" in features.columns and "funding_rate" not in features.columns
    assert features["up_share"].is_between(0.0, 1.0).all()
