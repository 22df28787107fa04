"""The bundle's own inference server, started from an unpacked bundle: 100 concurrent requests
answered exactly like onnxruntime answers them, p95 latency recorded, and a full queue answered
503 at once (a queue timeout 503, an inference timeout 504) instead of hanging; a request that
timed out in the queue frees its place at once; a bad Content-Length gets 400; nvidia-smi's
"[N/A]" on a MIG GPU does not break /health."""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from tests.test_package import build, export_models, package_config
from trainrelay.package.builder import SERVER_SOURCE

torch.set_num_threads(1)


class SlowPolicy(nn.Module):
    """A policy-shaped model made slow on purpose: one wide layer applied many times."""

    def __init__(self, dim: int = 12, width: int = 2048, repeats: int = 32) -> None:
        super().__init__()
        self.inp, self.hidden, self.out = nn.Linear(dim, width), nn.Linear(width, width), nn.Linear(width, 1)
        self.repeats = repeats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        for _ in range(self.repeats):
            h = torch.tanh(self.hidden(h))
        return self.out(h)


def unpack(bundle: Path, dest: Path) -> Path:
    with tarfile.open(bundle, "r:gz") as tar:
        tar.extractall(dest, filter="data")
    return next(dest.iterdir())


class Server:
    """``python server/serve.py`` of an unpacked bundle on 127.0.0.1 and a free port; open (no API
    keys) unless ``extra`` configures keys, and with its audit log in ``audit`` (next to the bundle)."""

    def __init__(self, folder: Path, *extra: str, env: dict[str, str] | None = None,
                 key: str | None = None) -> None:  # fmt: skip
        self.audit = folder.parent / f"audit-{os.getpid()}-{id(self)}.jsonl"
        self.key = key  # sent as the Bearer key by request()
        keyed = env is not None or "--api-keys-file" in extra
        args = [*extra, *(() if keyed else ("--no-auth",)), "--audit-log", str(self.audit)]
        environ = {k: v for k, v in os.environ.items() if k != "TRAINRELAY_API_KEYS"} | (env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "server/serve.py", "--host", "127.0.0.1", "--port", "0", *args],
            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ,
        )  # fmt: skip
        line = self.proc.stdout.readline()  # the server prints one JSON line when it listens
        if not line:
            raise AssertionError(f"server did not start: {self.proc.stderr.read()}")
        self.port = json.loads(line)["port"]

    def request(self, path: str, body: Any = None, timeout: float = 60, key: str | None = None,
                method: str | None = None) -> tuple[int, dict, float]:  # fmt: skip
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if key or self.key:
            headers["Authorization"] = f"Bearer {key or self.key}"
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, headers=headers,
                                     method=method)  # fmt: skip
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, payload = resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, json.loads(exc.read())
        return status, payload, time.perf_counter() - started

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def slow_policy_server(tmp_path: Path, **settings: Any) -> Iterator[Server]:
    """A served bundle whose policy takes about a second per large batch (queue and timeout tests)."""
    models = export_models(tmp_path / "models", policy=SlowPolicy())
    bundle, _ = build(models, tmp_path, package_config(**settings))
    server = Server(unpack(bundle, tmp_path / "unpacked"))
    try:
        yield server
    finally:
        server.stop()


def random_batch(seed: int) -> dict[str, Any]:
    return {"inputs": np.random.default_rng(seed).standard_normal((512, 12)).astype(np.float32).tolist()}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("srv")
    models = export_models(root / "models")
    bundle, _ = build(models, root, package_config(workers=2, max_concurrency=128, cpu_threads=1))
    folder = unpack(bundle, root / "unpacked")
    server = Server(folder)
    yield server, folder
    server.stop()


def test_health(served) -> None:
    server, _ = served
    status, health, _ = server.request("/health")
    assert status == 200 and health["status"] == "ok"
    assert set(health["models"]) == {"forecaster", "policy"}
    assert all(m["status"] == "loaded" and m["providers"]["active"] == ["CPUExecutionProvider"]
               for m in health["models"].values())  # fmt: skip
    assert health["pool"] == {"workers": 2, "alive": 2, "busy": 0, "idle": 2}
    assert health["queue"]["depth"] == 0 and health["queue"]["max_concurrency"] == 128
    assert health["queue"]["queue_timeout_s"] == 30 and health["queue"]["inference_timeout_s"] == 30
    assert health["gpu"]["requested"] is False and health["gpu"]["active_providers"] == []


