"""``import-artifacts``: a real tiny run's outputs, moved into a foreign folder layout, imported into
a fresh checkout; a real ``snakemake -n`` then plans nothing before the imported stages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_workflow, run_snakemake, write_config
from trainrelay.cli import main as cli_main
from trainrelay.core.fingerprint import file_sha256
from trainrelay.errors import DataError
from trainrelay.platforms.importer import import_artifacts, locate, read_checksums

RUN_STAGES = ["environment", "acquire", "manifest", "segments", "embeddings", "train_forecaster"]
FAST = {"until": "train_forecaster", "forecaster": {"train": {"epochs": 2}, "dlinear_train": {"epochs": 1}}}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run (local profile) up to train_forecaster."""
    workdir = copy_workflow(tmp_path_factory.mktemp("run") / "wf")
    config = write_config(workdir, FAST)
    run_snakemake(workdir, "--configfile", str(config))
    return workdir


def _foreign_copy(run: Path, dest: Path) -> Path:
    """The run's outputs as an old Colab /content copy might hold them: other folders, another run name."""
    src = dest / "content"
    shutil.copytree(run / "results" / "tiny", src / "outputs" / "colab_run_7")
    shutil.copytree(run / "data" / "raw" / "tiny" / "synthetic", src / "datasets" / "raw" / "synthetic")
    shutil.rmtree(src / "outputs" / "colab_run_7" / "logs")  # logs are not artifacts
    return dest


def _checkout(tmp_path: Path, real_run: Path, until: str = "train_forecaster") -> Path:
    dest = copy_workflow(tmp_path / "checkout")
    config = yaml.safe_load((real_run / "test.yaml").read_text())
    config["until"] = until
    (dest / "test.yaml").write_text(yaml.safe_dump(config))
    return dest


def _planned_jobs(workdir: Path, *args: str) -> set[str]:
    out = run_snakemake(workdir, "-n", "--configfile", "test.yaml", *args).stdout
    if "Nothing to be done" in out:
        return set()
    table = out.split("Job stats:")[1].split("total")[0]
    return {line.split()[0] for line in table.splitlines()[3:] if line.strip()}


def test_foreign_layout_imports_and_snakemake_plans_only_later_stages(tmp_path, real_run) -> None:
    src = _foreign_copy(real_run, tmp_path / "pod-volume")
    # a sha256 manifest for part of the files (verified); the rest is computed and recorded
    sums = src / "SHA256SUMS"
    listed = [
        "content/outputs/colab_run_7/checkpoints/forecaster.pt",
        "content/outputs/colab_run_7/environment.json",
    ]
    sums.write_text("".join(f"{file_sha256(src / rel)}  {rel}\n" for rel in listed))
    dest = _checkout(tmp_path, real_run, until="precompute")

    summary = import_artifacts(src, "tiny", dest, [str(dest / "test.yaml")])

    assert set(summary["imported"]) == set(RUN_STAGES)
    assert "precompute" in summary["missing"]  # never produced by the run: named, not invented
    for rel in ("checkpoints/forecaster.pt", "metrics/forecaster.json", "segments/scaler.json"):
        assert file_sha256(dest / "results/tiny" / rel) == file_sha256(real_run / "results/tiny" / rel)
    record = json.loads((dest / "results/tiny/imported/import.json").read_text())
    checks = {path: entry["checksum"] for path, entry in record["files"].items()}
    assert checks["results/tiny/checkpoints/forecaster.pt"] == "verified"
    assert checks["results/tiny/metrics/forecaster.json"] == "computed"
    recorded = read_checksums(dest / "results/tiny/imported")
    assert recorded["results/tiny/segments/features.parquet"] == file_sha256(
        real_run / "results/tiny/segments/features.parquet"
    )
    # mtimes in DAG order: every output is newer than its inputs
    raw = max((dest / "data/raw/tiny/synthetic").rglob("*.zip"), key=lambda p: p.stat().st_mtime)
    assert raw.stat().st_mtime < (dest / "results/tiny/manifest/base_manifest.parquet").stat().st_mtime
    assert (dest / "results/tiny/segments/features.parquet").stat().st_mtime < (
        dest / "results/tiny/checkpoints/forecaster.pt"
    ).stat().st_mtime

    # the real check: only precompute (and the `all` target) would run
    assert _planned_jobs(dest) == {"precompute", "all"}
    assert _planned_jobs(dest, "--config", "until=train_forecaster") == set()


