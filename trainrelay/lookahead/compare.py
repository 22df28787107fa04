"""Compare a stage's baseline and perturbed outputs at or before a cut time, row by row.

Values are compared exactly: baseline and perturbed run are the same functions on the same machine
in the same process, with every row at or before the cut in the same place of the same batch, so
an unchanged input gives bit-identical output. ``atol`` (default 0) exists for hardware whose
kernels are not bitwise reproducible (some GPU reductions); nothing on the CPU path needs it.
NaN equals NaN (a warm-up row that is undefined in both runs is unchanged).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl

MISSING_ROW = "<row missing>"
EXTRA_ROW = "<row added>"


@dataclass
class StageResult:
    """One stage at one cut: what was compared at or before the cut, and what changed."""

    stage: str
    cut: datetime
    compared: int = 0  # rows (or fitted folds) at or before the cut that were compared
    changed: int = 0  # of those, how many differ
    first_timestamp: datetime | None = None  # earliest changed row
    column: str | None = None  # first changed column in that row
    detail: str | None = None  # e.g. "fold 1", the symbol, or why nothing was compared
    reached: int | None = None  # rows after the cut that changed: proof the perturbation got here
    skipped: str | None = None  # why this stage was not compared at this cut

    @property
    def leaked(self) -> bool:
        return self.changed > 0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("cut", "first_timestamp"):
            out[key] = iso(out[key]) if out[key] is not None else None
        return out


@dataclass
class Diff:
    compared: int
    changed: int
    first_timestamp: datetime | None = None
    column: str | None = None
    symbol: str | None = None
    reached: int = 0
    columns: list[str] = field(default_factory=list)


def iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def _differs(a: pl.Series, b: pl.Series, atol: float) -> np.ndarray:
    """Per row: do the two values differ (null/NaN equal to null/NaN)?"""
    if a.dtype.is_float() and b.dtype.is_float():
        x, y = a.to_numpy().astype(np.float64), b.to_numpy().astype(np.float64)
        both_nan = np.isnan(x) & np.isnan(y)
        return ~both_nan & ~(np.abs(x - y) <= atol) if atol > 0 else ~both_nan & (x != y)
    if isinstance(a.dtype, pl.Array | pl.List):
        # vectors (embeddings): a row differs when either side is missing or any element differs
        null_a, null_b = a.is_null().to_numpy(), b.is_null().to_numpy()
        out = null_a != null_b
        both = ~null_a & ~null_b
        x = [np.asarray(v, dtype=np.float64) for v in a.filter(pl.Series(both)).to_list()]
        y = [np.asarray(v, dtype=np.float64) for v in b.filter(pl.Series(both)).to_list()]
        same = [
            u.shape == v.shape and bool(np.all((np.abs(u - v) <= atol) | (np.isnan(u) & np.isnan(v))))
            for u, v in zip(x, y, strict=True)
        ]
        out[both] = ~np.asarray(same, dtype=bool)
        return out
    nulls = a.is_null() & b.is_null()
    return (~nulls & a.ne_missing(b)).to_numpy()


def compare_frames(
    base: pl.DataFrame,
    perturbed: pl.DataFrame,
    cut: datetime,
    keys: list[str],
    time: str = "timestamp",
    atol: float = 0.0,
) -> Diff:
    """Rows with ``time`` <= ``cut``: matched on ``keys``, every other column compared.

    A row present in one run and not the other counts as changed (column ``<row missing>`` or
    ``<row added>``). ``reached`` counts the rows after the cut that differ.
    """
    columns = [c for c in base.columns if c not in keys]
    joined = base.with_columns(pl.lit(True).alias("__base")).join(
        perturbed.with_columns(pl.lit(True).alias("__perturbed")),
        on=keys,
        how="full",
        suffix="__p",
        coalesce=True,
        nulls_equal=True,
    )
    lost = joined["__perturbed"].is_null().to_numpy()
    extra = joined["__base"].is_null().to_numpy()
    first_changed = np.zeros(joined.height, dtype=np.int64) - 1
    any_changed = np.zeros(joined.height, dtype=bool)
    for index, name in enumerate(columns):
        other = f"{name}__p"
        if other not in joined.columns:  # the perturbed run lacks the column altogether
            diff = np.ones(joined.height, dtype=bool)
        else:
            diff = _differs(joined[name], joined[other], atol)
        new = diff & ~any_changed
        first_changed[new] = index
        any_changed |= diff
    labels = [*columns, MISSING_ROW, EXTRA_ROW]
    first_changed[lost] = len(columns)
    first_changed[extra] = len(columns) + 1
    any_changed |= lost | extra
    at_or_before = (joined[time] <= cut).to_numpy()
    changed = any_changed & at_or_before
    diff = Diff(
        compared=int(at_or_before.sum()),
        changed=int(changed.sum()),
        reached=int((any_changed & ~at_or_before).sum()),
        columns=sorted({labels[i] for i in first_changed[changed]}),
    )
    if diff.changed:
        rows = joined.with_columns(
            pl.Series("__changed", changed), pl.Series("__column", first_changed)
        ).filter(pl.col("__changed"))
        row = rows.sort([time, *[k for k in keys if k != time]]).row(0, named=True)
        diff.first_timestamp = row[time]
        diff.column = labels[row["__column"]]
        diff.symbol = row.get("symbol")
    return diff


def compare_values(base: dict[str, float], perturbed: dict[str, float], atol: float = 0.0) -> list[str]:
    """Names whose values differ between two flat dicts (a key in only one of them differs too)."""
    names = list(dict.fromkeys([*base, *perturbed]))
    out = []
    for name in names:
        if name not in base or name not in perturbed:
            out.append(name)
            continue
        a, b = base[name], perturbed[name]
        if isinstance(a, float | int) and isinstance(b, float | int):
            if (math_nan(a) and math_nan(b)) or (abs(a - b) <= atol if atol > 0 else a == b):
                continue
            out.append(name)
        elif a != b:
            out.append(name)
    return out


def math_nan(x: float) -> bool:
    return isinstance(x, float) and x != x


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"mean.vol_4": x, ...} from nested dicts and lists (for scaler and observation specs)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    if isinstance(value, list | tuple) and value and isinstance(value[0], list | tuple | dict | float | int):
        out = {}
        for i, item in enumerate(value):
            out.update(flatten(item, f"{prefix}{i}."))
        return out
    return {prefix.rstrip("."): value}
