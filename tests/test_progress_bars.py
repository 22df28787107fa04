"""Progress bars (issue 14): the shared helper's convention, a stage's bar on stderr with its
description and total, nothing written when disabled, log records above the bar, and outputs
unchanged by the bar."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from tests import rawdata_factory as factory
from trainrelay.core import progress
from trainrelay.core.progress import progress_bar
from trainrelay.data.manifest import build_manifest

OUT = "results/t/manifest/base_manifest.parquet"


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.chdir(tmp_path)
    return factory.build_market(tmp_path)


@pytest.fixture
def every_update(monkeypatch: pytest.MonkeyPatch) -> None:
    """Draw the bar at every update (the stage redraws at most once a second)."""
    monkeypatch.setattr(progress, "MININTERVAL_S", 0.0)


def _checked(files: list[str]) -> int:
    """How many files the manifest inspects (checksums and SOURCE.json are not)."""
    return sum(1 for p in files if not p.endswith(".CHECKSUM"))


def test_manifest_draws_a_bar_per_file_on_stderr(tree: list[str], every_update, capsys) -> None:
    n = _checked(tree)
    assert n >= 4
    build_manifest(factory.RAW_ROOT, tree, factory.config(), OUT)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "manifest: " in captured.err
    assert f"{n}/{n}" in captured.err and f" 0/{n} " in captured.err, captured.err
    assert "file/s" in captured.err
    # leave=False: the finished bar is wiped, so the job's last visible line is not a bar.
    assert captured.err.endswith("\r")


def test_manifest_without_progress_writes_nothing(tree: list[str], every_update, capsys) -> None:
    build_manifest(factory.RAW_ROOT, tree, factory.config(), OUT, progress=False)
    assert capsys.readouterr().err == ""


def test_the_bar_changes_no_output(tree: list[str], capsys) -> None:
    build_manifest(factory.RAW_ROOT, tree, factory.config(), OUT, progress=False)
    quiet = Path(OUT).read_bytes()
    build_manifest(factory.RAW_ROOT, tree, factory.config(), OUT, progress=True)
    assert Path(OUT).read_bytes() == quiet


def test_log_records_go_above_the_bar_and_the_log_file_gets_no_bar(
    tree: list[str], tmp_path: Path, every_update, capsys
) -> None:
    root = logging.getLogger()
    console = logging.StreamHandler(sys.stderr)
    log_file = logging.FileHandler(tmp_path / "manifest.log", encoding="utf-8")
    for handler in (console, log_file):
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        build_manifest(factory.RAW_ROOT, tree, factory.config(), OUT)
    finally:
        root.setLevel(level)
        for handler in (console, log_file):
            root.removeHandler(handler)
            handler.close()
    assert console.stream is sys.stderr  # restored after the bar
    err = capsys.readouterr().err
    records = [line for line in err.split("\n") if "trainrelay.data.manifest" in line]
    assert records, err
    # Each record starts its own line: the bar was cleared first ("\r", blanks, "\r"), not glued on.
    for line in records:
        assert line.rsplit("\r", 1)[-1].startswith("INFO trainrelay.data.manifest"), repr(line)
        assert "%|" not in line.rsplit("\r", 1)[-1]
    logged = (tmp_path / "manifest.log").read_text(encoding="utf-8")
    assert "%|" not in logged and "\r" not in logged and "file/s" not in logged
    assert logged.count("INFO trainrelay.data.manifest") == len(records)


def test_helper_closes_the_bar_when_the_step_fails(every_update, capsys) -> None:
    with pytest.raises(RuntimeError), progress_bar(3, "acquire", "file") as bar:
        bar.update()
        raise RuntimeError("boom")
    assert bar.disable  # closed (tqdm disables a bar when it closes)
    err = capsys.readouterr().err
    assert "acquire:" in err and "1/3" in err and err.endswith("\r")


def test_disabled_helper_writes_nothing(capsys) -> None:
    with progress_bar(5, "benchmark", "config", enabled=False) as bar:
        bar.update(5)
    assert capsys.readouterr().err == ""


def test_a_training_epoch_that_fails_leaves_no_bar_open(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """An open bar outlives its step in tqdm's registry and pushes every later bar of the process
    down a line; a failing (or budget-stopped) epoch must close its bar like a finished one."""
    import torch
    from tqdm import tqdm

    from trainrelay.forecast import training
    from trainrelay.forecast.windows import WindowSet

    data = torch.randn(64, 2)
    windows = WindowSet(data, torch.arange(0, 40, dtype=torch.int64), lookback=8, horizon=4)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.Unflatten(1, (4, 2)))
    calls = []

    def failing_step(fit, state, index):
        calls.append(index)
        if len(calls) == 2:
            raise RuntimeError("step failed")
        return original(fit, state, index)

    original = training._train_step
    monkeypatch.setattr(training, "_train_step", failing_step)
    open_before = len(tqdm._instances)
    settings = training.TrainSettings(epochs=1, batch_size=8, lr=1e-3, schedule="constant")
    # Kept, as a caller that reports the error keeps it: its traceback holds the epoch's frames.
    with pytest.raises(RuntimeError, match="step failed") as caught:
        training.fit_module(module, windows, windows, settings, device=torch.device("cpu"), seed=0)
    assert len(calls) == 2 and caught.traceback
    assert len(tqdm._instances) == open_before
    assert capsys.readouterr().err.endswith("\r")  # cleared, not left half drawn
