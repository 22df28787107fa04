"""The segments stage: aggregation values, funding join, scaler, splits, no look-ahead, determinism."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests import rawdata_factory as factory
from trainrelay.data import archive
from trainrelay.data.features import aggregate_bars, market_features
from trainrelay.data.manifest import build_manifest
from trainrelay.data.scaling import transform
from trainrelay.data.segments import build_segments, load_split
from trainrelay.data.splits import walk_forward
from trainrelay.errors import DataError

UTC = dt.UTC
START = dt.datetime(2024, 1, 30, tzinfo=UTC)
BTC_FEB = f"{factory.RAW_ROOT}/data/futures/um/monthly/klines/BTCUSDT/3m/BTCUSDT-3m-2024-02.zip"


def outputs(name: str = "seg") -> dict[str, str]:
    return {
        "features_out": f"results/{name}/features.parquet",
        "scaler_out": f"results/{name}/scaler.json",
        "metadata_out": f"results/{name}/segments_metadata.parquet",
    }


def run_stages(files: list[str], config: dict, name: str = "seg") -> dict[str, str]:
    manifest = f"results/{name}/base_manifest.parquet"
    build_manifest(factory.RAW_ROOT, files, config, manifest)
    out = outputs(name)
    build_segments(manifest, config=config, **out)
    return out


@pytest.fixture
def built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)
    files = factory.build_market(tmp_path)
    return run_stages(files, factory.config())


def test_aggregation_to_15m_values() -> None:
    fine = factory.klines(START, 11, seed=3)  # two full 15m bars and one 3m bar of a third
    bars = aggregate_bars(fine, "15m", 5, prev_close=None)
    assert bars.height == 2  # the incomplete third bar is dropped
    closes = fine.get_column("close").to_list()
    previous = [fine.get_column("open")[0], *closes[:-1]]
    returns = [math.log(c / p) for c, p in zip(closes, previous, strict=True)]
    for k, bar in enumerate(bars.iter_rows(named=True)):
        part = fine.slice(5 * k, 5)
        r = returns[5 * k : 5 * k + 5]
        assert bar["timestamp"] == START + dt.timedelta(minutes=15 * (k + 1))  # close time
        assert bar["open"] == part["open"][0] and bar["close"] == part["close"][-1]
        assert bar["high"] == part["high"].max() and bar["low"] == part["low"].min()
        assert bar["volume"] == pytest.approx(part["volume"].sum(), rel=1e-15)
        assert bar["taker_buy_volume"] == pytest.approx(part["taker_buy_volume"].sum(), rel=1e-15)
        assert bar["count"] == part["count"].sum()
        assert bar["realized_vol"] == pytest.approx(math.sqrt(sum(x * x for x in r)), rel=1e-12)
        assert bar["up_share"] == sum(x > 0 for x in r) / 5
    # The first fine return of a later month uses the previous month's last close.
    carried = aggregate_bars(fine.slice(5, 5), "15m", 5, prev_close=closes[4])
    assert carried.row(0, named=True)["realized_vol"] == pytest.approx(
        bars.row(1, named=True)["realized_vol"]
    )


def test_aggregation_matches_the_synthetic_15m_archive(tmp_path: Path) -> None:
    synthetic = pytest.importorskip("trainrelay.data.synthetic")
    config = factory.config({"synthetic": {"symbols": ["BTCUSDT"], "months": 1, "text_events": False}})
    synthetic.generate(config, tmp_path)
    fine = archive.read_klines(tmp_path / archive.kline_relpath("futures/um", "BTCUSDT", "3m", "2024-01"))
    bar = archive.read_klines(tmp_path / archive.kline_relpath("futures/um", "BTCUSDT", "15m", "2024-01"))
    ours = aggregate_bars(fine, "15m", 5, prev_close=None)
    assert ours.height == bar.height == 31 * 96
    theirs = bar.with_columns((pl.col("open_time") + pl.duration(minutes=15)).alias("timestamp"))
    for column in ["timestamp", "open", "high", "low", "close", "count"]:
        assert ours.get_column(column).cast(theirs.schema[column]).equals(theirs.get_column(column)), column
    for column in ["volume", "taker_buy_volume"]:
        np.testing.assert_allclose(ours.get_column(column), theirs.get_column(column), rtol=1e-12)


def test_funding_join_takes_the_last_rate_at_or_before_the_bar_close() -> None:
    bars = aggregate_bars(factory.klines(START, 1000, seed=1), "15m", 5, prev_close=None)
    t = bars.get_column("timestamp")[150]
    funding = pl.DataFrame(
        {
            "calc_time": [START, t, t + dt.timedelta(milliseconds=1)],
            "funding_interval_hours": [8, 8, 8],
            "last_funding_rate": [0.1, 0.5, 0.7],
        },
        schema_overrides={"calc_time": pl.Datetime("ms", "UTC")},
    )
    features = market_features(bars, funding, "BTCUSDT")
    rate = dict(features.select("timestamp", "funding_rate").iter_rows())
    step = dt.timedelta(minutes=15)
    assert (rate[t - step], rate[t], rate[t + step]) == (0.1, 0.5, 0.7)


def test_features_table(built: dict[str, str]) -> None:
    features = pl.read_parquet(built["features_out"])
    scaler = json.loads(Path(built["scaler_out"]).read_text())
    assert features.columns[:4] == ["timestamp", "symbol", "close", "log_return"]
    assert features.columns[3:] == scaler["features"]
    assert {"log_return", "realized_vol", "funding_rate"} <= set(scaler["features"])
    assert all(features.schema[c] == pl.Float64 for c in ["close", *scaler["features"]])
    values = features.select(scaler["features"]).to_numpy()
    assert np.isfinite(values).all()
    assert features.equals(features.sort("symbol", "timestamp"))
    # 2400 3m bars = 480 15m bars per symbol; the 96-bar windows need 96 bars of warm-up.
    per_symbol = features.group_by("symbol").agg(pl.len(), pl.col("timestamp").min()).sort("symbol")
    assert per_symbol.get_column("len").to_list() == [384, 384]
    assert per_symbol.get_column("timestamp").to_list() == [START + dt.timedelta(minutes=15 * 97)] * 2
    btc = features.filter(pl.col("symbol") == "BTCUSDT")
    expected = (btc.get_column("close") / btc.get_column("close").shift(1)).log()
    np.testing.assert_allclose(btc.get_column("log_return")[1:], expected[1:], rtol=1e-12)


def test_scaler_is_fitted_on_each_folds_train_rows(built: dict[str, str]) -> None:
    scaler = json.loads(Path(built["scaler_out"]).read_text())
    assert scaler["fitted_on"] == "train" and sorted(scaler["folds"]) == ["0", "1"]
    for fold in (0, 1):
        train = load_split(built["features_out"], built["metadata_out"], fold, "train")
        stats = scaler["folds"][str(fold)]
        for column in scaler["features"]:
            values = train.get_column(column).to_numpy()
            assert stats["mean"][column] == pytest.approx(values.mean(), rel=1e-9, abs=1e-15), column
            assert stats["std"][column] == pytest.approx(values.std(ddof=0), rel=1e-9), column
        scaled = transform(train, scaler, fold).select(scaler["features"]).to_numpy()
        np.testing.assert_allclose(scaled.mean(axis=0), 0.0, atol=1e-9)
        np.testing.assert_allclose(scaled.std(axis=0), 1.0, rtol=1e-9)
    # Fold 1 trains on more bars than fold 0, so its statistics differ.
    assert scaler["folds"]["0"]["mean"]["log_volume"] != scaler["folds"]["1"]["mean"]["log_volume"]


def test_split_metadata_and_embargo(built: dict[str, str]) -> None:
    features = pl.read_parquet(built["features_out"])
    timeline = features.filter(pl.col("symbol") == "BTCUSDT").get_column("timestamp")
    meta = pl.read_parquet(built["metadata_out"])
    assert meta.schema["fold"] == pl.Int32 and meta.schema["episode"] == pl.Int32
    expected = walk_forward(384, folds=2, val_fraction=0.1, test_fraction=0.2, embargo=4)
    for fold in expected:
        for split in ("train", "val", "test"):
            span = fold.span(split)
            rows = meta.filter((pl.col("fold") == fold.fold) & (pl.col("split") == split))
            assert rows.get_column("rows").sum() == span.rows
            assert rows.get_column("start").min() == timeline[span.start]
            assert rows.get_column("end").max() == timeline[span.stop - 1]
            assert rows.get_column("episode").to_list() == list(range(math.ceil(span.rows / 64)))
            part = load_split(built["features_out"], built["metadata_out"], fold.fold, split)
            assert part.height == 2 * span.rows
        # Exactly embargo_bars bars lie between train and val and between val and test.
        for earlier, later in (("train", "val"), ("val", "test")):
            end = meta.filter((pl.col("fold") == fold.fold) & (pl.col("split") == earlier))["end"].max()
            start = meta.filter((pl.col("fold") == fold.fold) & (pl.col("split") == later))["start"].min()
            assert timeline.filter((timeline > end) & (timeline < start)).len() == 4


def test_same_config_same_bytes(built: dict[str, str], tmp_path: Path) -> None:
    files = [str(p.relative_to(tmp_path)) for p in (tmp_path / factory.RAW_ROOT).rglob("*") if p.is_file()]
    again = run_stages(files, factory.config(), name="again")
    for key, path in built.items():
        assert Path(path).read_bytes() == Path(again[key]).read_bytes(), key


def test_no_look_ahead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    files = factory.build_market(tmp_path)
    config = factory.config()
    before = pl.read_parquet(run_stages(files, config, "before")["features_out"])
    cut = dt.datetime(2024, 2, 2, 12, tzinfo=UTC)
    # Change every fine bar that opens at or after the cut and every later funding rate.
    later = pl.col("open_time") >= cut
    for path in [p for p in files if "/klines/" in p]:
        frame = archive.read_klines(path)
        changed = frame.with_columns(
            *[
                pl.when(later).then(pl.col(c) * 1.5).otherwise(pl.col(c)).alias(c)
                for c in ["open", "high", "low", "close"]
            ],
            pl.when(later).then(pl.col("volume") * 3).otherwise(pl.col("volume")).alias("volume"),
        )
        archive.write_archive(path, archive.klines_to_csv(changed))
    for path in [p for p in files if "/fundingRate/" in p]:
        frame = archive.read_funding(path)
        changed = frame.with_columns(
            pl.when(pl.col("calc_time") > cut)
            .then(0.05)
            .otherwise(pl.col("last_funding_rate"))
            .alias("last_funding_rate")
        )
        archive.write_archive(path, archive.funding_to_csv(changed))
    after = pl.read_parquet(run_stages(files, config, "after")["features_out"])
    assert before.height == after.height
    known = pl.col("timestamp") <= cut
    assert before.filter(known).height > 100
    assert before.filter(known).equals(after.filter(known))
    assert not before.filter(~known).equals(after.filter(~known))


def test_no_return_spans_a_gap_of_either_symbol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ETH lacks two 15m bars; BTC's rows there leave the common timeline. The row after the hole has
    return 0 for both symbols (nobody is credited or charged across a gap); every other return is
    the bar's own log(close / previous close)."""
    monkeypatch.chdir(tmp_path)
    files = []
    for index, symbol in enumerate(("BTCUSDT", "ETHUSDT")):
        fine = factory.klines(START, 2400, seed=index, price=100.0 * (index + 1))
        if symbol == "ETHUSDT":  # 10 fine 3m bars: two whole 15m bars
            fine = fine.filter(~pl.int_range(pl.len()).is_between(1000, 1009))
        files += factory.write_klines(tmp_path, symbol, fine)
        end = START + dt.timedelta(minutes=3 * 2400)
        files += factory.write_funding(tmp_path, symbol, factory.funding(START, end, seed=index))
    files.append(factory.write_events(tmp_path))
    config = factory.config({"manifest": {"max_gaps": 100}})
    features = pl.read_parquet(run_stages(files, config)["features_out"])
    for symbol, rows in features.group_by("symbol"):
        steps = rows["timestamp"].diff().dt.total_minutes().to_numpy()[1:]
        closes = rows["close"].to_numpy()
        returns = rows["log_return"].to_numpy()[1:]
        assert (steps == 45).sum() == 1, symbol  # the hole: one row follows three 15m bars
        hole = steps == 45
        assert returns[hole][0] == 0.0, symbol
        assert abs(np.diff(np.log(closes))[hole][0]) > 0  # there was a move to leave out
        np.testing.assert_allclose(returns[~hole], np.diff(np.log(closes))[~hole], rtol=1e-12, atol=1e-15)


