"""Shared fixtures: a copy of the workflow in a temporary directory and a snakemake runner."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from trainrelay.deep_merge import deep_merge

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
WORKFLOW_PARTS = ["Snakefile", "rules", "scripts", "config", "profiles", "envs", "docs"]

# The tiny config every workflow test starts from: one symbol, one month, small models.
TINY = {
    "run": "tiny",
    "synthetic": {"symbols": ["BTCUSDT"], "months": 1},
    "segments": {"folds": 2, "episode_bars": 128},
}
# On top of TINY: every stage, with the fewest epochs, timesteps and timing trials that still
# exercise it. The finished run of this config is built once per session (``finished_template``).
FAST = {
    "until": "dashboard",
    "forecaster": {"train": {"epochs": 2}, "dlinear_train": {"epochs": 1}},
    "policy": {"ablations": ["no_text"], "ppo": {"total_timesteps": 4096, "n_envs": 2, "n_steps": 512}},
    "benchmark": {"iterations": 10, "trials": 3, "warmup_iterations": 5, "warmup_ms": 20},
}


def copy_workflow(dest: Path) -> Path:
    """Copy the workflow (not data/results) into ``dest``, as a fresh clone would have it."""
    dest.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dest / part, symlinks=True)
        else:
            shutil.copy2(src, dest / part)
    return dest


def acquire_error(config: dict, raw: Path, error: type[Exception] | None = None) -> str:
    """The one-line message acquire stops with (``error``: DataError by default), checking that it
    left no file behind under ``raw``."""
    from trainrelay.data.acquire import acquire
    from trainrelay.errors import DataError

    with pytest.raises(error or DataError) as caught:
        acquire(config, raw)
    message = str(caught.value)
    assert "\n" not in message
    written = [p for p in raw.rglob("*") if p.is_file()] if raw.exists() else []
    assert written == [], f"files left behind: {written}"
    return message


# A job header in snakemake's output; members of a group job (a dry run forms the `engines` group of
# export_onnx + benchmark) are printed indented under "group job engines".
JOB_HEADER = re.compile(r"^\s*(?:local)?rule (\w+):$", re.M)


def jobs_in(output: str) -> list[str]:
    """Rule names of the jobs snakemake announces in ``output``, in order, group members included."""
    return JOB_HEADER.findall(output)


def write_config(workdir: Path, overrides: dict | None = None, name: str = "test.yaml") -> Path:
    config = deep_merge(yaml.safe_load(yaml.safe_dump(TINY)), overrides or {})
    path = workdir / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_snakemake(
    workdir: Path, *args: str, check: bool = True, timeout: int = 900
) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONHASHSEED="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [SNAKEMAKE, "-j1", *args],  # targets go before --configfile, which takes several values
        cwd=workdir,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


# The longest test files, longest first (seconds on 2 cores in the last measured run). `make test`
# runs pytest-xdist with --dist loadfile --no-loadscope-reorder, which hands whole files to the
# workers in collection order; xdist's own order (most tests first) started these few-test,
# minutes-long files last, so one worker ran the kill test alone at the end. test_workflow_full
# goes first because it builds the shared finished run that test_workflow_missing_artifacts,
# handed out fourth, waits for.
LONGEST_FIRST = [
    "test_workflow_full.py",  # ~110 s, builds finished_template
    "test_slurm.py",  # ~140 s
    "test_workflow_kill.py",  # ~135 s
    "test_workflow_missing_artifacts.py",  # ~90 s
    "test_session_deadline.py",  # ~75 s
    "test_colab_notebook.py",  # ~65 s
    "test_import_artifacts.py",  # ~60 s
    "test_runpod_s3.py",  # ~30 s
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def _root_logging_put_back() -> Iterator[None]:
    """A test that runs a rule's glue in this process (run_rule -> setup_logging, which calls
    logging.basicConfig(force=True)) leaves root handlers bound to that test's captured stderr;
    the next test would log into a closed stream ("--- Logging error ---" on its stderr). Put the
    root logger back as it was; pytest's own capture handlers are pytest's to manage."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers and not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


@pytest.fixture(scope="session")
def finished_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The FAST tiny run, finished once per test session and never changed: tests take copies
    (:func:`finished_copy`). Under pytest-xdist the workers share one build (a file lock in the
    session's common temporary folder), as pytest-xdist's documentation does it."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by every worker of this session
    template = root / "finished-template" / "wf"
    with FileLock(str(root / "finished-template.lock")):
        if not (template.parent / "done").is_file():
            shutil.rmtree(template.parent, ignore_errors=True)
            copy_workflow(template)
            config = write_config(template, FAST)
            started = time.monotonic()
            proc = run_snakemake(template, "--configfile", str(config))
            (template / "run-output.txt").write_text(proc.stderr + proc.stdout)  # as a terminal shows it
            (template / "run-seconds.txt").write_text(f"{time.monotonic() - started:.3f}\n")
            (template.parent / "done").write_text("finished\n")
    return template


def finished_copy(template: Path, dest: Path) -> Path:
    """A copy of the finished run at ``dest``, up to date for snakemake: file times are kept
    (copy2), and so is .snakemake's record of code, params and inputs (keyed by relative path)."""
    shutil.copytree(template, dest, symlinks=True, copy_function=shutil.copy2)
    return dest


@pytest.fixture
def workflow(tmp_path: Path) -> Path:
    return copy_workflow(tmp_path / "wf")