def test_100_concurrent_requests_match_onnxruntime(served, record_property) -> None:
    server, folder = served
    cpu = ["CPUExecutionProvider"]
    sessions = {m: ort.InferenceSession(str(folder / "models" / f"{m}.onnx"), providers=cpu)
                for m in ("forecaster", "policy")}  # fmt: skip
    samples = {m: np.load(folder / "samples" / f"{m}_inputs.npy") for m in sessions}
    jobs = []
    for i in range(100):
        model = ("forecaster", "policy")[i % 2]
        rows = samples[model][i % 8 : i % 8 + 1 + i % 5]  # batches of 1..5 real rows
        jobs.append((model, rows))

    def call(job: tuple[str, np.ndarray]) -> tuple[int, dict, float]:
        return server.request(f"/predict/{job[0]}", {"inputs": job[1].tolist()}, timeout=60)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=100) as pool:
        answers = list(pool.map(call, jobs))
    wall = time.perf_counter() - started
    assert wall < 60
    for (model, rows), (status, payload, _) in zip(jobs, answers, strict=True):
        assert status == 200, payload
        (expected,) = sessions[model].run(None, {"x": rows})
        assert payload["shape"] == list(expected.shape)
        np.testing.assert_allclose(
            np.asarray(payload["outputs"], dtype=np.float32), expected, rtol=1e-6, atol=1e-7
        )
    latencies = sorted(a[2] * 1000 for a in answers)
    p95 = float(np.percentile(latencies, 95))
    record_property("p95_latency_ms", round(p95, 2))
    record_property("wall_seconds", round(wall, 2))
    print(
        f"100 concurrent requests: p95 {p95:.1f} ms, p50 {np.percentile(latencies, 50):.1f} ms, "
        f"wall {wall:.2f} s"
    )
    _, health, _ = server.request("/health")
    assert health["requests"]["served"] >= 100 and health["requests"]["rejected_full"] == 0


def test_bad_requests(served) -> None:
    server, _ = served
    assert server.request("/predict/policy", {"inputs": [[1.0, 2.0]]})[0] == 400
    assert server.request("/predict/nope", {"inputs": [[1.0] * 12]})[0] == 404
    assert server.request("/predict/policy", {"rows": []})[0] == 400
    assert server.request("/nope")[0] == 404
    assert server.request("/health", {"inputs": []})[0] == 404  # POST /health is no route


