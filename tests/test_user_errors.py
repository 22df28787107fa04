"""The user's machine, not a bug: a full disk, a read-only folder or a permission error ends in one
line naming the folder (rule glue and CLI), however pyarrow, polars or torch wrapped the OSError;
and a config file with a YAML error names file:line:column on the command line.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from tests.conftest import REPO
from trainrelay import atomic
from trainrelay.errors import DataError, describe_environment_error
from trainrelay.workflow.rulerun import run_rule


@contextlib.contextmanager
def small_disk(path: Path, size: str = "64k", read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (root only; skips where mounting is not allowed).

    A file ``.keep`` stays in it: Snakemake removes an output folder it finds empty after a failed
    job, and a mount point cannot be removed. ``read_only`` remounts it read-only after that.
    """
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        (path / ".keep").write_text("x")
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def _big_frame() -> pl.DataFrame:
    return pl.DataFrame({"x": np.random.default_rng(0).random(100_000)})


def _polars_parquet(target: Path) -> None:
    atomic.write_parquet(target, _big_frame())


def _pyarrow_writer(target: Path) -> None:
    import pyarrow.parquet as pq

    table = _big_frame().to_arrow()
    with atomic.atomic_path(target) as tmp:
        writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
        writer.write_table(table)
        writer.close()


def _torch_save(target: Path) -> None:
    torch = pytest.importorskip("torch")
    with atomic.atomic_path(target) as tmp:
        torch.save({"weights": torch.rand(100_000)}, tmp)


def _plain_bytes(target: Path) -> None:
    atomic.write_bytes(target, b"x" * 200_000)


WRITERS: dict[str, tuple[Callable[[Path], None], str]] = {
    "polars parquet": (_polars_parquet, "features.parquet"),
    "pyarrow writer": (_pyarrow_writer, "features.parquet"),
    "torch.save": (_torch_save, "forecaster.pt"),  # "unexpected pos ...": no errno in the message
    "python write": (_plain_bytes, "scaler.json"),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_full_disk_is_named_whatever_library_wrote(writer: str, tmp_path: Path) -> None:
    write, name = WRITERS[writer]
    with small_disk(tmp_path / "disk") as disk:
        target = disk / "stage" / name
        with pytest.raises(Exception) as caught:
            write(target)
        line = describe_environment_error(caught.value)
        assert line is not None, f"{type(caught.value).__name__}: {caught.value}"
        assert line.startswith(f"no space left on device in '{disk / 'stage'}' writing '{name}' (Errno 28)")
        assert "free there now" in line and "\n" not in line
        # nothing half written: the temporary file is gone, the target never appeared
        assert sorted(p.name for p in (disk / "stage").iterdir()) == []


def test_a_read_only_folder_is_named(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", read_only=True) as disk:
        with pytest.raises(OSError) as caught:
            atomic.write_json(disk / "metrics.json", {"a": 1})
        line = describe_environment_error(caught.value)
        assert line == (
            f"'{disk}' is on a read-only file system writing 'metrics.json' (Errno 30); "
            "point the results at a writable folder (or remount it read-write), then rerun"
        )


def _chained() -> BaseException:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("checkpoint save failed") from inner
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "results/r/x.parquet"), "no space left on device"),
        (
            pl.exceptions.ComputeError(
                "parquet: File out of specification: underlying IO error: "
                "No space left on device (os error 28)"
            ),
            "no space left on device",
        ),
        (
            OSError("[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device"),
            "no space left on device",
        ),
        (RuntimeError("PytorchStreamWriter failed: No space left on device"), "no space left on device"),
        (_chained(), "no space left on device"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "disk quota exceeded"),
        (OSError(errno.EROFS, "Read-only file system", "results/r"), "read-only file system"),
        (PermissionError(errno.EACCES, "Permission denied", "results/r/x.json"), "permission denied for"),
        (pl.exceptions.ComputeError("Permission denied (os error 13)"), "permission denied for"),
        (OSError(errno.EPERM, "Operation not permitted"), "permission denied for"),
    ],
    ids=[
        "OSError",
        "polars",
        "pyarrow",
        "torch text",
        "cause chain",
        "quota",
        "read-only",
        "EACCES",
        "polars EACCES",
        "EPERM",
    ],
)
def test_wrapped_environment_errors_are_recognised(exc: BaseException, expected: str) -> None:
    line = describe_environment_error(exc, ["results/r/segments/features.parquet"])
    assert line is not None and expected in line and "\n" not in line, line
    assert line.endswith("then rerun")


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("CUDA error: operation not permitted when stream is capturing"),
        RuntimeError("permission denied by the policy"),  # no errno: not the filesystem's
        ValueError("could not convert string to float: 'abc'"),
        KeyError("timestamp"),
        OSError(errno.ENOENT, "No such file or directory", "results/r/x"),  # in a rule: a bug
    ],
    ids=["cuda", "text only", "ValueError", "KeyError", "ENOENT"],
)
def test_bugs_are_not_taken_for_the_environment(exc: BaseException) -> None:
    assert describe_environment_error(exc) is None


