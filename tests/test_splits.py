"""Split boundaries and embargo, exact to the row."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from trainrelay.data.splits import Span, episodes, fixed_split, make_folds, metadata_frame, walk_forward
from trainrelay.errors import DataError


def test_walk_forward_boundaries_and_embargo() -> None:
    folds = walk_forward(1000, folds=2, val_fraction=0.1, test_fraction=0.2, embargo=16)
    # test: the last 200 bars in two blocks of 100; val: 100 bars ending 16 before test;
    # train: everything up to 16 bars before val.
    assert [(f.train, f.val, f.test) for f in folds] == [
        (Span(0, 668), Span(684, 784), Span(800, 900)),
        (Span(0, 768), Span(784, 884), Span(900, 1000)),
    ]
    for fold in folds:
        assert fold.val.start - fold.train.stop == 16
        assert fold.test.start - fold.val.stop == 16


def test_walk_forward_remainder_goes_to_train() -> None:
    folds = walk_forward(1003, folds=3, val_fraction=0.1, test_fraction=0.2, embargo=0)
    # int(0.2 * 1003) = 200 -> blocks of 66; the tests cover the last 198 bars.
    assert [f.test for f in folds] == [Span(805, 871), Span(871, 937), Span(937, 1003)]
    assert folds[0].val == Span(705, 805) and folds[0].train == Span(0, 705)


def test_fixed_split_is_the_ett_protocol() -> None:
    settings = {
        "split": "fixed",
        "embargo_bars": 0,
        "fixed": {"train_rows": 8640, "val_rows": 2880, "test_rows": 2880},
    }
    (fold,) = make_folds(17420, settings)
    assert (fold.fold, fold.train, fold.val, fold.test) == (
        0,
        Span(0, 8640),
        Span(8640, 11520),
        Span(11520, 14400),
    )
    (shifted,) = fixed_split(17420, 8640, 2880, 2880, embargo=10)
    assert shifted.val == Span(8650, 11530) and shifted.test == Span(11540, 14420)


def test_fixed_split_longer_than_data() -> None:
    with pytest.raises(DataError, match=r"^segments.fixed needs 14400 bars .* but the data has 14000; lower"):
        fixed_split(14000, 8640, 2880, 2880, embargo=0)


def test_empty_splits_name_the_setting() -> None:
    with pytest.raises(DataError, match=r"^segments.test_fraction=0.01 of 100 bars gives empty test blocks"):
        walk_forward(100, folds=2, val_fraction=0.1, test_fraction=0.01, embargo=0)
    with pytest.raises(DataError, match=r"^segments.val_fraction=0.001 of 100 bars gives an empty val block"):
        walk_forward(100, folds=1, val_fraction=0.001, test_fraction=0.2, embargo=0)
    with pytest.raises(DataError, match=r"^segments: fold 0 has no train bars .*segments.embargo_bars=30"):
        walk_forward(100, folds=1, val_fraction=0.3, test_fraction=0.2, embargo=30)


def test_episodes_chunk_with_short_remainder() -> None:
    assert episodes(Span(10, 160), 64) == [Span(10, 74), Span(74, 138), Span(138, 160)]
    assert episodes(Span(0, 30), 64) == [Span(0, 30)]


def test_metadata_rows_have_inclusive_times() -> None:
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    timeline = pl.datetime_range(
        start, start + dt.timedelta(minutes=15 * 99), "15m", eager=True, time_zone="UTC"
    )
    folds = walk_forward(100, folds=1, val_fraction=0.1, test_fraction=0.2, embargo=2)
    meta = metadata_frame(timeline.dt.cast_time_unit("ms"), folds, episode_bars=32)
    assert meta.schema["fold"] == pl.Int32 and meta.schema["episode"] == pl.Int32
    rows = meta.select("split", "episode", "rows").rows()
    assert rows == [("train", 0, 32), ("train", 1, 32), ("train", 2, 2), ("val", 0, 10), ("test", 0, 20)]
    test = meta.filter(pl.col("split") == "test").row(0, named=True)
    assert test["start"] == timeline[80] and test["end"] == timeline[99]
    train_end = meta.filter(pl.col("split") == "train").get_column("end").max()
    assert train_end == timeline[65]  # train [0, 66), embargo, val [68, 78), embargo, test [80, 100)
    val = meta.filter(pl.col("split") == "val").row(0, named=True)
    assert val["start"] == timeline[68] and val["end"] == timeline[77]


def test_fractions_are_floored_as_written_not_as_binary_floats() -> None:
    # 0.29 * 100 is 28.999999999999996 in binary: the documented floor(0.29 * 100) is 29.
    (fold,) = walk_forward(100, folds=1, val_fraction=0.29, test_fraction=0.29, embargo=0)
    assert (fold.test.stop - fold.test.start, fold.val.stop - fold.val.start) == (29, 29)


def _bars(first: str, last: str) -> pl.Series:
    return pl.datetime_range(
        dt.datetime.fromisoformat(first), dt.datetime.fromisoformat(last), "15m", time_zone="UTC", eager=True
    ).dt.cast_time_unit("ms")


def test_calendar_folds_are_whole_months_anchored_at_the_last_bar() -> None:
    """2023-01-01 .. 2024-12-31 23:45 at 15m, six one-month blocks: July .. December 2024; the same
    settings on six more months test January .. June 2025."""
    settings = {
        "split": "calendar",
        "folds": 6,
        "embargo_bars": 16,
        "calendar": {"test_months": 1, "val_days": 14},
    }
    timeline = _bars("2023-01-01 00:15", "2025-01-01 00:00")  # bar close times
    folds = make_folds(len(timeline), settings, timeline)
    starts = [timeline[f.test.start] for f in folds]
    assert [f"{t:%Y-%m-%d %H:%M}" for t in starts] == [f"2024-{m:02d}-01 00:15" for m in range(7, 13)]
    assert timeline[folds[-1].test.stop - 1] == timeline[-1]
    assert [f.test.rows for f in folds] == [31 * 96, 31 * 96, 30 * 96, 31 * 96, 30 * 96, 31 * 96]
    for fold in folds:
        assert fold.val.stop + 16 == fold.test.start and fold.train.stop + 16 == fold.val.start
        assert fold.val.rows == 14 * 96 and fold.train.start == 0
    longer = _bars("2023-01-01 00:15", "2025-07-01 00:00")
    later = make_folds(len(longer), settings, longer)
    assert [f"{longer[f.test.start]:%Y-%m}" for f in later] == [f"2025-{m:02d}" for m in range(1, 7)]


def test_calendar_blocks_before_the_data_name_the_settings() -> None:
    settings = {
        "split": "calendar",
        "folds": 30,
        "embargo_bars": 0,
        "calendar": {"test_months": 1, "val_days": 7},
    }
    timeline = _bars("2023-01-01 00:15", "2025-01-01 00:00")
    with pytest.raises(
        DataError, match=r"^segments: 30 test blocks of 1 month\(s\) .* reach back to 2022-07-01"
    ):
        make_folds(len(timeline), settings, timeline)