def raw_post(port: int, content_length: str | None, body: bytes = b"") -> tuple[int, dict]:
    """POST /predict/policy with exactly this Content-Length header (None: none at all), which
    urllib and http.client's request() would otherwise compute themselves."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("POST", "/predict/policy")
        conn.putheader("Content-Type", "application/json")
        if content_length is not None:
            conn.putheader("Content-Length", content_length)
        conn.endheaders(body or None)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_content_length_errors(served) -> None:
    server, _ = served
    body = json.dumps({"inputs": [[0.5] * 12]}).encode()
    status, payload = raw_post(server.port, str(len(body)), body)
    assert status == 200 and payload["shape"] == [1, 1]
    assert raw_post(server.port, None) == (
        400, {"error": "Content-Length header missing: send the JSON body with its length"}
    )  # fmt: skip
    limit = 64 * 1024 * 1024
    for bad in ("abc", "-5", "0", "1_000", "12abc", "1e3"):
        status, payload = raw_post(server.port, bad)
        assert (status, payload["error"]) == (
            400, f"Content-Length must be a whole number of bytes 1..{limit}, got {bad!r}"
        )  # fmt: skip
    assert raw_post(server.port, str(limit + 1)) == (
        413, {"error": f"body of {limit + 1} bytes is over the limit of {limit} bytes"}
    )  # fmt: skip
    # more digits than int() parses (4300) is still just too large, not a crash
    status, payload = raw_post(server.port, "9" * 5000)
    assert status == 413 and payload["error"].startswith("body of 9999") and "\n" not in payload["error"]
    # absurdly nested JSON is a bad request, not a dropped connection
    nested = b"[" * 100_000 + b"]" * 100_000
    status, payload = raw_post(server.port, str(len(nested)), nested)
    assert status == 400 and "RecursionError" in payload["error"]
    # the server is unharmed: every refused request was answered and it still serves
    assert server.request("/predict/policy", {"inputs": [[0.5] * 12]})[0] == 200


def wait_for_health(server, ready, timeout: float = 5.0) -> None:
    """Poll /health until ``ready(health)``: order requests by server state, not by sleeping."""
    deadline = time.monotonic() + timeout
    while not ready(health := server.request("/health")[1]):
        assert time.monotonic() < deadline, health
        time.sleep(0.005)


def test_full_queue_answers_503_at_once(tmp_path) -> None:
    """One worker, room for two requests, inference ~2 s: the rest are refused immediately."""
    # The queued request gives its place back when its queue timeout fires, so a request arriving
    # after that is rightly admitted (and times out in turn): the four below are refused only if
    # they arrive within queue_timeout_s of the queued one. They take ~60 ms; 0.5 s leaves room.
    with slow_policy_server(tmp_path, workers=1, max_concurrency=2, queue_timeout_s=0.5) as server:
        batch = random_batch(0)
        status, payload, slow = server.request("/predict/policy", batch)
        assert status == 200 and payload["inference_ms"] > 400, payload.get("inference_ms")
        # four batches: the worker stays busy (~4 x slow) well past the queued request's 0.5 s
        long_batch = {"inputs": batch["inputs"] * 4}
        with ThreadPoolExecutor(max_workers=6) as pool:
            first = pool.submit(server.request, "/predict/policy", long_batch)
            wait_for_health(server, lambda h: h["pool"]["busy"] == 1)  # the first is running
            second = pool.submit(server.request, "/predict/policy", batch)
            wait_for_health(server, lambda h: h["queue"]["in_flight"] == 2)  # the second waits in the queue
            rest = [pool.submit(server.request, "/predict/policy", batch) for _ in range(4)]
            rejected = [f.result(timeout=30) for f in rest]
            queued, running = second.result(timeout=30), first.result(timeout=30)
        assert running[0] == 200
        assert [r[0] for r in rejected] == [503] * 4
        assert all(
            "server full" in r[1]["error"] and r[2] < 0.5 * slow for r in rejected
        )  # refused, not queued
        assert queued[0] == 503 and "queue_timeout_s" in queued[1]["error"] and queued[2] < 0.5 + 0.5 * slow
        _, health, _ = server.request("/health")
        assert health["requests"]["rejected_full"] == 4 and health["requests"]["queue_timeouts"] == 1


def test_queue_timeout_frees_its_place_at_once(tmp_path) -> None:
    """A request that timed out in the queue has left the server: the next one is admitted at once,
    not refused "server full" until the busy worker gets round to discarding the dead job."""
    with slow_policy_server(tmp_path, workers=1, max_concurrency=2, queue_timeout_s=0.2) as server:
        long_batch = {"inputs": random_batch(2)["inputs"] * 4}  # ~2.5 s: busy through all below
        small = {"inputs": [[0.0] * 12]}
        with ThreadPoolExecutor(max_workers=1) as pool:
            running = pool.submit(server.request, "/predict/policy", long_batch)
            wait_for_health(server, lambda h: h["pool"]["busy"] == 1)
            status, payload, _ = server.request("/predict/policy", small)  # queued, gives up after 0.2 s
            assert status == 503 and "queue_timeout_s" in payload["error"], payload
            _, health, _ = server.request("/health")
            # the worker is still on the long batch, so the dead job is still in its queue
            assert health["pool"]["busy"] == 1, health
            assert health["queue"]["in_flight"] == 1 and health["requests"]["rejected_full"] == 0
            status, payload, _ = server.request("/predict/policy", small)
            # admitted and queued behind the long batch (so it too times out), not "server full"
            assert status == 503 and "queue_timeout_s" in payload["error"], payload
            assert running.result(timeout=60)[0] == 200
        # the worker pops both dead jobs without releasing their places a second time
        wait_for_health(server, lambda h: h["queue"]["depth"] == 0 and h["pool"]["busy"] == 0)
        _, health, _ = server.request("/health")
        assert health["queue"]["in_flight"] == 0
        assert {k: health["requests"][k] for k in ("served", "queue_timeouts", "rejected_full")} == {
            "served": 1, "queue_timeouts": 2, "rejected_full": 0
        }  # fmt: skip
        assert server.request("/predict/policy", small)[0] == 200


def load_serve_module():
    """The bundle's server.py as a module (it imports only the standard library, numpy, onnxruntime)."""
    spec = importlib.util.spec_from_file_location("bundle_serve", SERVER_SOURCE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def fake_nvidia_smi(folder: Path, output: str) -> None:
    """nvidia-smi cannot run here: a script of that name prints what a real one printed."""
    folder.mkdir()
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}EOF\n")
    script.chmod(0o755)


