"""The files source (user CSV/parquet series -> series/<symbol>.parquet) and user text events."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path

import polars as pl
import pytest
import yaml

from trainrelay.data.acquire import acquire, raw_targets
from trainrelay.data.events import normalise_events, read_events, write_events
from trainrelay.data.files_source import normalise_series, parse_timestamps
from trainrelay.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parent.parent
DEMO = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
# The shared data folder beside the checkout; read in place, never copied into the repo.
ETTH1 = REPO.parent / "shared" / "data" / "ett" / "ETTh1.csv"
needs_etth1 = pytest.mark.skipif(not ETTH1.is_file(), reason=f"{ETTH1} is not available on this machine")
UTC = dt.UTC


def files_config(path: Path | None, **files: object) -> dict:
    config = copy.deepcopy(DEMO)
    config["source"] = "files"
    config["files"].update({"path": None if path is None else str(path), **files})
    return config


def one_line_error(error: type[Exception], call, *args, **kwargs) -> str:
    with pytest.raises(error) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@needs_etth1
def test_etth1_runs_through_the_files_source(tmp_path: Path) -> None:
    config = files_config(ETTH1, symbol="etth1", interval="1h")
    acquire(config, tmp_path)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == raw_targets(config) == ["events/events.csv", "series/etth1.parquet"]
    frame = pl.read_parquet(tmp_path / "series/etth1.parquet")
    assert frame.columns == ["timestamp", "HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
    assert frame.schema["timestamp"] == pl.Datetime("ms", "UTC")
    assert all(frame.schema[c] == pl.Float64 for c in frame.columns[1:])
    assert frame.height == 17420
    assert frame["timestamp"][0] == dt.datetime(2016, 7, 1, tzinfo=UTC)
    assert (frame["timestamp"].diff().drop_nulls() == dt.timedelta(hours=1)).all()
    assert frame["OT"][0] == pytest.approx(30.5310001373291)
    assert (tmp_path / "events/events.csv").read_text() == "timestamp,symbol,text\n"


def test_selected_columns_and_epoch_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "series.csv"
    # unsorted epoch-ms rows, an integer column and a text column that must be left out
    path.write_text("ts,load,temp,site\n1704070800000,2,20.5,a\n1704067200000,1,19.5,b\n")
    frame = normalise_series(path, "ts", ["temp", "load"])
    assert frame.columns == ["timestamp", "temp", "load"]
    assert frame["timestamp"].to_list() == [dt.datetime(2024, 1, 1, h, tzinfo=UTC) for h in (0, 1)]
    assert frame["load"].to_list() == [1.0, 2.0] and frame.schema["load"] == pl.Float64
    every_numeric = normalise_series(path, "ts", None)
    assert every_numeric.columns == ["timestamp", "load", "temp"]


def test_parquet_with_timezone_aware_datetimes(tmp_path: Path) -> None:
    path = tmp_path / "series.parquet"
    stamps = [
        dt.datetime(2024, 1, 1, 9, tzinfo=dt.timezone(dt.timedelta(hours=9))) + dt.timedelta(hours=i)
        for i in range(3)
    ]
    pl.DataFrame({"when": stamps, "value": [1.0, 2.0, 3.0]}).write_parquet(path)
    frame = normalise_series(path, "when", None)
    assert frame["timestamp"][0] == dt.datetime(2024, 1, 1, 0, tzinfo=UTC)
    assert frame.schema["timestamp"] == pl.Datetime("ms", "UTC")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            ["2024-01-01T02:00:00+02:00", "2024-01-01T00:30:00Z"],
            [dt.datetime(2024, 1, 1, 0, m, tzinfo=UTC) for m in (0, 30)],
        ),
        (
            ["2024-01-01 00:00", "2024-01-01 00:15"],
            [dt.datetime(2024, 1, 1, 0, m, tzinfo=UTC) for m in (0, 15)],
        ),
        ([1704067200, 1704068100], [dt.datetime(2024, 1, 1, 0, m, tzinfo=UTC) for m in (0, 15)]),
        ([1704067200000000, 1704068100000000], [dt.datetime(2024, 1, 1, 0, m, tzinfo=UTC) for m in (0, 15)]),
    ],
)
def test_timestamp_forms(values: list, expected: list) -> None:
    assert parse_timestamps(pl.Series("t", values), "x").to_list() == expected


def test_errors_name_the_file_and_setting(tmp_path: Path) -> None:
    message = one_line_error(DataError, normalise_series, tmp_path / "nope.csv", "date", None)
    assert "files.path" in message and "nope.csv" in message and "not found" in message
    garbage = tmp_path / "broken.parquet"
    garbage.write_bytes(b"this is not parquet")
    assert "cannot read" in one_line_error(DataError, normalise_series, garbage, "date", None)
    weird = tmp_path / "series.xlsx"
    weird.write_bytes(b"PK")
    assert "neither CSV" in one_line_error(DataError, normalise_series, weird, "date", None)

    path = tmp_path / "s.csv"
    path.write_text("date,value,label\n2024-01-01 00:00:00,1.5,x\n2024-01-01 01:00:00,2.5,y\n")
    message = one_line_error(DataError, normalise_series, path, "time", None)
    assert "timestamp column 'time' not found (columns: date, value, label)" in message
    message = one_line_error(DataError, normalise_series, path, "date", ["value", "label"])
    assert "label (String) are not numeric" in message
    message = one_line_error(DataError, normalise_series, path, "date", ["value", "missing"])
    assert "missing not found" in message

    bad = tmp_path / "bad.csv"
    bad.write_text("date,value\n2024-01-01 00:00:00,1\nyesterday,2\n")
    message = one_line_error(DataError, normalise_series, bad, "date", None)
    assert "cannot parse timestamp 'yesterday' in data row 2 (line 3)" in message

    dup = tmp_path / "dup.csv"
    dup.write_text("date,value\n2024-01-01 00:00:00,1\n2024-01-01 00:00:00,2\n")
    message = one_line_error(DataError, normalise_series, dup, "date", None)
    assert "occurs more than once (data row 1 (line 2) and data row 2 (line 3)); keep one" in message

    text_only = tmp_path / "text.csv"
    text_only.write_text("date,label\n2024-01-01,x\n")
    assert "no numeric column" in one_line_error(DataError, normalise_series, text_only, "date", None)

    assert "files.path is not set" in one_line_error(
        ConfigError, acquire, files_config(None), tmp_path / "raw"
    )


def test_user_events_are_normalised_sorted_and_round_trip(tmp_path: Path) -> None:
    source = tmp_path / "news.csv"
    source.write_text(
        "Timestamp,Symbol,Text\n"
        '2024-01-01T01:00:00Z,BTCUSDT,"Bitcoin rallies, analysts say"\n'
        "2024-01-01T00:00:00Z,,Markets open\n"
    )
    frame = normalise_events(source)
    assert frame["symbol"].to_list() == ["*", "BTCUSDT"]
    target = tmp_path / "events" / "events.csv"
    write_events(target, frame)
    assert target.read_text() == (
        "timestamp,symbol,text\n"
        "1704067200000,*,Markets open\n"
        '1704070800000,BTCUSDT,"Bitcoin rallies, analysts say"\n'
    )
    assert read_events(target).equals(frame)


def test_user_events_in_parquet_without_symbol(tmp_path: Path) -> None:
    source = tmp_path / "news.parquet"
    pl.DataFrame({"timestamp": [1704067200000], "text": ["Quiet day"]}).write_parquet(source)
    frame = normalise_events(source)
    assert frame.rows() == [(dt.datetime(2024, 1, 1, tzinfo=UTC), "*", "Quiet day")]


def test_user_event_errors(tmp_path: Path) -> None:
    source = tmp_path / "news.csv"
    source.write_text("timestamp,headline\n2024-01-01,hello\n")
    assert "column(s) text missing" in one_line_error(DataError, normalise_events, source)
    source.write_text("timestamp,text\n2024-01-01,\n")
    assert "empty text in data row 1 (line 2)" in one_line_error(DataError, normalise_events, source)
    source.write_text("timestamp,Text,text\n2024-01-01,a,b\n")
    assert "column 'text' appears twice" in one_line_error(DataError, normalise_events, source)
    source.write_text("timestamp,text\n")  # a header only: no events, not an error
    assert normalise_events(source).height == 0


def test_files_source_with_user_events(tmp_path: Path) -> None:
    series = tmp_path / "s.csv"
    series.write_text("date,value\n2024-01-01 00:00:00,1\n2024-01-01 01:00:00,2\n")
    news = tmp_path / "news.csv"
    news.write_text("timestamp,symbol,text\n2024-01-01T00:30:00,load,Heatwave expected\n")
    config = files_config(series, symbol="load")
    config["events"]["path"] = str(news)
    acquire(config, tmp_path / "raw")
    events = read_events(tmp_path / "raw/events/events.csv")
    assert events.rows() == [(dt.datetime(2024, 1, 1, 0, 30, tzinfo=UTC), "load", "Heatwave expected")]
    assert pl.read_parquet(tmp_path / "raw/series/load.parquet")["value"].to_list() == [1.0, 2.0]


def _etth1_with(tmp_path: Path, line: int, column: str, value: str) -> Path:
    """A copy of ETTh1 with one cell replaced (``line`` counts the header as line 1)."""
    lines = ETTH1.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[line - 1].split(",")
    cells[header.index(column)] = value
    lines[line - 1] = ",".join(cells)
    path = tmp_path / "ETTh1.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@needs_etth1
@pytest.mark.parametrize("columns", [None, ["HUFL", "OT"]], ids=["columns null", "columns listed"])
# Line 101 made OT a text column that columns: null dropped without a word; line 12346 lies past
# the 10,000 rows polars used to sample for a column's type, and failed the read naming no row.
@pytest.mark.parametrize("line", [101, 12346])
def test_one_bad_cell_in_etth1_names_file_column_and_row(
    tmp_path: Path, columns: list | None, line: int
) -> None:
    path = _etth1_with(tmp_path, line, "OT", "n/a")
    config = files_config(path, symbol="etth1", interval="1h", columns=columns)
    message = one_line_error(DataError, acquire, config, tmp_path / "raw")
    assert f"'{path}'" in message and "column 'OT'" in message, message
    assert f"data row {line - 1} (line {line})" in message and "'n/a' is not a number" in message, message
    assert not (tmp_path / "raw").exists() or not list((tmp_path / "raw").rglob("*.parquet"))
    # the rerun after the fix works
    _etth1_with(tmp_path, line, "OT", "7.5")
    acquire(config, tmp_path / "raw")
    frame = pl.read_parquet(tmp_path / "raw/series/etth1.parquet")
    assert "OT" in frame.columns and frame["OT"][line - 2] == 7.5


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("abc", "column 'load', data row 3 (line 4): the cell 'abc' is not a number"),
        ("", "column 'load', data row 3 (line 4): the cell is empty"),
        ("   ", "column 'load', data row 3 (line 4): the cell is empty"),
        ("inf", "column 'load', data row 3 (line 4): the cell 'inf' is not a finite number"),
        ("NaN", "column 'load', data row 3 (line 4): the cell 'NaN' is not a finite number"),
    ],
    ids=["text", "empty", "blank", "inf", "nan"],
)
@pytest.mark.parametrize("columns", [None, ["load"]], ids=["columns null", "columns listed"])
def test_a_bad_value_cell_stops_the_source(tmp_path: Path, cell: str, expected: str, columns) -> None:
    path = tmp_path / "s.csv"
    path.write_text(
        "date,load,site\n2024-01-01 00:00,1,a\n2024-01-01 01:00, 2.5 ,b\n"
        f"2024-01-01 02:00,{cell},c\n2024-01-01 03:00,4,d\n"
    )
    message = one_line_error(DataError, normalise_series, path, "date", columns)
    assert expected in message and f"'{path}'" in message, message
    assert ("files.columns to leave this one out" in message) is (columns is None)


def test_text_columns_left_out_are_named_in_the_log(tmp_path: Path, caplog) -> None:
    path = tmp_path / "s.csv"
    path.write_text("date,load,site,flag\n2024-01-01 00:00,1,a,true\n2024-01-01 01:00, 2 ,b,false\n")
    with caplog.at_level("WARNING", logger="trainrelay.data.files_source"):
        frame = normalise_series(path, "date", None)
    assert frame.columns == ["timestamp", "load"] and frame["load"].to_list() == [1.0, 2.0]
    assert "site (String), flag (Boolean)" in caplog.text and "files.columns" in caplog.text


def test_a_bad_cell_in_parquet_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "s.parquet"
    pl.DataFrame({"t": [1704067200, 1704070800, 1704074400], "v": [1.0, None, 3.0]}).write_parquet(path)
    message = one_line_error(DataError, normalise_series, path, "t", None)
    assert "column 'v', row 2: the cell is empty" in message and "line" not in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"date,v\n2024-01-01,1\n2024-01-02,2,3\n", "line 3 has 3 fields but 2 are expected"),
        (b"date,v\n2024-01-01,1\n2024-01-02,\xff\n", "line 3 is not UTF-8 text (byte 0xff)"),
        (b"date,v,v\n2024-01-01,1,2\n", "column 'v' appears twice in the header"),
        (b"date,v\n", "no data rows"),
        (b"", "the file is empty"),
    ],
    ids=["ragged", "not utf-8", "repeated name", "header only", "empty"],
)
def test_unreadable_csv_names_the_line(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "s.csv"
    path.write_bytes(content)
    message = one_line_error(DataError, normalise_series, path, "date", None)
    assert expected in message and "s.csv" in message, message
