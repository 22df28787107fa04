"""The Slurm profile, run for real: the tiny workflow goes through a one-node Slurm started by the test.

Every job must be submitted with sbatch by the Slurm executor plugin, land in the partition and
account given by TRAINRELAY_SLURM_PARTITION / TRAINRELAY_SLURM_ACCOUNT, ask for the rule's memory,
and ask for a GPU (`--gpus=1`) exactly when the rule declares gpu=1. The profile checks at the top
need no Slurm; the rest skip with the reason when Slurm/munge are not installed or we are not root.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, SNAKEMAKE, copy_workflow, run_snakemake, write_config
from tests.slurm_cluster import SlurmCluster, single_node_slurm

# The last stage the CPU Slurm run builds: far enough for the per-fold policy jobs, with small
# trainings so the run stays short. The GPU-request run stops at embeddings (its GPU rules).
UNTIL = "evaluate_policy"
GPU_UNTIL = "embeddings"
# rules that declare `runtime` themselves (rules/*.smk), in minutes
OWN_RUNTIME = {
    "train_forecaster": "240",
    "precompute": "60",
    "train_policy_fold": "240",
    "train_policy_ablation": "240",
    "tune_worker": "240",
}
FAST = {
    "forecaster": {"train": {"epochs": 1}, "dlinear_train": {"epochs": 1}},
    "policy": {"ablations": [], "ppo": {"total_timesteps": 2048, "n_envs": 2, "n_steps": 512}},
}
ACCOUNT = "trainrelay-ci"
# Flags for a cluster without an accounting database (sacct fails there) and a fast first status
# check; docs/slurm.md shows the same command.
NO_SACCT_FLAGS = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2"]
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) ")
RULE_HEADER = re.compile(r"^(local)?rule (\w+):$")


@dataclass
class PlannedJob:
    """One job as snakemake announced it: rule, its DAG job id, wildcards, outputs."""

    rule: str
    local: bool
    jobid: str = ""
    wildcards: dict[str, str] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    resources: dict[str, str] = field(default_factory=dict)


def announced_jobs(log: str) -> list[PlannedJob]:
    """The job blocks ("rule X:" + indented "key: value" lines) snakemake prints when it starts a job."""
    jobs: list[PlannedJob] = []
    current: PlannedJob | None = None
    for line in log.splitlines():
        header = RULE_HEADER.match(line)
        if header:
            current = PlannedJob(rule=header.group(2), local=bool(header.group(1)))
            jobs.append(current)
            continue
        if current is None or not line.startswith("    ") or ": " not in line:
            current = None
            continue
        key, value = line.strip().split(": ", 1)
        if key == "jobid":
            current.jobid = value
        elif key == "output":
            current.outputs = [path.strip() for path in value.split(",")]
        elif key in ("wildcards", "resources"):
            setattr(current, key, dict(item.strip().split("=", 1) for item in value.split(",")))
    return jobs


def slurm_job_ids(log: str) -> dict[str, str]:
    """Snakemake job id -> Slurm job id, from the executor's "has been submitted" lines."""
    return {match.group(1): match.group(2) for match in SUBMITTED.finditer(log)}


def job_fields(cluster: SlurmCluster, slurm_id: str) -> dict[str, str]:
    """`scontrol -d show job` as a dict (finished jobs stay visible for MinJobAge=600 s)."""
    text = cluster.client("scontrol", "-d", "show", "job", slurm_id)
    return dict(token.split("=", 1) for token in text.split() if "=" in token)


@dataclass
class SlurmRuns:
    workdir: Path
    cpu_log: str  # device: cpu, whole workflow up to UNTIL
    second_dry_run: str  # the same command again, -n
    gpu_log: str  # device: auto afterwards: the GPU rules rerun and ask for a GPU


