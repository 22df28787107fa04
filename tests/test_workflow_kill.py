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
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import FAST, SNAKEMAKE, copy_workflow, run_snakemake, write_config
from trainrelay.workflow.run_lease import LEASE_DIR

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("TRAINRELAY_KILL_SEED", "20261202"))

# Where each kill lands: "startup" during the rerun's own parse and DAG building; "job" a random
# moment (0-3 s) after a job starts, once the run has finished at least one job (so every kill
# moves the run on, and the kills walk along the DAG). Start-up is killed twice in a row.
KILLS = ["job", "startup", "startup"] + ["job"] * 17
STEPS_DONE = re.compile(r"^\d+ of \d+ steps \(.*\) done")


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


def _run_until_killed(workdir: Path, trigger: str, rng: random.Random) -> dict:
    """Start the command, kill its process group at the chosen moment; what happened."""
    proc, lines = _start(workdir)
    output: list[str] = []
    started = time.monotonic()
    deadline = None if trigger == "job" else started + rng.uniform(0.3, 2.5)
    running = None
    finished_one = False
    while True:
        try:
            line = lines.get(timeout=0.05 if deadline is not None else 1.0)
        except queue.Empty:
            line = ""
        if line is None:  # the command ended by itself before the kill point
            proc.wait()
            text = "".join(output)
            return {"killed": False, "rule": running, "returncode": proc.returncode, "output": text}
        output.append(line)
        if STEPS_DONE.search(line):
            finished_one = True
        rule = _started_rule(line)
        if rule is not None and rule != "all":
            running = rule
            if deadline is None and finished_one:
                deadline = time.monotonic() + rng.uniform(0.0, 3.0)
        if deadline is not None and time.monotonic() >= deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"killed": True, "rule": running, "returncode": proc.returncode, "output": "".join(output)}
        if time.monotonic() - started > 900:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("a run did not reach its kill point in 15 minutes:\n" + "".join(output))


def test_twenty_kills_then_the_same_command_finishes(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    write_config(workdir, FAST)
    rng = random.Random(SEED)
    history = []
    for trigger in KILLS:
        outcome = _run_until_killed(workdir, trigger, rng)
        history.append((trigger, outcome["rule"], outcome["killed"]))
        if not outcome["killed"]:
            # Ending by itself is only fine when it ended well (the run finished early).
            assert outcome["returncode"] == 0, f"rerun after {history} failed:\n{outcome['output'][-6000:]}"
            break
        for refusal in ("LockException", "cannot be locked", "IncompleteFilesException", "Traceback"):
            assert refusal not in outcome["output"], f"after {history}:\n{outcome['output'][-6000:]}"
    # The kills did land, across the DAG: in data, training, export and report stages alike.
    killed_in = {rule for _, rule, killed in history if killed and rule}
    assert sum(killed for *_, killed in history) >= 12, history
    assert len(killed_in) >= 8, history

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
            "import pathlib, sys, time; from trainrelay.workflow.run_lease import LeaseHolder; "
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