def test_outage_bars_are_missing_bars_and_no_finer_bars_use_garman_klass() -> None:
    """An outage bar (zero volume, flat) is dropped like a missing one, and the next bar's return is 0;
    with 15m bars only, realized_vol is the Garman-Klass estimate and up_share, trade counts and
    taker volumes (absent from the source) are left out, not zero-filled."""
    fine = factory.klines(START, 1000, seed=4)
    bars = aggregate_bars(fine, "15m", 5, prev_close=None).select(
        "timestamp", "open", "high", "low", "close", "volume"
    )
    bars = bars.rename({"timestamp": "open_time"}).with_columns(pl.col("open_time") - pl.duration(minutes=15))
    flat = pl.int_range(pl.len()).is_between(120, 123)
    price = pl.col("close").shift(1)
    outage = bars.with_columns(
        *[pl.when(flat).then(price).otherwise(pl.col(c)).alias(c) for c in ("open", "high", "low", "close")],
        pl.when(flat).then(0.0).otherwise(pl.col("volume")).alias("volume"),
    )
    only15 = aggregate_bars(outage, "15m", 1, prev_close=None)
    assert only15.height == bars.height - 4
    assert "up_share" not in only15.columns and "count" not in only15.columns
    row = bars.row(10, named=True)
    expected = math.sqrt(
        0.5 * math.log(row["high"] / row["low"]) ** 2
        - (2 * math.log(2) - 1) * math.log(row["close"] / row["open"]) ** 2
    )
    assert only15["realized_vol"][10] == pytest.approx(expected, rel=1e-12)
    features = market_features(only15, None, "BTCUSDT", 900_000)
    assert "taker_imbalance" not in features.columns and "log_trades" not in features.columns
    after = features.filter(pl.col("timestamp") == bars["open_time"][124] + dt.timedelta(minutes=15))
    assert after["log_return"].item() == 0.0


