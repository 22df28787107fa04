"""A finished run meets a deleted, corrupt, shared or moved file (real snakemake on a tiny config).

Each case must end in one clear line or in the rebuild of exactly what is missing, leave nothing
half written, and a rerun after the fix must work. One finished run serves every test: each test
puts the run back as it found it (by a rebuild or by restoring the file it changed).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.conftest import finished_copy, jobs_in, run_snakemake

pytestmark = pytest.mark.slow

CONFIG = ["--configfile", "test.yaml"]
RESULTS = "results/tiny"
NOTHING = "Nothing to be done"
# Everything upstream of the models: a lost model or checkpoint must never re-acquire or re-split.
DATA_RULES = {"acquire", "environment", "manifest", "segments", "embeddings"}


@pytest.fixture(scope="module")
def finished(finished_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return finished_copy(finished_template, tmp_path_factory.mktemp("missing") / "wf")


def planned(workdir: Path, *args: str) -> set[str]:
    """The rules a dry run would run (``rule x:`` and ``localrule x:`` lines)."""
    proc = run_snakemake(workdir, "-n", *args)
    return set(jobs_in(proc.stdout))


def error_lines(proc) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("trainrelay: error")]


def validation(workdir: Path) -> dict:
    return json.loads((workdir / RESULTS / "validation.json").read_text())


@pytest.fixture
def restored(finished: Path, tmp_path: Path) -> Iterator[list[str]]:
    """Relative paths a test may delete or damage; put back byte- and mtime-identical afterwards."""
    touched: list[str] = []
    yield touched
    for rel in touched:
        shutil.copy2(tmp_path / "saved" / rel, finished / rel)


def save(finished: Path, tmp_path: Path, rel: str, touched: list[str]) -> None:
    (tmp_path / "saved" / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(finished / rel, tmp_path / "saved" / rel)
    touched.append(rel)


def test_finished_run_has_nothing_to_do(finished: Path) -> None:
    proc = run_snakemake(finished, "-n", *CONFIG)
    assert NOTHING in proc.stdout + proc.stderr
    assert validation(finished)["passed"] is True


def test_deleted_policy_onnx_is_rebuilt_and_validated_again(finished: Path) -> None:
    onnx = finished / RESULTS / "models/policy.onnx"
    before = (finished / RESULTS / "validation.json").stat().st_mtime
    onnx.unlink()
    jobs = planned(finished, *CONFIG)
    # export_onnx writes it again; everything that reads the models reruns after it, validate too
    assert {"export_onnx", "benchmark", "report", "validate", "dashboard", "all"} <= jobs
    assert not jobs & (DATA_RULES | {"train_forecaster", "precompute", "train_policy_fold", "train_policy"})

    run_snakemake(finished, *CONFIG)
    assert onnx.is_file()
    assert validation(finished)["passed"] is True
    assert (finished / RESULTS / "validation.json").stat().st_mtime > max(before, onnx.stat().st_mtime)
    assert NOTHING in run_snakemake(finished, "-n", *CONFIG).stdout


def test_deleted_forecaster_checkpoint_retrains_from_the_features(
    finished: Path, tmp_path: Path, restored: list[str]
) -> None:
    rel = f"{RESULTS}/checkpoints/forecaster.pt"
    save(finished, tmp_path, rel, restored)
    (finished / rel).unlink()
    jobs = planned(finished, *CONFIG)
    assert {"train_forecaster", "precompute", "train_policy_fold", "export_onnx", "validate", "all"} <= jobs
    assert not jobs & DATA_RULES


# One file per stage that validate checks (and so must declare as an input): deleting any of them
# plans its producer and validate, never "Nothing to be done" beside a validation.json that passed.
CHECKED = {
    "manifest/base_manifest.parquet": "manifest",
    "segments/scaler.json": "segments",
    "embeddings/text_embeddings.parquet": "embeddings",
    "artifacts/loss/forecaster.csv": "train_forecaster",
    "features/forecast_features.parquet": "precompute",
    "checkpoints/ppo_policy.zip": "train_policy",
    "metrics/equity_curve.parquet": "evaluate_policy",
    "models/onnx_parity.json": "export_onnx",
    "benchmark/selection.json": "benchmark",
}


def test_every_checked_file_is_requested_and_revalidated(
    finished: Path, tmp_path: Path, restored: list[str]
) -> None:
    reports = [f"reports/tiny/{name}" for name in ("report.pdf", "metrics.csv")]
    for rel, producer in [
        *((f"{RESULTS}/{r}", p) for r, p in CHECKED.items()),
        *((r, "report") for r in reports),
    ]:
        save(finished, tmp_path, rel, restored)
        (finished / rel).unlink()
        jobs = planned(finished, *CONFIG)
        assert {producer, "validate"} <= jobs, (rel, jobs)
        shutil.copy2(tmp_path / "saved" / rel, finished / rel)


def test_truncated_onnx_is_an_error_naming_the_file_not_an_unavailable_engine(
    finished: Path, tmp_path: Path
) -> None:
    onnx = finished / RESULTS / "models/forecaster.onnx"
    data = onnx.read_bytes()
    onnx.write_bytes(data[: len(data) // 2])
    proc = run_snakemake(finished, *CONFIG, "--forcerun", "benchmark", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert error_lines(proc) == [
        "trainrelay: error in rule benchmark: results/tiny/models/forecaster.onnx is not a valid ONNX "
        "model (InvalidProtobuf): rerun `snakemake -j1 --forcerun export_onnx`"
    ], output
    assert "Traceback" not in output and "unavailable" not in output
    # nothing half written: no benchmark table or selection that could pass for a finished benchmark
    for name in ("metrics.parquet", "metrics.csv", "raw_samples.parquet", "selection.json"):
        assert not (finished / RESULTS / "benchmark" / name).exists(), name

    run_snakemake(finished, *CONFIG, "--forcerun", "export_onnx")  # the fix the line names
    assert onnx.read_bytes() != data[: len(data) // 2]
    selection = json.loads((finished / RESULTS / "benchmark/selection.json").read_text())
    assert selection["models"]["forecaster"]["chosen"]["engine"]
    assert validation(finished)["passed"] is True
    assert NOTHING in run_snakemake(finished, "-n", *CONFIG).stdout


def test_a_second_run_does_not_touch_the_first_runs_raw_data(finished: Path) -> None:
    other = yaml.safe_load((finished / "test.yaml").read_text())
    other.update(run="other", seed=8)  # other data: a shared folder would be rewritten
    (finished / "other.yaml").write_text(yaml.safe_dump(other, sort_keys=False))
    # the raw files this run was built from, wherever the layout puts them
    manifest = pl.read_parquet(finished / RESULTS / "manifest/base_manifest.parquet")
    mine = [finished / path for path in manifest["path"]]
    assert any(p.name == "events.csv" for p in mine)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in mine}

    run_snakemake(finished, "--configfile", "other.yaml", "--until", "acquire")
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in mine} == before
    proc = run_snakemake(finished, "-n", *CONFIG)
    assert NOTHING in proc.stdout, proc.stdout
    assert (finished / "data/raw/other/synthetic/events/events.csv").is_file()
    shutil.rmtree(finished / "data/raw/other")


def test_moving_the_checkout_reruns_nothing(finished: Path) -> None:
    moved = finished.parent / "moved-elsewhere"
    finished.rename(moved)
    try:
        # a param holding the checkout's absolute path would replan the rules that carry it
        proc = run_snakemake(moved, "-n", *CONFIG)
        assert NOTHING in proc.stdout, proc.stdout
    finally:
        moved.rename(finished)
