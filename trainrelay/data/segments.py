"""The ``segments`` stage: checked raw files -> features, per-fold scaler, split metadata.

Memory stays bounded by one symbol: each symbol's fine klines are aggregated month by month
into bars, its features are built and parked in a scratch parquet file; then the common
timeline (bar close times every symbol has) is split into folds, and the symbols are streamed
one by one into ``features.parquet`` while the per-fold train statistics are accumulated.
Same inputs and config give byte-identical outputs.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from trainrelay import atomic
from trainrelay.core.progress import progress_bar
from trainrelay.data import archive
from trainrelay.data.features import (
    NEEDS,
    OPTIONAL_KLINE_COLUMNS,
    after_gap,
    aggregate_bars,
    bar_steps,
    is_outage,
    market_features,
    series_features,
)
from trainrelay.data.manifest import read_series
from trainrelay.data.scaling import RunningMoments
from trainrelay.data.splits import Fold, make_folds, metadata_frame
from trainrelay.errors import DataError

log = logging.getLogger(__name__)


def _symbol_bars(manifest: pl.DataFrame, symbol: str, fine: str, bar: str) -> pl.DataFrame:
    """One symbol's decision bars, built a month at a time (the fine bars never all in memory)."""
    steps = bar_steps(fine, bar)
    months = manifest.filter(
        (pl.col("kind") == "klines") & (pl.col("symbol") == symbol) & (pl.col("interval") == fine)
    ).sort("month", "path")
    chunks = []
    prev_close: float | None = None
    prev_open_time = None
    for path in months.get_column("path"):
        fine_bars = archive.read_klines(path)
        chunks.append(aggregate_bars(fine_bars, bar, steps, prev_close, prev_open_time))
        traded = fine_bars.filter(~is_outage(fine_bars))  # an outage bar's close is no price
        if traded.height:
            prev_close, prev_open_time = traded.get_column("close")[-1], traded.get_column("open_time")[-1]
    return pl.concat(chunks)


def _symbol_funding(manifest: pl.DataFrame, symbol: str) -> pl.DataFrame | None:
    files = manifest.filter((pl.col("kind") == "funding") & (pl.col("symbol") == symbol)).sort(
        "month", "path"
    )
    if files.height == 0:
        return None
    return pl.concat([archive.read_funding(p) for p in files.get_column("path")]).sort("calc_time")


def market_frames(
    manifest: pl.DataFrame, config: dict[str, Any]
) -> Iterator[tuple[str, pl.DataFrame, list[str]]]:
    """(symbol, features frame, feature names) for each symbol with fine klines, in symbol order."""
    fine, bar = config["intervals"]["fine"], config["intervals"]["bar"]
    symbols = sorted(
        manifest.filter((pl.col("kind") == "klines") & (pl.col("interval") == fine))
        .get_column("symbol")
        .unique()
        .to_list()
    )
    if not symbols:
        raise DataError(
            f"manifest has no {fine} klines (segments check 'inputs'); set intervals.fine to the interval "
            "acquire downloads or re-run acquire"
        )
    if bar_steps(fine, bar) == 1:
        log.info(
            "segments: no bars finer than %s (intervals.fine = intervals.bar): realized_vol is the "
            "Garman-Klass estimate of each bar's OHLC and up_share is left out",
            bar,
        )
    with_funding = set(manifest.filter(pl.col("kind") == "funding").get_column("symbol").to_list())
    if with_funding and not with_funding.issuperset(symbols):
        lacking = ", ".join(s for s in symbols if s not in with_funding)
        raise DataError(
            f"symbol(s) {lacking} have no funding files while others do (segments check 'inputs'); "
            "acquire funding for every symbol"
        )
    for symbol in symbols:
        frame = market_features(
            _symbol_bars(manifest, symbol, fine, bar),
            _symbol_funding(manifest, symbol),
            symbol,
            archive.INTERVAL_MS[bar],
        )
        names = [c for c in frame.columns if c not in ("timestamp", "symbol", "close")]
        if absent := [
            n for n, column in NEEDS.items() if column in OPTIONAL_KLINE_COLUMNS and n not in names
        ]:
            log.info(
                "%s: %s left out: the source has no taker volume or trade count", symbol, ", ".join(absent)
            )
        yield symbol, frame, names