def test_non_finite_feature_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    files = factory.build_market(tmp_path)
    frame = archive.read_klines(BTC_FEB)
    broken = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 600).then(0.0).otherwise(pl.col("low")).alias("low")
    )
    archive.write_archive(BTC_FEB, archive.klines_to_csv(broken))
    with pytest.raises(
        DataError, match=r"^symbol BTCUSDT: feature\(s\) bar_range.* \(segments check 'finite'\)"
    ):
        run_stages(files, factory.config())


def test_too_little_data_for_the_split_names_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    files = factory.build_market(tmp_path)
    config = factory.config({"segments": {"split": "fixed", "embargo_bars": 0}})  # needs 14400 bars
    with pytest.raises(DataError, match=r"^segments.fixed needs 14400 bars .* the data has 384"):
        run_stages(files, config)


def write_series(path: Path, frame: pl.DataFrame) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path)
    return str(path)


def series_config(**segments: object) -> dict:
    return factory.config(
        {
            "source": "files",
            "files": {"symbol": "ett", "interval": "1h"},
            "manifest": {"required_kinds": ["series"], "min_rows": 10},
            "segments": {
                "split": "fixed",
                "embargo_bars": 0,
                "fixed": {"train_rows": 60, "val_rows": 20, "test_rows": 20},
            }
            | segments,
        }
    )


