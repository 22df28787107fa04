"""A different but valid future: rewrite every raw record after a cut time ``t``, keep the rest.

Each file the manifest lists is copied to a scratch raw root under its logical path; a file with
records after ``t`` is rewritten by its kind:

- ``klines``: fine bars that *open* at or after ``t`` (they close after ``t``) follow a re-seeded
  random walk from the last close before ``t``, with the series' own per-bar volatility; volumes,
  taker volumes and trade counts are redrawn around the originals. Outage bars (zero volume) stay
  outage bars, flat at the walk's price: the timeline, the gaps and the outage mask are exactly the
  original's, so split boundaries and rows line up and only *values* after ``t`` differ.
- ``funding``: rates calculated after ``t`` are redrawn.
- ``events``: the events after ``t`` get each other's headlines (shuffled), new symbols and new times
  inside (t, last event]. The multiset of texts is unchanged, so the embedding model sees the very
  same batches and the embeddings of the events at or before ``t`` can be compared bit for bit.
- ``series`` (the ``files`` source): value rows after ``t`` are redrawn (a random walk for
  positive columns such as prices, the column's mean and spread otherwise).

Rows at or before ``t`` are written back byte-for-value: every rewritten file is read back with the
pipeline's own reader and its rows up to ``t`` must equal the original's, or this raises.

A new raw kind (a new data source) needs one entry in :data:`PERTURBERS`; an unknown kind is an
error naming it, never silently left unperturbed.
"""

from __future__ import annotations

import shutil
import zlib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from trainrelay.data import archive
from trainrelay.data.events import read_events, write_events
from trainrelay.data.manifest import read_series
from trainrelay.errors import DataError


def _rng(seed: int, cut: datetime, *names: str) -> np.random.Generator:
    # One stream per (seed, cut, file series): the same command perturbs the same way every time.
    keys = [zlib.crc32(n.encode()) for n in names]
    return np.random.default_rng([seed, int(cut.timestamp()), *keys])


def _copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    checksum = archive.checksum_path(src)
    if checksum.is_file():
        shutil.copyfile(checksum, archive.checksum_path(dest))


def _write(dest: Path, frame: pl.DataFrame, to_csv: Callable[[pl.DataFrame], str]) -> None:
    """Write ``frame`` in the raw file's own format: a Binance zip (with .CHECKSUM) or a parquet file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.suffix == ".parquet":
        frame.write_parquet(dest)
    else:
        archive.write_archive(dest, to_csv(frame))


def _same_before(original: pl.DataFrame, written: pl.DataFrame, keep: pl.Expr, path: Path) -> None:
    """The rewritten file's rows at or before the cut must be the original's, value for value."""
    if not written.filter(keep).equals(original.filter(keep)):
        raise DataError(
            f"{path}: rewriting the file changed rows at or before the cut (a serialisation round trip "
            "is not exact); the look-ahead check cannot compare this source"
        )


def _walk(
    rng: np.random.Generator, start: float, sigma: float, n: int, outage: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(open, close) of ``n`` bars of a random walk from ``start``; outage bars stay flat."""
    steps = rng.normal(0.0, sigma, n)
    steps[outage] = 0.0
    close = start * np.exp(np.cumsum(steps))
    opened = np.concatenate([[start], close[:-1]])
    return opened, close


def perturb_klines(files: list[tuple[Path, Path]], cut: datetime, seed: int, series: str) -> None:
    """Rewrite one (symbol, interval) kline series, its monthly files in time order."""
    frames = [archive.read_klines(src) for src, _ in files]
    full = pl.concat(frames)
    after = (full["open_time"] >= cut).to_numpy()
    if not after.any():
        for src, dest in files:
            _copy(src, dest)
        return
    close = full["close"].to_numpy()
    before = np.flatnonzero(~after)
    start = float(close[before[-1]]) if before.size else float(full["open"][0])
    log_close = np.log(close)
    sigma = float(np.std(np.diff(log_close))) if close.size > 2 else 1e-3
    sigma = sigma if sigma > 0 else 1e-3
    rng = _rng(seed, cut, "klines", series)
    n = int(after.sum())
    volume = full["volume"].to_numpy()[after]
    outage = volume <= 0
    opened, new_close = _walk(rng, start, sigma, n, outage)
    wick = np.exp(np.abs(rng.normal(0.0, sigma / 2, (2, n))))
    wick[:, outage] = 1.0
    high = np.maximum(opened, new_close) * wick[0]
    low = np.minimum(opened, new_close) / wick[1]
    new_volume = np.where(outage, 0.0, volume * np.exp(rng.normal(0.0, 0.5, n)))
    taker = new_volume * rng.uniform(0.1, 0.9, n)
    columns = {
        "open": opened,
        "high": high,
        "low": low,
        "close": new_close,
        "volume": new_volume,
        "quote_volume": new_volume * new_close,
        "taker_buy_volume": taker,
        "taker_buy_quote_volume": taker * new_close,
    }
    if "count" in full.columns:
        count = full["count"].to_numpy()[after]
        columns["count"] = np.where(
            outage, 0, np.maximum(1, np.rint(count * np.exp(rng.normal(0.0, 0.3, n))))
        )
    # a source without some columns (freqtrade: OHLCV only) gets none invented
    columns = {name: values for name, values in columns.items() if name in full.columns}
    # full-length columns: the original values up to the cut, the new market after it
    merged = {}
    for name, values in columns.items():
        column = full[name].to_numpy().astype(np.float64)
        column[after] = values
        merged[name] = column
    keep = pl.col("open_time") < cut
    offset = 0
    for (src, dest), frame in zip(files, frames, strict=True):
        rows = slice(offset, offset + frame.height)
        offset += frame.height
        if not after[rows].any():
            _copy(src, dest)
            continue
        out = frame.with_columns(
            [pl.Series(name, column[rows]).cast(frame.schema[name]) for name, column in merged.items()]
        )
        _write(dest, out, archive.klines_to_csv)
        _same_before(frame, archive.read_klines(dest), keep, dest)


