"""The RunPod S3 mode, run for real: the tiny workflow reads and writes through the `s3` storage plugin.

The S3 server is moto in server mode on 127.0.0.1 (tests/s3_server.py) with request authentication
switched on, standing in for https://s3api-<datacenter>.runpod.io/ with the network volume id as the
bucket. Endpoint and keys reach Snakemake only as SNAKEMAKE_STORAGE_S3_* environment variables, as on
a pod. Every file target of the run must end up in the bucket under the profile's prefix, and a wrong
key must end the run with one line naming the variable.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, copy_workflow, run_snakemake, write_config
from trainrelay.errors import ConfigError
from trainrelay.platforms.runpod import (
    ACCESS_KEY_VAR,
    ENDPOINT_VAR,
    REGION_VAR,
    S3_PREFIX,
    S3_ROOT,
    SECRET_KEY_VAR,
    VOLUME_VAR,
    check_s3_access,
)

pytest.importorskip("moto.server", reason="moto[server] is not installed (run make setup)")
pytest.importorskip("snakemake_storage_plugin_s3", reason="snakemake-storage-plugin-s3 is not installed")

from tests.s3_server import S3Server, s3_server
from trainrelay.deep_merge import deep_merge

# The last stage the S3 run builds; raise it as later stages are wired into the workflow.
UNTIL = "embeddings"
VOLUME = "tr1volume2test"  # stands in for a RunPod network volume id (the bucket)
PROFILE = ["--workflow-profile", "runpod-s3"]
# The profile pins device=cuda for GPU pods; this machine has none, and a --config replaces it.
CPU = ["--config", "device=cpu"]
# The stage targets of UNTIL (rules/common.smk stage_targets), which the bucket must hold at least.
CORE_TARGETS = [
    "results/tiny/environment.json",
    "results/tiny/manifest/base_manifest.parquet",
    "results/tiny/segments/features.parquet",
    "results/tiny/embeddings/text_embeddings.parquet",
]
ANNOUNCED = re.compile(r"^\s+(output|log|benchmark): (.+)$")


def _env(server: S3Server, **changes: str | None) -> dict[str, str]:
    env = {**server.env(), VOLUME_VAR: VOLUME}
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _snakemake(workdir: Path, env: dict[str, str], *args: str, check: bool = True) -> str:
    with pytest.MonkeyPatch.context() as patch:
        for name in (ENDPOINT_VAR, ACCESS_KEY_VAR, SECRET_KEY_VAR, REGION_VAR, VOLUME_VAR):
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        proc = run_snakemake(
            workdir, *PROFILE, *args, "--configfile", "test.yaml", *CPU, check=check, timeout=600
        )
    return proc.stdout + proc.stderr


def planned_keys(dry_run: str) -> set[str]:
    """Bucket keys of every output, log and benchmark file the dry run announces."""
    keys = set()
    prefix = f"s3://{VOLUME}/"
    for line in dry_run.splitlines():
        match = ANNOUNCED.match(line)
        if not match:
            continue
        for item in match.group(2).split(", "):
            url = item.split(" (")[0].strip()
            assert url.startswith(prefix), f"not in the volume's bucket: {url}"
            keys.add(url[len(prefix) :])
    return keys


@dataclass
class S3Run:
    server: S3Server
    workdir: Path
    planned: set[str]
    log: str
    second: str


@pytest.fixture(scope="module")
def s3_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Run]:
    workdir = copy_workflow(tmp_path_factory.mktemp("runpod_s3") / "wf")
    write_config(workdir, {"until": UNTIL}, name="test.yaml")
    with s3_server(VOLUME) as server:
        planned = planned_keys(_snakemake(workdir, _env(server), "-n"))
        log = _snakemake(workdir, _env(server))
        second = _snakemake(workdir, _env(server), "-n")
        yield S3Run(server, workdir, planned, log, second)


def test_every_target_is_in_the_bucket(s3_run: S3Run) -> None:
    from trainrelay.data.acquire import raw_targets

    in_bucket = s3_run.server.keys()
    config = deep_merge(
        yaml.safe_load((REPO / "config" / "config.yaml").read_text()),
        yaml.safe_load((s3_run.workdir / "test.yaml").read_text()),
    )
    raw = {f"{S3_ROOT}/data/raw/tiny/synthetic/{rel}" for rel in raw_targets(config)}
    core = {f"{S3_ROOT}/{target}" for target in CORE_TARGETS}
    assert core | raw <= s3_run.planned
    assert set(in_bucket) == s3_run.planned  # every announced file, and nothing else
    empty = [key for key, size in in_bucket.items() if size == 0 and "/logs/" not in key]
    assert not empty, empty
    assert "100%) done" in s3_run.log


def test_manifest_in_the_bucket_matches_the_raw_objects(s3_run: S3Run) -> None:
    import polars as pl

    client = s3_run.server.client()

    def fetch(key: str) -> bytes:
        return client.get_object(Bucket=VOLUME, Key=key)["Body"].read()

    manifest = pl.read_parquet(io.BytesIO(fetch(f"{S3_ROOT}/results/tiny/manifest/base_manifest.parquet")))
    assert manifest.height == 4  # klines 3m + 15m, funding, events of one symbol and month
    for path, sha, size in manifest.select("path", "sha256", "bytes").iter_rows():
        assert path.startswith("data/raw/tiny/synthetic/"), path  # the logical path, not the local copy's
        body = fetch(f"{S3_ROOT}/{path}")
        assert (hashlib.sha256(body).hexdigest(), len(body)) == (sha, size), path


def test_second_run_finds_everything_in_the_bucket(s3_run: S3Run) -> None:
    assert "Nothing to be done" in s3_run.second


def _one_line_failure(output: str, *names: str) -> str:
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("trainrelay: error:")]
    assert len(errors) == 1, output[-3000:]
    for name in names:
        assert name in errors[0], errors[0]
    return errors[0]


def test_wrong_secret_ends_in_one_line(s3_run: S3Run, tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    write_config(workdir, {"until": UNTIL}, name="test.yaml")
    env = _env(s3_run.server, **{SECRET_KEY_VAR: "not-the-secret"})
    out = _snakemake(workdir, env, check=False)  # a real run; `-n` reads the same Snakefile first
    line = _one_line_failure(out, ACCESS_KEY_VAR, SECRET_KEY_VAR, "403")
    assert "not-the-secret" not in line
    staged = [p for p in (workdir / ".snakemake" / "storage").rglob("*") if p.is_file()]
    assert not staged, staged  # stopped before anything was read or written


@pytest.mark.parametrize(
    ("changes", "names"),
    [
        ({VOLUME_VAR: None}, [VOLUME_VAR, "not set"]),
        ({VOLUME_VAR: "no-such-volume"}, [VOLUME_VAR, "does not exist"]),
        ({ACCESS_KEY_VAR: None, SECRET_KEY_VAR: None}, [ACCESS_KEY_VAR, "not set"]),
        # One key without the other: boto's PartialCredentialsError unless the profile names both.
        ({SECRET_KEY_VAR: None}, [SECRET_KEY_VAR, "not set"]),
        ({ACCESS_KEY_VAR: None}, [ACCESS_KEY_VAR, "not set"]),
    ],
)
def test_missing_settings_end_in_one_line(s3_run: S3Run, tmp_path: Path, changes: dict, names: list) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    write_config(workdir, {"until": UNTIL}, name="test.yaml")
    out = _snakemake(workdir, _env(s3_run.server, **changes), "-n", check=False)
    _one_line_failure(out, *names)


def test_check_s3_access_against_the_server(s3_run: S3Run) -> None:
    server = s3_run.server
    good = _env(server)
    target = check_s3_access(f"s3://{VOLUME}/{S3_ROOT}", good)
    assert (target.bucket, target.root, target.endpoint) == (VOLUME, S3_ROOT, server.endpoint_url)
    with pytest.raises(
        ConfigError, match=f"refused the key \\(403\\): check {ACCESS_KEY_VAR} and {SECRET_KEY_VAR}"
    ):
        check_s3_access(f"s3://{VOLUME}/x", {**good, ACCESS_KEY_VAR: "AKIAUNKNOWN000000000"})
    with pytest.raises(ConfigError, match=f"bucket 'other' at .* does not exist: {VOLUME_VAR} must be"):
        check_s3_access("s3://other/x", good)


def test_check_s3_access_settings_without_a_server() -> None:
    env = {
        ENDPOINT_VAR: "https://s3api-us-ks-2.runpod.io/",
        ACCESS_KEY_VAR: "user_x",
        SECRET_KEY_VAR: "rps_x",
        REGION_VAR: "us-east-1",
    }
    # RunPod signs with the datacenter id as region; the plugin's default would be refused.
    with pytest.raises(
        ConfigError, match=f"{REGION_VAR}=us-east-1 does not match .* export {REGION_VAR}=US-KS-2"
    ):
        check_s3_access("s3://vol/trainrelay", env)
    with pytest.raises(ConfigError, match=f"variable {VOLUME_VAR} is not set"):
        check_s3_access(S3_PREFIX, env)  # as Snakemake leaves it when the variable is unset
    with pytest.raises(ConfigError, match=f"{ENDPOINT_VAR} is not set: export it"):
        check_s3_access("s3://vol/t", {k: v for k, v in env.items() if k != ENDPOINT_VAR})
    with pytest.raises(ConfigError, match="is not s3://<volume-id>/<folder>"):
        check_s3_access("gs://vol/trainrelay", env)
    with pytest.raises(ConfigError, match=f"{ENDPOINT_VAR}='s3api.runpod.io' is not a URL"):
        check_s3_access("s3://vol/t", {**env, ENDPOINT_VAR: "s3api.runpod.io"})
    closed = {**env, ENDPOINT_VAR: "http://127.0.0.1:9/", REGION_VAR: ""}
    with pytest.raises(ConfigError, match=f"cannot reach {ENDPOINT_VAR}=http://127.0.0.1:9/"):
        check_s3_access("s3://vol/t", closed, timeout_s=2)


def test_profiles_hold_no_credentials_or_machine_paths() -> None:
    for name in ("runpod", "runpod-s3"):
        text = (REPO / "profiles" / name / "config.yaml").read_text()
        values = yaml.safe_load(text)
        assert values["executor"] == "local" and values["resources"] == {"gpu": 1}
        assert not {"cores", "jobs"} & set(values), "the command line's -jN must hold"
        body = "\n".join(line.split("#")[0] for line in text.splitlines())  # values, not comments
        # The keys may appear only as references to their environment variables.
        refs = {
            f'storage-s3-access-key: "${ACCESS_KEY_VAR}"',
            f'storage-s3-secret-key: "${SECRET_KEY_VAR}"',
        }
        body = "\n".join(line for line in body.splitlines() if line.strip() not in refs)
        assert not re.search(
            r"(/home/|/Users/|/root/|AKIA|user_\w{6,}|rps_\w{6,}|secret|access.key)", body, re.I
        )
    s3 = yaml.safe_load((REPO / "profiles" / "runpod-s3" / "config.yaml").read_text())
    assert s3["default-storage-provider"] == "s3"
    assert s3["default-storage-prefix"] == S3_PREFIX == f"s3://${VOLUME_VAR}/{S3_ROOT}"
    keys = (s3["storage-s3-access-key"], s3["storage-s3-secret-key"])
    assert keys == (f"${ACCESS_KEY_VAR}", f"${SECRET_KEY_VAR}")


def test_profile_dry_run_on_the_volume(tmp_path: Path) -> None:
    """profiles/runpod (files on the volume, no storage plugin) plans every data stage, each GPU
    rule with gpu=1, under the device the profile pins."""
    workdir = copy_workflow(tmp_path / "wf")
    write_config(workdir, {"until": UNTIL}, name="test.yaml")
    proc = run_snakemake(workdir, "-n", "--workflow-profile", "runpod", "--configfile", "test.yaml")
    out = proc.stdout + proc.stderr
    assert "Using workflow specific profile profiles/runpod for setting default command line arguments" in out
    jobs = re.findall(r"^(?:local)?rule (\w+):", out, re.M)
    assert set(jobs) == {"acquire", "manifest", "segments", "environment", "embeddings", "all"}
    embeddings = out[out.index("rule embeddings:") :].split("\n\n")[0]
    assert "gpu=1" in embeddings
