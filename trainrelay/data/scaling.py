"""Per-fold feature scaling fitted on train rows only.

The scaler is a plain dict (``scaler.json``): ``{"features": [...], "folds": {"<k>": {"mean":
{col: x}, "std": {col: x}}}, "fitted_on": "train"}``. ``std`` is the population standard
deviation (ddof 0, as scikit-learn's StandardScaler); a feature that is constant on the train
rows gets std 1 so that it is centred rather than divided by zero.

Statistics are accumulated one symbol at a time (count, mean, sum of squared deviations) and
merged with Chan et al.'s pairwise formula, so the whole table never has to be in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from trainrelay.errors import DataError


@dataclass
class RunningMoments:
    """Count, mean and sum of squared deviations per column, mergeable across chunks."""

    columns: list[str]
    count: int = 0
    mean: dict[str, float] = field(default_factory=dict)
    m2: dict[str, float] = field(default_factory=dict)

    def add(self, frame: pl.DataFrame) -> None:
        n = frame.height
        if n == 0:
            return
        stats = frame.select(
            *[pl.col(c).mean().alias(f"mean:{c}") for c in self.columns],
            *[((pl.col(c) - pl.col(c).mean()) ** 2).sum().alias(f"m2:{c}") for c in self.columns],
        ).row(0, named=True)
        total = self.count + n
        for c in self.columns:
            mean_b, m2_b = stats[f"mean:{c}"], stats[f"m2:{c}"]
            if self.count == 0:
                self.mean[c], self.m2[c] = mean_b, m2_b
                continue
            delta = mean_b - self.mean[c]
            self.mean[c] += delta * n / total
            self.m2[c] += m2_b + delta * delta * self.count * n / total
        self.count = total

    def stats(self) -> dict[str, dict[str, float]]:
        if self.count == 0:
            raise DataError("scaler: no train rows to fit on (segments check 'splits'); acquire more data")
        std = {c: (self.m2[c] / self.count) ** 0.5 for c in self.columns}
        return {
            "mean": {c: float(self.mean[c]) for c in self.columns},
            "std": {c: float(s) if s > 0.0 else 1.0 for c, s in std.items()},
        }


def transform(frame: pl.DataFrame, scaler: dict[str, Any], fold: int) -> pl.DataFrame:
    """Return ``frame`` with the scaler's feature columns standardised with fold ``fold``'s stats.

    Other columns (``timestamp``, ``symbol``, ``close``) are left as they are. Keep the unscaled
    frame when raw values are needed too (e.g. ``log_return`` for rewards).
    """
    key = str(fold)
    if key not in scaler["folds"]:
        raise DataError(f"scaler.json has no fold {fold} (it has {', '.join(sorted(scaler['folds']))})")
    stats = scaler["folds"][key]
    missing = [c for c in scaler["features"] if c not in frame.columns]
    if missing:
        raise DataError(f"frame lacks scaler feature column(s) {', '.join(missing)}; rebuild the segments")
    return frame.with_columns(
        [((pl.col(c) - stats["mean"][c]) / stats["std"][c]).alias(c) for c in scaler["features"]]
    )
