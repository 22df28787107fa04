"""Leases on a working directory: a killed run never blocks the command that resumes it.

Snakemake locks the files a run reads and writes under ``.snakemake/locks/`` and removes the locks
when it exits. A run killed with SIGKILL (a Colab disconnect, a RunPod pod stop, a lost Slurm
login session) cannot remove them, and the next run — the very command the guides say resumes —
stops on "Directory cannot be locked". ``snakemake --unlock`` clears them, but blindly: it would
also clear the locks of a run that is still alive.

So every main ``snakemake`` process of this workflow holds a lease, a small JSON file under
``.snakemake/trainrelay-leases/`` with its host, pid, the pid's start time and boot id (so a
recycled pid does not look alive) and a heartbeat refreshed every 10 s. When a run starts:

* a lease whose holder is gone is removed: on this host, its pid is not running (or is another
  process now); on another host sharing the folder, its heartbeat stopped more than
  ``STALE_AFTER_S`` ago;
* if no live lease remains, nobody can be using the locks, so stale locks are removed — and so
  are the ``.tmp-*`` files that a killed atomic write left beside its target, and the ``.tmp-*``
  scratch folders a killed stage was filling (segments writes its parts into one);
* if a live lease remains, nothing is touched: Snakemake's own lock check decides, and the
  message names the run that holds the directory.

This runs while the Snakefile is parsed, which in the main process is before Snakemake takes
its locks.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HEARTBEAT_S = 10.0
# Six missed heartbeats: the holder on another host is gone. Short, because a stopped RunPod pod
# comes back as another host on the same volume and its user is waiting to resume.
STALE_AFTER_S = 60.0
LEASE_DIR = "trainrelay-leases"
# Folders where the workflow's atomic writes leave ``.tmp-<name>.XXXX`` files when killed.
SWEPT_FOLDERS = ("data", "results", "reports")


@dataclass(frozen=True)
class Lease:
    host: str
    pid: int
    started: str | None  # the process's start time as the kernel gives it; None where unknown
    boot_id: str | None
    heartbeat: float
    path: Path

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _boot_id() -> str | None:
    return _read_text("/proc/sys/kernel/random/boot_id")


def _process_started(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot); None off Linux."""
    stat = _read_text(f"/proc/{pid}/stat")
    if stat is None:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def holder_alive(lease: Lease, now: float | None = None) -> bool:
    """Whether the process that wrote ``lease`` may still be running."""
    now = time.time() if now is None else now
    if lease.host != socket.gethostname():
        return now - lease.heartbeat < STALE_AFTER_S
    if lease.boot_id is not None and _boot_id() is not None and lease.boot_id != _boot_id():
        return False  # the machine rebooted since: every process of that boot is gone
    if not _pid_running(lease.pid):
        return False
    current = _process_started(lease.pid)
    return lease.started is None or current is None or current == lease.started


def read_leases(snakemake_dir: Path) -> list[Lease]:
    leases = []
    for path in sorted((snakemake_dir / LEASE_DIR).glob("*.json")):
        try:
            data = json.loads(path.read_text())
            leases.append(
                Lease(
                    host=str(data["host"]),
                    pid=int(data["pid"]),
                    started=data.get("started"),
                    boot_id=data.get("boot_id"),
                    heartbeat=path.stat().st_mtime,
                    path=path,
                )
            )
        except (OSError, ValueError, KeyError, TypeError):
            # A lease killed while being written, or removed meanwhile by its holder: not a holder.
            path.unlink(missing_ok=True)
    return leases


def _sweep_temporary_files(workdir: Path) -> list[Path]:
    """Remove the ``.tmp-*`` files and scratch folders under the run's folders (no run is alive)."""
    removed: list[Path] = []
    for folder in SWEPT_FOLDERS:
        root = workdir / folder
        if not root.is_dir():
            continue
        for path in sorted(root.rglob(".tmp-*")):  # a folder sorts before what is inside it
            if any(parent in removed for parent in path.parents):
                continue  # inside a scratch folder already removed
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            elif path.is_file() or path.is_symlink():
                path.unlink(missing_ok=True)
            else:
                continue
            removed.append(path)
    return removed


