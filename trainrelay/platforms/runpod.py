"""RunPod: the S3 access preflight and the upload plan (what to send, what never to send, in which order).

Two ways to run on RunPod (docs/runpod.md): ``profiles/runpod`` on a pod, files in a clone on the
network volume at /workspace; ``profiles/runpod-s3``, every input and output read and written through
RunPod's S3-compatible API (bucket = network volume id) by the ``s3`` storage plugin, whose endpoint and
keys come only from ``SNAKEMAKE_STORAGE_S3_*`` environment variables.

:func:`check_s3_access` is the S3 preflight: the storage plugin meets a wrong key with a long traceback
(a 403 inside its existence check), so the workflow calls this first and stops with one line naming
the variable to fix. :func:`build_plan` and :func:`render_plan` make the checklist that
``python -m trainrelay runpod-plan`` prints, from the config and the files actually on disk.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from trainrelay.data.acquire import raw_root, raw_targets
from trainrelay.errors import ConfigError
from trainrelay.platforms.packing import VOLUME_MIN_FILE_BYTES, tar_bytes, volume_bytes
from trainrelay.report.cost import duration, estimate, money, price_from_config

ENDPOINT_VAR = "SNAKEMAKE_STORAGE_S3_ENDPOINT_URL"
ACCESS_KEY_VAR = "SNAKEMAKE_STORAGE_S3_ACCESS_KEY"
SECRET_KEY_VAR = "SNAKEMAKE_STORAGE_S3_SECRET_KEY"
REGION_VAR = "SNAKEMAKE_STORAGE_S3_REGION"
VOLUME_VAR = "TRAINRELAY_RUNPOD_VOLUME_ID"
DATACENTER_VAR = "TRAINRELAY_RUNPOD_DATACENTER"
# Where the clone lives: on the pod /workspace/<S3_ROOT>, through the S3 API s3://<volume>/<S3_ROOT>/.
S3_ROOT = "trainrelay"
POD_CLONE = f"/workspace/{S3_ROOT}"
# profiles/runpod-s3's default-storage-prefix (Snakemake expands $VARS in profile values).
S3_PREFIX = f"s3://${VOLUME_VAR}/{S3_ROOT}"

# Datacenters whose network volumes have the S3-compatible API, as listed on RunPod's "S3-compatible
# API" page (runpod/docs storage/s3-api.mdx at commit a900806, 2026-08-20). The list grows; the
# console's "S3 Compatible" filter on the Storage page is the authority at volume-creation time.
S3_DATACENTERS = (
    "EU-CZ-1",
    "EU-RO-1",
    "EUR-IS-1",
    "EUR-NO-1",
    "US-CA-2",
    "US-GA-2",
    "US-IL-1",
    "US-KS-2",
    "US-MD-1",
    "US-MO-1",
    "US-MO-2",
    "US-NC-1",
    "US-NC-2",
    "US-NE-1",
    "US-WA-1",
)
S3_LIST_SOURCE = "docs.runpod.io/storage/s3-api (runpod/docs a900806, 2026-08-20)"
_RUNPOD_HOST = re.compile(r"^s3api-([a-z0-9-]+)\.runpod\.io$")


def s3_endpoint(datacenter: str) -> str:
    return f"https://s3api-{datacenter.lower()}.runpod.io/"


def has_s3_api(datacenter: str) -> bool:
    return datacenter.upper() in S3_DATACENTERS


# --------------------------------------------------------------------------------------------- preflight


@dataclass(frozen=True)
class S3Target:
    endpoint: str
    bucket: str
    root: str  # key prefix inside the bucket ('' for the bucket root)
    region: str | None


def parse_prefix(prefix: str | None) -> tuple[str, str]:
    """``s3://bucket/root`` -> (bucket, root); an unset variable left as ``$NAME`` is named."""
    text = (prefix or "").strip()
    if not text:
        raise ConfigError(
            "default-storage-prefix is empty: use `--workflow-profile runpod-s3` and "
            f"export {VOLUME_VAR}=<network volume id>"
        )
    unexpanded = re.search(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", text)
    if unexpanded:
        raise ConfigError(
            f"default-storage-prefix '{text}': environment variable {unexpanded.group(1)} is not set; "
            f"export it (the network volume id is the bucket)"
        )
    parsed = urlparse(text)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ConfigError(f"default-storage-prefix '{text}' is not s3://<volume-id>/<folder>")
    return parsed.netloc, parsed.path.strip("/")


def _required(env: Mapping[str, str], name: str, hint: str) -> str:
    value = (env.get(name) or "").strip()
    if not value:
        raise ConfigError(f"{name} is not set: export it ({hint}); keys never go into a config or profile")
    return value


def s3_target(prefix: str | None, env: Mapping[str, str] | None = None) -> tuple[S3Target, str, str]:
    """Settings of the S3 mode from the prefix and the environment, checked without a network call."""
    env = os.environ if env is None else env
    bucket, root = parse_prefix(prefix)
    endpoint = _required(
        env, ENDPOINT_VAR, "https://s3api-<datacenter>.runpod.io/ of the volume's datacenter"
    )
    parsed = urlparse(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(
            f"{ENDPOINT_VAR}='{endpoint}' is not a URL; use https://s3api-<datacenter>.runpod.io/"
        )
    access = _required(env, ACCESS_KEY_VAR, "the S3 API key's access key, user_... in RunPod's console")
    secret = _required(env, SECRET_KEY_VAR, "the S3 API key's secret, rps_..., shown once at creation")
    region = (env.get(REGION_VAR) or "").strip() or None
    runpod = _RUNPOD_HOST.match(parsed.hostname)
    if runpod:
        # RunPod signs with the datacenter id as the region; the plugin's default us-east-1 is refused.
        datacenter = runpod.group(1).upper()
        if (region or "").upper() != datacenter:
            raise ConfigError(
                f"{REGION_VAR}={region or '(unset)'} does not match the endpoint's datacenter: "
                f"export {REGION_VAR}={datacenter}"
            )
    return S3Target(endpoint, bucket, root, region), access, secret


def check_s3_access(
    prefix: str | None, env: Mapping[str, str] | None = None, timeout_s: float = 20.0
) -> S3Target:
    """Fail with one line unless the bucket behind ``prefix`` answers to the keys in the environment.

    Called by the workflow before any storage query when ``default-storage-provider`` is ``s3``.
    One HeadBucket request (supported by RunPod's S3 API) checks endpoint, key, secret and bucket.
    """
    target, access, secret = s3_target(prefix, env)
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
    except ImportError as exc:  # only the S3 mode needs boto3 (make setup installs it)
        raise ConfigError(
            f"the s3 storage mode needs boto3 ({exc.name} missing): "
            "run `make setup` (envs/requirements-cpu.txt pins boto3 and the s3 storage plugin)"
        ) from exc
    client = boto3.client(
        "s3",
        endpoint_url=target.endpoint,
        region_name=target.region or "us-east-1",
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        config=Config(connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 2}),
    )
    where = f"bucket '{target.bucket}' at {target.endpoint}"
    try:
        client.head_bucket(Bucket=target.bucket)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied") or status == 403:
            raise ConfigError(
                f"{where} refused the key (403): check {ACCESS_KEY_VAR} and {SECRET_KEY_VAR} "
                "(a RunPod S3 API key of the account that owns the volume)"
            ) from None
        if code in ("404", "NoSuchBucket") or status == 404:
            raise ConfigError(
                f"{where} does not exist: {VOLUME_VAR} must be the network volume id, and {ENDPOINT_VAR} "
                "the endpoint of the volume's datacenter"
            ) from None
        raise ConfigError(f"{where}: S3 error {code or status}; check {ENDPOINT_VAR}") from None
    except EndpointConnectionError:
        raise ConfigError(
            f"cannot reach {ENDPOINT_VAR}={target.endpoint}; check the URL and network"
        ) from None
    except BotoCoreError as exc:
        raise ConfigError(f"{where}: {type(exc).__name__}; check {ENDPOINT_VAR}") from None
    return target


# ------------------------------------------------------------------------------------------------ plan

# Never sent to the pod: (path relative to the checkout, why).
NEVER_SEND = (
    (".venv", "built on the pod by `make setup` (CUDA wheels, not this machine's)"),
    (".snakemake", "Snakemake's local metadata and locks; the pod keeps its own"),
    (".git", "history and objects: clone on the pod, or send `git archive HEAD` (tracked files only)"),
    ("data/raw", "loose small files (64 KB minimum each on a network volume): send the packed tar instead"),
    ("results", "regenerated on the pod; only the optional checkpoints below are worth sending"),
    ("reports", "rendered output, regenerated by the report rules"),
)
CACHE_NAMES = ("__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", ".ipynb_checkpoints")
# Files that hold credentials by convention; none of them may travel with the code.
SECRET_PATTERNS = (
    re.compile(r"(^|/)\.env(\..+)?$"),
    re.compile(r"(^|/)\.netrc$"),
    re.compile(r"(^|/)\.aws/"),
    re.compile(r"\.(pem|key|p12)$"),
    re.compile(r"(^|/)credentials[^/]*$", re.IGNORECASE),
    re.compile(r"(^|/)\.?wandb/settings$"),
)
_SKIP_WALK = {".venv", ".git", ".snakemake", *CACHE_NAMES, "node_modules"}


@dataclass(frozen=True)
class Item:
    what: str
    path: str
    files: int | None  # None: not measurable here (absent)
    bytes: int | None
    note: str = ""


@dataclass(frozen=True)
class Step:
    title: str
    commands: tuple[str, ...]
    verify: str


@dataclass
class RunpodPlan:
    run: str
    source: str
    until: str
    datacenter: str | None
    s3_api: bool | None  # None: no datacenter given
    endpoint: str | None
    send: list[Item] = field(default_factory=list)
    never: list[Item] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    send_bytes: int = 0
    volume_gb_min: int = 0
    # what the run should take and cost, from an earlier run of the same preset (trainrelay.report.cost)
    estimate: dict[str, Any] | None = None
    estimate_note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tree(path: Path) -> tuple[int, int]:
    """(files, bytes) under ``path`` (a file or a folder); symlinks are not followed."""
    if path.is_file():
        return 1, path.stat().st_size
    files = size = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            item = Path(dirpath) / name
            if not item.is_symlink():
                files += 1
                size += item.stat().st_size
    return files, size


def _tracked_files(root: Path) -> list[str] | None:
    """Files git tracks in ``root`` (what a clone or `git archive` carries); None outside a git checkout."""
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z"], capture_output=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [name for name in out.decode("utf-8", "surrogateescape").split("\0") if name]


def _code_item(root: Path) -> Item:
    tracked = _tracked_files(root)
    if tracked is None:
        files = size = 0
        for dirpath, dirnames, filenames in os.walk(root):
            rel_dir = Path(dirpath).relative_to(root).as_posix()
            dirnames[:] = [
                d
                for d in dirnames
                if d not in _SKIP_WALK and f"{rel_dir}/{d}".lstrip("./") not in {"data", "results", "reports"}
            ]
            for name in filenames:
                files += 1
                size += (Path(dirpath) / name).stat().st_size
        return Item("code", ".", files, size, "not a git checkout: every file outside the never-send list")
    present = [root / name for name in tracked if (root / name).is_file()]
    return Item(
        "code",
        ".",
        len(present),
        sum(p.stat().st_size for p in present),
        "the files git tracks: `git clone` on the pod, or `git archive --format=tar HEAD -o code.tar`",
    )


def _raw_items(root: Path, config: dict[str, Any]) -> tuple[list[Item], list[str]]:
    source = config["source"]
    expected = len(raw_targets(config))
    raw_rel = raw_root(config)
    raw = root / raw_rel
    items: list[Item] = []
    notes: list[str] = []
    if raw.is_dir() and any(raw.iterdir()):
        entries = []
        for dirpath, _, filenames in os.walk(raw):
            for name in filenames:
                path = Path(dirpath) / name
                if not name.startswith(".tmp-") and path.is_file():
                    entries.append((path.relative_to(raw).as_posix(), path.stat().st_size))
        packed = tar_bytes(entries)
        loose = volume_bytes(size for _, size in entries)
        items.append(
            Item(
                "raw data, packed",
                f"raw-{source}.tar",
                1,
                packed,
                f"{len(entries)} files in {raw_rel} ({expected} expected by the config); "
                f"loose they would take {_human(loose)} of volume (64 KB minimum each), packed "
                f"{_human(volume_bytes([packed]))}",
            )
        )
    elif source == "synthetic":
        notes.append(
            f"raw data: source synthetic, generated on the pod by acquire ({expected} files); send none"
        )
    elif source == "binance":
        notes.append(
            f"raw data: {raw_rel} is absent here, so acquire downloads {expected} files on the pod "
            "(pods have internet); or run acquire here and pack"
        )
    if source == "files" or (config.get("events") or {}).get("path"):
        for key, value in (
            ("files.path", (config.get("files") or {}).get("path")),
            ("events.path", (config.get("events") or {}).get("path")),
        ):
            if not value or (key == "files.path" and source != "files"):
                continue
            path = Path(value) if Path(value).is_absolute() else root / value
            if Path(value).is_absolute() or ".." in Path(value).parts:
                notes.append(
                    f"{key} '{value}' lies outside the checkout and will not exist on the pod: copy it under "
                    "data/ and set a relative path"
                )
            if path.is_file():
                items.append(
                    Item(f"input file ({key})", str(value), 1, path.stat().st_size, "same relative path")
                )
            else:
                items.append(Item(f"input file ({key})", str(value), None, None, "not found here"))
    return items, notes


def _optional_state(root: Path, config: dict[str, Any]) -> list[Item]:
    """Mid-training state (the training checkpoints kept outside the rules' outputs), if any here.

    Finished outputs are not worth sending: the pod rebuilds the stages before them, which makes
    them out of date. The state is resumed when its config fingerprint matches.
    """
    state = config.get("checkpoint", {}).get("state_dir") or f"results/{config['run']}/state"
    path = Path(state) if Path(state).is_absolute() else root / state
    if not path.is_dir():
        return []
    files, size = _tree(path)
    return [Item("optional: training state", state, files, size, "send to resume an interrupted training")]


def _never_items(root: Path) -> list[Item]:
    items = []
    for rel, why in NEVER_SEND:
        path = root / rel
        if path.exists():
            files, size = _tree(path)
            items.append(Item(rel, rel, files, size, why))
        else:
            items.append(Item(rel, rel, None, None, why))
    caches = 0
    for _dirpath, dirnames, _ in os.walk(root):
        for name in list(dirnames):
            if name in CACHE_NAMES:
                caches += 1
                dirnames.remove(name)
            elif name in _SKIP_WALK:
                dirnames.remove(name)
    items.append(Item("caches", ", ".join(CACHE_NAMES), caches, None, "folders found; rebuilt on demand"))
    secrets = _secret_files(root)
    items.append(
        Item(
            "credentials",
            ", ".join(secrets) or ".env, .netrc, .aws/, *.pem, *.key, credentials*",
            len(secrets),
            None,
            "keys reach the pod only as environment variables (RunPod secrets), never as files",
        )
    )
    return items


def _secret_files(root: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_WALK)
        for name in sorted(filenames):
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if any(p.search(rel) for p in SECRET_PATTERNS):
                found.append(rel)
    return found


def _human(size: int | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _steps(plan: RunpodPlan, volume: str, config_files: list[str]) -> list[Step]:
    dc = plan.datacenter or "<DATACENTER>"
    endpoint = plan.endpoint or "https://s3api-<datacenter>.runpod.io/"
    aws = f"aws s3 --region {dc} --endpoint-url {endpoint}"

    raw_tar = f"raw-{plan.source}.tar"
    raw_dir = raw_root({"run": plan.run, "source": plan.source})
    has_raw = any(item.path == raw_tar for item in plan.send)
    configs = " ".join(f"--configfile {c}" for c in config_files)
    upload = ["git archive --format=tar HEAD -o code.tar   # or `git clone` on the pod and skip it"]
    if has_raw:
        upload.insert(0, f"python -m trainrelay pack {raw_dir} --out {raw_tar}")
        upload.append(f"{aws} cp {raw_tar} s3://{volume}/uploads/{raw_tar}")
        upload.append(f"{aws} cp {raw_tar}.sha256 s3://{volume}/uploads/{raw_tar}.sha256")
    upload.append(f"{aws} cp code.tar s3://{volume}/uploads/code.tar")
    for extra in config_files:
        upload.append(f"{aws} cp {extra} s3://{volume}/{S3_ROOT}/{extra}")
    if plan.s3_api is False:
        upload = [
            f"# {dc} has no S3 API: start a cheap CPU pod with the volume attached and use `runpodctl send`",
            *upload[:1],
        ]
    extract = (
        f"cd /workspace/uploads && sha256sum -c {raw_tar}.sha256" if has_raw else "ls -l /workspace/uploads",
        f"mkdir -p {POD_CLONE} && tar -xf /workspace/uploads/code.tar -C {POD_CLONE}",
    )
    unpack = (
        (
            f"cd {POD_CLONE} && .venv/bin/python -m trainrelay pack --unpack /workspace/uploads/{raw_tar} "
            f"--into {raw_dir}",
        )
        if has_raw
        else ()
    )
    snakemake = " ".join([".venv/bin/snakemake --workflow-profile runpod -j1", configs]).strip()
    return [
        Step(
            "create the network volume",
            (
                f"RunPod console > Storage > New Network Volume, filter 'S3 Compatible', datacenter {dc}, "
                f"size >= {plan.volume_gb_min} GB",
            ),
            f"with {VOLUME_VAR}, {DATACENTER_VAR} and the SNAKEMAKE_STORAGE_S3_* keys exported, "
            "`python -m trainrelay runpod-plan --check-s3` prints 'S3 access ok'",
        ),
        Step(
            "pack and upload",
            tuple(upload),
            f"`{aws} ls s3://{volume}/uploads/` lists them with the sizes above",
        ),
        Step(
            "start a GPU pod in the same datacenter, volume attached at /workspace",
            ("RunPod console > Pods > Deploy, Network Volume: this volume, a GPU type offered there",),
            "`nvidia-smi` shows the GPU; `df -h /workspace` shows the volume",
        ),
        Step("verify the upload on the pod, extract the code", extract, "sha256sum prints OK"),
        Step(
            "set up (caches on the volume)",
            (
                "export PIP_CACHE_DIR=/workspace/.cache/pip HF_HOME=/workspace/.cache/huggingface",
                f"cd {POD_CLONE} && make setup && make setup-gpu",
                *unpack,
            ),
            ".venv/bin/python -c 'import torch; assert torch.cuda.is_available()' exits 0"
            + ("; unpack prints the file count after checking every file's sha256" if has_raw else ""),
        ),
        Step(
            "preflight: environment with device cuda",
            (f"{snakemake} results/{plan.run}/environment.json",),
            f"results/{plan.run}/environment.json exists; a pod without a usable GPU stops with one line",
        ),
        Step(
            "dry run",
            (f"{snakemake} -n",),
            "the job list ends with `all`"
            + ("; acquire is absent (the raw data is unpacked)" if has_raw else ""),
        ),
        Step(
            "run",
            (f"nohup {snakemake} > run.log 2>&1 &",),
            f"run.log ends with '(100%) done'; results/{plan.run}/validation.json passes",
        ),
        Step(
            "fetch the reports, stop paying",
            (
                f"{aws} cp --recursive s3://{volume}/{S3_ROOT}/reports/{plan.run}/ reports/{plan.run}/",
                "RunPod console: terminate the pod (a stopped pod still bills its disks; "
                "the volume bills until deleted)",
            ),
            f"reports/{plan.run}/report.html opens here; no pod is left running",
        ),
    ]


def build_plan(
    root: str | os.PathLike[str],
    config: dict[str, Any],
    config_files: Iterable[str] = (),
    datacenter: str | None = None,
    volume_id: str | None = None,
    previous: str | os.PathLike[str] | None = None,
    price: Any = None,
) -> RunpodPlan:
    """The upload checklist and step order for ``config``, measured on the files under ``root``.

    The estimate comes from ``previous`` (a run folder), else ``root/results/<run>`` when it holds
    benchmark files (the last measured run of the same preset), at ``price``
    (:class:`trainrelay.report.cost.Price`, default the config's ``cost:``); without one it says so.
    """
    root = Path(root)
    config_files = list(config_files)
    dc = datacenter.upper() if datacenter else None
    plan = RunpodPlan(
        run=config["run"],
        source=config["source"],
        until=config["until"],
        datacenter=dc,
        s3_api=has_s3_api(dc) if dc else None,
        endpoint=s3_endpoint(dc) if dc and has_s3_api(dc) else None,
    )
    plan.send.append(_code_item(root))
    for name in config_files:
        path = root / name
        plan.send.append(
            Item(
                "config override",
                name,
                1 if path.is_file() else None,
                path.stat().st_size if path.is_file() else None,
                "not tracked by git: upload it next to the code",
            )
        )
    raw_items, raw_notes = _raw_items(root, config)
    plan.send.extend(raw_items)
    plan.send.extend(_optional_state(root, config))
    plan.never = _never_items(root)
    plan.notes.extend(raw_notes)
    plan.send_bytes = sum(item.bytes or 0 for item in plan.send)
    results = root / "results" / plan.run
    results_bytes = _tree(results)[1] if results.is_dir() else 0
    # Twice what is sent plus what a local run of the same config produced (the playbook's 2x rule);
    # the pod's .venv and caches come on top and are measured there with `du -sh`.
    plan.volume_gb_min = max(1, math.ceil(2 * (plan.send_bytes + results_bytes) / 1024**3))
    if results_bytes:
        plan.notes.append(
            f"results/{plan.run} here holds {_human(results_bytes)}: counted in the volume size"
        )
    venv = root / ".venv"
    if venv.is_dir():
        sizes = [p.stat().st_size for p in venv.rglob("*") if p.is_file() and not p.is_symlink()]
        plan.notes.append(
            f"this machine's .venv: {len(sizes)} files, {_human(sum(sizes))}; on a network volume at least "
            f"{_human(volume_bytes(sizes))} (64 KB minimum per file) — the pod's CUDA venv is larger"
        )
    plan.notes.append(
        f"network volume on the pod: add the .venv (CUDA torch: several GB, measure with `du -sh .venv`) "
        f"and HF_HOME; files under {_human(VOLUME_MIN_FILE_BYTES)} still take {_human(VOLUME_MIN_FILE_BYTES)}"
    )
    if dc is None:
        plan.notes.append(
            f"no datacenter given (--datacenter or {DATACENTER_VAR}); "
            f"S3 API datacenters per {S3_LIST_SOURCE}: {', '.join(S3_DATACENTERS)}"
        )
    elif plan.s3_api:
        plan.notes.append(f"{dc} has the S3 API per {S3_LIST_SOURCE}: endpoint {plan.endpoint}, region {dc}")
    else:
        plan.notes.append(
            f"{dc} is not in RunPod's S3 API list ({S3_LIST_SOURCE}): uploads need a running pod; "
            f"pick one of {', '.join(S3_DATACENTERS)}"
        )
    plan.notes.append("a network volume is locked to its datacenter: pods elsewhere cannot mount it")
    plan.steps = _steps(plan, volume_id or "<volume-id>", config_files)
    price = price if price is not None else price_from_config(config)
    measured = Path(previous) if previous is not None else results
    if (measured / "benchmarks").is_dir() and any((measured / "benchmarks").glob("*.tsv")):
        plan.estimate = estimate(measured, price, config)
    elif previous is not None:
        plan.estimate_note = f"no estimate: {measured}/benchmarks holds no benchmark file"
    else:
        plan.estimate_note = (
            f"no estimate: no earlier run of '{plan.run}' measured here (results/{plan.run}/benchmarks); "
            "run it once (locally or on a pod) or give --from RUN"
        )
    return plan


def render_plan(plan: RunpodPlan) -> str:
    """The plan as the text `runpod-plan` prints."""
    lines = [
        f"RunPod plan for run '{plan.run}' (source {plan.source}, until {plan.until})",
        f"datacenter: {plan.datacenter or '(not given)'}"
        + (
            ""
            if plan.s3_api is None
            else f"  S3 API: {'yes, ' + str(plan.endpoint) if plan.s3_api else 'no'}"
        ),
        "",
        f"SEND ({_human(plan.send_bytes)} in all; volume of at least {plan.volume_gb_min} GB):",
    ]
    for item in plan.send:
        count = "-" if item.files is None else str(item.files)
        lines.append(
            f"  [ ] {item.what:<24} {item.path:<32} {count:>6} files {_human(item.bytes):>10}  {item.note}"
        )
    lines += ["", "NEVER SEND:"]
    for item in plan.never:
        count = "-" if item.files is None else str(item.files)
        lines.append(f"  [x] {item.what:<24} {count:>6} files {_human(item.bytes):>10}  {item.note}")
    lines += ["", "STEPS (do not start the next before the check passes):"]
    for number, step in enumerate(plan.steps, 1):
        lines.append(f"  {number}. {step.title}")
        lines += [f"       $ {command}" for command in step.commands]
        lines.append(f"       check: {step.verify}")
    lines += ["", "ESTIMATE (before the run starts):"]
    if plan.estimate is None:
        lines.append(f"  {plan.estimate_note}")
    else:
        est = plan.estimate
        lines.append(
            f"  from {est['from']}: {est['jobs']} job(s), {est['wall_s']:.0f} s ({duration(est['wall_s'])}) "
            f"of job time{'' if est['complete'] else ' (that run did not reach its report: a partial run)'}"
        )
        if est["measured_on"]:
            lines.append(f"  measured on: {est['measured_on']} (a faster or slower pod scales this)")
        if est["cost"] is None:
            lines.append(f"  cost: {est['price']}; set cost.per_hour or give --price-per-hour")
        else:
            lines.append(f"  cost: {money(est['cost'], est['unit'])} at {est['price']}")
        lines.append(
            "  not counted: pod start-up, set-up and idle time, the volume's storage, egress (docs/cost.md)"
        )
    lines += ["", "NOTES:", *[f"  - {note}" for note in plan.notes]]
    return "\n".join(lines) + "\n"
