"""The synthetic source: layout, determinism, exact 15m aggregation, and realism checked with numbers."""

from __future__ import annotations

import copy
import datetime as dt
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from trainrelay.data import archive
from trainrelay.data.events import read_events
from trainrelay.data.synthetic import (
    REGIMES,
    SyntheticMarket,
    SyntheticSpec,
    classify_headline,
    generate,
    symbol_profile,
    synthetic_relpaths,
)
from trainrelay.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
DEMO = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
HOUR_MS = 3_600_000


def demo_config(**synthetic: object) -> dict:
    config = copy.deepcopy(DEMO)
    config["synthetic"].update(synthetic)
    return config


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, float]:
    """The default demo (2 symbols x 2 months of 3m and 15m bars), generated once."""
    root = tmp_path_factory.mktemp("synthetic")
    config = demo_config()
    started = time.perf_counter()
    generate(config, root)
    return root, config, time.perf_counter() - started


def klines(root: Path, config: dict, symbol: str, interval: str) -> pl.DataFrame:
    spec = SyntheticSpec.from_config(config)
    paths = [root / archive.kline_relpath(spec.market, symbol, interval, m) for m in spec.months]
    return pl.concat([archive.read_klines(p) for p in paths])


def log_returns(frame: pl.DataFrame) -> np.ndarray:
    return np.diff(np.log(frame["close"].to_numpy()))


def autocorrelation(x: np.ndarray, lag: int) -> float:
    x = x - x.mean()
    return float((x[lag:] * x[:-lag]).sum() / (x * x).sum())


def test_writes_exactly_the_declared_files_quickly(demo: tuple[Path, dict, float]) -> None:
    root, config, seconds = demo
    written = sorted(files_under(root))
    assert written == synthetic_relpaths(config)
    # 2 symbols x 2 months x (3m, 15m, funding) zips + checksums, plus events.csv
    assert len(written) == 2 * 2 * 3 * 2 + 1
    assert seconds < 20, f"demo generation took {seconds:.1f}s"
    for path in written:
        if path.endswith(".zip"):
            archive.verify_checksum(root / path)


def test_same_seed_same_bytes_other_seed_different(demo: tuple[Path, dict, float], tmp_path: Path) -> None:
    root, config, _ = demo
    generate(config, tmp_path / "again")
    assert files_under(tmp_path / "again") == files_under(root)
    other = copy.deepcopy(config)
    other["seed"] = config["seed"] + 1
    generate(other, tmp_path / "other")
    theirs, ours = files_under(tmp_path / "other"), files_under(root)
    assert theirs.keys() == ours.keys()
    assert all(theirs[k] != ours[k] for k in ours)


def test_a_symbol_does_not_change_when_another_is_added(
    demo: tuple[Path, dict, float], tmp_path: Path
) -> None:
    root, _, _ = demo
    alone = demo_config(symbols=["BTCUSDT"], months=1)
    generate(alone, tmp_path)
    path = archive.kline_relpath("futures/um", "BTCUSDT", "3m", "2024-01")
    assert (tmp_path / path).read_bytes() == (root / path).read_bytes()


def test_bar_is_exact_aggregation_of_fine_bars(demo: tuple[Path, dict, float]) -> None:
    root, config, _ = demo
    for symbol in config["synthetic"]["symbols"]:
        profile = symbol_profile(symbol)
        fine = klines(root, config, symbol, "3m")
        bar = klines(root, config, symbol, "15m")
        assert fine.height == 5 * bar.height == 5 * 24 * 4 * (31 + 29)
        agg = (
            fine.group_by_dynamic("open_time", every="15m")
            .agg(
                pl.col("open").first(),
                pl.col("high").max(),
                pl.col("low").min(),
                pl.col("close").last(),
                *[pl.col(c).sum() for c in ("volume", "quote_volume", "count")],
                *[pl.col(c).sum() for c in ("taker_buy_volume", "taker_buy_quote_volume")],
            )
            .sort("open_time")
        )
        assert agg["open_time"].equals(bar["open_time"])
        for column in ("open", "high", "low", "close", "count"):
            assert (agg[column] == bar[column]).all(), column
        # Sums are exact in the archive's decimals (lots, 1e-4 quote units).
        for column, decimals in [
            ("volume", profile.lot_decimals),
            ("taker_buy_volume", profile.lot_decimals),
            ("quote_volume", 4),
            ("taker_buy_quote_volume", 4),
        ]:
            ours = np.rint(agg[column].to_numpy() * 10**decimals).astype(np.int64)
            theirs = np.rint(bar[column].to_numpy() * 10**decimals).astype(np.int64)
            assert (ours == theirs).all(), column
        close_ms = bar["close_time"].dt.epoch("ms") - bar["open_time"].dt.epoch("ms")
        assert (close_ms == archive.INTERVAL_MS["15m"] - 1).all()


