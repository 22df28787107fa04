"""A real single-node Slurm for tests: munged, slurmctld and slurmd started from a temporary directory.

The daemons get their own slurm.conf, munge key and socket, state/spool directories and free TCP
ports, so a developer's own munge (if any) keeps running. Clients find this cluster through
``SLURM_CONF``, which :func:`single_node_slurm` puts into ``os.environ`` for as long as the cluster
runs (snakemake and sbatch inherit it); the one thing outside the directory is the link
/run/slurm/conf/slurm.conf, for the srun inside each job (see RUN_CONF_DIR), removed at the end.
Needs root (daemons run as root, munged as user ``munge``) and the Debian packages ``slurm-wlm``
and ``munge`` (``bash .ci/slurm.sh`` installs them).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

# Debian installs the daemons in /usr/sbin, which a non-login PATH may lack.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel")
PARTITION = "debug"
GPUS = 1
START_TIMEOUT_S = 60
# Where Slurm clients look for the config when SLURM_CONF is unset and /etc/slurm/slurm.conf is
# absent (a configless slurmd keeps its copy there). The executor's job step strips every SLURM_*
# variable, SLURM_CONF included, before the srun that runs the job inside its allocation
# (snakemake-executor-plugin-slurm issue 164), so that srun can only find this cluster here.
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
RUN_CONF_DIR = Path("/run/slurm/conf")


def _which(name: str) -> str | None:
    return shutil.which(name, path=SEARCH_PATH)


def skip_reason() -> str | None:
    """Why a real Slurm cannot be started here, or None when it can."""
    missing = [name for name in (*DAEMONS, *CLIENTS) if _which(name) is None]
    if missing:
        return f"Slurm/munge not installed ({', '.join(missing)} missing): run `sudo bash .ci/slurm.sh`"
    if os.geteuid() != 0:
        return "starting slurmctld/slurmd/munged needs root"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no 'munge' user (the munge package creates it): run `sudo bash .ci/slurm.sh`"
    for taken in (SYSTEM_CONF, RUN_CONF_DIR / "slurm.conf"):
        if taken.exists():
            return f"{taken} exists (a Slurm is configured here): srun inside test jobs would talk to it"
    return None


@dataclass
class SlurmCluster:
    """A running one-node cluster: its directory, config file and the client environment."""

    root: Path
    conf: Path
    partition: str

    def client(self, *args: str, check: bool = True) -> str:
        """Run a Slurm client command (squeue, sinfo, ...) against this cluster; return stdout."""
        proc = subprocess.run(
            [_which(args[0]) or args[0], *args[1:]],
            capture_output=True,
            text=True,
            env=dict(os.environ, SLURM_CONF=str(self.conf)),
            timeout=30,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def controller_up(self) -> bool:
        return "UP" in self.client("scontrol", "ping", check=False)

    def node_idle(self) -> bool:
        """True once the node takes jobs; raises when slurmctld refused its registration."""
        state = self.client("sinfo", "-h", "-o", "%t", check=False).strip()
        if state.startswith(("drain", "inval", "down")):
            reason = self.client("sinfo", "-h", "-R", "-o", "%E", check=False).strip()
            raise RuntimeError(f"node state {state!r}: {reason}")
        return state == "idle"

    def log(self, daemon: str) -> str:
        """The log of ``slurmctld`` or ``slurmd`` so far."""
        path = self.root / "log" / f"{daemon}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def job_ids(self) -> list[str]:
        """Every job id slurmctld has allocated since it started (from its log; survives MinJobAge)."""
        ids = []
        for line in self.log("slurmctld").splitlines():
            # slurmctld logs each submission as "_slurm_rpc_submit_batch_job: JobId=N InitPrio=..."
            if "_slurm_rpc_submit_batch_job: JobId=" in line:
                ids.append(line.split("JobId=", 1)[1].split()[0])
        return ids


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_line() -> str:
    """This machine's NodeName line as slurmd itself detects it (CPUs, sockets, RealMemory)."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("NodeName="))
    return f"{line} Gres=gpu:{GPUS} NodeAddr=127.0.0.1 State=UNKNOWN"