def test_gpu_probe_reads_mig_nvidia_smi(tmp_path, monkeypatch) -> None:
    """On a MIG GPU nvidia-smi reports utilization.gpu as "[N/A]": no number, /health still answers.
    A server cannot request CUDA here (onnxruntime has no CUDA provider), so the probe is run directly."""
    serve = load_serve_module()
    fake_nvidia_smi(
        tmp_path / "bin",
        "NVIDIA H100 80GB HBM3, 10240, 81559, [N/A]\nNVIDIA A100-SXM4-40GB, 512, 40960, 37\n",
    )
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    device = serve.GpuProbe({}, {})._smi()
    assert device == {
        "status": "ok",
        "gpus": [
            {"name": "NVIDIA H100 80GB HBM3", "memory_used_mb": 10240.0, "memory_total_mb": 81559.0,
             "utilization_pct": None},
            {"name": "NVIDIA A100-SXM4-40GB", "memory_used_mb": 512.0, "memory_total_mb": 40960.0,
             "utilization_pct": 37.0},
        ],
    }  # fmt: skip
    json.dumps(device, allow_nan=False)  # what /health sends must stay valid JSON


def test_gpu_probe_reports_unreadable_nvidia_smi(tmp_path, monkeypatch) -> None:
    serve = load_serve_module()
    fake_nvidia_smi(tmp_path / "bin", "No devices were found\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    device = serve.GpuProbe({}, {})._smi()
    assert device["status"] == "unavailable"
    assert device["reason"].startswith("nvidia-smi output not understood")


def test_inference_timeout_answers_504(tmp_path) -> None:
    with slow_policy_server(tmp_path, workers=1, max_concurrency=2, inference_timeout_s=0.2) as server:
        batch = random_batch(1)
        status, payload, seconds = server.request("/predict/policy", batch)
        assert status == 504 and "inference_timeout_s" in payload["error"] and seconds < 5
        # The cancelled run frees its worker: a small request is served afterwards.
        deadline = time.monotonic() + 20
        while (answer := server.request("/predict/policy", {"inputs": [[0.0] * 12]}))[0] != 200:
            assert time.monotonic() < deadline, answer
            time.sleep(0.2)


def test_tensorrt_caches_go_where_the_server_user_can_write(tmp_path, monkeypatch) -> None:
    """The image runs as uid 10001 in a root-owned /app: the engine cache must not default there."""
    serve = load_serve_module()
    monkeypatch.delenv("TRAINRELAY_TRT_CACHE", raising=False)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(serve.tempfile, "tempdir", None)  # re-read TMPDIR
    options = serve.tensorrt_options()
    default = tmp_path / "tmp" / "trainrelay-trt-cache"
    assert options["trt_engine_cache_path"] == options["trt_timing_cache_path"] == str(default)
    assert default.is_dir()
    assert {
        options[k] for k in ("trt_fp16_enable", "trt_engine_cache_enable", "trt_timing_cache_enable")
    } == {"True"}
    monkeypatch.setenv("TRAINRELAY_TRT_CACHE", str(tmp_path / "volume"))
    assert serve.tensorrt_options()["trt_engine_cache_path"] == str(tmp_path / "volume")
    assert (tmp_path / "volume").is_dir()