def test_series_source_uses_the_value_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    stamps = pl.datetime_range(dt.datetime(2016, 7, 1), dt.datetime(2016, 7, 5, 23), "1h", eager=True)
    values = np.random.default_rng(0).normal(size=(len(stamps), 2))
    frame = pl.DataFrame({"timestamp": stamps, "HUFL": values[:, 0], "OT": values[:, 1]})
    path = write_series(Path("data/raw/files/series/ett.parquet"), frame)
    config = series_config()
    build_manifest("data/raw/files", [path], config, "results/s/manifest.parquet")
    out = outputs("s")
    build_segments("results/s/manifest.parquet", config=config, **out)
    features = pl.read_parquet(out["features_out"])
    scaler = json.loads(Path(out["scaler_out"]).read_text())
    assert features.columns == ["timestamp", "symbol", "HUFL", "OT"]  # no price, so no log_return
    assert scaler["features"] == ["HUFL", "OT"] and features.height == 120
    assert scaler["folds"]["0"]["mean"]["OT"] == pytest.approx(values[:60, 1].mean(), rel=1e-12)
    assert scaler["folds"]["0"]["std"]["OT"] == pytest.approx(values[:60, 1].std(), rel=1e-12)
    meta = (
        pl.read_parquet(out["metadata_out"]).group_by("split", maintain_order=True).agg(pl.col("rows").sum())
    )
    assert meta.rows() == [("train", 60), ("val", 20), ("test", 20)]
    test = load_split(out["features_out"], out["metadata_out"], 0, "test")
    assert test.get_column("timestamp").to_list() == features.get_column("timestamp")[80:100].to_list()