def test_bars_have_no_gaps_and_are_consistent(demo: tuple[Path, dict, float]) -> None:
    root, config, _ = demo
    for symbol in config["synthetic"]["symbols"]:
        for interval in ("3m", "15m"):
            frame = klines(root, config, symbol, interval)
            steps = frame["open_time"].dt.epoch("ms").diff().drop_nulls()
            assert (steps == archive.INTERVAL_MS[interval]).all()  # across the month boundary too
            assert frame["open_time"][0] == dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
            assert (frame["open"][1:] == frame["close"][:-1]).all()
            assert frame.select((pl.col("high") >= pl.max_horizontal("open", "close")).all()).item()
            assert frame.select((pl.col("low") <= pl.min_horizontal("open", "close")).all()).item()
            assert (frame["low"] > 0).all() and (frame["volume"] > 0).all() and (frame["count"] >= 1).all()
            assert (frame["taker_buy_volume"] <= frame["volume"]).all()
            assert (frame["taker_buy_quote_volume"] <= frame["quote_volume"]).all()


def test_funding_is_exactly_eight_hourly_and_follows_drift(demo: tuple[Path, dict, float]) -> None:
    root, config, _ = demo
    spec = SyntheticSpec.from_config(config)
    bars = klines(root, config, "BTCUSDT", "3m")
    closes = dict(zip(bars["close_time"].dt.epoch("ms").to_list(), bars["close"].to_list(), strict=True))
    rates, drifts = [], []
    for month in spec.months:
        funding = archive.read_funding(root / archive.funding_relpath(spec.market, "BTCUSDT", month))
        times = funding["calc_time"]
        assert (times.dt.hour().is_in([0, 8, 16])).all()
        assert (times.dt.minute() == 0).all() and (times.dt.second() == 0).all()
        assert (times.dt.epoch("ms").diff().drop_nulls() == 8 * HOUR_MS).all()
        days = 31 if month == "2024-01" else 29
        assert funding.height == 3 * days
        assert (funding["funding_interval_hours"] == 8).all()
        assert funding["last_funding_rate"].abs().max() <= 0.003
        for t, rate in zip(
            times.dt.epoch("ms").to_list(), funding["last_funding_rate"].to_list(), strict=True
        ):
            now, before = closes.get(t - 1), closes.get(t - 8 * HOUR_MS - 1)
            if now is not None and before is not None:
                rates.append(rate)
                drifts.append(np.log(now / before))
    assert len(rates) == 3 * 60 - 2  # the first two fundings lack a bar closing at or 8 h before them
    assert np.corrcoef(rates, drifts)[0, 1] > 0.5
    assert 0.00005 < float(np.mean(rates)) < 0.0003  # a positive base rate, as on Binance


def test_volatility_clusters_while_returns_are_nearly_uncorrelated(demo: tuple[Path, dict, float]) -> None:
    root, config, _ = demo
    returns = log_returns(klines(root, config, "BTCUSDT", "3m"))
    abs_acf = [autocorrelation(np.abs(returns), lag) for lag in range(1, 11)]
    raw_acf = [autocorrelation(returns, lag) for lag in range(1, 11)]
    assert min(abs_acf) > 0.1, abs_acf
    assert max(abs(a) for a in raw_acf) < 0.05, raw_acf
    # Student-t shocks and GARCH variance: fat tails
    standard = (returns - returns.mean()) / returns.std()
    assert float(np.mean(standard**4)) > 5.0


def test_intraday_volatility_and_volume_are_u_shaped(demo: tuple[Path, dict, float]) -> None:
    root, config, _ = demo
    frame = klines(root, config, "ETHUSDT", "3m")
    returns = log_returns(frame)
    hours = frame["open_time"].dt.hour().to_numpy()[1:]
    volume = frame["volume"].to_numpy()[1:]
    vol_by_hour = np.array([returns[hours == h].std() for h in range(24)])
    volume_by_hour = np.array([volume[hours == h].mean() for h in range(24)])
    edges, midday = [0, 1, 2, 21, 22, 23], [9, 10, 11, 12, 13, 14]
    assert vol_by_hour[edges].mean() > 1.4 * vol_by_hour[midday].mean()
    assert volume_by_hour[edges].mean() > 1.8 * volume_by_hour[midday].mean()
    assert np.corrcoef(volume, np.abs(returns))[0, 1] > 0.4


def test_symbols_share_a_common_factor(demo: tuple[Path, dict, float]) -> None:
    root, config, _ = demo
    btc = log_returns(klines(root, config, "BTCUSDT", "15m"))
    eth = log_returns(klines(root, config, "ETHUSDT", "15m"))
    assert 0.45 < np.corrcoef(btc, eth)[0, 1] < 0.9