def _smk(tmp_path: Path, outputs: list[Path]) -> SimpleNamespace:
    return SimpleNamespace(
        rule="segments", log=[str(tmp_path / "segments.log")], output=[str(p) for p in outputs]
    )


def test_rule_glue_ends_a_full_disk_with_one_line(tmp_path: Path, capsys) -> None:
    with small_disk(tmp_path / "disk") as disk:
        outputs = [disk / "segments" / "features.parquet", disk / "segments" / "scaler.json"]
        with pytest.raises(SystemExit) as caught:
            run_rule(_smk(tmp_path, outputs), lambda smk: _polars_parquet(Path(smk.output[0])))
        assert caught.value.code == 1
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("trainrelay: error")]
    folder = re.escape(str(disk / "segments"))
    assert re.fullmatch(
        rf"trainrelay: error in rule segments: no space left on device in '{folder}' writing "
        r"'features.parquet' \(Errno 28\): this stage needs more than the [\d.]+ KiB that were free "
        r"there when it started \([\d.]+ KiB free there now\); free up space there or point the "
        r"results at a bigger disk, then rerun",
        line,
    ), line
    assert "Traceback" not in err and "unexpected failure" not in err


def test_rule_glue_keeps_the_traceback_of_a_bug(tmp_path: Path) -> None:
    def work(smk: SimpleNamespace) -> None:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_rule(_smk(tmp_path, [tmp_path / "out.parquet"]), work)
    assert "unexpected failure (a bug)" in (tmp_path / "segments.log").read_text()


def test_rule_glue_user_error_still_one_line(tmp_path: Path, capsys) -> None:
    def work(smk: SimpleNamespace) -> None:
        raise DataError("files.path 'x.csv': column 'OT', data row 3 (line 4): the cell 'a' is not a number")

    with pytest.raises(SystemExit):
        run_rule(_smk(tmp_path, [tmp_path / "out.parquet"]), work)
    assert "trainrelay: error in rule segments: files.path 'x.csv'" in capsys.readouterr().err


def test_a_log_file_on_a_full_disk_warns_once_without_traceback(tmp_path: Path, capsys) -> None:
    import logging

    with small_disk(tmp_path / "disk", size="8k") as disk:
        smk = SimpleNamespace(rule="segments", log=[str(disk / "segments.log")], output=[str(tmp_path / "o")])

        def work(smk: SimpleNamespace) -> None:
            for i in range(2000):
                logging.getLogger("trainrelay.test").info("line %d %s", i, "x" * 50)

        run_rule(smk, work)
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "cannot write the log file" in line]
    assert len(warnings) == 1 and "no space left on device" in warnings[0], err[-2000:]
    assert "Traceback" not in err and "Logging error" not in err
    assert "line 1999 " in err  # stderr kept every record


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainrelay", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


BROKEN_YAML = "run: tiny\nsynthetic:\n  symbols: [BTCUSDT\n  months: 1\n"