def _symbol_count(manifest: pl.DataFrame, config: dict[str, Any]) -> int:
    """How many symbols :func:`market_frames` or :func:`series_frames` yields (for the progress bar)."""
    if config["source"] == "files":
        return manifest.filter(pl.col("kind") == "series").height
    fine = config["intervals"]["fine"]
    kept = manifest.filter((pl.col("kind") == "klines") & (pl.col("interval") == fine))
    return kept.get_column("symbol").n_unique()


def series_frames(manifest: pl.DataFrame) -> Iterator[tuple[str, pl.DataFrame, list[str]]]:
    """(symbol, features frame, feature names) for each ``files``-source series, in symbol order."""
    files = manifest.filter(pl.col("kind") == "series").sort("symbol")
    if files.height == 0:
        raise DataError("manifest has no series files (segments check 'inputs'); re-run acquire")
    for symbol, path in files.select("symbol", "path").iter_rows():
        frame, _, values = read_series(path)
        frame, names = series_features(frame, values, symbol)
        yield symbol, frame, names


def local_paths(manifest: pl.DataFrame, raw_files: list[str] | None) -> pl.DataFrame:
    """The manifest with ``path`` pointing at the files this job was given.

    Under a storage plugin the job's raw inputs are local copies whose paths end with the
    manifest's logical ``data/raw/...`` path; without ``raw_files`` the manifest paths are used.
    """
    if raw_files is None:
        return manifest
    by_name: dict[str, list[str]] = {}
    for item in raw_files:
        text = Path(item).as_posix()
        by_name.setdefault(text.rsplit("/", 1)[-1], []).append(text)
    resolved = []
    for logical in manifest.get_column("path"):
        found = [
            f
            for f in by_name.get(logical.rsplit("/", 1)[-1], [])
            if f == logical or f.endswith("/" + logical)
        ]
        if not found:
            raise DataError(
                f"{logical}: listed in the manifest but not among this job's raw inputs; "
                "re-run the manifest rule"
            )
        resolved.append(found[0])
    return manifest.with_columns(pl.Series("path", resolved, dtype=pl.String))


def _common_timeline(timeline: pl.Series | None, stamps: pl.Series) -> pl.Series:
    if timeline is None:
        return stamps
    return timeline.filter(timeline.is_in(stamps.implode()))


def _check_folds(folds: list[Fold], timeline: pl.Series) -> None:
    """Every split non-empty, and train < val < test in time."""
    for fold in folds:
        spans = [fold.train, fold.val, fold.test]
        for name, span in zip(("train", "val", "test"), spans, strict=True):
            if span.rows < 1 or span.start < 0 or span.stop > len(timeline):
                raise DataError(
                    f"segments: fold {fold.fold} {name} split is empty; check the segments settings"
                )
        for earlier, later in itertools.pairwise(spans):
            if timeline[earlier.stop - 1] >= timeline[later.start]:
                raise DataError(
                    f"segments: fold {fold.fold} splits overlap in time; check the segments settings"
                )


def returns_without_gaps(frame: pl.DataFrame, bar_ms: int) -> pl.DataFrame:
    """``log_return`` 0 on every row that follows a gap in the common timeline.

    Features are computed on each symbol's own bars, where the first bar after the symbol's own
    gap already has return 0. Where another symbol's gap removed rows from the common timeline,
    the next row's return would span the removed bars; it is set to 0 too, so no return, reward or
    backtest step spans a gap and nobody is charged or credited for a move nobody could trade.
    Where no bar was removed the frame is unchanged.
    """
    if "log_return" not in frame.columns:
        return frame  # a series without prices (ETT) has no returns
    return frame.with_columns(
        pl.when(after_gap(bar_ms)).then(0.0).otherwise(pl.col("log_return")).alias("log_return")
    )


