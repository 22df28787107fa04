"""notebooks/colab.ipynb executed for real (nbclient) in local mode: the "Drive" is a temporary
folder, the repository a copy of the workflow, the run the tiny config through the colab profile.

The second test is a runtime reset: the run is killed (SIGKILL) mid-training once the forecaster's
state is on "Drive", the VM-side checkout is deleted, and the notebook runs again from the top.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest
import yaml
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from tests.conftest import REPO, TINY, copy_workflow
from trainrelay.deep_merge import deep_merge

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="the fs storage plugin needs rsync")

NOTEBOOK = REPO / "notebooks" / "colab.ipynb"


def _setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: dict) -> dict[str, Path]:
    paths = {
        "repo": copy_workflow(tmp_path / "repo"),  # stands in for the GitHub repository
        "drive": tmp_path / "drive",  # stands in for /content/drive/MyDrive/trainrelay
        "workdir": tmp_path / "vm" / "trainrelay",  # the checkout on the VM disk
        "config": tmp_path / "drive-config.yaml",
    }
    config = deep_merge(yaml.safe_load(yaml.safe_dump(TINY)), overrides)
    paths["config"].write_text(yaml.safe_dump(config, sort_keys=False))
    env = {
        "TRAINRELAY_DRIVE_ROOT": paths["drive"],
        "TRAINRELAY_REPO": paths["repo"],
        "TRAINRELAY_WORKDIR": paths["workdir"],
        "TRAINRELAY_CONFIG": paths["config"],
        "TRAINRELAY_VENV": Path(sys.executable).parent.parent,  # skips make setup (no internet here)
        "PYTHONHASHSEED": "0",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    return paths


def _execute(timeout: int = 300) -> tuple[nbformat.NotebookNode, BaseException | None]:
    """Run every cell; return the executed notebook and the error that stopped it, if any."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {}})
    try:
        client.execute()
    except CellExecutionError as exc:
        return notebook, exc
    return notebook, None


def _output(notebook: nbformat.NotebookNode) -> str:
    parts = []
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") or "".join(out.get("traceback", [])))
            parts.append(str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def _rules_finished(text: str) -> set[str]:
    return set(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", text))


def _rules_started(text: str) -> set[str]:
    return {line.split()[-1].rstrip(":") for line in text.splitlines() if line.startswith("localrule ")}


def test_notebook_runs_the_workflow_with_outputs_on_drive(tmp_path, monkeypatch) -> None:
    paths = _setup(tmp_path, monkeypatch, {"until": "precompute"})
    notebook, error = _execute()
    text = _output(notebook)
    assert error is None, text[-3000:]

    drive = paths["drive"]
    assert "local mode" in text
    for rel in (
        "data/raw/tiny/synthetic/events/events.csv",
        "results/tiny/environment.json",
        "results/tiny/manifest/base_manifest.parquet",
        "results/tiny/segments/features.parquet",
        "results/tiny/embeddings/text_embeddings.parquet",
        "results/tiny/checkpoints/forecaster.pt",
        "results/tiny/metrics/forecaster.json",
        "results/tiny/features/forecast_features.parquet",
        "results/tiny/logs/train_forecaster.log",
    ):
        assert (drive / rel).is_file() and (drive / rel).stat().st_size > 0, rel
    # mid-training state went straight to Drive (the profile's checkpoint.state_dir), not to the VM
    assert list((drive / "state" / "tiny" / "train_forecaster").rglob("state-*.pt"))
    assert not (paths["workdir"] / "results").exists()
    # the VM keeps only local copies inside .snakemake/, never the declared result paths
    assert _rules_started(text) >= {"acquire", "manifest", "segments", "train_forecaster", "precompute"}
    # the report cell lists what is on Drive when the run stops before the report
    assert "no report yet for run tiny" in text and "results/tiny/metrics/forecaster.json" in text


def _snakemake_pids(workdir: Path) -> list[int]:
    """Snakemake processes (started by this test's notebook) whose working directory is ``workdir``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if any(part.endswith(b"snakemake") for part in cmdline[:2]) and Path(cwd) == workdir:
            found.append(int(entry.name))
    return found


def test_runtime_reset_resumes_from_drive(tmp_path, monkeypatch) -> None:
    # slow enough training (many small epochs, no early stop) to be killed in the middle,
    # and a state save at every opportunity
    overrides = {
        "until": "train_forecaster",
        "checkpoint": {"every_minutes": 0.001},
        "forecaster": {"train": {"epochs": 60, "patience": 60}, "dlinear_train": {"epochs": 1}},
    }
    paths = _setup(tmp_path, monkeypatch, overrides)
    state_dir = paths["drive"] / "state" / "tiny" / "train_forecaster"

    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(zip(("nb", "error"), _execute(), strict=True)))
    worker.start()
    deadline = time.monotonic() + 240
    while not list(state_dir.rglob("state-*.pt")):
        assert worker.is_alive() and time.monotonic() < deadline, "no training state appeared on Drive"
        time.sleep(0.2)
    pids = _snakemake_pids(paths["workdir"])
    assert pids, "snakemake process not found"
    for pid in pids:  # the runtime dies: snakemake and its running job, no chance to clean up
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    worker.join(timeout=120)
    assert isinstance(result["error"], CellExecutionError), "the killed run should fail its cell"
    assert "snakemake exited with code" in str(result["error"])
    first = _output(result["nb"])
    assert "train_forecaster" in _rules_started(first)
    # the data stages train_forecaster needs finished before it; embeddings may come after it
    finished = _rules_finished(first)
    assert {"environment", "acquire", "manifest", "segments"} <= finished, finished
    assert not (paths["drive"] / "results/tiny/metrics/forecaster.json").exists()
    saved = sorted(p.name for p in state_dir.rglob("state-*.pt"))

    # a fresh VM: the checkout (with .snakemake metadata and local copies) is gone, Drive is not
    shutil.rmtree(paths["workdir"])
    notebook, error = _execute()
    second = _output(notebook)
    assert error is None, second[-3000:]
    assert "resuming from" in second and any(name in second for name in saved), second[-3000:]
    started = _rules_started(second)
    assert "train_forecaster" in started
    assert not started & finished, f"finished stages ran again: {started & finished}"
    assert (paths["drive"] / "results/tiny/metrics/forecaster.json").is_file()