def _slurm_conf(root: Path, host: str, node_line: str) -> str:
    return "\n".join(
        [
            "ClusterName=trainrelay-test",
            # The host name must be this machine's short name (slurmctld checks); the address pins
            # it to loopback so no DNS is needed.
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"AuthInfo=socket={root}/munge/munge.socket",
            f"StateSaveLocation={root}/state",
            f"SlurmdSpoolDir={root}/spool",
            f"SlurmctldPidFile={root}/run/slurmctld.pid",
            f"SlurmdPidFile={root}/run/slurmd.pid",
            f"SlurmctldLogFile={root}/log/slurmctld.log",
            f"SlurmdLogFile={root}/log/slurmd.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            # No cgroups in a container or VM without delegation: track processes by parent pid.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "SchedulerType=sched/backfill",
            "MpiDefault=none",
            "ReturnToService=2",
            # No accounting database: sacct cannot work, so finished jobs must stay visible to
            # squeue long enough for the executor plugin's status checks.
            "MinJobAge=600",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            # One GPU as a generic resource (gres.conf): Slurm schedules and records `--gpus=1`
            # exactly as on a GPU node; on a machine without one the job itself runs on the CPU.
            "GresTypes=gpu",
            node_line,
            f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


def _start_munge(root: Path, stderr: IO[str]) -> subprocess.Popen:
    munge_dir = root / "munge"
    # munged insists that every user can reach its socket's directory (0755), and that its key
    # is private to it (0600).
    munge_dir.mkdir()
    munge_dir.chmod(0o755)
    user = pwd.getpwnam("munge")
    key = munge_dir / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    for path in (munge_dir, key):
        os.chown(path, user.pw_uid, user.pw_gid)
    return subprocess.Popen(
        [
            _which("munged"),
            "--foreground",
            f"--key-file={key}",
            f"--socket={munge_dir}/munge.socket",
            f"--pid-file={munge_dir}/munged.pid",
            f"--log-file={munge_dir}/munged.log",
            f"--seed-file={munge_dir}/munged.seed",
        ],
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


def _daemon_output(root: Path) -> str:
    """The last lines each daemon wrote, for a start-up failure's message (the directory is removed)."""
    parts = []
    for path in sorted([*root.glob("munge/*.log"), *root.glob("log/*")]):
        tail = path.read_text(errors="replace").strip().splitlines()[-5:]
        if tail:
            parts.append(f"{path.name}: " + " | ".join(tail))
    return "\n".join(parts)


def _wait_for(what: str, check: Callable[[], bool], procs: dict[str, subprocess.Popen], root: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode} while waiting for {what}:\n{_daemon_output(root)}"
                )
        if check():
            return
        time.sleep(0.5)
    raise RuntimeError(f"timed out after {START_TIMEOUT_S}s waiting for {what}:\n{_daemon_output(root)}")


def _stop(procs: dict[str, subprocess.Popen]) -> None:
    # Reverse start order: slurmd, slurmctld, munged.
    for proc in reversed(list(procs.values())):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@contextmanager
def single_node_slurm() -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd; yield once the node is idle; stop them all on exit."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    # Not pytest's tmp_path: that is 0700 root, and munged runs as user munge.
    root = Path(tempfile.mkdtemp(prefix="trainrelay-slurm-"))
    root.chmod(0o755)
    for sub in ("state", "spool", "run", "log"):
        (root / sub).mkdir()
    conf = root / "slurm.conf"
    host = socket.gethostname().split(".")[0]
    conf.write_text(_slurm_conf(root, host, _node_line()))
    # slurmd reads gres.conf from slurm.conf's directory. It drops a GPU without a device file, so
    # /dev/null stands in (task/none constrains no devices); CUDA_VISIBLE_DEVICES=0 in the job.
    (root / "gres.conf").write_text(f"NodeName={host} Name=gpu Count={GPUS} File=/dev/null\n")
    env = dict(os.environ, SLURM_CONF=str(conf))
    cluster = SlurmCluster(root=root, conf=conf, partition=PARTITION)
    procs: dict[str, subprocess.Popen] = {}
    logs: list[IO[str]] = []
    old_conf = os.environ.get("SLURM_CONF")
    created = [path for path in (RUN_CONF_DIR.parent, RUN_CONF_DIR) if not path.exists()]
    link = RUN_CONF_DIR / "slurm.conf"
    try:
        RUN_CONF_DIR.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() and not link.exists():
            link.unlink()  # left by a test run that was killed before its teardown
        link.symlink_to(conf)
        logs.append((root / "log" / "munged.stderr").open("w"))
        procs["munged"] = _start_munge(root, logs[-1])
        _wait_for("munged's socket", (root / "munge" / "munge.socket").exists, procs, root)
        for daemon, flags in (("slurmctld", ["-D", "-c"]), ("slurmd", ["-D"])):
            logs.append((root / "log" / f"{daemon}.stderr").open("w"))
            procs[daemon] = subprocess.Popen(
                [_which(daemon), *flags, "-f", str(conf)], env=env, stdout=subprocess.DEVNULL, stderr=logs[-1]
            )
            if daemon == "slurmctld":
                _wait_for("slurmctld", cluster.controller_up, procs, root)
        _wait_for("the node to become idle", cluster.node_idle, procs, root)
        os.environ["SLURM_CONF"] = str(conf)
        yield cluster
    finally:
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        if "slurmctld" in procs and procs["slurmctld"].poll() is None:
            # Cancel whatever is left so no slurmstepd outlives the test.
            ids = cluster.client("squeue", "-h", "-o", "%i", check=False).split()
            if ids:
                cluster.client("scancel", *ids, check=False)
        _stop(procs)
        for log in logs:
            log.close()
        if link.is_symlink() and link.readlink() == conf:
            link.unlink()
        for path in reversed(created):
            with suppress(OSError):  # something else put files there meanwhile: leave it
                path.rmdir()
        shutil.rmtree(root, ignore_errors=True)