def build_segments(
    manifest_path: str | Path,
    features_out: str | Path,
    scaler_out: str | Path,
    metadata_out: str | Path,
    config: dict[str, Any],
    raw_files: list[str] | None = None,
) -> None:
    """Build ``features.parquet``, ``scaler.json`` and ``segments_metadata.parquet``.

    ``raw_files``: the raw files as this job sees them (the rule's ``input.raw``); the manifest's
    paths are matched to them (see :func:`local_paths`). None: open the manifest's paths.
    """
    manifest = local_paths(pl.read_parquet(manifest_path), raw_files)
    settings = config["segments"]
    frames = series_frames(manifest) if config["source"] == "files" else market_frames(manifest, config)
    interval = config["files"]["interval"] if config["source"] == "files" else config["intervals"]["bar"]
    bar_ms = archive.INTERVAL_MS[interval]
    features_out = Path(features_out)
    features_out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tmp-segments-", dir=features_out.parent) as scratch:
        parts: list[tuple[str, Path]] = []
        names: list[str] | None = None
        timeline: pl.Series | None = None
        with progress_bar(_symbol_count(manifest, config), "segments: features", "symbol") as bar:
            for symbol, frame, symbol_names in frames:
                if names is not None and symbol_names != names:
                    raise DataError(
                        f"symbol {symbol}: feature columns differ from the other symbols'; re-run acquire"
                    )
                names = symbol_names
                part = Path(scratch) / f"{len(parts):05d}.parquet"
                frame.write_parquet(part)
                parts.append((symbol, part))
                timeline = _common_timeline(timeline, frame.get_column("timestamp"))
                log.info("%s: %d bars after warm-up", symbol, frame.height)
                bar.update()
        assert timeline is not None and names is not None  # the frame generators raise when empty
        folds = make_folds(len(timeline), settings, timeline)
        _check_folds(folds, timeline)
        moments = {fold.fold: RunningMoments(names) for fold in folds}
        with atomic.atomic_path(features_out) as tmp:
            writer: pq.ParquetWriter | None = None
            with progress_bar(len(parts), "segments: write", "symbol") as bar:
                for symbol, part in parts:
                    frame = pl.read_parquet(part).filter(pl.col("timestamp").is_in(timeline.implode()))
                    # Unique sorted timestamps per symbol: after the filter, row i is timeline[i].
                    assert frame.height == len(timeline)
                    frame = returns_without_gaps(frame, bar_ms)
                    log.info("%s: %d bars on the common timeline", symbol, frame.height)
                    for fold in folds:
                        moments[fold.fold].add(frame.slice(0, fold.train.stop).select(names))
                    table = frame.to_arrow()
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
                    writer.write_table(table)
                    bar.update()
            assert writer is not None
            writer.close()
    scaler = {
        "features": names,
        "folds": {str(fold.fold): moments[fold.fold].stats() for fold in folds},
        "fitted_on": "train",
    }
    atomic.write_json(scaler_out, scaler)
    metadata = metadata_frame(timeline, folds, settings["episode_bars"])
    atomic.write_parquet(metadata_out, metadata)
    log.info(
        "segments: %d symbols x %d bars, %d features, %d fold(s), %d metadata rows",
        len(parts),
        len(timeline),
        len(names),
        len(folds),
        metadata.height,
    )


def load_split(features_path: str | Path, metadata_path: str | Path, fold: int, split: str) -> pl.DataFrame:
    """The unscaled feature rows of one fold's split, sorted by (symbol, timestamp)."""
    metadata = pl.read_parquet(metadata_path).filter((pl.col("fold") == fold) & (pl.col("split") == split))
    if metadata.height == 0:
        raise DataError(
            f"{metadata_path}: no fold {fold} split '{split}'; rebuild the segments or pick another fold"
        )
    start, end = metadata.get_column("start").min(), metadata.get_column("end").max()
    return pl.scan_parquet(features_path).filter(pl.col("timestamp").is_between(start, end)).collect()