@pytest.mark.parametrize(
    "command",
    [
        ["check-config", "{bad}"],
        ["check-config", "config/config.yaml", "--configfile", "{bad}"],
        ["acquire", "--config", "{bad}"],
        ["runpod-plan", "--config", "{bad}"],
    ],
    ids=["check-config", "check-config override", "acquire", "runpod-plan"],
)
def test_cli_names_file_line_and_column_of_a_yaml_error(command: list[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BROKEN_YAML)
    proc = _cli(*[part.format(bad=bad) for part in command])
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"trainrelay: error: {bad}:4:9: not valid YAML: expected ',' or ']', but got ':' "
        "(while parsing a flow sequence at line 3, column 12); fix the YAML there"
    ]


def test_cli_names_a_full_disk(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text("run: tiny\nsynthetic:\n  symbols: [BTCUSDT]\n  months: 1\n")
    with small_disk(tmp_path / "disk") as disk:
        proc = _cli("acquire", "--configfile", str(tiny), "--raw-root", str(disk / "raw"))
        assert proc.returncode == 1
        assert "Traceback" not in proc.stderr, proc.stderr
        (line,) = [line for line in proc.stderr.splitlines() if line.startswith("trainrelay: error")]
        assert line.startswith(f"trainrelay: error: no space left on device in '{disk / 'raw'}") and (
            "(Errno 28)" in line
        ), line
        assert not [p for p in disk.rglob("*") if p.name.startswith(".tmp-")]
    # the rerun with room works
    proc = _cli("acquire", "--configfile", str(tiny), "--raw-root", str(tmp_path / "raw"))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory", "runs/env.json"),
            "trainrelay: error: 'runs/env.json': No such file or directory; check the path",
        ),
        (
            PermissionError(errno.EACCES, "Permission denied", "/srv/env.json"),
            "trainrelay: error: permission denied for '/srv/env.json' (Errno 13)",
        ),
    ],
    ids=["missing path", "permission"],
)
def test_cli_turns_an_oserror_into_one_line(monkeypatch, capsys, exc: OSError, expected: str) -> None:
    import trainrelay.environment
    from trainrelay.cli import main

    def fail(*args: object, **kwargs: object) -> None:
        raise exc

    monkeypatch.setattr(trainrelay.environment, "write_environment", fail)
    assert main(["environment", "--out", "runs/env.json"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(expected), line


def test_cli_keeps_the_traceback_of_a_bug(monkeypatch) -> None:
    import trainrelay.environment
    from trainrelay.cli import main

    def fail(*args: object, **kwargs: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(trainrelay.environment, "write_environment", fail)
    with pytest.raises(KeyError):
        main(["environment", "--out", "runs/env.json"])


KLINE = "{t},1.0,2.0,0.5,1.5,{volume},{close},15.0,3,5.0,7.5,0"
KLINE_HEADER = (
    "open_time,open,high,low,close,volume,close_time,quote_volume,count,"
    "taker_buy_volume,taker_buy_quote_volume,ignore"
)


@pytest.mark.parametrize("header", [False, True], ids=["no header", "header"])
def test_a_bad_cell_in_a_kline_archive_names_column_and_line(tmp_path: Path, header: bool) -> None:
    from trainrelay.data import archive

    start = 1704067200000
    rows = [
        KLINE.format(
            t=start + i * 180_000, volume="oops" if i == 6 else "10.0", close=start + i * 180_000 + 179_999
        )
        for i in range(20)
    ]
    path = tmp_path / "BTCUSDT-3m-2024-01.zip"
    archive.write_archive(path, "\n".join([KLINE_HEADER] * header + rows) + "\n")
    with pytest.raises(DataError) as caught:
        archive.read_klines(path)
    line = 8 if header else 7
    assert str(caught.value) == (
        f"{path}: cannot parse CSV (column 'volume', data row 7 (line {line}) of the CSV inside: "
        "'oops' is not a valid Float64); delete it and re-run acquire"
    )


def test_check_config_of_a_preset_alone_says_how_to_check_it(capsys) -> None:
    """A preset is an overlay: given as the base it lacks most keys; the line says what to type."""
    from trainrelay.cli import main as cli_main

    preset = "config/presets/binance-futures-btc-eth.yaml"
    assert cli_main(["check-config", preset]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"check-config --configfile {preset}" in err[0]
    assert cli_main(["check-config", "--configfile", preset]) == 0
    assert "config ok: run 'binance-futures-btc-eth', source 'freqtrade'" in capsys.readouterr().out