def test_regimes_carry_persistent_drift(demo: tuple[Path, dict, float]) -> None:
    root, config, _ = demo
    market = SyntheticMarket(SyntheticSpec.from_config(config))
    assert set(market.regime_ids.tolist()) == set(range(len(REGIMES)))
    durations_h = np.diff(market.regime_starts) / HOUR_MS
    assert durations_h.min() >= 2.0 and 10 < np.median(durations_h) < 60
    for symbol in config["synthetic"]["symbols"]:
        frame = klines(root, config, symbol, "15m")
        returns = log_returns(frame)
        regime = market.regime_at(frame["open_time"].dt.epoch("ms").to_numpy()[1:])
        t_stat = {}
        for i, name in enumerate(REGIMES):
            r = returns[regime == i]
            t_stat[name] = r.mean() / r.std() * np.sqrt(r.size)
        assert t_stat["bull"] > 1.5 and t_stat["bear"] < -1.5, t_stat
        calm, turbulent = returns[regime == 0].std(), returns[regime == 3].std()
        assert turbulent > 2.0 * calm


def test_events_announce_the_next_regime(demo: tuple[Path, dict, float]) -> None:
    root, config, _ = demo
    spec = SyntheticSpec.from_config(config)
    market = SyntheticMarket(spec)
    assert (root / "events/events.csv").read_text().startswith("timestamp,symbol,text\n")
    events = read_events(root / "events/events.csv")
    days = (spec.span[1] - spec.span[0]) / (24 * HOUR_MS)
    assert 1.0 < events.height / days < 6.0
    assert events["timestamp"].is_sorted()
    assert set(events["symbol"]) <= {"*", *spec.symbols}
    categories = [classify_headline(text) for text in events["text"]]
    assert None not in categories
    switches, new_regimes = market.regime_starts[1:], market.regime_ids[1:]

    def next_switch(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i = np.searchsorted(switches, t, side="right")
        valid = i < switches.size
        wait = np.where(valid, switches[np.minimum(i, switches.size - 1)] - t, np.iinfo(np.int64).max)
        return wait, new_regimes[np.minimum(i, switches.size - 1)]

    worded = np.array([c in REGIMES for c in categories])
    times = events["timestamp"].dt.epoch("ms").to_numpy()[worded]
    wait, upcoming = next_switch(times)
    soon = wait <= 6 * HOUR_MS
    random_times = np.random.default_rng(0).integers(spec.span[0], spec.span[1], 20_000)
    chance = float(np.mean(next_switch(random_times)[0] <= 6 * HOUR_MS))
    assert soon.mean() > 2.5 * chance, (soon.mean(), chance)
    words = np.array([c for c in categories if c in REGIMES])
    matches = words[soon] == np.array(REGIMES)[upcoming[soon]]
    assert matches.mean() > 0.6  # chance is about 1/3: the switch never repeats the current regime
    neutral = sum(c == "neutral" for c in categories)
    assert neutral > 0.4 * len(categories)


def test_text_events_off_writes_header_only(tmp_path: Path) -> None:
    config = demo_config(symbols=["BTCUSDT"], months=1, text_events=False)
    generate(config, tmp_path)
    assert (tmp_path / "events/events.csv").read_text() == "timestamp,symbol,text\n"


def test_spot_market_has_no_funding(tmp_path: Path) -> None:
    config = demo_config(symbols=["SOLUSDT"], months=1, market="spot")
    generate(config, tmp_path)
    written = sorted(files_under(tmp_path))
    assert written == synthetic_relpaths(config)
    assert not any("fundingRate" in p for p in written)
    frame = archive.read_klines(tmp_path / archive.kline_relpath("spot", "SOLUSDT", "15m", "2024-01"))
    assert frame.height == 31 * 96


def test_other_intervals_and_invalid_pairs(tmp_path: Path) -> None:
    config = demo_config(symbols=["BTCUSDT"], months=1, text_events=False)
    config["intervals"] = {"fine": "5m", "bar": "1h"}
    generate(config, tmp_path)
    fine = archive.read_klines(tmp_path / archive.kline_relpath("futures/um", "BTCUSDT", "5m", "2024-01"))
    bar = archive.read_klines(tmp_path / archive.kline_relpath("futures/um", "BTCUSDT", "1h", "2024-01"))
    assert fine.height == 12 * bar.height == 12 * 24 * 31
    assert bar["high"].to_list()[:3] == [fine["high"][i * 12 : (i + 1) * 12].max() for i in range(3)]
    config["intervals"] = {"fine": "15m", "bar": "15m"}
    assert len(synthetic_relpaths(config)) == 2 * 2 + 1  # one interval only, plus funding, plus events
    config["intervals"] = {"fine": "15m", "bar": "5m"}
    with pytest.raises(ConfigError, match="intervals: bar '5m' must be a whole multiple of fine '15m'"):
        synthetic_relpaths(config)


def test_month_by_month_continues_across_the_year(tmp_path: Path) -> None:
    config = demo_config(symbols=["ETHUSDT"], start_month="2023-12", months=2, text_events=False)
    generate(config, tmp_path)
    dec = archive.read_klines(tmp_path / archive.kline_relpath("futures/um", "ETHUSDT", "15m", "2023-12"))
    jan = archive.read_klines(tmp_path / archive.kline_relpath("futures/um", "ETHUSDT", "15m", "2024-01"))
    assert dec["open_time"][-1] + dt.timedelta(minutes=15) == jan["open_time"][0]
    assert dec["close"][-1] == jan["open"][0]
