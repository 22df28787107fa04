"""The repository's Snakefile run in a work folder (``snakemake --directory``), for the benchmark
scripts that measure whole workflow runs (planted_signal.py, symbol_scaling.py). Not a benchmark
itself.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def prepare_workdir(workdir: Path) -> str:
    """The work folder; returns the sha256 of the config/config.yaml every run in it reads.

    Snakemake reads ``configfile: config/config.yaml`` relative to the work folder. It gets a
    snapshot of the repo's file taken once per benchmark run (the workflow code itself is not
    copied: the repo's Snakefile runs): a symlink let an edit of the repo's config in the middle of
    a benchmark retrain the forecaster of its later runs only, mixing two configurations in one pool.
    """
    folder = workdir / "config"
    if folder.is_symlink():  # work folders made by the first version of this script
        folder.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    text = (REPO / "config/config.yaml").read_bytes()
    (folder / "config.yaml").write_bytes(text)
    return hashlib.sha256(text).hexdigest()


def run_workflow(workdir: Path, config_file: Path, cores: int, log_file: Path) -> float:
    """Run the repo's Snakefile in ``workdir`` with ``config_file`` on top; seconds taken."""
    snakemake = str(Path(sys.executable).parent / "snakemake")
    cmd = [
        snakemake,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        f"-j{cores}",
        "--cores",
        str(cores),
        "--configfile",
        str(config_file),
    ]
    # as tests/conftest.py: deterministic hashing, never reach out for the embedding model
    env = dict(os.environ, PYTHONHASHSEED="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    start = time.perf_counter()
    with log_file.open("w") as log:
        proc = subprocess.run(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"snakemake failed ({proc.returncode}); see {log_file}")
    return time.perf_counter() - start
