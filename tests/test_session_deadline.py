"""The time budget is one deadline for a whole ``snakemake`` invocation (issue 16, requirement 5).

The Snakefile fixes the deadline at parse time in TRAINRELAY_DEADLINE; every training job reads it,
so the forecaster, the folds and the ablations share what is left instead of each getting the whole
budget. The workflow test asserts on what each job logged, never on how long anything took.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest

from tests.conftest import copy_workflow, run_snakemake, write_config
from trainrelay.core.checkpointing import DEADLINE_ENV, TimeBudget, session_deadline, start_session
from trainrelay.errors import BudgetExhausted, ConfigError

# ---------------------------------------------------------------------------------------------
# The pieces, in process


def test_start_session_sets_the_deadline_once_and_keeps_an_inherited_one() -> None:
    environ: dict[str, str] = {}
    note = start_session(30, environ=environ, now=1_000.0)
    assert environ[DEADLINE_ENV] == "2800.000"  # start + 30 min
    assert note is not None and "checkpoint.time_budget_minutes = 30" in note
    # A job (or a second parse) inherits the environment: the deadline does not move.
    assert start_session(30, environ=environ, now=2_000.0, main_process=False) is None
    assert environ[DEADLINE_ENV] == "2800.000"
    # No budget: nothing set.
    empty: dict[str, str] = {}
    assert start_session(None, environ=empty, now=1_000.0) is None and empty == {}


def test_start_session_warns_when_an_exported_deadline_has_passed() -> None:
    environ = {DEADLINE_ENV: "500"}
    note = start_session(30, environ=environ, now=1_000.0)
    assert environ[DEADLINE_ENV] == "500"
    assert note is not None and "warning" in note and f"unset {DEADLINE_ENV}" in note
    with pytest.raises(ConfigError, match=DEADLINE_ENV):
        start_session(30, environ={DEADLINE_ENV: "tomorrow"})


def test_session_deadline_prefers_the_session_and_falls_back_to_start_plus_budget() -> None:
    assert session_deadline(10, environ={DEADLINE_ENV: "1234.5"}, now=0.0) == 1234.5
    assert session_deadline(10, environ={}, now=100.0) == 100.0 + 600.0
    assert session_deadline(None, environ={DEADLINE_ENV: "1234.5"}) is None  # no budget configured


def test_a_job_starting_after_the_deadline_stops_at_once(monkeypatch, caplog) -> None:
    monkeypatch.setenv(DEADLINE_ENV, f"{time.time() - 90:.3f}")
    budget = TimeBudget(every_minutes=30, budget_minutes=60)
    assert budget.exhausted()
    with pytest.raises(BudgetExhausted, match=r"PPO fold 1: .*ran out at .*before this job started.*rerun"):
        budget.check_start("PPO fold 1")

    monkeypatch.setenv(DEADLINE_ENV, f"{time.time() + 600:.3f}")
    budget = TimeBudget(every_minutes=30, budget_minutes=60)
    with caplog.at_level(logging.INFO, logger="trainrelay"):
        budget.check_start("train_forecaster")
    assert not budget.exhausted()
    # what is left of the session's budget (10 min), not the whole 60
    assert re.search(r"train_forecaster: (9\.\d|10\.0) min left of the session's 60 min", caplog.text)


# ---------------------------------------------------------------------------------------------
# Real snakemake: several training jobs in one invocation

# Four training jobs (forecaster, two policy folds, one ablation) and nothing after evaluate_policy.
SMALL = {
    "until": "evaluate_policy",
    "forecaster": {"train": {"epochs": 2}, "dlinear_train": {"epochs": 1}},
    "policy": {
        "ablations": ["no_text"],
        "ablation_folds": "last",
        "ppo": {"total_timesteps": 1024, "n_envs": 2, "n_steps": 256},
    },
}
TRAINING_LOGS = [
    "train_forecaster.log",
    "train_policy_fold_0.log",
    "train_policy_fold_1.log",
]
_STOPS_BY = re.compile(r"min left of the session's (\S+) min time budget \(stops by ([^)]+)\)")


def _run(workdir: Path, *args: str, deadline: float | None = None) -> tuple[int, str]:
    """Run snakemake (conftest's runner passes os.environ on) with TRAINRELAY_DEADLINE set or absent."""
    with pytest.MonkeyPatch.context() as mp:
        if deadline is None:
            mp.delenv(DEADLINE_ENV, raising=False)
        else:
            mp.setenv(DEADLINE_ENV, f"{deadline:.3f}")
        proc = run_snakemake(workdir, *args, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def _logs(workdir: Path) -> dict[str, str]:
    logs = workdir / "results/tiny/logs"
    found = {p.name: p.read_text() for p in logs.glob("*.log")}
    return {name: text for name, text in found.items() if "train_" in name}


def _state_files(workdir: Path) -> dict[str, float]:
    return {
        str(p.relative_to(workdir)): p.stat().st_mtime_ns
        for p in (workdir / "results/tiny/state").rglob("state-*.pt")
    }


@pytest.mark.slow
def test_one_deadline_for_the_whole_invocation(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    tiny = write_config(workdir, {**SMALL, "checkpoint": {"time_budget_minutes": 0.0001}}, name="tiny.yaml")

    # 1. A budget of 6 ms, fixed when snakemake parsed the Snakefile: the data stages (which have no
    # budget) take longer than that, so the first training job starts after the deadline and
    # stops at once, saving nothing.
    code, out = _run(workdir, "--configfile", str(tiny))
    assert code != 0
    log = (workdir / "results/tiny/logs/train_forecaster.log").read_text()
    assert re.search(r"train_forecaster: the session's time budget of 0\.0001 min .*ran out at", log), log
    assert "before this job started; it saved nothing new — rerun the same command to resume" in log
    assert "rerun the same command to resume" in out
    assert not _state_files(workdir), "a job that started after the deadline saved state"
    assert not (workdir / "results/tiny/checkpoints/forecaster.pt").exists()
    assert (workdir / "results/tiny/segments/features.parquet").exists()  # the stages before it ran

    # 2. The rerun is a new session (here with a budget that fits): finished stages stay done and
    # every training job of the invocation reports the same deadline, the one the Snakefile set.
    budget = write_config(workdir, {**SMALL, "checkpoint": {"time_budget_minutes": 60}}, name="budget.yaml")
    code, out = _run(workdir, "--configfile", str(budget))
    assert code == 0, out
    assert not re.search(r"^(local)?rule (acquire|manifest|segments):", out, re.M)  # not rerun
    note = re.search(r"session time budget \(checkpoint\.time_budget_minutes = 60\): .* stops by (.+?);", out)
    assert note, out
    logs = _logs(workdir)
    training = {name: _STOPS_BY.search(logs[name]) for name in [*TRAINING_LOGS, *_ablation_logs(logs)]}
    assert len(training) == 4 and all(training.values()), {k: bool(v) for k, v in training.items()}
    assert {m.group(1) for m in training.values()} == {"60"}
    assert {m.group(2) for m in training.values()} == {note.group(1)}  # one deadline, set once
    before = _state_files(workdir)
    assert before  # the finished trainings left their last states

    # 3. A later job of a session whose deadline earlier jobs used up (TRAINRELAY_DEADLINE already
    # passed, as an exported or inherited deadline is honoured): it stops before touching its state.
    passed = time.time() - 5
    code, out = _run(
        workdir,
        "--configfile",
        str(budget),
        "--forcerun",
        "train_policy_fold",
        deadline=passed,
    )
    assert code != 0
    assert "the session deadline (TRAINRELAY_DEADLINE from the environment) passed" in out
    stopped = [
        name
        for name, text in _logs(workdir).items()
        if "before this job started; it saved nothing new" in text
    ]
    assert stopped and all(name.startswith("train_policy_fold_") for name in stopped), stopped
    assert _state_files(workdir) == before  # nothing new saved, nothing pruned

    # 4. The same command again, without the stale deadline, is a new session: the forced folds
    # resume from their saved states instead of training again.
    code, out = _run(workdir, "--configfile", str(budget), "--forcerun", "train_policy_fold")
    assert code == 0, out
    resumed = _logs(workdir)
    for name in ["train_policy_fold_0.log", "train_policy_fold_1.log"]:
        assert "resumed PPO at 1024 of 1024 timesteps" in resumed[name], resumed[name]
        assert _STOPS_BY.search(resumed[name]).group(2) != note.group(1)  # its own, new deadline


def _ablation_logs(logs: dict[str, str]) -> list[str]:
    return [name for name in logs if name.startswith("train_policy_ablation")]
