"""Time splits of the bar timeline: walk-forward folds or one fixed split, with an embargo.

Splits are computed on row positions of the common timeline (the bar close times every symbol
has) and only then turned into times, so boundaries are exact. ``embargo_bars`` bars are left
out between train and val and between val and test, so that windows ending in one split do not
see the bars the next split is scored on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import polars as pl

from trainrelay.errors import DataError

SPLITS = ("train", "val", "test")

METADATA_SCHEMA = {
    "fold": pl.Int32,
    "split": pl.String,
    "episode": pl.Int32,
    "start": pl.Datetime("ms", "UTC"),
    "end": pl.Datetime("ms", "UTC"),
    "rows": pl.Int64,
}


@dataclass(frozen=True)
class Span:
    """Rows ``start`` .. ``stop - 1`` of the timeline."""

    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Fold:
    fold: int
    train: Span
    val: Span
    test: Span

    def span(self, split: str) -> Span:
        return {"train": self.train, "val": self.val, "test": self.test}[split]


def _floor_share(fraction: float, n: int) -> int:
    """floor(fraction * n) as written in decimal: int(0.29 * 100) is 28 in binary floating point."""
    return math.floor(round(fraction * n, 9))


def walk_forward(n: int, folds: int, val_fraction: float, test_fraction: float, embargo: int) -> list[Fold]:
    """Expanding-window folds over ``n`` bars.

    The last ``test_fraction`` of the timeline is cut into ``folds`` consecutive test blocks of
    ``floor(test_fraction * n / folds)`` bars (the remainder of the division goes to the first
    fold's train). Fold k's val block is the ``floor(val_fraction * n)`` bars that end
    ``embargo`` bars before its test block; its train block is everything up to ``embargo``
    bars before its val block.
    """
    block = _floor_share(test_fraction, n) // folds
    if block < 1:
        raise DataError(
            f"segments.test_fraction={test_fraction} of {n} bars gives empty test blocks for "
            f"segments.folds={folds}; raise test_fraction, lower folds or acquire more data"
        )
    val_rows = _floor_share(val_fraction, n)
    if val_rows < 1:
        raise DataError(
            f"segments.val_fraction={val_fraction} of {n} bars gives an empty val block; raise it"
        )
    first_test = n - folds * block
    result = []
    for k in range(folds):
        test = Span(first_test + k * block, first_test + (k + 1) * block)
        val = Span(test.start - embargo - val_rows, test.start - embargo)
        train = Span(0, val.start - embargo)
        if train.stop < 1:
            raise DataError(
                f"segments: fold {k} has no train bars ({n} bars with segments.val_fraction={val_fraction}, "
                f"segments.test_fraction={test_fraction}, segments.embargo_bars={embargo}); "
                "lower the fractions or the embargo"
            )
        result.append(Fold(k, train, val, test))
    return result


def fixed_split(n: int, train_rows: int, val_rows: int, test_rows: int, embargo: int) -> list[Fold]:
    """One fold 0: the first ``train_rows`` bars, then val and test (rows after test are unused)."""
    train = Span(0, train_rows)
    val = Span(train.stop + embargo, train.stop + embargo + val_rows)
    test = Span(val.stop + embargo, val.stop + embargo + test_rows)
    if test.stop > n:
        raise DataError(
            f"segments.fixed needs {test.stop} bars (train {train_rows} + val {val_rows} + test "
            f"{test_rows} + 2 x embargo_bars {embargo}) but the data has {n}; lower the row counts"
        )
    return [Fold(0, train, val, test)]


def calendar_folds(
    timeline: pl.Series, folds: int, test_months: int, val_days: float, embargo: int
) -> list[Fold]:
    """Walk-forward folds whose test blocks are ``test_months`` calendar months, anchored at the end.

    The last bar closes block ``folds - 1``; each block reaches back ``test_months`` months from
    the end of the one after it (calendar months: a block is 28 to 31 days per month), so the same
    settings on a longer data set test its latest months. Fold k's val block is the bars of the
    ``val_days`` days that end ``embargo`` bars before its test block; its train block is
    everything up to ``embargo`` bars before its val block (expanding window).
    """
    if len(timeline) == 0:
        raise DataError("segments: the common timeline is empty; acquire data")
    end = timeline.tail(1)
    edges = [
        end.dt.offset_by(f"-{test_months * (folds - k)}mo").item() if k < folds else end.item()
        for k in range(folds + 1)
    ]
    if edges[0] <= timeline[0]:
        raise DataError(
            f"segments: {folds} test blocks of {test_months} month(s) (segments.folds x "
            f"segments.calendar.test_months) reach back to {edges[0]:%Y-%m-%d}, before the first bar "
            f"({timeline[0]:%Y-%m-%d}); lower them or acquire more data"
        )
    # Row i belongs to block k when edges[k] < timeline[i] <= edges[k + 1].
    bounds = [int(timeline.search_sorted(edge, side="right")) for edge in edges]
    result = []
    for k in range(folds):
        test = Span(bounds[k], bounds[k + 1])
        val_stop = test.start - embargo
        if val_stop < 1:
            raise DataError(f"segments: fold {k} has no bars before its test block; acquire more data")
        val_from = timeline[val_stop - 1] - timedelta(days=val_days)
        val = Span(int(timeline.search_sorted(val_from, side="right")), val_stop)
        train = Span(0, val.start - embargo)
        if train.stop < 1 or val.rows < 1 or test.rows < 1:
            raise DataError(
                f"segments: fold {k} has an empty train, val or test block (segments.calendar, "
                f"segments.embargo_bars={embargo}); lower them or acquire more data"
            )
        result.append(Fold(k, train, val, test))
    return result


def make_folds(n: int, settings: dict[str, Any], timeline: pl.Series | None = None) -> list[Fold]:
    """Folds over ``n`` bars from the config's ``segments`` section (``timeline``: the bar close
    times, needed by ``split: calendar``)."""
    embargo = settings["embargo_bars"]
    if settings["split"] == "calendar":
        if timeline is None:
            raise ValueError("split: calendar needs the timeline")
        calendar = settings["calendar"]
        return calendar_folds(
            timeline, settings["folds"], calendar["test_months"], calendar["val_days"], embargo
        )
    if settings["split"] == "fixed":
        rows = settings["fixed"]
        return fixed_split(n, rows["train_rows"], rows["val_rows"], rows["test_rows"], embargo)
    return walk_forward(n, settings["folds"], settings["val_fraction"], settings["test_fraction"], embargo)


def episodes(span: Span, episode_bars: int) -> list[Span]:
    """Consecutive chunks of ``episode_bars`` bars; the last one holds the remainder (may be shorter)."""
    return [Span(s, min(s + episode_bars, span.stop)) for s in range(span.start, span.stop, episode_bars)]


def metadata_frame(timeline: pl.Series, folds: list[Fold], episode_bars: int) -> pl.DataFrame:
    """One row per (fold, split, episode) with inclusive start/end bar close times."""
    records = []
    for fold in folds:
        for split in SPLITS:
            for number, chunk in enumerate(episodes(fold.span(split), episode_bars)):
                records.append(
                    {
                        "fold": fold.fold,
                        "split": split,
                        "episode": number,
                        "start": timeline[chunk.start],
                        "end": timeline[chunk.stop - 1],
                        "rows": chunk.rows,
                    }
                )
    return pl.DataFrame(records, schema=METADATA_SCHEMA)
