"""Recovery after a killed run: stale temporary files and scratch folders go, but only when no
run is alive in the folder (the whole-DAG kill test in test_workflow_kill.py drives the real thing)."""

from __future__ import annotations

from pathlib import Path

from trainrelay.workflow.run_lease import LeaseHolder, recover


def _leftovers(workdir: Path) -> dict[str, Path]:
    """What a SIGKILL leaves: an atomic write's temp file and a stage's half-filled scratch folder."""
    segments = workdir / "results/r/segments"
    scratch = segments / ".tmp-segments-abc123"
    (scratch / "parts").mkdir(parents=True)
    (scratch / "parts/BTCUSDT.parquet").write_bytes(b"half")
    (scratch / ".tmp-inner.json.x1").write_text("{")  # a temp file inside the scratch folder
    temp_file = workdir / "reports/r/.tmp-report.json.q9"
    temp_file.parent.mkdir(parents=True)
    temp_file.write_text("{")
    kept = segments / "features.parquet"
    kept.write_bytes(b"finished")
    return {"scratch": scratch, "temp_file": temp_file, "kept": kept}


def test_a_dead_runs_scratch_folders_and_temp_files_are_removed(tmp_path: Path) -> None:
    paths = _leftovers(tmp_path)
    recovery = recover(tmp_path)
    assert not paths["scratch"].exists() and not paths["temp_file"].exists()
    assert paths["kept"].read_bytes() == b"finished"
    assert sorted(recovery.removed_temporary) == sorted([paths["scratch"], paths["temp_file"]])
    assert "2 half-written temporary file(s)" in (recovery.message() or "")


def test_nothing_is_touched_while_a_run_is_alive(tmp_path: Path) -> None:
    paths = _leftovers(tmp_path)
    holder = LeaseHolder(tmp_path)
    try:
        recovery = recover(tmp_path)
    finally:
        holder.release()
    assert recovery.live and recovery.removed_temporary == []
    assert (paths["scratch"] / "parts/BTCUSDT.parquet").read_bytes() == b"half"
    assert paths["temp_file"].exists()
