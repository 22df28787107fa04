"""Bad user input and a hostile machine, through real snakemake: one line, no traceback, nothing
half written, and the same command works once the input or the disk is fixed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import copy_workflow, run_snakemake, write_config
from tests.test_user_errors import small_disk

SEGMENTS = "results/tiny/segments"
FEATURES = f"{SEGMENTS}/features.parquet"


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("trainrelay: error")]


def assert_one_line(proc: subprocess.CompletedProcess) -> str:
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "Traceback" not in output, output
    lines = error_lines(proc)
    assert len(lines) == 1, output
    return lines[0]


def _series_csv(path: Path, bad_row: int | None = None) -> None:
    """Hourly load/temperature rows (one text column too); ``bad_row`` (1-based) holds 'n/a'."""
    lines = ["date,load,temp,site"]
    for i in range(300):
        load = "n/a" if bad_row == i + 1 else f"{100 + (i % 24) * 1.5:.1f}"
        lines.append(f"2024-01-{1 + i // 24:02d} {i % 24:02d}:00:00,{load},{15 + (i % 7) * 0.5:.1f},north")
    path.write_text("\n".join(lines) + "\n")


def test_a_bad_cell_in_a_files_source_stops_acquire_and_a_fixed_file_runs(workflow: Path) -> None:
    series = workflow / "my_series.csv"
    _series_csv(series, bad_row=120)
    config = write_config(
        workflow,
        {
            "source": "files",
            "until": "embeddings",
            "files": {"path": "my_series.csv", "symbol": "load", "interval": "1h", "columns": None},
            "manifest": {"required_kinds": ["series"], "min_rows": 100},
        },
    )
    proc = run_snakemake(workflow, "acquire", "--configfile", str(config), check=False)
    line = assert_one_line(proc)
    assert line == (
        "trainrelay: error in rule acquire: files.path 'my_series.csv': column 'load', data row 120 "
        "(line 121): the cell 'n/a' is not a number; fix or remove that row, or list the value "
        "columns in files.columns to leave this one out"
    )
    assert not list(workflow.rglob("*.parquet"))
    assert not list(workflow.rglob(".tmp-*"))

    _series_csv(series)  # the fix
    run_snakemake(workflow, "acquire", "--configfile", str(config))
    (written,) = (workflow / "data").rglob("series/load.parquet")
    assert pl.read_parquet(written).columns == ["timestamp", "load", "temp"]


@pytest.fixture(scope="module")
def manifested(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("enospc") / "wf")
    config = write_config(workdir, {"until": "embeddings"})
    run_snakemake(workdir, "results/tiny/manifest/base_manifest.parquet", "--configfile", str(config))
    return workdir


# A read-only results folder is not tested here: Snakemake removes a job's old outputs before the
# job starts and dies on EROFS with its own traceback before the rule runs (tests/test_user_errors.py
# covers the rule glue's line for it).
def test_a_full_results_disk_stops_segments_and_a_rerun_with_room_works(
    manifested: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "wf"
    shutil.copytree(manifested, workdir, symlinks=True)
    with small_disk(workdir / SEGMENTS, size="32k"):
        proc = run_snakemake(workdir, FEATURES, "--configfile", "test.yaml", check=False)
        line = assert_one_line(proc)
        left = sorted(p.name for p in (workdir / SEGMENTS).iterdir())
    assert line.startswith(
        f"trainrelay: error in rule segments: no space left on device in '{SEGMENTS}' writing "
        "'features.parquet' (Errno 28): this stage needs more than the "
    ), line
    assert "that were free there when it started" in line and line.endswith("then rerun"), line
    assert left == [".keep"]  # nothing half written on the small disk
    # The same command, with the disk replaced by one with room, finishes the stage.
    run_snakemake(workdir, FEATURES, "--configfile", "test.yaml")
    assert (workdir / FEATURES).is_file() and (workdir / SEGMENTS / "scaler.json").is_file()


def test_a_yaml_error_in_the_workflow_config_names_file_and_line(workflow: Path) -> None:
    base = workflow / "config" / "config.yaml"
    good = base.read_text()
    base.write_text(good.replace("files:\n", "files:\n  path: [oops\n", 1))
    config = write_config(workflow)
    proc = run_snakemake(workflow, "-n", "--configfile", str(config), check=False)
    line = assert_one_line(proc)
    assert line.startswith("trainrelay: error: config/config.yaml:"), line
    assert "not valid YAML" in line and "fix the YAML there" in line, line
    base.write_text(good)
    run_snakemake(workflow, "-n", "--configfile", str(config))


def test_a_key_given_twice_in_a_configfile_names_both_lines(workflow: Path) -> None:
    config = workflow / "twice.yaml"
    config.write_text("run: tiny\nsegments:\n  folds: 2\nsegments:\n  folds: 3\n")
    proc = run_snakemake(workflow, "-n", "--configfile", "twice.yaml", check=False)
    line = assert_one_line(proc)
    assert line == (
        "trainrelay: error: twice.yaml:4:1: not valid YAML: key 'segments' appears twice "
        "(first at line 2); keep one"
    )


@pytest.mark.skipif(
    shutil.which("mount") is None or os.geteuid() != 0,
    reason="needs root for a read-only mount",
)
def test_read_only_results_folder_is_one_line_before_snakemake_touches_it(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    write_config(workdir)
    results = workdir / "results"
    results.mkdir()
    subprocess.run(["mount", "--bind", str(results), str(results)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(results)], check=True)
        proc = run_snakemake(workdir, "--configfile", "test.yaml", check=False)
        line = assert_one_line(proc)
        assert "results" in line and "read-only file system" in line, line
    finally:
        subprocess.run(["umount", str(results)], check=True)
    # Writable again: the same command starts (a dry run is enough to show it gets past the check).
    proc = run_snakemake(workdir, "-n", "--configfile", "test.yaml")
    assert "trainrelay: error" not in proc.stdout + proc.stderr