def test_series_with_a_close_column_gets_log_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    stamps = pl.datetime_range(dt.datetime(2020, 1, 1), dt.datetime(2020, 1, 5, 23), "1h", eager=True)
    close = 100 * np.exp(np.cumsum(np.random.default_rng(1).normal(0, 0.01, len(stamps))))
    path = write_series(
        Path("data/raw/files/series/ett.parquet"),
        pl.DataFrame({"timestamp": stamps, "close": close, "x": close * 2}),
    )
    config = series_config()
    build_manifest("data/raw/files", [path], config, "results/s/manifest.parquet")
    out = outputs("s")
    build_segments("results/s/manifest.parquet", config=config, **out)
    features = pl.read_parquet(out["features_out"])
    assert features.columns == ["timestamp", "symbol", "close", "log_return", "x"]
    assert features.height == 119  # the first row has no return
    assert features["log_return"][0] == pytest.approx(math.log(close[1] / close[0]), rel=1e-12)


def test_staged_copies_give_the_same_manifest_and_features(built: dict[str, str], tmp_path: Path) -> None:
    """Under a storage plugin the job reads local copies; the manifest keeps the logical paths."""
    import shutil

    logical = sorted(
        str(p.relative_to(tmp_path)) for p in (tmp_path / factory.RAW_ROOT).rglob("*") if p.is_file()
    )
    staged_root = Path(".snakemake/storage/fs/drive")
    staged = []
    for path in logical:
        target = staged_root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        staged.append(str(target))
    config = factory.config()
    manifest = build_manifest(factory.RAW_ROOT, staged, config, "results/staged/base_manifest.parquet")
    assert manifest.get_column("path").to_list() == sorted(p for p in logical if not p.endswith(".CHECKSUM"))
    assert (
        Path("results/staged/base_manifest.parquet").read_bytes()
        == Path("results/seg/base_manifest.parquet").read_bytes()
    )
    out = outputs("staged")
    shutil.rmtree(factory.RAW_ROOT)  # only the staged copies exist now
    build_segments("results/staged/base_manifest.parquet", config=config, raw_files=staged, **out)
    assert Path(out["features_out"]).read_bytes() == Path(built["features_out"]).read_bytes()
    with pytest.raises(DataError, match=r"not among this job's raw inputs; re-run the manifest rule$"):
        build_segments("results/staged/base_manifest.parquet", config=config, raw_files=staged[1:], **out)
