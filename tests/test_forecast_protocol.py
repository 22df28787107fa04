"""The ETT protocol: the benchmark's windows equal the workflow's (files source, fixed split), and
the benchmark skips cleanly without the data file."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from trainrelay.atomic import write_json, write_parquet
from trainrelay.data.files_source import normalise_series
from trainrelay.data.scaling import RunningMoments
from trainrelay.data.splits import make_folds, metadata_frame
from trainrelay.errors import DataError
from trainrelay.forecast.inputs import load_fold
from trainrelay.forecast.protocol import ett_windows, read_ett

REPO = Path(__file__).resolve().parents[1]
ETTH1 = REPO.parent / "shared" / "data" / "ett" / "ETTh1.csv"  # not in the repo (CC BY-ND); see its README


def _bench():
    spec = importlib.util.spec_from_file_location(
        "forecast_accuracy", REPO / "bench" / "forecast_accuracy.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_skips_cleanly_without_the_data(tmp_path, capsys) -> None:
    out = tmp_path / "r.json"
    assert _bench().main(["--data", str(tmp_path / "absent.csv"), "--horizon", "96", "--out", str(out)]) == 0
    assert "skipped" in capsys.readouterr().out and not out.exists()


def test_read_ett_rejects_other_files(tmp_path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_ett(tmp_path / "none.csv")
    (tmp_path / "x.csv").write_text(
        "date,a\n2020-01-01 00:00:00,1\n2020-01-01 00:05:00,2\n2020-01-01 00:10:00,3\n"
    )
    with pytest.raises(DataError, match="hourly or 15-minute"):
        read_ett(tmp_path / "x.csv")


@pytest.mark.skipif(not ETTH1.is_file(), reason=f"{ETTH1} absent (the ETT data is not part of the repo)")
def test_workflow_windows_equal_the_protocol_on_etth1(tmp_path) -> None:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    preset = yaml.safe_load((REPO / "config" / "presets" / "etth1.yaml").read_text())
    config.update({k: v for k, v in preset.items()})
    # the segments stage's files for the preset, built with the data library's own functions
    series = normalise_series(ETTH1, "date", None).with_columns(pl.lit("ETTh1").alias("symbol"))
    columns = [c for c in series.columns if c not in ("timestamp", "symbol")]
    folds = make_folds(series.height, config["segments"])
    moments = RunningMoments(columns)
    moments.add(series.slice(0, folds[0].train.stop).select(columns))
    write_parquet(tmp_path / "f.parquet", series.select("timestamp", "symbol", *columns))
    write_json(
        tmp_path / "s.json", {"features": columns, "folds": {"0": moments.stats()}, "fitted_on": "train"}
    )
    write_parquet(tmp_path / "m.parquet", metadata_frame(series["timestamp"], folds, 2880))

    _, workflow, channels, _ = load_fold(
        tmp_path / "f.parquet", tmp_path / "s.json", tmp_path / "m.parquet", config
    )
    values, ett_columns, per_hour = read_ett(ETTH1)
    lookback = config["forecaster"]["lookback"]  # the preset's (PatchTST/64: 512)
    protocol, _, _ = ett_windows(values, per_hour, lookback, 96)
    assert channels == ett_columns
    for split in ("train", "val", "test"):
        a, b = protocol[split], workflow[split]
        # windows per split = rows - L - T + 1 (val/test inputs reach back into the previous split)
        assert len(a) == len(b) == {"train": 8640 - lookback - 95, "val": 2785, "test": 2785}[split]
        xa, ya = a.batch(torch.arange(len(a)))
        xb, yb = b.batch(torch.arange(len(b)))
        np.testing.assert_allclose(xa.numpy(), xb.numpy(), atol=1e-5)
        np.testing.assert_allclose(ya.numpy(), yb.numpy(), atol=1e-5)


def _ett_like_csv(path: Path, rows: int = 14400) -> Path:
    rng = np.random.default_rng(0)
    t = np.arange(rows)
    values = np.sin(2 * np.pi * t[:, None] / 24 + np.arange(7)) + 0.1 * rng.standard_normal((rows, 7))
    frame = pl.DataFrame(
        {
            "date": pl.datetime_range(
                pl.datetime(2016, 7, 1),
                pl.datetime(2016, 7, 1) + pl.duration(hours=rows - 1),
                "1h",
                eager=True,
            )
        }
    ).with_columns(pl.Series(name, values[:, i]) for i, name in enumerate("ABCDEFG"))
    frame.write_csv(path)
    return path


def test_paper_loader_scores_whole_batches_only(tmp_path) -> None:
    from trainrelay.forecast.naive import LastValue
    from trainrelay.forecast.protocol import paper_loader_windows, run_protocol
    from trainrelay.forecast.training import evaluate

    csv = _ett_like_csv(tmp_path / "ETTx.csv")
    result = run_protocol(csv, 96, 336, models=("naive",), progress=False)
    # 2880 test rows - 96 + 1 = 2785 windows; the official loader keeps 21 batches of 128
    assert result["windows"]["test"] == 2785
    paper = result["naive"]["paper_loader"]
    assert paper["windows"] == 2688
    values, _, per_hour = read_ett(csv)
    sets, _, _ = ett_windows(values, per_hour, 336, 96)
    kept = paper_loader_windows(sets["test"])
    assert torch.equal(kept.starts, sets["test"].starts[:2688])
    model = LastValue(336, 96, 7)
    expected = evaluate(model, kept, torch.device("cpu"))
    assert paper["test_mse"] == pytest.approx(expected["mse"], rel=1e-9)
    # the two scores differ because they cover different windows
    assert result["naive"]["test_mse"] != pytest.approx(paper["test_mse"], rel=1e-6)


def test_summary_groups_seeds_and_picks_by_validation(tmp_path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("forecast_summary", REPO / "bench" / "forecast_summary.py")
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    files = []
    for seed, val, test in ((1, 0.70, 0.370), (2, 0.60, 0.380)):
        entry = {"val_mse": val, "test_mse": test, "test_mae": 0.4, "seconds": 1.0, "epochs_run": 3}
        entry["paper_loader"] = {"test_mse": test - 0.001, "test_mae": 0.4, "windows": 2688}
        path = tmp_path / f"s{seed}.json"
        path.write_text(
            json.dumps({"data": "ETTh1.csv", "horizon": 96, "lookback": 512, "seed": seed, "patchtst": entry})
        )
        files.append(str(path))
    assert summary.main([*files, "--out", str(tmp_path / "sum.json")]) == 0
    group = json.loads((tmp_path / "sum.json").read_text())["seed_groups"][0]
    assert group["seeds"] == [1, 2] and group["test_mse_mean"] == pytest.approx(0.375)
    assert group["test_mse_std"] == pytest.approx(0.0070711, rel=1e-4)
    # the lower validation MSE picks seed 2, whatever its test score
    assert (group["val_chosen_seed"], group["val_chosen_test_mse"]) == (2, 0.380)
    assert "2 seeds" in capsys.readouterr().out
    assert summary.main([str(tmp_path / "absent.json")]) == 1


def test_read_ett_names_the_bad_cell_and_the_unreadable_file(tmp_path: Path) -> None:
    rows = ["date,HUFL,OT"] + [f"2016-07-01 {h:02d}:00:00,{h}.5,{h}.25" for h in range(6)]
    rows[4] = "2016-07-01 03:00:00,3.5,n/a"
    bad_cell = tmp_path / "ett.csv"
    bad_cell.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"column 'OT', data row 4 \(line 5\): 'n/a' is not a number"):
        read_ett(bad_cell)
    not_csv = tmp_path / "binary.csv"
    not_csv.write_bytes(b"date,OT\n\xff\xfe,1\n" * 3)
    with pytest.raises(DataError, match=r"binary\.csv is not a readable CSV"):
        read_ett(not_csv)
