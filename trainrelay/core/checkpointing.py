"""Resumable training state that lives outside Snakemake's declared outputs.

Snakemake deletes the outputs of a failed job, so mid-training state is kept under
``results/{run}/state/<rule>/`` (or a profile-chosen persistent path). A state is resumed only
when the fingerprint of the config that produced it matches the current one; the last ``keep``
states are kept so a state corrupted by a kill mid-write (impossible with atomic renames, but
disks fill up) still leaves an older one.

The time budget (``checkpoint.time_budget_minutes``) is one deadline for a whole ``snakemake``
invocation, not a budget per job: :func:`start_session` fixes it when the Snakefile is parsed and
hands it to every job through the ``TRAINRELAY_DEADLINE`` environment variable, so the forecaster,
every fold and every ablation share what is left and the run saves and stops before a Colab
runtime ends. A rerun of the same command is a new session with a new deadline.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainrelay.atomic import atomic_path
from trainrelay.errors import BudgetExhausted, ConfigError

log = logging.getLogger(__name__)

_STATE_RE = re.compile(r"^state-(\d{10})\.pt$")

# Epoch seconds at which the current session's time budget runs out. Set by the Snakefile in the
# main snakemake process; job subprocesses and cluster jobs inherit the environment (they re-parse
# the Snakefile, where setdefault keeps the inherited value), so every job sees the same deadline.
DEADLINE_ENV = "TRAINRELAY_DEADLINE"


def _read_deadline(environ: MutableMapping[str, str]) -> float | None:
    raw = environ.get(DEADLINE_ENV, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(
            f"environment variable {DEADLINE_ENV}={raw!r} is not a time in epoch seconds; unset it "
            "(the workflow sets it from checkpoint.time_budget_minutes)"
        ) from None


def _clock(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(epoch))


def start_session(
    budget_minutes: float | None,
    *,
    main_process: bool = True,
    environ: MutableMapping[str, str] | None = None,
    now: float | None = None,
) -> str | None:
    """Fix this session's deadline in ``TRAINRELAY_DEADLINE`` unless it is already set; return a line
    for the user (only in the main snakemake process), or None.

    Called at Snakefile parse time. A value already in the environment wins: in a job that is the
    deadline of the invocation that started it; in the main process it is one the user exported
    (e.g. the end of a Slurm allocation or of a Colab runtime), which the returned line names, with
    a warning when it has already passed. ``budget_minutes`` None (no budget) sets nothing.
    """
    if budget_minutes is None:
        return None
    environ = os.environ if environ is None else environ
    now = time.time() if now is None else now
    inherited = _read_deadline(environ)
    if inherited is None:
        deadline = now + float(budget_minutes) * 60.0
        environ[DEADLINE_ENV] = f"{deadline:.3f}"
        source = f"checkpoint.time_budget_minutes = {float(budget_minutes):g}"
    else:
        deadline, source = inherited, f"{DEADLINE_ENV} from the environment"
    if not main_process:
        return None
    if deadline <= now:
        return (
            f"trainrelay: warning: the session deadline ({source}) passed at {_clock(deadline)}, so every "
            f"training job will stop at once; unset {DEADLINE_ENV} to give this run its own budget"
        )
    return (
        f"trainrelay: session time budget ({source}): training saves its state and stops by "
        f"{_clock(deadline)}; rerun the same command to resume"
    )


def session_deadline(
    budget_minutes: float | None,
    *,
    environ: MutableMapping[str, str] | None = None,
    now: float | None = None,
) -> float | None:
    """The deadline (epoch seconds) a job must stop by: the session's from ``TRAINRELAY_DEADLINE``,
    else (a job run outside snakemake, e.g. from a test or the CLI) ``budget_minutes`` from now;
    None without a budget.
    """
    if budget_minutes is None:
        return None
    inherited = _read_deadline(os.environ if environ is None else environ)
    if inherited is not None:
        return inherited
    return (time.time() if now is None else now) + float(budget_minutes) * 60.0


class StateStore:
    """Keeps the newest ``keep`` training states of one rule in ``directory``.

    ``save(state, step)`` writes ``state-<step>.pt`` atomically (with the fingerprint inside) and
    prunes older files; ``latest()`` returns the newest state whose fingerprint matches, or None.
    """

    def __init__(self, directory: str | Path, fingerprint: str, keep: int = 3) -> None:
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        self.keep = keep

    def _files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if _STATE_RE.match(p.name)]
        return sorted(found, key=lambda p: int(_STATE_RE.match(p.name).group(1)))

    def save(self, state: dict[str, Any], step: int) -> Path:
        # torch is imported where it is used: the Snakefile imports this module at parse time (for
        # start_session) and importing torch there would add seconds to every parse.
        import torch

        target = self.directory / f"state-{step:010d}.pt"
        payload = {"fingerprint": self.fingerprint, "step": step, "state": state}
        with atomic_path(target) as tmp:
            torch.save(payload, tmp)
        for old in self._files()[: -self.keep]:
            old.unlink(missing_ok=True)
        return target

    def latest(self) -> dict[str, Any] | None:
        import torch  # see save(): not at the top, the Snakefile imports this module

        for path in reversed(self._files()):
            try:
                payload = torch.load(path, map_location="cpu", weights_only=False)
            except Exception as exc:  # a damaged file: fall back to the previous one
                log.warning("ignoring unreadable state %s (%s)", path, exc)
                continue
            if payload.get("fingerprint") != self.fingerprint:
                log.info("state %s was made with another config; starting fresh", path)
                return None
            log.info("resuming from %s (step %d)", path, payload["step"])
            return payload["state"]
        return None

    def clear(self) -> None:
        for path in self._files():
            path.unlink(missing_ok=True)


@dataclass
class TimeBudget:
    """Decides when to save periodic state and when the session's time budget is used up.

    ``every_minutes``: save at least this often; ``budget_minutes``: the session's budget, None for
    none; ``deadline``: epoch seconds to stop by, by default the session's (:func:`session_deadline`),
    so a job gets what is left of the budget, not all of it.
    """

    every_minutes: float = 30.0
    budget_minutes: float | None = None
    deadline: float | None = None
    last_save: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.deadline is None:
            self.deadline = session_deadline(self.budget_minutes)

    def due(self) -> bool:
        return (time.monotonic() - self.last_save) >= self.every_minutes * 60.0

    def mark_saved(self) -> None:
        self.last_save = time.monotonic()

    def remaining_seconds(self) -> float | None:
        """Seconds until the deadline (negative once past); None without a budget."""
        return None if self.deadline is None else self.deadline - time.time()

    def exhausted(self) -> bool:
        remaining = self.remaining_seconds()
        return remaining is not None and remaining <= 0.0

    def check_start(self, job: str) -> None:
        """Log what is left of the budget as ``job`` starts; raise BudgetExhausted, before anything is
        loaded or saved, when the deadline has already passed (earlier jobs of the session used it).
        """
        remaining = self.remaining_seconds()
        if remaining is None:
            return
        assert self.deadline is not None and self.budget_minutes is not None
        if remaining <= 0.0:
            raise BudgetExhausted(
                f"{job}: the session's time budget of {self.budget_minutes:g} min "
                f"(checkpoint.time_budget_minutes) ran out at {_clock(self.deadline)}, "
                f"{-remaining / 60.0:.1f} min before this job started; it saved nothing new — "
                "rerun the same command to resume"
            )
        log.info(
            "%s: %.1f min left of the session's %g min time budget (stops by %s)",
            job,
            remaining / 60.0,
            self.budget_minutes,
            _clock(self.deadline),
        )
