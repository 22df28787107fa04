"""Same inputs, same report bytes: whatever the clock, locale, time zone, working directory and fonts.

Each build runs in its own process, as the `report` rule does, so nothing cached in this one (fonts,
fontconfig, imported modules) can make two builds agree by accident.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.fixtures_run import build_results_tree

BUILD = """
import sys
from pathlib import Path
from tests.fixtures_run import fixture_config
from trainrelay.report.build import build_report
results, out = Path(sys.argv[1]), Path(sys.argv[2])
names = {"html": "report.html", "pdf": "report.pdf", "json": "report.json", "csv": "metrics.csv"}
build_report(results, {k: out / v for k, v in names.items()}, fixture_config(), git_commit="0" * 40)
"""

FONTS_CONF = """<?xml version="1.0"?>
<!DOCTYPE fontconfig SYSTEM "fonts.dtd">
<fontconfig><dir>{fonts}</dir><cachedir>{cache}</cachedir></fontconfig>
"""


def _build(results: Path, out: Path, cwd: Path, **env: str) -> None:
    cwd.mkdir(parents=True, exist_ok=True)
    environ = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    environ.update(env, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", BUILD, str(results), str(out)],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _other_fonts_only(tmp_path: Path) -> Path:
    """A fontconfig set-up whose only font is not DejaVu: a machine with other fonts installed."""
    import matplotlib

    fonts = tmp_path / "other-fonts"
    fonts.mkdir()
    shutil.copy(Path(matplotlib.get_data_path()) / "fonts/ttf/STIXGeneral.ttf", fonts)
    conf = tmp_path / "fonts.conf"
    conf.write_text(FONTS_CONF.format(fonts=fonts, cache=tmp_path / "fc-cache"))
    return conf


@pytest.mark.slow
def test_two_builds_seconds_apart_on_different_set_ups_are_byte_identical(tmp_path: Path) -> None:
    results = build_results_tree(tmp_path / "run")
    first, second = tmp_path / "first", tmp_path / "second"
    started = time.monotonic()
    _build(results, first, tmp_path / "cwd-a", LC_ALL="C.UTF-8", TZ="UTC")
    # The font subsets used to carry the clock in whole seconds: make sure it has moved on.
    time.sleep(max(0.0, 2.5 - (time.monotonic() - started)))
    _build(
        results,
        second,
        tmp_path / "elsewhere" / "cwd-b",
        LC_ALL="C",
        TZ="Asia/Kolkata",
        FONTCONFIG_FILE=str(_other_fonts_only(tmp_path)),
    )
    for name in ("report.html", "report.json", "metrics.csv", "report.pdf"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


@pytest.mark.skipif(shutil.which("pdffonts") is None, reason="pdffonts (poppler-utils) is not installed")
def test_pdf_embeds_only_the_shipped_fonts(tmp_path: Path) -> None:
    results = build_results_tree(tmp_path / "run")
    _build(results, tmp_path / "out", tmp_path, FONTCONFIG_FILE=str(_other_fonts_only(tmp_path)))
    listing = subprocess.run(
        ["pdffonts", str(tmp_path / "out/report.pdf")], capture_output=True, text=True, check=True
    ).stdout.splitlines()[2:]
    families = {line.split()[0].split("+", 1)[1] for line in listing}
    assert families and families <= {"trainrelay-sans", "trainrelay-sans-Bold", "trainrelay-mono"}, families
