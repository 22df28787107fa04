"""`python -m trainrelay lookahead` on a finished tiny run: the real pipeline has no look-ahead, and a
planted one (a feature or an observation that reads the next bars) is caught and named."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.conftest import finished_copy
from trainrelay import cli
from trainrelay.data import archive
from trainrelay.lookahead.perturb import perturb_klines

pytestmark = pytest.mark.slow

# The session's finished FAST tiny run (conftest), copied: every stage up to the dashboard, so the
# check recomputes features, embeddings, forecasts, observations and positions from that run's own
# trained models without training its own.
BAR = timedelta(minutes=15)


@pytest.fixture(scope="module")
def finished_run(finished_template: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    workdir = finished_copy(finished_template, tmp_path_factory.mktemp("lookahead") / "wf")
    return workdir, workdir / "test.yaml"


def _lookahead(workdir: Path, config: Path, *extra: str) -> int:
    return cli.main(
        ["lookahead", "--config", str(workdir / "config/config.yaml"), "--configfile", str(config),
         "--results", str(workdir / "results/tiny"), *extra]
    )  # fmt: skip


def _fold0_test_cut(workdir: Path) -> datetime:
    """A bar close time in the middle of fold 0's test block."""
    meta = pl.read_parquet(workdir / "results/tiny/segments/segments_metadata.parquet")
    test = meta.filter((pl.col("fold") == 0) & (pl.col("split") == "test"))
    start, end = test["start"].min(), test["end"].max()
    return start + ((end - start) // BAR // 2) * BAR


def test_tiny_run_has_no_lookahead(finished_run, capsys) -> None:
    workdir, config = finished_run
    assert _lookahead(workdir, config) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split()[:4] == ["stage", "cut", "compared", "changed"]
    assert "no look-ahead: 5 cut(s)" in printed

    report = json.loads((workdir / "results/tiny/lookahead.json").read_text())
    assert report["passed"] and report["leak"] is None
    labels = [c["label"] for c in report["cuts"]]
    assert {"fold 0 test block", "fold 1 test block", "fold 0 train end", "fold 1 train end"} <= set(labels)
    # the in-process recomputation is the run: every file it recomputes comes out identical
    assert all(r["reproduced"] for r in report["baseline_reproduces_run"]), report["baseline_reproduces_run"]

    rows = {(r["stage"], r["cut"]): r for r in report["stages"]}
    cuts = {c["label"]: c["timestamp"] for c in report["cuts"]}
    assert all(r["changed"] == 0 for r in report["stages"])
    # never vacuous: at every cut the new future reached the features, forecasts and observations
    for stage in ("features", "forecasts", "embeddings"):
        assert all(rows[(stage, cut)]["reached"] > 0 for cut in cuts.values()), stage
    inside = rows[("positions", cuts["fold 0 test block"])]
    assert (
        inside["compared"] > 0 and inside["reached"] > 0
    )  # positions before and after t inside a test block
    assert rows[("observations", cuts["fold 0 test block"])]["compared"] > 0
    # the scaler at its exact boundary: fold 0's train rows end at the cut, fold 1's after it
    boundary = rows[("scaler", cuts["fold 0 train end"])]
    assert (boundary["compared"], boundary["detail"]) == (1, "folds [0]")
    assert rows[("scaler", cuts["train block"])]["skipped"]
    assert rows[("observation_spec", cuts["fold 1 train end"])]["compared"] == 2
    assert rows[("forecaster_windows", cuts["fold 1 test block"])]["compared"] > 0


def test_planted_feature_leak_is_caught_and_named(finished_run, monkeypatch, capsys) -> None:
    """mom_4 replaced by the *next* bar's return: the row at the cut itself must change."""
    from trainrelay.data import segments

    original = segments.market_features

    def leaking(bars, funding, symbol, *rest):
        frame = original(bars, funding, symbol, *rest)
        return frame.with_columns(pl.col("log_return").shift(-1).fill_null(0.0).alias("mom_4"))

    monkeypatch.setattr(segments, "market_features", leaking)
    workdir, config = finished_run
    cut = _fold0_test_cut(workdir)
    out = workdir / "results/tiny/lookahead-feature-leak.json"
    assert _lookahead(workdir, config, "--at", cut.isoformat(), "--out", str(out)) == 1
    # (progress logs go to stderr too; the error is one line, the last)
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("trainrelay: error")]
    assert len(error) == 1 and error[0].startswith("trainrelay: error: look-ahead in stage 'features'")
    assert "column 'mom_4'" in error[0] and f"changed at {cut:%Y-%m-%dT%H:%M:%SZ}" in error[0]
    leak = json.loads(out.read_text())["leak"]
    assert (leak["stage"], leak["column"], leak["first_timestamp"]) == (
        "features",
        "mom_4",
        f"{cut:%Y-%m-%dT%H:%M:%SZ}",
    )


