"""Kill anywhere, rerun the same command: SIGKILL of the whole process group at 20 moments.

What a Colab disconnect, a RunPod pod stop or a lost Slurm login session does to a run. Each
kill lands a random moment after a stage starts (or during the rerun's own start-up, twice in a
row); the next run is the same command and must resume, never stop on a stale lock or an
incomplete file. At the end the run finishes, `validate` passes, and nothing half written is left.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import SNAKEMAKE, copy_workflow, run_snakemake, write_config
from tests.test_workflow_full import FAST
from trainrelay.run_lease import LEASE_DIR

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("TRAINRELAY_KILL_SEED", "20261202"))

# (trigger, stage): "startup" kills during the rerun's own parse and DAG building; "rule" kills a
# random moment after that stage's job starts. Twice in a row on the forecaster's training and at
# start-up: a rerun killed again must resume as well.
KILLS: list[tuple[str, str | None]] = [
    ("rule", "acquire"),
    ("startup", None),
    ("startup", None),
    ("rule", "manifest"),
    ("rule", "segments"),
    ("rule", "embeddings"),
    ("rule", "train_forecaster"),
    ("rule", "train_forecaster"),
    ("rule", "precompute"),
    ("rule", "train_policy_fold"),
    ("rule", "train_policy_ablation"),
    ("rule", "evaluate_ablation"),
    ("rule", "evaluate_policy"),
    ("rule", "train_policy"),
    ("rule", "export_onnx"),
    ("rule", "benchmark"),
    ("rule", "package"),
    ("rule", "report"),
    ("rule", "validate"),
    ("rule", "dashboard"),
]


def _reader(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _start(workdir: Path) -> tuple[subprocess.Popen, queue.Queue]:
    env = dict(os.environ, PYTHONHASHSEED="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.Popen(
        [SNAKEMAKE, "-j1", "--configfile", "test.yaml"],  # the documented command, unchanged
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the kill takes the jobs with it
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    return proc, lines


def _started_rule(line: str) -> str | None:
    words = line.split()
    if len(words) == 2 and words[0] in ("rule", "localrule") and words[1].endswith(":"):
        return words[1][:-1]
    return None


def _run_until_killed(workdir: Path, trigger: str, stage: str | None, rng: random.Random) -> dict:
    """Start the command, kill its process group at the chosen moment; what happened."""
    proc, lines = _start(workdir)
    output: list[str] = []
    started = time.monotonic()
    deadline = None if trigger == "rule" else started + rng.uniform(0.3, 2.5)
    while True:
        timeout = 0.05 if deadline is not None else 1.0
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            line = ""
        if line is None:  # the command ended by itself before the kill point
            proc.wait()
            return {"killed": False, "returncode": proc.returncode, "output": "".join(output)}
        output.append(line)
        if deadline is None and trigger == "rule" and _started_rule(line) == stage:
            deadline = time.monotonic() + rng.uniform(0.0, 2.0)
        if deadline is not None and time.monotonic() >= deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"killed": True, "returncode": proc.returncode, "output": "".join(output)}
        if time.monotonic() - started > 900:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("a run did not reach its kill point in 15 minutes:\n" + "".join(output))


def test_twenty_kills_then_the_same_command_finishes(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    write_config(workdir, FAST)
    rng = random.Random(SEED)
    history = []
    for trigger, stage in KILLS:
        outcome = _run_until_killed(workdir, trigger, stage, rng)
        history.append((trigger, stage, outcome["killed"]))
        if not outcome["killed"]:
            # Ending by itself is only fine when it ended well (the run finished early).
            assert outcome["returncode"] == 0, f"rerun after {history} failed:\n{outcome['output'][-6000:]}"
            break
        for refusal in ("LockException", "cannot be locked", "IncompleteFilesException", "Traceback"):
            assert refusal not in outcome["output"], f"after {history}:\n{outcome['output'][-6000:]}"
    assert sum(killed for *_, killed in history) >= 15, history  # the kills did land across the DAG

    final = run_snakemake(workdir, "--configfile", "test.yaml")
    assert "cannot be locked" not in final.stdout + final.stderr
    validation = json.loads((workdir / "results/tiny/validation.json").read_text())
    assert validation["passed"], [c for c in validation["checks"] if not c["passed"]]
    again = run_snakemake(workdir, "--configfile", "test.yaml")
    assert "Nothing to be done" in again.stdout + again.stderr
    leftovers = [
        str(p.relative_to(workdir))
        for folder in ("data", "results", "reports")
        for p in (workdir / folder).rglob(".tmp-*")
    ]
    assert leftovers == []
    assert not list((workdir / ".snakemake" / LEASE_DIR).glob("*.json"))  # every lease released
    locks = workdir / ".snakemake" / "locks"
    assert not locks.exists() or not any(locks.iterdir())


def test_a_live_run_keeps_its_locks(tmp_path: Path) -> None:
    """A second start beside a run that is alive must not clear that run's locks."""
    workdir = copy_workflow(tmp_path / "wf")
    write_config(workdir, FAST)
    # Stand-in for the live run: a real process holding a lease, and the lock files it took.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import pathlib, sys, time; from trainrelay.run_lease import LeaseHolder; "
            "LeaseHolder(pathlib.Path(sys.argv[1])); print('held', flush=True); time.sleep(600)",
            str(workdir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        locks = workdir / ".snakemake" / "locks"
        locks.mkdir(parents=True)
        (locks / "0.output.lock").write_text("results/tiny/environment.json\n")
        proc = run_snakemake(workdir, "--configfile", "test.yaml", check=False)
        text = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "cannot be locked" in text
        assert f"pid {holder.pid}" in text  # our line names the run that holds the folder
        assert (locks / "0.output.lock").exists()
    finally:
        holder.kill()
        holder.wait()
    # Once it is gone, the same command clears the stale lock and starts (a dry run suffices here).
    proc = run_snakemake(workdir, "-n", "--configfile", "test.yaml")
    assert "removed 1 stale Snakemake lock file" in proc.stdout + proc.stderr
    assert not (locks / "0.output.lock").exists()
