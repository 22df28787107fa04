"""ONNX Runtime inference server of a trainrelay deployment bundle.

Runs from the unpacked bundle with only the standard library, numpy and onnxruntime:

    TRAINRELAY_API_KEYS=... python server/serve.py [--host 0.0.0.0] [--port 8080]
    python server/serve.py --no-auth                 # loopback only, for a local try
    python server/serve.py --new-key ci:predict      # make a key and its keys-file line

It reads ``package.json`` (one directory up): the models, the execution providers of the engine the
benchmark selected, and the serving settings; every file it loads is checked against the bundle's
``SHA256SUMS`` at start and on reload. Requests:

* ``POST /predict/<model>`` with ``{"inputs": [[...], ...]}`` (a batch) answers
  ``{"model", "outputs", "shape", "queue_ms", "inference_ms"}``; role ``predict`` or ``admin``.
* ``GET /health`` (open, no key) reports every model's status, the worker pool, the queue depth, the GPU.
* ``GET /metrics`` and ``POST /admin/reload`` (role ``admin``): counters; re-check and reload the models.

Who may call: ``Authorization: Bearer <key>``, checked against ``key_id:role:sha256hex`` lines from
``TRAINRELAY_API_KEYS`` and/or ``--api-keys-file`` (401 no or unknown key, 403 wrong role, 429 over
the key's token-bucket rate). Every request is one line of the JSONL audit log (never the key or the
payload). The default bind is 127.0.0.1; without keys the server runs only on loopback and only when
told ``--no-auth``.

A fixed pool of ``workers`` threads runs inference; at most ``max_concurrency`` requests are inside
the server at once (reading their body, queued or running). A request beyond that is answered 503
before its body is read, never queued without bound; one that waits longer than ``queue_timeout_s``
for a worker gets 503, and an inference running longer than ``inference_timeout_s`` is cancelled
(ONNX Runtime's ``RunOptions.terminate``) and answered 504. One thread reads the request head of
every connection (``HeadGate``); a connection gets one of at most ``--max-connections`` handler
threads only once its head has arrived. A head must arrive within ``--header-timeout`` seconds and
a body within ``--body-timeout``; a client that leaves is one audit line (499), never a traceback.

This file is copied into the bundle as is; it must not import trainrelay.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import io
import ipaddress
import json
import math
import os
import queue
import re
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import numpy as np
import onnxruntime as ort

MAX_BODY_BYTES = 64 * 1024 * 1024
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
MANIFEST = "SHA256SUMS"
KEYS_ENV = "TRAINRELAY_API_KEYS"
ROLES = ("predict", "admin")
# What each route needs; admin may do everything predict may.
ROLE_RANK = {"predict": 0, "admin": 1}
# A client that vanished: the request ends quietly (counted in /metrics), never with a traceback.
DISCONNECTS = (ConnectionError, TimeoutError, OSError)


class ServeError(Exception):
    """A request the server refuses, with its HTTP status."""

    def __init__(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class StartupError(Exception):
    """The server cannot start (or reload) as configured: one line for the operator, no traceback."""


class ClientGone(Exception):
    """The client closed the connection or stopped sending before its request was complete."""


# ---------------------------------------------------------------------------------------------------
# Bundle integrity


def read_manifest(bundle: Path) -> dict[str, str]:
    """``SHA256SUMS`` of the bundle: relative path -> sha256 hex."""
    path = bundle / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StartupError(
            f"{path}: cannot read it ({exc.strerror or exc}); the server checks every model against it: "
            "unpack the bundle again"
        ) from None
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise StartupError(f"{path}: line {number} is not '<sha256>  <path>'; unpack the bundle again")
        out[name] = digest
    return out


def verify_files(bundle: Path, names: list[str], manifest: dict[str, str]) -> None:
    """Raise StartupError naming the first file that is missing, unlisted or damaged."""
    for name in names:
        if name not in manifest:
            raise StartupError(f"{name}: not listed in {MANIFEST}; the bundle was altered: rebuild it")
        digest = hashlib.sha256()
        try:
            with open(bundle / name, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError as exc:
            raise StartupError(
                f"{name}: cannot read it ({exc.strerror or exc}); unpack the bundle again"
            ) from None
        if digest.hexdigest() != manifest[name]:
            raise StartupError(
                f"{name}: checksum mismatch (expected {manifest[name][:12]}..., got "
                f"{digest.hexdigest()[:12]}...): the file is damaged or truncated; unpack the bundle again"
            )


def read_package(bundle: Path) -> dict[str, Any]:
    """``package.json``, checked against ``SHA256SUMS`` together with every model it names."""
    manifest = read_manifest(bundle)
    verify_files(bundle, ["package.json"], manifest)
    meta = json.loads((bundle / "package.json").read_text(encoding="utf-8"))
    verify_files(bundle, [spec["file"] for _, spec in sorted(meta["models"].items())], manifest)
    return meta


# ---------------------------------------------------------------------------------------------------
# API keys


@dataclass(frozen=True)
class Principal:
    key_id: str
    role: str


ANONYMOUS = Principal("anonymous", "admin")  # every caller under --no-auth (loopback only)


class KeyRing:
    """API keys as ``key_id:role:sha256hex`` entries; only the hash of a key is ever held.

    Keys are random (``--new-key`` makes 32 random bytes), so a plain sha256 is enough: there is no
    low-entropy password for a slow hash to protect.
    """

    LINE = re.compile(r"(?P<id>[A-Za-z0-9_.-]{1,64}):(?P<role>[a-z]+):(?P<hash>[0-9a-fA-F]{64})")

    def __init__(self, entries: list[tuple[str, str]]) -> None:
        self.keys: list[tuple[bytes, Principal]] = []
        seen: set[str] = set()
        for where, entry in entries:
            match = self.LINE.fullmatch(entry)
            if match is None:
                raise StartupError(
                    f"{where}: not 'key_id:role:sha256hex' (make one with --new-key ID:ROLE); "
                    f"got {entry[:24]!r}{'...' if len(entry) > 24 else ''}"
                )
            if match["role"] not in ROLES:
                raise StartupError(f"{where}: role must be one of {', '.join(ROLES)}, got {match['role']!r}")
            if match["id"] in seen:
                raise StartupError(f"{where}: key id {match['id']!r} is listed twice")
            seen.add(match["id"])
            self.keys.append((bytes.fromhex(match["hash"]), Principal(match["id"], match["role"])))

    @classmethod
    def load(cls, env: str | None, files: list[Path]) -> KeyRing:
        entries: list[tuple[str, str]] = []
        for number, entry in enumerate(re.split(r"[\s,]+", env or ""), start=1):
            if entry:
                entries.append((f"{KEYS_ENV} entry {number}", entry))
        for path in files:
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise StartupError(f"{path}: cannot read the API keys file ({exc.strerror or exc})") from None
            for number, line in enumerate(text.splitlines(), start=1):
                if line.strip() and not line.lstrip().startswith("#"):
                    entries.append((f"{path}:{number}", line.strip()))
        return cls(entries)

    def __len__(self) -> int:
        return len(self.keys)

    def authenticate(self, header: str | None) -> Principal:
        """The key's principal; 401 when the header is missing or the key unknown."""
        scheme, _, token = (header or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ServeError(
                HTTPStatus.UNAUTHORIZED,
                "API key required: send 'Authorization: Bearer <key>'",
                {"WWW-Authenticate": 'Bearer realm="trainrelay"'},
            )
        digest = hashlib.sha256(token.encode("utf-8", errors="surrogateescape")).digest()
        found = None
        for stored, principal in self.keys:  # every entry is compared: the time says nothing about which
            if hmac.compare_digest(stored, digest):
                found = principal
        if found is None:
            raise ServeError(
                HTTPStatus.UNAUTHORIZED, "unknown API key", {"WWW-Authenticate": 'Bearer realm="trainrelay"'}
            )
        return found


def new_key(spec: str) -> str:
    """A fresh random key for ``KEY_ID:ROLE`` and its keys-file line (the key is shown only here)."""
    key_id, _, role = spec.partition(":")
    key = "trk_" + secrets.token_urlsafe(32)
    line = f"{key_id}:{role}:{hashlib.sha256(key.encode()).hexdigest()}"
    KeyRing([("--new-key", line)])  # same checks as at start
    return (
        f"key (give it to the client; the server keeps only its hash): {key}\n"
        f"line for --api-keys-file or {KEYS_ENV}: {line}\n"
    )


# ---------------------------------------------------------------------------------------------------
# Per-key rate limit


class RateLimiter:
    """A token bucket per key id: ``rate`` requests a second on average, bursts of up to ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, max(burst, 1.0)
        self.lock = threading.Lock()
        self.buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, last refill)

    def take(self, key_id: str) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        with self.lock:
            tokens, last = self.buckets.get(key_id, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1:
                self.buckets[key_id] = (tokens, now)
                wait = (1 - tokens) / self.rate
                raise ServeError(
                    HTTPStatus.TOO_MANY_REQUESTS,
                    f"rate limit of key '{key_id}': {self.rate:g} requests/s, bursts of {self.burst:g}; "
                    f"retry in {wait:.2g} s",
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
            self.buckets[key_id] = (tokens - 1, now)


# ---------------------------------------------------------------------------------------------------
# Audit log


class AuditLog:
    """Append-only JSONL, one line per request: time, key id, route, model, status, latency.

    Never the key nor the payload. A file is opened in append mode and every line is flushed, so a
    crash loses at most the line being written; ``-`` writes to stdout (the container's log).
    """

    def __init__(self, target: str) -> None:
        self.lock = threading.Lock()
        if target == "-":
            self.stream: IO[str] = sys.stdout
        else:
            try:
                self.stream = open(target, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - held open
            except OSError as exc:
                raise StartupError(f"{target}: cannot open the audit log ({exc.strerror or exc})") from None

    def write(self, **record: Any) -> None:
        line = json.dumps(
            {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": "request", **record},
            separators=(",", ":"),
        )
        with self.lock:
            self.stream.write(line + "\n")
            self.stream.flush()


# ---------------------------------------------------------------------------------------------------
# Models and the inference pool


class Model:
    """One ONNX Runtime session and what the bundle says about it."""

    def __init__(
        self, name: str, spec: dict[str, Any], bundle: Path, server: dict[str, Any], device: str
    ) -> None:
        self.name, self.spec = name, spec
        self.path = bundle / spec["file"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(server["cpu_threads"])
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        providers = _providers(spec["providers"], server, device)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for an unreadable model
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise StartupError(f"{spec['file']}: ONNX Runtime cannot load it ({reason})") from None
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.input_shape = list(first.shape)  # [batch, ...]; the batch axis is symbolic
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.active_providers = self.session.get_providers()
        self.requested_providers = [p if isinstance(p, str) else p[0] for p in providers]

    def check(self, batch: np.ndarray) -> None:
        expected = self.input_shape[1:]
        if batch.ndim != len(self.input_shape) or list(batch.shape[1:]) != expected:
            raise ServeError(
                HTTPStatus.BAD_REQUEST,
                f"model {self.name} takes inputs of shape [batch, {', '.join(map(str, expected))}], "
                f"got {list(batch.shape)}",
            )
        if batch.shape[0] < 1:
            raise ServeError(HTTPStatus.BAD_REQUEST, "empty batch")
        if not np.isfinite(batch).all():
            raise ServeError(HTTPStatus.BAD_REQUEST, "inputs contain NaN or inf")

    def status(self) -> dict[str, Any]:
        return {
            "status": "loaded",
            "file": self.spec["file"],
            "input": {"name": self.input_name, "shape": self.input_shape},
            "outputs": self.output_names,
            "selected_engine": self.spec["selected"],
            "providers": {"requested": self.requested_providers, "active": self.active_providers},
        }


def tensorrt_options() -> dict[str, str]:
    """TensorRT EP options: FP16, and engine + timing caches in a folder this user can write.

    The caches default to ONNX Runtime's working directory, which is the image's /app, owned by root
    while the server runs as uid 10001: every start would rebuild the engines (minutes) and fail to
    save them. TRAINRELAY_TRT_CACHE names a folder (mount a volume there to keep engines across
    restarts); the default is a folder in the system's temporary directory.
    """
    cache = Path(
        os.environ.get("TRAINRELAY_TRT_CACHE") or Path(tempfile.gettempdir()) / "trainrelay-trt-cache"
    )
    cache.mkdir(parents=True, exist_ok=True)
    return {
        "trt_fp16_enable": "True",  # the Python binding takes only True/False for these flags
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache),
    }


def _providers(names: list[str], server: dict[str, Any], device: str) -> list[Any]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    available = set(ort.get_available_providers())
    missing = [p for p in names if p not in available]
    if missing:
        raise StartupError(
            f"this onnxruntime {ort.__version__} lacks {', '.join(missing)} (it has "
            f"{', '.join(sorted(available))}); install the bundle's requirements.txt on a GPU host, "
            "or start with --device cpu"
        )
    out: list[Any] = []
    for name in names:
        if name == "CUDAExecutionProvider" and server.get("gpu_mem_limit_mb"):
            out.append((name, {"gpu_mem_limit": str(int(server["gpu_mem_limit_mb"]) * 1024 * 1024)}))
        elif name == "TensorrtExecutionProvider":
            out.append((name, tensorrt_options()))
        else:
            out.append(name)
    return out


class Job:
    """One request's trip through the queue; ``state`` moves queued -> running | dropped -> done."""

    def __init__(self, model: Model, batch: np.ndarray) -> None:
        self.model, self.batch = model, batch
        self.enqueued = time.monotonic()
        self.lock = threading.Lock()
        self.state = "queued"
        self.started = threading.Event()
        self.done = threading.Event()
        self.run_options = ort.RunOptions()
        self.outputs: list[np.ndarray] | None = None
        self.error: ServeError | None = None
        self.queue_ms = 0.0
        self.inference_ms = 0.0

    def take(self) -> bool:
        """The worker claims the job; False when the waiting request already gave up."""
        with self.lock:
            if self.state != "queued":
                return False
            self.state = "running"
        self.queue_ms = (time.monotonic() - self.enqueued) * 1000
        self.started.set()
        return True

    def drop(self) -> bool:
        """The request gives up waiting; False when a worker already started it."""
        with self.lock:
            if self.state != "queued":
                return False
            self.state = "dropped"
            return True


class Pool:
    """A bounded request queue served by a fixed number of inference threads.

    A request takes its place with :meth:`admit` before its body is read, so that at most
    ``max_concurrency`` bodies are in memory at once; :meth:`run` hands the place to the job.
    """

    def __init__(self, settings: dict[str, Any]) -> None:
        self.workers = int(settings["workers"])
        self.max_concurrency = int(settings["max_concurrency"])
        self.queue_timeout = float(settings["queue_timeout_s"])
        self.inference_timeout = float(settings["inference_timeout_s"])
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.lock = threading.Lock()
        self.admitted = 0
        self.busy = 0
        self.counters = {
            "served": 0,
            "rejected_full": 0,
            "queue_timeouts": 0,
            "inference_timeouts": 0,
            "errors": 0,
        }
        self.threads = [
            threading.Thread(target=self._work, name=f"inference-{i}", daemon=True)
            for i in range(self.workers)
        ]
        for thread in self.threads:
            thread.start()

    def count(self, key: str) -> None:
        with self.lock:
            self.counters[key] += 1

    def admit(self) -> None:
        """Take a place in the server or answer 503 at once; the caller gives it back with
        :meth:`release` unless it passes it on to :meth:`run`."""
        with self.lock:
            if self.admitted >= self.max_concurrency:
                self.counters["rejected_full"] += 1
                raise ServeError(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    f"server full: {self.admitted} requests in flight "
                    f"(max_concurrency {self.max_concurrency})",
                )
            self.admitted += 1

    def release(self) -> None:
        with self.lock:
            self.admitted -= 1

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            # Its request timed out in the queue, was answered and gave its slot back then (run());
            # releasing here as well would count it twice.
            if not job.take():
                continue
            with self.lock:
                self.busy += 1
            started = time.monotonic()
            try:
                job.outputs = job.model.session.run(
                    None, {job.model.input_name: job.batch}, run_options=job.run_options
                )
            except Exception as exc:  # ORT reports a terminated run as an exception too
                job.error = ServeError(HTTPStatus.INTERNAL_SERVER_ERROR, f"inference failed: {exc}")
            finally:
                job.inference_ms = (time.monotonic() - started) * 1000
                with self.lock:
                    self.busy -= 1
                self.release()
                job.done.set()

    def run(self, job: Job) -> list[np.ndarray]:
        """Queue ``job`` (its request already admitted) and wait for its outputs within the queue
        and inference timeouts."""
        self.jobs.put(job)
        if not job.started.wait(self.queue_timeout) and job.drop():
            # The request leaves the server now, so its slot is free now: kept until a worker pops the
            # dead job, it would have new requests refused "server full" with fewer than
            # max_concurrency inside. drop() and take() exclude each other: exactly one side releases.
            with self.lock:
                self.admitted -= 1
                self.counters["queue_timeouts"] += 1
            raise ServeError(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"no worker free within queue_timeout_s {self.queue_timeout:g}",
            )
        job.started.wait()
        if not job.done.wait(self.inference_timeout):
            job.run_options.terminate = True  # ORT stops the run at its next check
            self.count("inference_timeouts")
            raise ServeError(
                HTTPStatus.GATEWAY_TIMEOUT,
                f"inference exceeded inference_timeout_s {self.inference_timeout:g}",
            )
        if job.error is not None:
            self.count("errors")
            raise job.error
        self.count("served")
        assert job.outputs is not None
        return job.outputs

    def status(self) -> dict[str, Any]:
        with self.lock:
            admitted, busy, counters = self.admitted, self.busy, dict(self.counters)
        alive = sum(t.is_alive() for t in self.threads)
        return {
            "pool": {"workers": self.workers, "alive": alive, "busy": busy, "idle": alive - busy},
            "queue": {
                "depth": self.jobs.qsize(),
                "in_flight": admitted,
                "max_concurrency": self.max_concurrency,
                "queue_timeout_s": self.queue_timeout,
                "inference_timeout_s": self.inference_timeout,
            },
            "requests": counters,
        }

    def stop(self) -> None:
        for _ in self.threads:
            self.jobs.put(None)


def _number(text: str) -> float | None:
    """A numeric ``nvidia-smi`` field, or None for "[N/A]" / "[Not Supported]" (utilization on a MIG GPU)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None  # NaN would make /health invalid JSON


class GpuProbe:
    """What the GPU looks like: ONNX Runtime's providers and, when present, ``nvidia-smi``."""

    def __init__(self, models: dict[str, Model], settings: dict[str, Any]) -> None:
        self.models, self.settings = models, settings
        self._cached: tuple[float, dict[str, Any]] | None = None

    def _smi(self) -> dict[str, Any]:
        exe = shutil.which("nvidia-smi")
        if exe is None:
            return {"status": "unavailable", "reason": "nvidia-smi not found"}
        query = "name,memory.used,memory.total,utilization.gpu"
        try:
            done = subprocess.run(
                [exe, f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=3, check=True,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            return {"status": "unavailable", "reason": f"nvidia-smi failed: {exc}"}
        gpus = []
        try:
            for line in done.stdout.strip().splitlines():
                # rsplit: the three numeric fields are last, so a comma in a GPU name cannot shift them
                name, used, total, util = (part.strip() for part in line.rsplit(",", 3))
                gpus.append({"name": name, "memory_used_mb": _number(used), "memory_total_mb": _number(total),
                             "utilization_pct": _number(util)})  # fmt: skip
        except ValueError as exc:  # a line without four fields: report it, /health must still answer
            return {"status": "unavailable", "reason": f"nvidia-smi output not understood: {exc}"}
        return {"status": "ok", "gpus": gpus}

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] > 5:  # nvidia-smi takes ~50 ms
            active = sorted(
                {p for m in self.models.values() for p in m.active_providers if p in GPU_PROVIDERS}
            )
            requested = sorted(
                {p for m in self.models.values() for p in m.requested_providers if p in GPU_PROVIDERS}
            )
            info = {
                "requested": bool(requested),
                "active_providers": active,
                "available_providers": ort.get_available_providers(),
                "memory_limit_mb": self.settings.get("gpu_mem_limit_mb"),
                "device": self._smi()
                if requested
                else {"status": "not used", "reason": "CPU engines selected"},
            }
            self._cached = (now, info)
        return self._cached[1]


# ---------------------------------------------------------------------------------------------------
# The application: routes, roles, limits; independent of the HTTP stack


@dataclass
class Request:
    """What the application needs of an HTTP request; ``read_body`` is called only once the request
    holds a place in the pool, so a refused request's body is never read."""

    method: str
    path: str
    headers: Any  # a mapping with case-insensitive .get()
    client: str
    read_body: Any  # (length: int) -> bytes; raises ClientGone


@dataclass
class Response:
    status: HTTPStatus
    payload: dict[str, Any]
    headers: dict[str, str]


def content_length(raw: str | None, limit: int) -> int:
    """The body's length: 400 when the header is missing, not an integer or not positive (the body
    cannot be read without it; chunked bodies are not supported), 413 above ``limit``."""
    if raw is None:
        raise ServeError(
            HTTPStatus.BAD_REQUEST, "Content-Length header missing: send the JSON body with its length"
        )
    digits = raw.strip()
    # ASCII digits only: int() would also take "1_000", "+5" or non-ASCII digits, which HTTP does not
    significant = digits.lstrip("0") if digits.isascii() and digits.isdigit() else ""
    if not significant:  # not a number, negative, or zero
        raise ServeError(
            HTTPStatus.BAD_REQUEST,
            f"Content-Length must be a whole number of bytes 1..{limit}, got {raw[:40]!r}",
        )
    # int() refuses numbers of more than 4300 digits; one of more than 20 is over the limit anyway
    if len(significant) > 20 or int(significant) > limit:
        raise ServeError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"body of {significant[:40]} bytes is over the limit of {limit} bytes",
        )
    return int(significant)


def parse_batch(raw: bytes) -> tuple[dict[str, Any], np.ndarray]:
    try:
        body = json.loads(raw)
        batch = np.asarray(body["inputs"], dtype=np.float32)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: absurd nesting
        raise ServeError(
            HTTPStatus.BAD_REQUEST,
            f'body must be JSON {{"inputs": [...]}} ({type(exc).__name__}: {exc})'[:300],
        ) from exc
    return body, batch


class App:
    def __init__(
        self,
        bundle: Path,
        overrides: dict[str, Any],
        device: str,
        keys: KeyRing | None = None,
        limiter: RateLimiter | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.bundle, self.device = bundle, device
        try:
            self.meta = read_package(bundle)
        except (ValueError, KeyError, TypeError) as exc:
            raise StartupError(f"{bundle / 'package.json'}: not a bundle's package.json ({exc})") from None
        self.settings = {**self.meta["server"], **{k: v for k, v in overrides.items() if v is not None}}
        self.settings.setdefault("max_body_bytes", MAX_BODY_BYTES)
        if self.settings["max_concurrency"] < self.settings["workers"]:
            raise StartupError("max_concurrency must be >= workers")
        self.models = self._load(self.meta)
        self.keys, self.limiter, self.audit = keys, limiter or RateLimiter(0, 1), audit
        self.pool = Pool(self.settings)
        self.gpu = GpuProbe(self.models, self.settings)
        self.reload_lock = threading.Lock()
        self.lock = threading.Lock()
        self.http: Counter[str] = Counter()
        self.connections: Callable[[], dict[str, int]] | None = None  # set by the HTTP server

    def _load(self, meta: dict[str, Any]) -> dict[str, Model]:
        return {
            name: Model(name, spec, self.bundle, self.settings, self.device)
            for name, spec in sorted(meta["models"].items())
        }

    def count(self, key: str) -> None:
        with self.lock:
            self.http[key] += 1

    # -- routes --

    def handle(self, request: Request) -> Response:
        """Answer one request and write its audit line; never raises for a client's mistake."""
        started = time.monotonic()
        principal: Principal | None = None
        model: str | None = None
        try:
            route = request.path.split("?", 1)[0]
            if request.method == "GET" and route.rstrip("/") == "/health":
                health = self.health()
                response = Response(
                    HTTPStatus.OK if health["status"] == "ok" else HTTPStatus.SERVICE_UNAVAILABLE, health, {}
                )
            else:
                parts = [p for p in route.split("/") if p]
                principal = self._authorize(
                    request, "admin" if parts[:1] in (["metrics"], ["admin"]) else "predict"
                )
                if request.method == "POST" and parts[:1] == ["predict"] and len(parts) <= 2:
                    model = parts[1] if len(parts) == 2 else None
                    response, model = self._predict(request, model)
                elif request.method == "GET" and parts == ["metrics"]:
                    response = Response(HTTPStatus.OK, self.metrics(), {})
                elif request.method == "POST" and parts == ["admin", "reload"]:
                    response = Response(HTTPStatus.OK, self.reload(), {})
                else:
                    raise ServeError(
                        HTTPStatus.NOT_FOUND,
                        "use GET /health, POST /predict/<model>, GET /metrics or POST /admin/reload",
                    )
        except ServeError as exc:
            headers = dict(exc.headers)
            if exc.status == HTTPStatus.SERVICE_UNAVAILABLE:
                headers["Retry-After"] = "1"
            response = Response(exc.status, {"error": str(exc)}, headers)
        except ClientGone:
            self.count("disconnects")
            self._log(request, principal, model, 499, started)  # nginx's "client closed request"
            raise
        except Exception:  # a bug, not the client's doing: its traceback, and the client gets a 500
            traceback.print_exc()
            response = Response(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal server error"}, {})
        with self.lock:
            self.http[str(int(response.status))] += 1
        self._log(request, principal, model, int(response.status), started)
        return response

    def _log(self, request: Request, principal: Principal | None, model: str | None, status: int,
             started: float) -> None:  # fmt: skip
        if self.audit is not None:
            self.audit.write(
                key_id=principal.key_id if principal else None,
                client=request.client,
                method=request.method[:16],
                route=request.path.split("?", 1)[0][:200],  # a query string could hold anything
                model=model,
                status=status,
                latency_ms=round((time.monotonic() - started) * 1000, 3),
            )

    def _authorize(self, request: Request, role: str) -> Principal:
        if self.keys is None:
            principal = ANONYMOUS
        else:
            try:
                principal = self.keys.authenticate(request.headers.get("Authorization"))
            except ServeError:
                self.count("auth_failures")
                raise
            if ROLE_RANK[principal.role] < ROLE_RANK[role]:
                self.count("forbidden")
                raise ServeError(
                    HTTPStatus.FORBIDDEN,
                    f"key '{principal.key_id}' has role {principal.role}; this needs {role}",
                )
        try:
            self.limiter.take(principal.key_id)
        except ServeError:
            self.count("rate_limited")
            raise
        return principal

    def _predict(self, request: Request, name: str | None) -> tuple[Response, str | None]:
        if name is not None and name not in self.models:
            raise ServeError(HTTPStatus.NOT_FOUND, f"no model '{name}'; have {', '.join(self.models)}")
        length = content_length(request.headers.get("Content-Length"), int(self.settings["max_body_bytes"]))
        self.pool.admit()  # before the body is read: a refused request costs no memory
        handed_over = False
        try:
            body, batch = parse_batch(request.read_body(length))
            name = name or str(body.get("model", ""))
            model = self.models.get(name)
            if model is None:
                raise ServeError(HTTPStatus.NOT_FOUND, f"no model '{name}'; have {', '.join(self.models)}")
            batch = np.ascontiguousarray(batch, dtype=np.float32)
            model.check(batch)
            job = Job(model, batch)
            handed_over = True
            outputs = self.pool.run(job)
        finally:
            if not handed_over:
                self.pool.release()
        payload = {
            "model": name,
            "outputs": outputs[0].tolist(),
            "shape": list(outputs[0].shape),
            "queue_ms": round(job.queue_ms, 3),
            "inference_ms": round(job.inference_ms, 3),
        }
        return Response(HTTPStatus.OK, payload, {}), name

    def reload(self) -> dict[str, Any]:
        """Check the bundle against SHA256SUMS again and load its models; on any problem keep
        serving the models already loaded."""
        with self.reload_lock:
            try:
                meta = read_package(self.bundle)
                models = self._load(meta)
            except (StartupError, ValueError, KeyError, TypeError) as exc:
                self.count("reload_failures")
                raise ServeError(
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    f"reload failed, still serving the previous models: {exc}",
                ) from None
            self.meta, self.models = meta, models  # in-flight jobs keep their own Model objects
            self.gpu.models = models
            self.count("reloads")
        return {"status": "reloaded", "models": sorted(models)}

    def health(self) -> dict[str, Any]:
        pool = self.pool.status()
        ok = pool["pool"]["alive"] == self.pool.workers
        return {
            "status": "ok" if ok else "degraded",
            "package": {"name": self.meta["name"], "version": self.meta["version"]},
            "models": {name: model.status() for name, model in self.models.items()},
            "onnxruntime": ort.__version__,
            "gpu": self.gpu.status(),
            **pool,
        }

    def metrics(self) -> dict[str, Any]:
        with self.lock:
            http = dict(self.http)
        connections = self.connections() if self.connections is not None else {}
        auth = "keys" if self.keys is not None else "none"
        return {**self.pool.status(), "http": http, "connections": connections, "auth": auth}


# ---------------------------------------------------------------------------------------------------
# HTTP transport: the standard library's threading server, hardened


class DeadlineReader(io.RawIOBase):
    """Socket reads that all end by one deadline: a client trickling a byte at a time (slowloris)
    cannot hold its thread past it, which a per-read timeout alone allows."""

    def __init__(self, sock: socket.socket, per_read: float, prefix: bytes = b"") -> None:
        self.sock, self.per_read = sock, per_read
        self.prefix = prefix  # what the head gate already read from the socket
        self.deadline = math.inf

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.prefix:
            n = min(len(buffer), len(self.prefix))
            buffer[:n] = self.prefix[:n]
            self.prefix = self.prefix[n:]
            return n
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request deadline passed")
        self.sock.settimeout(min(self.per_read, left))
        return self.sock.recv_into(buffer)


class Handler(BaseHTTPRequestHandler):
    server_version = "trainrelay-serve/1"
    app: App  # set on the subclass made by make_handler()
    # Socket timeout per read: a client that announces a body and never sends it gives its handler
    # thread back after this instead of holding it for ever.
    timeout = 30
    header_timeout = 10.0
    body_timeout = 60.0

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the socket's own reader: replaced by one with a deadline
        self.reader = DeadlineReader(self.connection, self.timeout, self.server.take_head(self.connection))
        self.reader.deadline = time.monotonic() + self.header_timeout
        self.rfile = io.BufferedReader(self.reader, 64 * 1024)

    def handle(self) -> None:
        try:
            super().handle()
        except DISCONNECTS:  # the client went away or was too slow: nothing to answer, nobody to tell
            self.app.count("disconnects")

    def log_message(self, format: str, *args: Any) -> None:
        return  # the audit log has one line per request; errors are counted in /metrics

    def log_error(self, format: str, *args: Any) -> None:
        if format.startswith("Request timed out"):  # the head did not arrive by header_timeout
            self.app.count("header_timeouts")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stack's own refusals (a malformed request line, headers too long) as JSON like the rest,
        with an audit line: the request never reached the application."""
        status = HTTPStatus(code)
        self.app.count(str(code))
        if self.request_version == "HTTP/0.9":  # a line that did not parse: answer with a status line
            self.request_version = "HTTP/1.0"
        path = getattr(self, "path", "") or ""
        request = Request(getattr(self, "command", None) or "-", path, {}, self.client_address[0], None)
        self.app._log(request, None, None, code, time.monotonic())
        body = json.dumps({"error": message or status.phrase}).encode("utf-8")
        self.send_response(code, message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self, length: int) -> bytes:
        self.reader.deadline = time.monotonic() + self.body_timeout
        try:
            data = self.rfile.read(length)
        except TimeoutError:
            raise ServeError(
                HTTPStatus.REQUEST_TIMEOUT, f"body not received within {self.body_timeout:g} s"
            ) from None
        except DISCONNECTS as exc:
            raise ClientGone(str(exc)) from None
        if len(data) < length:
            raise ClientGone(f"body ended after {len(data)} of {length} bytes")
        return data

    def _serve(self) -> None:
        request = Request(self.command, self.path, self.headers, self.client_address[0], self._read_body)
        try:
            response = self.app.handle(request)
        except ClientGone:
            self.close_connection = True
            return
        self.connection.settimeout(self.timeout)  # the read deadline may have left a tiny timeout
        body = json.dumps(response.payload).encode("utf-8")
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve


class HeadGate:
    """Reads the request head of every new connection in one thread (a selector) and hands the
    connection to a handler thread only once its head is complete.

    A client that trickles its head a byte at a time (slowloris) then costs a socket and a small
    buffer until ``header_timeout``, never a thread: measured, 400 such clients kept every normal
    request out of a thread-per-connection server (bench/server_stacks.py).
    """

    MAX_HEAD = 80 * 1024  # past http.server's own limits (64 KiB a line), which then answer 414 / 431

    def __init__(self, server: HTTPServer, header_timeout: float, max_pending: int = 8192) -> None:
        self.server, self.header_timeout, self.max_pending = server, header_timeout, max_pending
        self.selector = selectors.DefaultSelector()
        self.incoming: queue.SimpleQueue[tuple[socket.socket, Any]] = queue.SimpleQueue()
        self.pending: dict[socket.socket, tuple[Any, bytearray, float]] = {}
        self.ready: deque[tuple[socket.socket, Any, bytes]] = deque()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        self.thread = threading.Thread(target=self._loop, name="head-gate", daemon=True)
        self.thread.start()

    def add(self, sock: socket.socket, address: Any) -> None:
        self.incoming.put((sock, address))
        with contextlib.suppress(OSError):  # the wake-up pipe is full: the loop is awake anyway
            self.wake_w.send(b"x")

    def _drop(self, sock: socket.socket, event: str | None) -> None:
        self.selector.unregister(sock)
        self.pending.pop(sock, None)
        if event:
            self.server.app.count(event)
        self.server.shutdown_request(sock)

    def _read(self, sock: socket.socket) -> None:
        address, head, _ = self.pending[sock]
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sock, "disconnects")
            return
        head += data
        if b"\r\n\r\n" in head or b"\n\n" in head or len(head) > self.MAX_HEAD:
            self.selector.unregister(sock)
            del self.pending[sock]
            self.ready.append((sock, address, bytes(head)))

    def _loop(self) -> None:
        while not self.server.stopping.is_set():
            for key, _ in self.selector.select(timeout=0.2):
                if key.fileobj is self.wake_r:
                    with contextlib.suppress(OSError):
                        self.wake_r.recv(4096)
                elif key.fileobj in self.pending:
                    self._read(key.fileobj)  # type: ignore[arg-type]
            now = time.monotonic()
            while not self.incoming.empty():
                sock, address = self.incoming.get()
                if len(self.pending) >= self.max_pending:
                    self.server.app.count("rejected_connections")
                    self.server.shutdown_request(sock)
                    continue
                sock.setblocking(False)
                self.pending[sock] = (address, bytearray(), now + self.header_timeout)
                self.selector.register(sock, selectors.EVENT_READ)
            for sock in [s for s, (_, _, deadline) in self.pending.items() if deadline <= now]:
                self._drop(sock, "header_timeouts")
            while self.ready and self.server.slots.acquire(blocking=False):
                sock, address, head = self.ready.popleft()
                sock.setblocking(True)
                self.server.start_handler(sock, address, head)
        for sock in list(self.pending):
            self._drop(sock, None)


class HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # listen(2) backlog: a burst of connections waits in the kernel instead of being reset; how
    # many requests are served at once is bounded by the pool, not here.
    request_queue_size = 512

    def __init__(
        self, address: tuple[str, int], handler: type[Handler], max_connections: int, header_timeout: float
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = handler.app
        # Handler threads: one per connection whose head has arrived, at most max_connections.
        self.slots = threading.BoundedSemaphore(max_connections)
        self.stopping = threading.Event()
        self.heads: dict[socket.socket, bytes] = {}
        self.heads_lock = threading.Lock()
        super().__init__(address, handler)
        self.gate = HeadGate(self, header_timeout)
        self.max_connections = max_connections
        self.app.connections = self.connection_stats

    def connection_stats(self) -> dict[str, int]:
        return {
            "waiting_for_head": len(self.gate.pending),
            "handler_threads": self.max_connections - self.slots._value,  # the semaphore's free count
            "max_connections": self.max_connections,
        }

    def process_request(self, request: Any, client_address: Any) -> None:
        self.gate.add(request, client_address)  # a thread only once the head is complete

    def start_handler(self, sock: socket.socket, address: Any, head: bytes) -> None:
        with self.heads_lock:
            self.heads[sock] = head
        thread = threading.Thread(target=self.process_request_thread, args=(sock, address), daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: give the slot back and drop the connection
            with self.heads_lock:
                self.heads.pop(sock, None)
            self.slots.release()
            self.shutdown_request(sock)

    def take_head(self, sock: socket.socket) -> bytes:
        with self.heads_lock:
            return self.heads.pop(sock, b"")

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, DISCONNECTS):
            return  # counted by the handler; a vanished client is not the server's error
        print(f"serve: error on a connection from {client_address[0]}: {type(exc).__name__}: {exc}",
              file=sys.stderr, flush=True)  # fmt: skip


def make_handler(app: App, header_timeout: float, body_timeout: float) -> type[Handler]:
    return type(
        "BoundHandler",
        (Handler,),
        {"app": app, "header_timeout": header_timeout, "body_timeout": body_timeout},
    )


# ---------------------------------------------------------------------------------------------------
# Command line


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False
        return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="serve the bundle's ONNX models over HTTP")
    parser.add_argument("--host", default="127.0.0.1",
                        help="default 127.0.0.1; 0.0.0.0 (every interface) needs API keys")  # fmt: skip
    parser.add_argument(
        "--port", type=int, default=None, help="default: package.json server.port; 0 picks a free one"
    )
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--device", choices=["selected", "cpu"], default="selected",
                        help="cpu: ignore the selected GPU providers (for tests without a GPU)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--max-concurrency", type=int, default=None)
    auth = parser.add_argument_group("access")
    auth.add_argument("--api-keys-file", type=Path, action="append", default=[],
                      help=f"lines 'key_id:role:sha256hex'; also ${KEYS_ENV}")  # fmt: skip
    auth.add_argument("--no-auth", action="store_true",
                      help="serve without API keys: allowed only on a loopback address")  # fmt: skip
    auth.add_argument("--new-key", metavar="KEY_ID:ROLE",
                      help="print a new random key and its keys-file line, then exit")  # fmt: skip
    auth.add_argument("--audit-log", default=os.environ.get("TRAINRELAY_AUDIT_LOG", "-"),
                      help="JSONL file to append to (default $TRAINRELAY_AUDIT_LOG; - stdout)")  # fmt: skip
    auth.add_argument("--rate-limit", type=float, default=100.0,
                      help="average requests/s per key (0: no limit; default 100)")  # fmt: skip
    auth.add_argument("--rate-burst", type=float, default=200.0,
                      help="requests a key may send at once (default 200)")  # fmt: skip
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-body-mb", type=float, default=MAX_BODY_BYTES / 2**20,
                        help="larger bodies are answered 413 before they are read (default 64)")  # fmt: skip
    limits.add_argument("--max-connections", type=int, default=256,
                        help="connections served at once, a thread each (default 256)")  # fmt: skip
    limits.add_argument("--header-timeout", type=float, default=10.0,
                        help="seconds a client has to send its request line and headers")  # fmt: skip
    limits.add_argument("--body-timeout", type=float, default=60.0,
                        help="seconds a client has to send its body")  # fmt: skip
    return parser


def build(args: argparse.Namespace) -> tuple[App, HTTPServer]:
    """The application and its bound HTTP server; StartupError for anything the operator must fix."""
    keys = KeyRing.load(os.environ.get(KEYS_ENV), args.api_keys_file)
    if len(keys) and args.no_auth:
        raise StartupError(
            f"--no-auth given but API keys are configured ({KEYS_ENV} / --api-keys-file); pick one"
        )
    if not len(keys):
        if not args.no_auth:
            raise StartupError(
                f"no API keys: set {KEYS_ENV} or --api-keys-file (lines key_id:role:sha256hex; make one with "
                "--new-key ID:ROLE), or pass --no-auth to serve without keys on a loopback address"
            )
        if not is_loopback(args.host):
            raise StartupError(
                f"--no-auth serves only on a loopback address (127.0.0.1, ::1), not {args.host}: "
                f"configure API keys ({KEYS_ENV} or --api-keys-file) to serve on {args.host}"
            )
    positive = {"--max-connections": args.max_connections, "--header-timeout": args.header_timeout,
                "--body-timeout": args.body_timeout, "--max-body-mb": args.max_body_mb}  # fmt: skip
    for flag, value in positive.items():
        if value <= 0:
            raise StartupError(f"{flag} must be positive, got {value:g}")
    if args.rate_limit < 0:
        raise StartupError(f"--rate-limit must be >= 0, got {args.rate_limit:g}")
    overrides = {
        "workers": args.workers,
        "max_concurrency": args.max_concurrency,
        "max_body_bytes": int(args.max_body_mb * 2**20),
    }
    if "CUDAExecutionProvider" in ort.get_available_providers() and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* pip wheels (onnxruntime-gpu[cuda,cudnn])
    audit = AuditLog(args.audit_log)
    app = App(args.bundle, overrides, args.device, keys if len(keys) else None,
              RateLimiter(args.rate_limit, args.rate_burst), audit)  # fmt: skip
    port = args.port if args.port is not None else int(app.settings["port"])
    handler = make_handler(app, args.header_timeout, args.body_timeout)
    try:
        httpd = HTTPServer((args.host, port), handler, args.max_connections, args.header_timeout)
    except OSError as exc:
        app.pool.stop()
        raise StartupError(f"cannot listen on {args.host}:{port} ({exc.strerror or exc})") from None
    return app, httpd


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.new_key:
            sys.stdout.write(new_key(args.new_key))
            return 0
        app, httpd = build(args)
    except StartupError as exc:
        print(f"serve: {exc}", file=sys.stderr, flush=True)
        return 2

    def stop(_signum: int, _frame: Any) -> None:
        httpd.stopping.set()
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, bound = httpd.server_address[:2]
    if app.keys is None:
        print(f"serve: no API keys (--no-auth): anyone who can reach {host} may call every route",
              file=sys.stderr, flush=True)  # fmt: skip
    print(
        json.dumps({"event": "listening", "host": host, "port": bound, "models": sorted(app.models),
                    "auth": "keys" if app.keys is not None else "none"}),
        flush=True,
    )  # fmt: skip
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        app.pool.stop()
        httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