def test_planted_centred_window_in_observations_is_caught(finished_run, monkeypatch, capsys) -> None:
    """trend_16 as a centred rolling mean (8 bars into the future): caught in the observations."""
    from trainrelay.policy import observations

    original = observations.trend_frame

    def centred(frame, windows):
        out = original(frame, windows)
        return out.with_columns(
            frame["log_return"].rolling_mean(16, center=True).fill_null(0.0).alias("trend_16")
        )

    monkeypatch.setattr(observations, "trend_frame", centred)
    workdir, config = finished_run
    cut = _fold0_test_cut(workdir)
    out = workdir / "results/tiny/lookahead-trend-leak.json"
    assert _lookahead(workdir, config, "--at", cut.isoformat(), "--out", str(out)) == 1
    error = capsys.readouterr().err.strip()
    assert "stage 'observations': column 'trend_16'" in error
    leak = json.loads(out.read_text())["leak"]
    first = datetime.fromisoformat(leak["first_timestamp"].replace("Z", "+00:00"))
    assert cut - 8 * BAR <= first < cut  # the window reaches at most 8 bars ahead of its row
    assert leak["stage"] == "observations" and leak["detail"].startswith("fold 0")


def test_kline_perturbation_keeps_the_past_and_the_outages(tmp_path) -> None:
    start = datetime.fromisoformat("2024-01-01T00:00:00+00:00")
    n = 40
    opens = [start + i * timedelta(minutes=3) for i in range(n)]
    close = 100 * np.exp(np.cumsum(np.full(n, 0.001)))
    volume = np.full(n, 5.0)
    volume[30] = 0.0  # an outage bar after the cut
    frame = pl.DataFrame(
        {
            "open_time": opens,
            "open": close,
            "high": close * 1.001,
            "low": close * 0.999,
            "close": close,
            "volume": volume,
            "close_time": [t + timedelta(minutes=3, milliseconds=-1) for t in opens],
            "quote_volume": volume * close,
            "count": np.where(volume > 0, 7, 0),
            "taker_buy_volume": volume / 2,
            "taker_buy_quote_volume": volume * close / 2,
        }
    ).with_columns(pl.col("open_time", "close_time").cast(pl.Datetime("ms", "UTC")))
    src, dest = tmp_path / "a/X-3m-2024-01.zip", tmp_path / "b/X-3m-2024-01.zip"
    src.parent.mkdir()
    archive.write_archive(src, archive.klines_to_csv(frame))
    cut = opens[20]
    perturb_klines([(src, dest)], cut, seed=3, series="X/3m")
    before, after = archive.read_klines(src), archive.read_klines(dest)
    early = pl.col("open_time") < cut
    assert after.filter(early).equals(before.filter(early))
    late = after.filter(~early)
    assert (late["close"].to_numpy() != before.filter(~early)["close"].to_numpy()).all()
    assert late["open_time"].equals(before.filter(~early)["open_time"])  # same bars, same timeline
    assert (late["volume"].to_numpy()[[i for i in range(late.height) if i != 10]] > 0).all()
    assert late["volume"][10] == 0.0 and late["open"][10] == late["close"][10]  # still an outage
    archive.verify_checksum(dest)
