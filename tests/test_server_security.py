"""The bundle server lets no one in by accident and survives hostile clients: API keys and roles
(401 / 403 with a JSON error), the audit log (key id, never the key or the payload), the per-key rate
limit (429), start-up refusals (no keys, --no-auth off loopback, a damaged model: one line, no
traceback), checksums on reload, the concurrency limit applied before a body is read, 413 before
reading, quiet client disconnects and slow clients that cost no handler thread."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_package import build, export_models, package_config
from tests.test_package_server import Server, unpack, wait_for_health

PREDICT_KEY, ADMIN_KEY = "trk_predict-key-for-tests", "trk_admin-key-for-tests"
ROW = {"inputs": [[0.25] * 12]}


def line(key_id: str, role: str, key: str) -> str:
    return f"{key_id}:{role}:{hashlib.sha256(key.encode()).hexdigest()}"


KEYS_ENV = {"TRAINRELAY_API_KEYS": f"{line('ci', 'predict', PREDICT_KEY)},{line('ops', 'admin', ADMIN_KEY)}"}


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sec")
    models = export_models(root / "models")
    bundle, _ = build(models, root, package_config(workers=1, max_concurrency=2, cpu_threads=1))
    return unpack(bundle, root / "unpacked")


@pytest.fixture
def bundle_copy(bundle_dir, tmp_path) -> Path:
    return Path(shutil.copytree(bundle_dir, tmp_path / bundle_dir.name))


@pytest.fixture(scope="module")
def keyed(bundle_dir):
    server = Server(bundle_dir, "--rate-limit", "0", env=KEYS_ENV)
    yield server
    server.stop()


def start(folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the server expecting it to refuse to start."""
    environ = {k: v for k, v in os.environ.items() if k != "TRAINRELAY_API_KEYS"} | (env or {})
    return subprocess.run(
        [sys.executable, "server/serve.py", "--port", "0", *args],
        cwd=folder, capture_output=True, text=True, timeout=60, env=environ,
    )  # fmt: skip


