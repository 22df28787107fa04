"""Shared fixtures: a copy of the workflow in a temporary directory and a snakemake runner."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
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


@pytest.fixture
def workflow(tmp_path: Path) -> Path:
    return copy_workflow(tmp_path / "wf")
