"""Workflow tests of the data stages: real snakemake on a tiny config in a temporary directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import copy_workflow, jobs_in, run_snakemake, write_config

DATA_TARGETS = [
    "results/tiny/manifest/base_manifest.parquet",
    "results/tiny/segments/features.parquet",
    "results/tiny/segments/scaler.json",
    "results/tiny/segments/segments_metadata.parquet",
    "results/tiny/embeddings/text_embeddings.parquet",
    "results/tiny/environment.json",
]


def jobs_in_dry_run(output: str) -> list[str]:
    """Rule names in the order snakemake's dry-run lists its jobs."""
    return jobs_in(output)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny run of the data stages, shared by the tests that only read it."""
    workdir = copy_workflow(tmp_path_factory.mktemp("data") / "wf")
    config = write_config(workdir, {"until": "embeddings"})
    run_snakemake(workdir, "--configfile", str(config))
    return workdir


def test_dry_run_lists_rules_in_dag_order(workflow: Path) -> None:
    config = write_config(workflow, {"until": "embeddings"})
    proc = run_snakemake(workflow, "-n", "--configfile", str(config))
    jobs = jobs_in_dry_run(proc.stdout)
    assert set(jobs) == {"acquire", "manifest", "segments", "environment", "embeddings", "all"}
    for before, after in [("acquire", "manifest"), ("manifest", "segments"), ("manifest", "embeddings")]:
        assert jobs.index(before) < jobs.index(after), jobs
    assert jobs[-1] == "all"


def test_outputs_exist_and_second_run_does_nothing(finished: Path) -> None:
    for target in DATA_TARGETS:
        assert (finished / target).stat().st_size > 0, target
    proc = run_snakemake(finished, "--configfile", "test.yaml")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_forcerun_segments_reruns_only_downstream(finished: Path) -> None:
    proc = run_snakemake(finished, "-n", "--configfile", "test.yaml", "--forcerun", "segments")
    jobs = set(jobs_in_dry_run(proc.stdout))
    assert "segments" in jobs
    assert not jobs & {"acquire", "manifest", "environment"}


def test_same_seed_gives_identical_bytes(finished: Path, tmp_path: Path) -> None:
    other = copy_workflow(tmp_path / "again")
    shutil.copy(finished / "test.yaml", other / "test.yaml")
    run_snakemake(other, "results/tiny/segments/features.parquet", "--configfile", "test.yaml")
    for target in [
        "results/tiny/manifest/base_manifest.parquet",
        "results/tiny/segments/features.parquet",
        "results/tiny/segments/scaler.json",
        "results/tiny/segments/segments_metadata.parquet",
    ]:
        assert (finished / target).read_bytes() == (other / target).read_bytes(), target