def test_corrupt_or_clashing_files_are_named_and_nothing_changes(tmp_path, real_run) -> None:
    src = _foreign_copy(real_run, tmp_path / "old-colab")
    checkpoint = src / "content/outputs/colab_run_7/checkpoints/forecaster.pt"
    (src / "SHA256SUMS").write_text(f"{'0' * 64}  {checkpoint.relative_to(src)}\n")
    # a checkout that already ran: its own outputs, logs, benchmarks and Snakemake metadata
    dest = tmp_path / "checkout"
    shutil.copytree(real_run, dest, symlinks=True)
    assert (dest / ".snakemake" / "metadata").is_dir()
    scaler = dest / "results/tiny/segments/scaler.json"
    scaler.write_text("{}")
    before = {p: p.stat().st_mtime for p in (dest / "results").rglob("*") if p.is_file()}
    config = [str(dest / "test.yaml")]
    with pytest.raises(DataError, match=r"results/tiny/checkpoints/forecaster\.pt \(sha256 mismatch"):
        import_artifacts(src, "tiny", dest, config)

    # content the checklist rejects (no sums): metrics JSON cut short
    (src / "SHA256SUMS").unlink()
    metrics = src / "content/outputs/colab_run_7/metrics/forecaster.json"
    good = metrics.read_bytes()
    metrics.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"train_forecaster: forecaster metrics"):
        import_artifacts(src, "tiny", dest, config)
    metrics.write_bytes(good)

    # a file already in the checkout with other content is not overwritten without force
    with pytest.raises(DataError, match=r"results/tiny/segments/scaler\.json.*--force"):
        import_artifacts(src, "tiny", dest, config)
    assert scaler.read_text() == "{}"
    assert {p: p.stat().st_mtime for p in (dest / "results").rglob("*") if p.is_file()} == before

    code = cli_main(["import-artifacts", str(src), "--run", "tiny", "--dest", str(dest), "--force",
                     "--configfile", str(dest / "test.yaml")])  # fmt: skip
    assert code == 0
    assert file_sha256(scaler) == file_sha256(real_run / "results/tiny/segments/scaler.json")
    # the old run's metadata and benchmark files do not make Snakemake rebuild the imported stages
    assert _planned_jobs(dest) == set()


def test_missing_stage_is_named_and_later_stages_are_left_to_the_workflow(tmp_path, real_run) -> None:
    src = _foreign_copy(real_run, tmp_path / "partial")
    (src / "content/outputs/colab_run_7/checkpoints/forecaster.pt").unlink()
    dest = _checkout(tmp_path, real_run)
    summary = import_artifacts(src, "tiny", dest, [str(dest / "test.yaml")])
    assert "train_forecaster" not in summary["imported"]
    assert summary["missing"]["train_forecaster"] == ["results/tiny/checkpoints/forecaster.pt"]
    assert not (dest / "results/tiny/metrics/forecaster.json").exists()
    assert _planned_jobs(dest) == {"train_forecaster", "all"}


def test_locate_prefers_the_longest_matching_tail_and_refuses_ties() -> None:
    index = {
        "metrics.csv": ["x/benchmark/metrics.csv", "x/report/metrics.csv"],
        "forecaster.json": ["a/metrics/forecaster.json", "b/forecaster.json"],
    }
    assert locate("results/r/benchmark/metrics.csv", index) == ("x/benchmark/metrics.csv", [])
    assert locate("reports/r/metrics.csv", index) == (
        None,
        ["x/benchmark/metrics.csv", "x/report/metrics.csv"],
    )
    assert locate("results/r/metrics/forecaster.json", index)[0] == "a/metrics/forecaster.json"
    assert locate("results/r/none.pt", index) == (None, [])


def test_bad_checksum_file_is_one_clear_error(tmp_path) -> None:
    (tmp_path / "SHA256SUMS").write_text("not a checksum line\n")
    with pytest.raises(DataError, match=r"SHA256SUMS: line 1 is not"):
        read_checksums(tmp_path)
