"""ONNX Runtime inference server of a trainrelay deployment bundle.

Runs from the unpacked bundle with only the standard library, numpy and onnxruntime:

    python server/serve.py [--host 0.0.0.0] [--port 8080]

It reads ``package.json`` (one directory up): the models, the execution providers of the engine the
benchmark selected, and the serving settings. Requests:

* ``POST /predict/<model>`` with ``{"inputs": [[...], ...]}`` (a batch) answers
  ``{"model", "outputs", "shape", "queue_ms", "inference_ms"}``.
* ``GET /health`` reports every model's status, the worker pool, the queue depth and the GPU.

A fixed pool of ``workers`` threads runs inference; at most ``max_concurrency`` requests are inside
the server at once (running + queued). A request beyond that is answered 503 at once, never
queued without bound; one that waits longer than ``queue_timeout_s`` for a worker gets 503, and an
inference running longer than ``inference_timeout_s`` is cancelled (ONNX Runtime's
``RunOptions.terminate``) and answered 504.

This file is copied into the bundle as is; it must not import trainrelay.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

MAX_BODY_BYTES = 64 * 1024 * 1024
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


class ServeError(Exception):
    """A request the server refuses, with its HTTP status."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


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
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)
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
        raise SystemExit(
            f"serve: this onnxruntime {ort.__version__} lacks {', '.join(missing)} (it has "
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
    """A bounded request queue served by a fixed number of inference threads."""

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

    def submit(self, job: Job) -> None:
        with self.lock:
            if self.admitted >= self.max_concurrency:
                self.counters["rejected_full"] += 1
                raise ServeError(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    f"server full: {self.admitted} requests in flight "
                    f"(max_concurrency {self.max_concurrency})",
                )
            self.admitted += 1
        self.jobs.put(job)

    def _release(self) -> None:
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
                self._release()
                job.done.set()

    def run(self, job: Job) -> list[np.ndarray]:
        """Queue ``job`` and wait for its outputs within the queue and inference timeouts."""
        self.submit(job)
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


class Handler(BaseHTTPRequestHandler):
    server_version = "trainrelay-serve/1"
    app: App  # set on the subclass made by App.handler()
    # Socket timeout per read: a client that announces a body and never sends it gives its handler
    # thread back after this instead of holding it for ever.
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        return  # access logs would dominate a load test; errors are counted in /health

    def _send(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == HTTPStatus.SERVICE_UNAVAILABLE:
            self.send_header("Retry-After", "1")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/health":
            health = self.app.health()
            self._send(HTTPStatus.OK if health["status"] == "ok" else HTTPStatus.SERVICE_UNAVAILABLE, health)
        else:
            self._send(HTTPStatus.NOT_FOUND, {"error": "use GET /health or POST /predict/<model>"})

    def do_POST(self) -> None:
        try:
            name, batch = self._parse()
            self._send(HTTPStatus.OK, self.app.predict(name, batch))
        except ServeError as exc:
            self._send(exc.status, {"error": str(exc)})

    def _parse(self) -> tuple[str, np.ndarray]:
        parts = [p for p in self.path.split("/") if p]
        if not parts or parts[0] != "predict" or len(parts) > 2:
            raise ServeError(HTTPStatus.NOT_FOUND, "use POST /predict/<model>")
        length = self._content_length()
        try:
            body = json.loads(self.rfile.read(length))
            batch = np.asarray(body["inputs"], dtype=np.float32)
        except (ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: absurd nesting
            raise ServeError(
                HTTPStatus.BAD_REQUEST,
                f'body must be JSON {{"inputs": [...]}} ({type(exc).__name__}: {exc})'[:300],
            ) from exc
        name = parts[1] if len(parts) == 2 else str(body.get("model", ""))
        return name, batch

    def _content_length(self) -> int:
        """The body's length: 400 when the header is missing, not an integer or not positive (the body
        cannot be read without it; chunked bodies are not supported), 413 above MAX_BODY_BYTES."""
        raw = self.headers.get("Content-Length")
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
                f"Content-Length must be a whole number of bytes 1..{MAX_BODY_BYTES}, got {raw[:40]!r}",
            )
        # int() refuses numbers of more than 4300 digits; one of more than 20 is over the limit anyway
        if len(significant) > 20 or int(significant) > MAX_BODY_BYTES:
            raise ServeError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body of {significant[:40]} bytes is over the limit of {MAX_BODY_BYTES} bytes",
            )
        return int(significant)


class HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # listen(2) backlog: a burst of connections waits in the kernel instead of being reset; how
    # many requests are served at once is bounded by the pool, not here.
    request_queue_size = 512


class App:
    def __init__(self, bundle: Path, overrides: dict[str, Any], device: str) -> None:
        self.meta = json.loads((bundle / "package.json").read_text(encoding="utf-8"))
        self.settings = {**self.meta["server"], **{k: v for k, v in overrides.items() if v is not None}}
        if self.settings["max_concurrency"] < self.settings["workers"]:
            raise SystemExit("serve: max_concurrency must be >= workers")
        self.models = {
            name: Model(name, spec, bundle, self.settings, device)
            for name, spec in sorted(self.meta["models"].items())
        }
        self.pool = Pool(self.settings)
        self.gpu = GpuProbe(self.models, self.settings)

    def predict(self, name: str, batch: np.ndarray) -> dict[str, Any]:
        model = self.models.get(name)
        if model is None:
            raise ServeError(HTTPStatus.NOT_FOUND, f"no model '{name}'; have {', '.join(self.models)}")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        model.check(batch)
        job = Job(model, batch)
        outputs = self.pool.run(job)
        return {
            "model": name,
            "outputs": outputs[0].tolist(),
            "shape": list(outputs[0].shape),
            "queue_ms": round(job.queue_ms, 3),
            "inference_ms": round(job.inference_ms, 3),
        }

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

    def handler(self) -> type[Handler]:
        return type("BoundHandler", (Handler,), {"app": self})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="serve the bundle's ONNX models over HTTP")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument(
        "--port", type=int, default=None, help="default: package.json server.port; 0 picks a free one"
    )
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--device", choices=["selected", "cpu"], default="selected",
                        help="cpu: ignore the selected GPU providers (for tests without a GPU)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--max-concurrency", type=int, default=None)
    args = parser.parse_args(argv)
    overrides = {"workers": args.workers, "max_concurrency": args.max_concurrency}
    if "CUDAExecutionProvider" in ort.get_available_providers() and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* pip wheels (onnxruntime-gpu[cuda,cudnn])
    app = App(args.bundle, overrides, args.device)
    port = args.port if args.port is not None else int(app.settings["port"])
    httpd = HTTPServer((args.host, port), app.handler())

    def stop(_signum: int, _frame: Any) -> None:
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, bound = httpd.server_address[:2]
    print(
        json.dumps({"event": "listening", "host": host, "port": bound, "models": sorted(app.models)}),
        flush=True,
    )
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        app.pool.stop()
        httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