def one_line_refusal(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("serve: ") and all(w in done.stderr for w in words), done.stderr


def audit_lines(server: Server) -> list[dict]:
    return [json.loads(x) for x in server.audit.read_text().splitlines()]


def test_keys_and_roles(keyed) -> None:
    assert keyed.request("/health")[0] == 200  # open: load balancers and Docker health checks
    status, payload, _ = keyed.request("/predict/policy", ROW)
    assert (status, payload) == (401, {"error": "API key required: send 'Authorization: Bearer <key>'"})
    status, payload, _ = keyed.request("/predict/policy", ROW, key="trk_not-a-key")
    assert (status, payload) == (401, {"error": "unknown API key"})
    assert keyed.request("/predict/policy", ROW, key=PREDICT_KEY)[0] == 200
    assert keyed.request("/predict/policy", ROW, key=ADMIN_KEY)[0] == 200  # admin may predict too
    status, payload, _ = keyed.request("/metrics", key=PREDICT_KEY)
    assert (status, payload) == (403, {"error": "key 'ci' has role predict; this needs admin"})
    assert keyed.request("/admin/reload", {}, key=PREDICT_KEY)[0] == 403
    status, metrics, _ = keyed.request("/metrics", key=ADMIN_KEY)
    assert status == 200 and metrics["http"]["auth_failures"] == 2 and metrics["http"]["forbidden"] == 2
    assert keyed.request("/nope", key=PREDICT_KEY)[0] == 404
    assert keyed.request("/nope")[0] == 401  # no route is revealed without a key


def test_audit_log_has_key_ids_never_keys_or_payloads(keyed) -> None:
    secret_row = {"inputs": [[0.123456] * 12]}
    assert keyed.request("/predict/policy", secret_row, key=PREDICT_KEY)[0] == 200
    assert keyed.request("/predict/policy", secret_row, key="trk_wrong-key")[0] == 401
    text = keyed.audit.read_text()
    for secret in (PREDICT_KEY, ADMIN_KEY, "trk_wrong-key", "0.123456"):
        assert secret not in text
    records = audit_lines(keyed)
    fields = {"time", "event", "key_id", "client", "method", "route", "model", "status", "latency_ms"}
    assert all(set(r) == fields for r in records)
    ok = [r for r in records if r["status"] == 200 and r["route"] == "/predict/policy"]
    assert ok[-1]["key_id"] == "ci" and ok[-1]["model"] == "policy" and ok[-1]["latency_ms"] >= 0
    assert records[-1]["status"] == 401 and records[-1]["key_id"] is None


def test_rate_limit_answers_429(bundle_dir) -> None:
    # 0.001 requests/s: no token comes back during the test, however slow the machine
    server = Server(bundle_dir, "--rate-limit", "0.001", "--rate-burst", "2", env=KEYS_ENV, key=PREDICT_KEY)
    try:
        assert [server.request("/predict/policy", ROW)[0] for _ in range(2)] == [200, 200]
        status, payload, _ = server.request("/predict/policy", ROW)
        assert status == 429 and payload["error"].startswith("rate limit of key 'ci'")
        assert server.request("/predict/policy", ROW, key=ADMIN_KEY)[0] == 200  # per key
        assert audit_lines(server)[-2]["status"] == 429
    finally:
        server.stop()


def test_new_key_helper_makes_a_working_key(bundle_dir) -> None:
    done = subprocess.run([sys.executable, "server/serve.py", "--new-key", "robot:predict"], cwd=bundle_dir,
                          capture_output=True, text=True, check=True)  # fmt: skip
    key = done.stdout.split("server keeps only its hash): ")[1].split()[0]
    entry = done.stdout.split("TRAINRELAY_API_KEYS: ")[1].strip()
    assert entry == line("robot", "predict", key)
    server = Server(bundle_dir, env={"TRAINRELAY_API_KEYS": entry}, key=key)
    try:
        assert server.request("/predict/policy", ROW)[0] == 200
        assert key not in server.audit.read_text()
    finally:
        server.stop()


def test_start_refusals_are_one_line(bundle_dir, tmp_path) -> None:
    one_line_refusal(start(bundle_dir), "no API keys", "--no-auth")
    one_line_refusal(start(bundle_dir, "--host", "0.0.0.0", "--no-auth"), "loopback", "0.0.0.0")
    one_line_refusal(start(bundle_dir, env={"TRAINRELAY_API_KEYS": "ci:predict:abc"}), "entry 1")
    bad_role = {"TRAINRELAY_API_KEYS": line("ci", "root", PREDICT_KEY)}
    one_line_refusal(start(bundle_dir, env=bad_role), "role must be one of predict, admin")
    keys = tmp_path / "keys"
    keys.write_text(f"# comment\n{line('a', 'admin', ADMIN_KEY)}\n{line('a', 'predict', PREDICT_KEY)}\n")
    one_line_refusal(start(bundle_dir, "--api-keys-file", str(keys)), f"{keys}:3", "listed twice")


def test_damaged_model_is_one_line_at_start(bundle_copy) -> None:
    model = bundle_copy / "models" / "policy.onnx"
    model.write_bytes(model.read_bytes()[:100])  # truncated
    one_line_refusal(start(bundle_copy, "--no-auth"), "models/policy.onnx: checksum mismatch")
    # SHA256SUMS made to match the truncated file: ONNX Runtime's refusal, still one line
    sums = bundle_copy / "SHA256SUMS"
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    entries = (x.split("  ", 1) for x in sums.read_text().splitlines())
    sums.write_text("".join(f"{digest if p == 'models/policy.onnx' else d}  {p}\n" for d, p in entries))
    one_line_refusal(start(bundle_copy, "--no-auth"), "models/policy.onnx: ONNX Runtime cannot load it")
    sums.unlink()
    one_line_refusal(start(bundle_copy, "--no-auth"), "SHA256SUMS: cannot read it")


def test_reload_checks_checksums_and_keeps_serving(bundle_copy) -> None:
    server = Server(bundle_copy, env=KEYS_ENV, key=ADMIN_KEY)
    try:
        status, payload, _ = server.request("/admin/reload", {})
        assert (status, payload) == (200, {"status": "reloaded", "models": ["forecaster", "policy"]})
        model = bundle_copy / "models" / "forecaster.onnx"
        good = model.read_bytes()
        model.write_bytes(good[: len(good) // 2])
        status, payload, _ = server.request("/admin/reload", {})
        assert status == 500 and payload["error"].startswith(
            "reload failed, still serving the previous models: models/forecaster.onnx: checksum mismatch"
        )
        assert server.request("/predict/policy", ROW)[0] == 200
        model.write_bytes(good)
        assert server.request("/admin/reload", {})[0] == 200
    finally:
        server.stop()
    assert "Traceback" not in server.proc.stderr.read()


def held_request(port: int, length: int) -> socket.socket:
    """A POST whose head is sent and whose body is not (yet)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(f"POST /predict/policy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {length}\r\n\r\n".encode())  # fmt: skip
    return sock


def test_limits_apply_before_the_body_is_read(bundle_dir) -> None:
    """max_concurrency 2: two requests whose bodies have not arrived hold both places, so a third is
    answered 503 before anything of it is read; a body over --max-body-mb is answered 413 on its
    header alone; a client that leaves mid-body is one audit line (499) and no traceback."""
    server = Server(bundle_dir, "--max-body-mb", "1")
    try:
        first, second = held_request(server.port, 1000), held_request(server.port, 1000)
        wait_for_health(server, lambda h: h["queue"]["in_flight"] == 2, timeout=30)
        status, payload, _ = server.request("/predict/policy", ROW)
        assert status == 503 and payload["error"].startswith("server full"), payload
        big = held_request(server.port, 2 * 1024 * 1024)  # 2 MB announced, none sent
        response = http.client.HTTPResponse(big)
        response.begin()
        assert response.status == 413 and json.loads(response.read())["error"].startswith("body of 2097152")
        big.close()
        for sock in (first, second):  # leave mid-body
            sock.sendall(b'{"inputs": [[')
            sock.close()
        wait_for_health(server, lambda h: h["queue"]["in_flight"] == 0, timeout=30)
        assert server.request("/predict/policy", ROW)[0] == 200
        statuses = [r["status"] for r in audit_lines(server)]
        assert statuses.count(499) == 2 and statuses.count(413) == 1 and statuses.count(503) == 1
        assert server.request("/metrics")[1]["http"]["disconnects"] == 2
    finally:
        server.stop()
    assert server.proc.stderr.read().strip() == "serve: no API keys (--no-auth): anyone who can reach " \
        "127.0.0.1 may call every route"  # fmt: skip


def test_slow_clients_hold_no_handler_thread(bundle_dir) -> None:
    """Two handler threads, ten clients trickling their heads: normal requests are still served, and
    a head that does not arrive within --header-timeout gets its connection closed."""
    server = Server(bundle_dir, "--max-connections", "2", "--header-timeout", "2")
    slow = []
    try:
        for _ in range(10):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            sock.sendall(b"POST /predict/policy HTTP/1.1\r\nHost: x\r\nContent-Le")
            slow.append(sock)
        for _ in range(5):
            assert server.request("/predict/policy", ROW)[0] == 200
        # The slow ones wait in the head gate, not in handler threads: had they taken the two
        # threads, none of the five requests above could have been served. (The handler-thread
        # count is not asserted: the previous request's thread may still be releasing its slot
        # after its client got the answer, so it is 1 or 2 depending on the machine's load.)
        connections = server.request("/metrics")[1]["connections"]
        assert connections["waiting_for_head"] == 10
        assert slow[0].recv(100) == b""  # closed by the server once the head deadline passed
        assert server.request("/metrics")[1]["http"]["header_timeouts"] >= 1
    finally:
        for sock in slow:
            sock.close()
        server.stop()
    assert "Traceback" not in server.proc.stderr.read()
