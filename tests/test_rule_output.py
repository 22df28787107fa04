"""What a rule prints: its start and finish with the time, trainrelay's records, and the
libraries' chatter only with --verbose (TRAINRELAY_VERBOSE=1); the log file keeps everything."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from trainrelay.workflow.rulerun import run_rule


def _chatter(smk: SimpleNamespace) -> None:
    logging.getLogger("trainrelay.report.pdf").info("report written")
    # a warning: report/pdf.py holds fontTools at WARNING for the whole process
    logging.getLogger("fontTools.subset").warning("Glyph names: 120 subset")
    logging.getLogger("matplotlib.font_manager").info("findfont: DejaVu Sans")
    logging.getLogger("weasyprint").warning("Ignored `widows: 2`")
    warnings.warn("torch.onnx: dynamic_axes is deprecated", UserWarning, stacklevel=1)
    logging.getLogger("fontTools.ttLib").error("a broken font")


CHATTY_LOGGERS = ("trainrelay.report.pdf", "fontTools.subset", "matplotlib.font_manager", "weasyprint",
                  "fontTools.ttLib", "py.warnings")  # fmt: skip


@pytest.fixture
def fresh_process_logging():
    """A rule runs in a fresh process; the test process has imported and configured libraries in
    earlier tests (a logging.config call disables existing loggers, a library sets its logger's
    level, a warning already shown once is not shown again). Give the loggers and warnings a fresh
    process's state for the test, and put the old state back after it."""
    loggers = [logging.getLogger(name) for name in CHATTY_LOGGERS]
    saved = [(lg, lg.level, lg.disabled, lg.propagate, list(lg.handlers)) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.NOTSET)
        lg.disabled, lg.propagate, lg.handlers = False, True, []
    logging.getLogger("fontTools").disabled = False
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        yield
    for lg, level, disabled, propagate, handlers in saved:
        lg.setLevel(level)
        lg.disabled, lg.propagate, lg.handlers = disabled, propagate, handlers


def _smk(tmp_path: Path) -> SimpleNamespace:
    return SimpleNamespace(
        rule="train_policy_fold",
        wildcards={"fold": "3"},
        log=[str(tmp_path / "rule.log")],
        output=[str(tmp_path / "out.txt")],
    )


@pytest.mark.parametrize("verbose", [False, True])
def test_library_chatter_reaches_the_console_only_when_verbose(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    verbose: bool,
    fresh_process_logging: None,
) -> None:
    monkeypatch.setenv("TRAINRELAY_VERBOSE", "1" if verbose else "0")
    run_rule(_smk(tmp_path), _chatter)  # conftest puts logging back afterwards
    err = capsys.readouterr().err
    assert "trainrelay: train_policy_fold (fold=3) started" in err
    assert "trainrelay: train_policy_fold (fold=3) finished in " in err and " s\n" in err
    assert "report written" in err and "a broken font" in err  # ours, and a library's error
    chatter = ("Glyph names", "findfont", "Ignored `widows", "dynamic_axes is deprecated")
    assert {c: c in err for c in chatter} == dict.fromkeys(chatter, verbose), err
    log = (tmp_path / "rule.log").read_text()
    assert [c for c in chatter if c not in log] == []  # the log file keeps every record


def test_closing_lines_name_only_what_the_run_built(tmp_path: Path) -> None:
    from trainrelay.atomic import write_json
    from trainrelay.workflow.closing import closing_lines

    results, reports = tmp_path / "results" / "r", tmp_path / "reports" / "r"
    only = closing_lines(results, reports)
    assert len(only) == 1 and "stopped earlier" in only[0]  # until: segments, say
    write_json(results / "metrics" / "policy.json", {"verdict": "not distinguishable (CI -1 to 1)"})
    write_json(
        results / "benchmark" / "selection.json",
        {"models": {"policy": {"chosen": {"engine": "ort_cpu", "batch": 1, "latency_p95_ms": 0.0412}},
                    "forecaster": {"chosen": None}}},
    )  # fmt: skip
    assert closing_lines(results, reports) == [
        "engines: forecaster: none met the constraints; policy -> ort_cpu (batch 1, p95 0.0412 ms)",
        "verdict: not distinguishable (CI -1 to 1)",
    ]
