"""Helpers for notebooks/colab.ipynb: where Drive and the checkout are, run the workflow, show results.

The notebook runs on Google Colab (Drive mounted at /content/drive) and, for tests and for anyone
without Colab, in a local mode: no Drive mount, the "Drive" is the folder TRAINRELAY_DRIVE_ROOT
names. The notebook's kernel is Colab's own Python, not the checkout's .venv, so this module uses
only the standard library and PyYAML (both present on Colab) and never imports the heavy stages.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainrelay.config_file import read_config_file
from trainrelay.core.artifacts import reports_path
from trainrelay.deep_merge import deep_merge
from trainrelay.errors import ConfigError

DRIVE_MOUNT = "/content/drive"
DEFAULT_DRIVE_ROOT = "/content/drive/MyDrive/trainrelay"
DEFAULT_WORKDIR = "/content/trainrelay"
PRESET = "config/presets/colab.yaml"


class NotebookError(RuntimeError):
    """A step of the notebook failed; the message says what to do (no traceback needed)."""


def in_colab() -> bool:
    """True inside a Colab runtime (google.colab importable)."""
    try:
        return importlib.util.find_spec("google.colab") is not None
    except ModuleNotFoundError:
        return False


def drive_root() -> Path:
    """The run's folder on Drive: TRAINRELAY_DRIVE_ROOT, else a folder under My Drive."""
    return Path(os.environ.get("TRAINRELAY_DRIVE_ROOT") or DEFAULT_DRIVE_ROOT)


def config_files(extra: str | os.PathLike[str] | None) -> list[str]:
    """The --configfile list of a Colab run: the Colab preset, then the user's file if any."""
    return [PRESET, *([str(extra)] if extra else [])]


def snakemake_command(venv: str | Path, extra_config: str | os.PathLike[str] | None = None) -> list[str]:
    """``snakemake --workflow-profile colab -j1 --configfile <preset> [<extra>]`` from the venv."""
    return [
        str(Path(venv) / "bin" / "snakemake"),
        "--workflow-profile",
        "colab",
        "-j1",
        "--configfile",
        *config_files(extra_config),
    ]


def stream(command: Sequence[str], cwd: str | Path, env: dict[str, str] | None = None) -> int:
    """Run ``command`` printing its output as it comes (a notebook cell shows it live); return the code.

    The command gets its own process group so that stopping the cell's kernel does not leave
    half of a Snakemake job tree behind, and so a test can end the whole run at once.
    """
    proc = subprocess.Popen(
        list(command),
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
    return proc.wait()


def run_workflow(venv: str | Path, workdir: str | Path, extra_config: str | None = None) -> None:
    """Run the workflow with the colab profile; raise NotebookError with the next step on failure."""
    env = dict(os.environ, TRAINRELAY_DRIVE_ROOT=str(drive_root()))
    env["PATH"] = f"{Path(venv) / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    command = snakemake_command(venv, extra_config)
    print("$", " ".join(command), flush=True)
    code = stream(command, cwd=workdir, env=env)
    if code != 0:
        raise NotebookError(
            f"snakemake exited with code {code}; if training stopped at its time budget "
            f"(checkpoint.time_budget_minutes) or the runtime was reset, run this cell again: "
            f"finished stages stay on Drive ({drive_root()}) and training resumes from its saved state"
        )


def effective_config(workdir: str | Path, extra_config: str | None = None) -> dict[str, Any]:
    """config/config.yaml with the Colab preset and the user's file merged on top (as Snakemake does)."""
    workdir = Path(workdir)
    merged: dict[str, Any] = {}
    for name in ["config/config.yaml", *config_files(extra_config)]:
        path = Path(name) if Path(name).is_absolute() else workdir / name
        if not path.is_file():
            raise NotebookError(f"{path}: config file not found; check TRAINRELAY_CONFIG")
        try:
            # The workflow's own reader: a syntax error or a duplicated key is one line with file:line.
            deep_merge(merged, read_config_file(path))
        except ConfigError as exc:
            raise NotebookError(str(exc)) from None
    return merged


def environment_summary(venv: str | Path, workdir: str | Path) -> dict[str, Any]:
    """Run ``python -m trainrelay environment`` in the venv; print one line and warn if Colab lacks a GPU."""
    python = str(Path(venv) / "bin" / "python")
    proc = subprocess.run(
        [python, "-m", "trainrelay", "environment"], cwd=workdir, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise NotebookError(f"python -m trainrelay environment failed: {proc.stderr.strip()[-500:]}")
    env = json.loads(proc.stdout)
    gpus = ", ".join(str(g.get("name", g)) if isinstance(g, dict) else str(g) for g in env["gpus"]) or "none"
    print(
        f"python {env['python']}, torch {env['torch_version']}, "
        f"CUDA available: {env['cuda_available']} (GPUs: {gpus})"
    )
    if in_colab() and not env["cuda_available"]:
        print("warning: no GPU in this runtime: Runtime > Change runtime type > GPU, then rerun the notebook")
    return env


def show_results(workdir: str | Path, extra_config: str | None = None) -> Path | None:
    """Display the run's report from Drive if it was built, else list what the run has on Drive.

    Returns the report's path, or None when the run stopped before the report (config ``until``).
    """
    config = effective_config(workdir, extra_config)
    run = config["run"]
    root = drive_root()
    report = reports_path(root, run, "report", "html")
    if report.is_file():
        _display_html(report.read_text(encoding="utf-8"))
        print(f"report: {report}")
        return report
    results = root / "results" / run
    print(f"no report yet for run {run} (the run builds up to `until: {config['until']}`); on Drive:")
    for path in sorted(p for p in results.rglob("*") if p.is_file()) if results.is_dir() else []:
        print(f"  {path.relative_to(root)}  ({path.stat().st_size} bytes)")
    return None


def _display_html(html: str) -> None:
    try:
        from IPython.display import HTML, display
    except ImportError:  # plain Python: nothing to render into
        print(html[:200], file=sys.stderr)
        return
    display(HTML(html))