@dataclass
class Recovery:
    """What :func:`recover` found and did."""

    live: list[Lease]
    removed_leases: list[Lease]
    removed_locks: list[Path]
    removed_temporary: list[Path]

    def message(self) -> str | None:
        if self.live:
            holders = ", ".join(lease.describe() for lease in self.live)
            return (
                f"trainrelay: another run of this workflow is alive in this folder ({holders}); "
                "its locks are left alone. If Snakemake stops on 'Directory cannot be locked', wait "
                "for that run or stop it, then run the same command again (a run on another host "
                f"counts as gone {STALE_AFTER_S:.0f} s after its last heartbeat)."
            )
        if self.removed_locks or self.removed_temporary:
            who = ", ".join(lease.describe() for lease in self.removed_leases) or "an earlier run"
            return (
                f"trainrelay: {who} ended without cleaning up (killed?): removed "
                f"{len(self.removed_locks)} stale Snakemake lock file(s) and "
                f"{len(self.removed_temporary)} half-written temporary file(s); resuming."
            )
        return None


def recover(workdir: Path) -> Recovery:
    """Remove dead leases and, when no run is alive here, stale locks and temporary files."""
    snakemake_dir = workdir / ".snakemake"
    live, dead = [], []
    for lease in read_leases(snakemake_dir):
        (live if holder_alive(lease) else dead).append(lease)
    for lease in dead:
        lease.path.unlink(missing_ok=True)
    removed_locks: list[Path] = []
    removed_temporary: list[Path] = []
    if not live:
        lockdir = snakemake_dir / "locks"
        if lockdir.is_dir():
            removed_locks = sorted(p for p in lockdir.iterdir() if p.name.endswith(".lock"))
            for path in removed_locks:
                path.unlink(missing_ok=True)
        removed_temporary = _sweep_temporary_files(workdir)
    return Recovery(live, dead, removed_locks, removed_temporary)


class LeaseHolder:
    """This process's lease: written now, refreshed by a daemon thread, removed at exit."""

    def __init__(self, workdir: Path, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.path = workdir / ".snakemake" / LEASE_DIR / f"{socket.gethostname()}-{os.getpid()}.json"
        self._stop = threading.Event()
        self._heartbeat_s = heartbeat_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": _process_started(os.getpid()),
            "boot_id": _boot_id(),
        }
        tmp = self.path.with_name(f".tmp-{self.path.name}")
        tmp.write_text(json.dumps(record, sort_keys=True))
        os.replace(tmp, self.path)
        self._thread = threading.Thread(target=self._beat, name="trainrelay-lease", daemon=True)
        self._thread.start()
        atexit.register(self.release)

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:  # the folder went away (a clean-up): nothing left to hold
                return

    def release(self) -> None:
        self._stop.set()
        self.path.unlink(missing_ok=True)


def probe_writable(workdir: Path, folders: tuple[str, ...] = SWEPT_FOLDERS) -> None:
    """Create and remove a file in each existing output folder; the OSError if one cannot be written.

    Snakemake deletes a job's old outputs before running it and fails with its own traceback on a
    read-only folder, before any rule of ours could say what is wrong; this finds it first. A real
    write, not ``os.access``: root passes every permission check but not a read-only mount.
    """
    for name in folders:
        folder = workdir / name
        if folder.is_dir():
            probe = folder / f".tmp-write-probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()


def take_lease(workdir: str | Path) -> str | None:
    """Recover from killed runs, then hold a lease until this process exits; return a note to print.

    Called while the Snakefile is parsed, before Snakemake takes its locks. A dry run or
    ``--report`` holds the lease too for its few seconds: Snakemake gives the Snakefile no way to
    tell them apart at parse time, and a short lease only makes a concurrent start leave locks
    alone. Because the lease is written before this process locks anything, a run that starts at
    the same moment either sees the lease or finds no lock of ours to remove.
    """
    workdir = Path(workdir)
    recovery = recover(workdir)
    LeaseHolder(workdir)
    probe_writable(workdir)
    return recovery.message()
