"""Resumable training state that lives outside Snakemake's declared outputs.

Snakemake deletes the outputs of a failed job, so mid-training state is kept under
``results/{run}/state/<rule>/`` (or a profile-chosen persistent path). A state is resumed only
when the fingerprint of the config that produced it matches the current one; the last ``keep``
states are kept so a state corrupted by a kill mid-write (impossible with atomic renames, but
disks fill up) still leaves an older one.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainrelay.atomic import atomic_path

log = logging.getLogger(__name__)

_STATE_RE = re.compile(r"^state-(\d{10})\.pt$")


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
        target = self.directory / f"state-{step:010d}.pt"
        payload = {"fingerprint": self.fingerprint, "step": step, "state": state}
        with atomic_path(target) as tmp:
            torch.save(payload, tmp)
        for old in self._files()[: -self.keep]:
            old.unlink(missing_ok=True)
        return target

    def latest(self) -> dict[str, Any] | None:
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
    """Decides when to save periodic state and when a session's time budget is used up.

    ``every_minutes``: save at least this often; ``budget_minutes``: stop (after saving) once
    this much wall time has passed since the job started; None means no budget.
    """

    every_minutes: float = 30.0
    budget_minutes: float | None = None
    started: float = field(default_factory=time.monotonic)
    last_save: float = field(default_factory=time.monotonic)

    def due(self) -> bool:
        return (time.monotonic() - self.last_save) >= self.every_minutes * 60.0

    def mark_saved(self) -> None:
        self.last_save = time.monotonic()

    def exhausted(self) -> bool:
        if self.budget_minutes is None:
            return False
        return (time.monotonic() - self.started) >= self.budget_minutes * 60.0
