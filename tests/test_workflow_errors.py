"""Bad inputs end in one clear line and leave no output that looks finished (real snakemake runs)."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import copy_workflow, run_snakemake, write_config
from trainrelay.data import archive

KLINE = "data/raw/tiny/synthetic/data/futures/um/monthly/klines/BTCUSDT/3m/BTCUSDT-3m-2024-01.zip"
MANIFEST = "results/tiny/manifest/base_manifest.parquet"


@pytest.fixture(scope="module")
def acquired(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("acq") / "wf")
    config = write_config(workdir, {"until": "embeddings"})
    run_snakemake(workdir, "acquire", "--configfile", str(config))
    return workdir


def _clone(acquired: Path, tmp_path: Path) -> Path:
    workdir = tmp_path / "wf"
    shutil.copytree(acquired, workdir, symlinks=True)
    return workdir


def _csv_lines(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as handle:
        return handle.read(handle.namelist()[0]).decode().splitlines()


def _rewrite(path: Path, lines: list[str]) -> None:
    archive.write_archive(path, "\n".join(lines) + ("\n" if lines else ""))


def corrupt_zip(p: Path) -> None:
    archive.write_archive(p, "x")  # a valid pair first, then garbage bytes with a matching checksum
    p.write_bytes(b"PK\x03\x04 this is not a zip archive")
    archive.checksum_path(p).write_text(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n")


def checksum_mismatch(p: Path) -> None:
    p.write_bytes(p.read_bytes() + b"\0")


def missing_column(p: Path) -> None:
    _rewrite(p, [",".join(line.split(",")[:5]) for line in _csv_lines(p)])


def non_monotonic(p: Path) -> None:
    lines = _csv_lines(p)
    lines[100], lines[101] = lines[101], lines[100]
    _rewrite(p, lines)


def duplicate_timestamp(p: Path) -> None:
    lines = _csv_lines(p)
    _rewrite(p, [*lines[:50], lines[50], *lines[50:]])


def empty_file(p: Path) -> None:
    _rewrite(p, [])


def nan_value(p: Path) -> None:
    lines = _csv_lines(p)
    fields = lines[10].split(",")
    fields[4] = "NaN"
    lines[10] = ",".join(fields)
    _rewrite(p, lines)


RAW_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "corrupt zip": (corrupt_zip, "zip"),
    "checksum mismatch": (checksum_mismatch, "checksum"),
    "missing column": (missing_column, "column"),
    "non-monotonic timestamps": (non_monotonic, "increasing"),
    "duplicate timestamps": (duplicate_timestamp, "duplicate"),
    "empty file": (empty_file, "empty"),
    "NaN values": (nan_value, "nan"),
}


def error_lines(proc) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("trainrelay: error")]


@pytest.mark.parametrize("case", sorted(RAW_CASES))
def test_bad_raw_file_stops_manifest_with_one_line(case: str, acquired: Path, tmp_path: Path) -> None:
    workdir = _clone(acquired, tmp_path)
    damage, keyword = RAW_CASES[case]
    damage(workdir / KLINE)
    proc = run_snakemake(workdir, MANIFEST, "--configfile", "test.yaml", check=False)
    assert proc.returncode != 0
    lines = error_lines(proc)
    assert len(lines) == 1, proc.stdout + proc.stderr
    assert "BTCUSDT-3m-2024-01.zip" in lines[0]
    assert keyword in lines[0].lower(), lines[0]
    assert not (workdir / MANIFEST).exists()
    assert not list((workdir / "results/tiny/manifest").glob("*.parquet"))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"segments": {"foldz": 2}}, "unknown key 'segments.foldz'"),
        ({"segments": {"folds": "two"}}, "segments.folds"),
        ({"device": "tpu"}, "device"),
    ],
    ids=["unknown key", "wrong type", "bad enum"],
)
def test_bad_config_fails_with_one_line_naming_the_key(
    overrides: dict, expected: str, workflow: Path
) -> None:
    config = write_config(workflow, overrides)
    proc = run_snakemake(workflow, "-n", "--configfile", str(config), check=False)
    assert proc.returncode != 0
    lines = error_lines(proc)
    assert len(lines) == 1, proc.stdout + proc.stderr
    assert expected in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_missing_symbol_names_the_symbol(acquired: Path, tmp_path: Path) -> None:
    workdir = _clone(acquired, tmp_path)
    config = write_config(
        workdir, {"until": "embeddings", "manifest": {"required_symbols": ["BTCUSDT", "XRPUSDT"]}}
    )
    proc = run_snakemake(workdir, MANIFEST, "--configfile", str(config), check=False)
    assert proc.returncode != 0
    lines = error_lines(proc)
    assert len(lines) == 1 and "XRPUSDT" in lines[0], proc.stdout + proc.stderr
    assert not (workdir / MANIFEST).exists()


def test_unreadable_files_path_names_the_path(workflow: Path) -> None:
    config = write_config(
        workflow,
        {
            "source": "files",
            "until": "embeddings",
            "files": {"path": "no/such/series.csv"},
            "manifest": {"required_kinds": ["series"]},
        },
    )
    proc = run_snakemake(workflow, "--configfile", str(config), check=False)
    assert proc.returncode != 0
    lines = error_lines(proc)
    assert len(lines) == 1 and "no/such/series.csv" in lines[0], proc.stdout + proc.stderr
    assert not list((workflow / "data/raw/tiny/files").rglob("*.parquet"))


def test_cuda_requested_without_cuda_stops_at_environment(workflow: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = write_config(workflow, {"device": "cuda", "until": "embeddings"})
    proc = run_snakemake(workflow, "results/tiny/environment.json", "--configfile", str(config), check=False)
    assert proc.returncode != 0
    lines = error_lines(proc)
    assert len(lines) == 1 and "cuda" in lines[0].lower(), proc.stdout + proc.stderr
    assert not (workflow / "results/tiny/environment.json").exists()