def perturb_funding(files: list[tuple[Path, Path]], cut: datetime, seed: int, series: str) -> None:
    rng = _rng(seed, cut, "funding", series)
    keep = pl.col("calc_time") <= cut
    for src, dest in files:
        frame = archive.read_funding(src)
        later = (~frame.select(keep).to_series()).to_numpy()
        if not later.any():
            _copy(src, dest)
            continue
        rates = frame["last_funding_rate"].to_numpy()
        spread = max(float(np.std(rates)), 1e-4)
        new = np.where(later, rng.normal(0.0, spread, len(rates)), rates)
        out = frame.with_columns(pl.Series("last_funding_rate", new, dtype=pl.Float64))
        _write(dest, out, archive.funding_to_csv)
        _same_before(frame, archive.read_funding(dest), keep, dest)


def perturb_events(files: list[tuple[Path, Path]], cut: datetime, seed: int, series: str) -> None:
    rng = _rng(seed, cut, "events", series)
    keep = pl.col("timestamp") <= cut
    for src, dest in files:
        frame = read_events(src)
        later = frame.filter(~keep)
        if later.is_empty():
            _copy(src, dest)
            continue
        symbols = sorted(set(frame["symbol"].to_list()))
        first, last = int(cut.timestamp() * 1000) + 1, int(later["timestamp"].dt.epoch("ms").max())
        moved = pl.DataFrame(
            {
                "timestamp": rng.integers(first, max(first, last) + 1, later.height),
                "symbol": [symbols[i] for i in rng.integers(0, len(symbols), later.height)],
                "text": later["text"].to_numpy()[rng.permutation(later.height)],
            }
        ).with_columns(pl.col("timestamp").cast(pl.Datetime("ms", "UTC")))
        write_events(dest, pl.concat([frame.filter(keep), moved]))
        _same_before(frame.sort(frame.columns), read_events(dest).sort(frame.columns), keep, dest)


def perturb_series(files: list[tuple[Path, Path]], cut: datetime, seed: int, series: str) -> None:
    rng = _rng(seed, cut, "series", series)
    for src, dest in files:
        raw = pl.read_parquet(src)
        frame, _, values = read_series(src)  # the pipeline's timestamps decide "after the cut"
        later = (frame["timestamp"] > cut).to_numpy()
        if not later.any():
            _copy(src, dest)
            continue
        columns = []
        for name in values:
            column = frame[name].to_numpy().astype(np.float64)
            known = column[~later]
            if (known > 0).all() and known.size > 2:
                sigma = max(float(np.std(np.diff(np.log(known)))), 1e-3)
                start = float(known[-1])
                new = start * np.exp(np.cumsum(rng.normal(0.0, sigma, int(later.sum()))))
            else:
                spread = float(np.std(known)) if known.size > 1 else 1.0
                new = float(np.mean(known)) + rng.normal(0.0, spread or 1.0, int(later.sum()))
            column[later] = new
            columns.append(pl.Series(name, column).cast(raw.schema[name]))
        out = raw.with_columns(columns)
        dest.parent.mkdir(parents=True, exist_ok=True)
        out.write_parquet(dest)
        keep = pl.col("timestamp") <= cut
        _same_before(frame, read_series(dest)[0], keep, dest)


Perturber = Callable[[list[tuple[Path, Path]], datetime, int, str], None]
PERTURBERS: dict[str, Perturber] = {
    "klines": perturb_klines,
    "funding": perturb_funding,
    "events": perturb_events,
    "series": perturb_series,
}


def perturb_raw(
    manifest: pl.DataFrame, workdir: Path, dest_root: Path, cut: datetime, seed: int
) -> list[str]:
    """Write the perturbed copy of every manifest file under ``dest_root``; return the paths.

    The paths end with the manifest's logical ``data/raw/...`` path, which is how
    :func:`trainrelay.data.segments.local_paths` matches them, as it matches a storage plugin's copies.
    """
    groups: dict[tuple[str, str, str], list[tuple[Path, Path]]] = {}
    rows = manifest.sort("kind", "symbol", "interval", "month", "path", nulls_last=True)
    for row in rows.iter_rows(named=True):
        kind = row["kind"]
        if kind not in PERTURBERS:
            raise DataError(
                f"look-ahead: no perturbation for raw kind '{kind}' ({row['path']}); add one to "
                "trainrelay/lookahead/perturb.py PERTURBERS"
            )
        key = (kind, row["symbol"] or "", row["interval"] or "")
        groups.setdefault(key, []).append((workdir / row["path"], dest_root / row["path"]))
    for (kind, symbol, interval), files in groups.items():
        PERTURBERS[kind](files, cut, seed, f"{symbol}/{interval}")
    return [str(dest_root / p) for p in manifest["path"].to_list()]