def _log(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def _snakemake_via_slurm(workdir: Path, config: Path, *extra: str) -> str:
    proc = run_snakemake(
        workdir,
        "--workflow-profile",
        "slurm",
        "-j",
        "4",
        *NO_SACCT_FLAGS,
        # the test cluster answers squeue at once: the first status check after 1 s, not Snakemake's
        # default 10 s (later waits are the plugin's own back-off, see docs/slurm.md)
        "--seconds-between-status-checks",
        "1",
        "--configfile",
        str(config),
        *extra,
        timeout=600,
    )
    return _log(proc)


@pytest.fixture(scope="module")
def cluster() -> Iterator[SlurmCluster]:
    with single_node_slurm() as running:
        yield running


@pytest.fixture(scope="module")
def runs(cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmRuns]:
    workdir = copy_workflow(tmp_path_factory.mktemp("slurm") / "wf")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TRAINRELAY_SLURM_PARTITION", cluster.partition)
        env.setenv("TRAINRELAY_SLURM_ACCOUNT", ACCOUNT)
        # FAST's own `until` (dashboard) goes first so that UNTIL and GPU_UNTIL cut the run.
        cpu = write_config(workdir, {**FAST, "device": "cpu", "until": UNTIL})
        cpu_log = _snakemake_via_slurm(workdir, cpu)
        second = _snakemake_via_slurm(workdir, cpu, "-n")
        auto = write_config(workdir, {**FAST, "device": "auto", "until": GPU_UNTIL}, name="auto.yaml")
        gpu_log = _snakemake_via_slurm(workdir, auto)
        yield SlurmRuns(workdir=workdir, cpu_log=cpu_log, second_dry_run=second, gpu_log=gpu_log)


# --- the profile itself (no Slurm needed) ---------------------------------------------------------


def test_profile_sets_executor_but_not_jobs_cores_or_site_names() -> None:
    text = (REPO / "profiles" / "slurm" / "config.yaml").read_text()
    profile = yaml.safe_load(text)
    assert profile["executor"] == "slurm"
    # -j on the command line holds; the no-sacct flags are for clusters without accounting only.
    unwanted = {"jobs", "cores", "slurm-status-command", "slurm-init-seconds-before-status-checks"}
    assert not unwanted & set(profile)
    assert profile["retries"] >= 1 and profile["latency-wait"] >= 30
    assert {"runtime", "mem_mb", "slurm_partition", "slurm_account"} <= set(profile["default-resources"])
    assert "/home/" not in text and "/work/" not in text and "/scratch" not in text


def test_partition_and_account_come_from_the_environment(workflow: Path) -> None:
    config = write_config(workflow, {"device": "cpu", "until": UNTIL})
    env = {"TRAINRELAY_SLURM_PARTITION": "gpu-a100", "TRAINRELAY_SLURM_ACCOUNT": "ml-team"}
    dry_run = ["-n", "--workflow-profile", "slurm", "-j", "4", "--configfile", str(config)]
    per_rule = ["--set-resources", "embeddings:runtime=480", "embeddings:slurm_partition=long"]
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        given = announced_jobs(_log(run_snakemake(workflow, *dry_run, *per_rule)))
        for name in env:
            patch.delenv(name)
        unset = announced_jobs(_log(run_snakemake(workflow, *dry_run)))
    for job in given:
        expected_partition = "long" if job.rule == "embeddings" else "gpu-a100"
        assert job.resources["slurm_partition"] == expected_partition, job
        assert job.resources["slurm_account"] == "ml-team"
        # --set-resources wins; rules with their own runtime keep it; the rest get the profile's 120
        expected_runtime = "480" if job.rule == "embeddings" else OWN_RUNTIME.get(job.rule, "120")
        assert job.resources["runtime"] == expected_runtime, job
    # Unset: empty, so the plugin uses the cluster's default partition and guesses the account.
    assert {job.resources["slurm_partition"] + job.resources["slurm_account"] for job in unset} == {""}
    assert len(given) == len(unset) >= 6


def test_profile_refuses_to_start_without_jobs(workflow: Path) -> None:
    """No profile sets jobs, and Snakemake will not run a remote executor without -j (not even -n)."""
    config = write_config(workflow, {"device": "cpu", "until": UNTIL})
    proc = subprocess.run(
        [SNAKEMAKE, "-n", "--workflow-profile", "slurm", "--configfile", str(config)],
        cwd=workflow,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "use --jobs N" in proc.stdout + proc.stderr
    assert not (workflow / ".snakemake" / "slurm_logs").exists()


# --- the workflow through a real one-node Slurm ---------------------------------------------------


@pytest.mark.slurm
def test_every_job_ran_as_a_slurm_job_in_the_given_partition_and_account(
    runs: SlurmRuns, cluster: SlurmCluster
) -> None:
    jobs = announced_jobs(runs.cpu_log)
    remote = [job for job in jobs if not job.local]
    assert {job.rule for job in remote} >= {"acquire", "manifest", "segments", "environment", "embeddings"}
    submitted = slurm_job_ids(runs.cpu_log)
    assert set(submitted) == {job.jobid for job in remote}, runs.cpu_log[-3000:]
    slurm_ids = set(submitted.values())
    assert len(slurm_ids) == len(remote)
    assert slurm_ids <= set(cluster.job_ids())  # slurmctld logged each submission
    for slurm_id in slurm_ids:
        fields = job_fields(cluster, slurm_id)
        assert fields["JobState"] == "COMPLETED", fields
        assert fields["Partition"] == cluster.partition
        assert fields["Account"] == ACCOUNT


@pytest.mark.slurm
def test_outputs_exist_and_rerun_has_nothing_to_do(runs: SlurmRuns) -> None:
    outputs = [path for job in announced_jobs(runs.cpu_log) if not job.local for path in job.outputs]
    assert "results/tiny/embeddings/text_embeddings.parquet" in outputs
    for path in outputs:
        assert (runs.workdir / path).stat().st_size > 0, path
    assert "Nothing to be done" in runs.second_dry_run


@pytest.mark.slurm
def test_rule_resources_become_sbatch_requests(runs: SlurmRuns, cluster: SlurmCluster) -> None:
    """device: cpu -> no GPU asked; mem_mb -> --mem (rules.smk: segments and embeddings declare 4000)."""
    submitted = slurm_job_ids(runs.cpu_log)
    by_rule = {job.rule: job for job in announced_jobs(runs.cpu_log) if not job.local}
    for rule in ("segments", "embeddings"):
        fields = job_fields(cluster, submitted[by_rule[rule].jobid])
        assert "mem=4000M" in fields["TRES"], fields["TRES"]
    for job in by_rule.values():
        fields = job_fields(cluster, submitted[job.jobid])
        assert "gpu" not in fields.get("TresPerJob", "") + fields["JOB_GRES"], (job.rule, fields)


@pytest.mark.slurm
def test_gpu_rules_ask_slurm_for_one_gpu(runs: SlurmRuns, cluster: SlurmCluster) -> None:
    """device: auto -> rules with gpu=1 are submitted with --gpus=1 and Slurm allocates the GPU."""
    submitted = slurm_job_ids(runs.gpu_log)
    by_rule = {job.rule: job for job in announced_jobs(runs.gpu_log) if not job.local}
    assert "embeddings" in by_rule, runs.gpu_log[-3000:]
    for rule, job in by_rule.items():
        fields = job_fields(cluster, submitted[job.jobid])
        if rule == "embeddings":
            assert fields.get("TresPerJob") == "gres:gpu:1", fields
            # The allocation itself (the request alone is TresPerJob): one GPU was given to the job.
            assert fields["JOB_GRES"] == "gpu:1", fields
        if rule == "environment":
            assert "gpu" not in fields.get("TresPerJob", "") + fields["JOB_GRES"], fields


@pytest.mark.slurm
def test_walk_forward_folds_are_separate_slurm_jobs(runs: SlurmRuns) -> None:
    submitted = slurm_job_ids(runs.cpu_log)
    folds = [job for job in announced_jobs(runs.cpu_log) if "fold" in job.wildcards]
    if not folds:
        pytest.skip(f"no per-fold rule up to until={UNTIL}; raise UNTIL once per-fold rules are wired")
    assert len({job.wildcards["fold"] for job in folds}) >= 2
    assert all(job.jobid in submitted for job in folds)
