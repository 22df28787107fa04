"""The README's snakemake commands, run as typed from a copy of the checkout (issue 14, reqs 5 and 8).

`snakemake --profile local -j1` (and colab, runpod, slurm) resolve through the checkout-root links
./local -> profiles/local etc. (Snakemake looks for a bare profile name in the current directory
before the user's and the site's config folders), with profiles/default applied on top. Every
command here runs with HOME and XDG_CONFIG_HOME in a temporary folder that holds a user-wide profile
named `local`, which must be neither used nor changed. The workflow's Snakemake idioms (localrules,
the engines group, ensure(non_empty), protected release, the gpu resource) are checked on the parsed
workflow and on a dry run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SNAKEMAKE, copy_workflow, write_config

PROFILES = ["local", "colab", "runpod", "runpod-s3", "slurm"]
USER_PROFILE = "default-resources:\n  mem_mb: 7777\nconfig:\n  run: userwide\n"


def job_blocks(out: str) -> dict[str, str]:
    """The first announced block of each rule in a dry run ("rule X:" and its indented lines)."""
    blocks: dict[str, str] = {}
    for match in re.finditer(r"^(?:local)?rule (\w+):\n((?:    .*\n)*)", out, re.M):
        blocks.setdefault(match.group(1), match.group(2))
    return blocks


def job_table(out: str) -> dict[str, int]:
    table = out[out.index("Job stats:") :].split("\n\n")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh clone's files: the workflow plus the checkout-root profile links, as committed."""
    dest = copy_workflow(tmp_path_factory.mktemp("typed") / "trainrelay")
    for name in PROFILES:
        os.symlink(os.readlink(REPO / name), dest / name)
    return dest


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A HOME whose user-wide Snakemake config folder already has a profile named `local`."""
    home = tmp_path_factory.mktemp("home")
    user_local = home / ".config" / "snakemake" / "local"
    user_local.mkdir(parents=True)
    (user_local / "config.yaml").write_text(USER_PROFILE)
    return home


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SNAKEMAKE_", "TRAINRELAY_"))}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        PYTHONHASHSEED="0",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        **extra,
    )
    return env


def typed(checkout: Path, home: Path, command: str, **extra: str) -> str:
    """Run one command line as a user types it (``snakemake`` = this venv's) in the checkout."""
    argv = command.split()
    assert argv[0] == "snakemake"
    proc = subprocess.run(
        [SNAKEMAKE, *argv[1:]],
        cwd=checkout,
        capture_output=True,
        text=True,
        env=env_for(home, **extra),
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{command} failed ({proc.returncode}):\n{out[-4000:]}"
    assert "7777" not in out and "userwide" not in out, "the user-wide profile `local` was read"
    return out


# --- the profiles resolve from the checkout root, and nowhere else --------------------------------


def test_root_names_are_links_to_profiles() -> None:
    for name in PROFILES:
        link = REPO / name
        assert link.is_symlink() and os.readlink(link) == f"profiles/{name}", name
        assert (link / "config.yaml").is_file(), name


def test_user_wide_profile_named_local_is_neither_used_nor_changed(checkout: Path, home: Path) -> None:
    user_dir = home / ".config" / "snakemake"
    before = {p: p.read_bytes() for p in user_dir.rglob("*") if p.is_file()}
    # The control: outside the checkout, Snakemake's own lookup finds the user-wide profile, so
    # this HOME would capture `--profile local` if the checkout did not provide one.
    lookup = "from snakemake.cli import get_profile_dir; print(get_profile_dir('local')[1])"
    outside = subprocess.run(
        [sys.executable, "-c", lookup],
        cwd=home,
        env=env_for(home),
        capture_output=True,
        text=True,
        check=True,
    )
    assert outside.stdout.strip() == str(user_dir / "local" / "config.yaml")
    inside = subprocess.run(
        [sys.executable, "-c", lookup],
        cwd=checkout,
        env=env_for(home),
        capture_output=True,
        text=True,
        check=True,
    )
    assert inside.stdout.strip() == "local/config.yaml"

    out = typed(checkout, home, "snakemake --profile local -j1 -n")
    assert "Using profiles local and workflow specific profile profiles/default" in out
    assert {p: p.read_bytes() for p in user_dir.rglob("*") if p.is_file()} == before


# --- each environment profile, as typed (dry runs) ------------------------------------------------


def test_profile_local(checkout: Path, home: Path) -> None:
    out = typed(checkout, home, "snakemake --profile local -j1 -n")
    assert "Using profiles local and workflow specific profile profiles/default" in out
    jobs = job_table(out)
    assert jobs["all"] == 1 and jobs["train_forecaster"] == 1 and jobs["report"] == 1
    blocks = job_blocks(out)
    # profiles/local's default-resources (Snakemake's own default would be 1000) and the demo run
    assert "mem_mb=2000" in blocks["environment"]
    assert "results/demo/environment.json" in blocks["environment"]
    assert "This was a dry-run" in out


def test_profile_colab(checkout: Path, home: Path, tmp_path: Path) -> None:
    drive = tmp_path / "drive"
    out = typed(checkout, home, "snakemake --profile colab -j1 -n", TRAINRELAY_DRIVE_ROOT=str(drive))
    assert "Using profiles colab and workflow specific profile profiles/default" in out
    assert (
        f"output: {drive}/results/demo/environment.json (send to storage)" in job_blocks(out)["environment"]
    )
    assert job_table(out)["all"] == 1


def test_profile_runpod(checkout: Path, home: Path) -> None:
    out = typed(checkout, home, "snakemake --profile runpod -j1 -n")
    assert "Using profiles runpod and workflow specific profile profiles/default" in out
    blocks = job_blocks(out)
    assert "mem_mb=4000" in blocks["environment"]  # profiles/runpod's default-resources
    assert "gpu=1" in blocks["embeddings"]  # device: cuda from the profile
    assert job_table(out)["all"] == 1


def test_profile_slurm(checkout: Path, home: Path) -> None:
    out = typed(checkout, home, "snakemake --profile slurm -j 8 -n", TRAINRELAY_SLURM_PARTITION="gpu-test")
    assert "Using profiles slurm and workflow specific profile profiles/default" in out
    blocks = job_blocks(out)
    # profiles/slurm's default-resources reach the jobs: profiles/default does not override them
    assert "slurm_partition=gpu-test" in blocks["environment"] and "runtime=120" in blocks["environment"]
    assert job_table(out)["all"] == 1


def test_profile_runpod_s3_resolves(checkout: Path, home: Path) -> None:
    """runpod-s3 needs a reachable S3 endpoint even for a dry run (tests/test_runpod_s3.py runs it
    against a local server); here only that the bare name reaches the profile."""
    lookup = "from snakemake.cli import get_profile_dir; print(get_profile_dir('runpod-s3')[1])"
    proc = subprocess.run(
        [sys.executable, "-c", lookup],
        cwd=checkout,
        env=env_for(home),
        capture_output=True,
        text=True,
        check=True,
    )
    assert (checkout / proc.stdout.strip()).resolve() == (
        checkout / "profiles/runpod-s3/config.yaml"
    ).resolve()


# --- the report target and Snakemake's report ----------------------------------------------------


@pytest.mark.parametrize("command", ["snakemake report -n", "snakemake -j1 report -n"])
def test_report_target_with_and_without_j(checkout: Path, home: Path, command: str) -> None:
    out = typed(checkout, home, command)
    assert "Using workflow specific profile profiles/default" in out
    jobs = job_table(out)
    assert jobs["report"] == 1 and "all" not in jobs and "validate" not in jobs


def test_a_run_without_j_and_snakemake_report(checkout: Path, home: Path, tmp_path: Path) -> None:
    """Without -j a real run takes profiles/default's jobs: 1 (Snakemake would otherwise stop with
    "cores have to be specified"); `snakemake --report` then writes report.html."""
    write_config(checkout, {"until": "embeddings", "device": "cpu"}, name="typed.yaml")
    out = typed(checkout, home, "snakemake --configfile typed.yaml")
    assert "Provided cores: 1 " in out and "cores have to be specified" not in out
    assert (checkout / "results/tiny/embeddings/text_embeddings.parquet").is_file()
    out = typed(checkout, home, "snakemake --report --configfile typed.yaml")
    assert "Report created" in out
    assert (checkout / "report.html").stat().st_size > 10_000


# --- Snakemake idioms in the rules (req 8) --------------------------------------------------------

PARSE = """
import json
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.io import is_flagged
from snakemake.settings.types import OutputSettings, ResourceSettings

def flagged(rule, flag):
    return sorted(n for n, f in rule.output._allitems() if n and is_flagged(f, flag))

with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
    wf = api.workflow(resource_settings=ResourceSettings(), snakefile=Path("Snakefile"))._workflow
    print(json.dumps({
        rule.name: {
            "local": rule.name in wf._localrules,
            "group": rule._group,
            "resources": sorted(str(name) for name in rule.resources if not str(name).startswith("_")),
            "ensure": sorted(n for n, f in rule.output._allitems()
                             if n and is_flagged(f, "ensure") and f.flags["ensure"].get("non_empty")),
            "protected": flagged(rule, "protected"),
        }
        for rule in wf.rules
    }))
"""


@pytest.fixture(scope="module")
def parsed(checkout: Path, home: Path) -> dict[str, dict]:
    proc = subprocess.run(
        [sys.executable, "-c", PARSE],
        cwd=checkout,
        env=env_for(home),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cheap_rules_are_local(parsed: dict[str, dict]) -> None:
    local = {name for name, rule in parsed.items() if rule["local"]}
    assert local == {"train_policy", "tune", "report", "validate", "dashboard", "release"}


def test_model_and_engine_files_must_be_non_empty(parsed: dict[str, dict]) -> None:
    ensured = {name: rule["ensure"] for name, rule in parsed.items() if rule["ensure"]}
    assert ensured == {
        "train_forecaster": ["checkpoint"],
        "train_policy_fold": ["policy"],
        "train_policy_ablation": ["policy"],
        "train_policy": ["policy"],
        "export_onnx": ["forecaster", "policy"],
    }


def test_released_bundle_is_protected_and_working_bundle_is_not(parsed: dict[str, dict]) -> None:
    assert {name for name, rule in parsed.items() if rule["protected"]} == {"release"}


def test_gpu_rules_use_the_standard_gpu_resource(parsed: dict[str, dict]) -> None:
    gpu_rules = {name for name, rule in parsed.items() if "gpu" in rule["resources"]}
    assert gpu_rules == {"embeddings", "train_forecaster", "precompute", "tune_worker", "benchmark"}
    names = {r for rule in parsed.values() for r in rule["resources"]}
    assert not names & {"nvidia_gpu", "gpus", "gres", "gpu_count"}, names


def test_export_and_benchmark_are_one_group_job(parsed: dict[str, dict], checkout: Path, home: Path) -> None:
    assert {name for name, rule in parsed.items() if rule["group"]} == {"export_onnx", "benchmark"}
    assert parsed["export_onnx"]["group"] == parsed["benchmark"]["group"] == "engines"
    out = typed(checkout, home, "snakemake --profile slurm -j 8 -n")
    members = []
    for line in out[out.index("Group job engines") :].splitlines()[1:]:
        if line.startswith("[") or line.startswith("Group job"):
            break  # the next job outside the group
        members += re.findall(r"^    (?:local)?rule (\w+):$", line)
    assert sorted(members) == ["benchmark", "export_onnx"], out[-3000:]


def test_an_empty_onnx_file_fails_the_export_job(home: Path, tmp_path: Path) -> None:
    """ensure(non_empty=True) in action: export_onnx with a stand-in script that writes empty files
    (the real one never does; this is the check behind it) fails, and leaves no empty model. Every
    upstream file is a placeholder of one old mtime, so with mtime triggers only export_onnx runs."""
    work = copy_workflow(tmp_path / "wf")
    (work / "scripts" / "export_onnx.py").write_text(
        "from pathlib import Path\nfor f in snakemake.output:\n    Path(f).write_bytes(b'')\n"
    )
    write_config(work, {"device": "cpu"}, name="t.yaml")
    target = "results/tiny/models/forecaster.onnx"
    base = [SNAKEMAKE, "-j1", "--rerun-triggers", "mtime", "--configfile", "t.yaml"]
    summary = subprocess.run(
        [*base, "--summary", "--", target],
        cwd=work,
        env=env_for(home),
        capture_output=True,
        text=True,
        timeout=120,
    )
    rows = [line.split("\t") for line in summary.stdout.splitlines()[1:] if "\t" in line]
    upstream = [row[0] for row in rows if row[2] != "export_onnx"]
    assert len(upstream) > 10, summary.stdout + summary.stderr
    for rel in upstream:
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_bytes(b"x")
        os.utime(work / rel, (1_700_000_000, 1_700_000_000))
    proc = subprocess.run(
        [*base, "--", target], cwd=work, env=env_for(home), capture_output=True, text=True, timeout=300
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert re.findall(r"^(?:local)?rule (\w+):$", out, re.M) == ["export_onnx"], out[-3000:]
    assert "Detected unexpected empty output files" in out, out[-3000:]
    assert not (work / target).exists()
