from __future__ import annotations

import ctypes
import importlib.util
import json

import pytest
import torch

from trainrelay.environment import collect_environment, ort_provider_status, write_environment
from trainrelay.errors import DeviceError

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def env_auto() -> dict:
    return collect_environment("auto")


def test_versions_match_the_running_interpreter(env_auto: dict) -> None:
    import platform

    import onnxruntime

    assert env_auto["python"] == platform.python_version()
    assert env_auto["torch_version"] == torch.__version__
    assert env_auto["torch_cuda_version"] == torch.version.cuda
    assert env_auto["onnxruntime"]["version"] == onnxruntime.__version__
    assert env_auto["cpu_count"] >= 1


def test_cpu_provider_runs_the_probe_model(env_auto: dict) -> None:
    assert env_auto["onnxruntime"]["providers"]["CPUExecutionProvider"] == "ok"
    assert "CPUExecutionProvider" in env_auto["onnxruntime"]["available_providers"]
    assert ort_provider_status("CPUExecutionProvider") == "ok"


@pytest.mark.skipif(HAS_CUDA, reason="describes a machine without CUDA")
def test_cpu_machine_fields(env_auto: dict) -> None:
    assert env_auto["cuda_available"] is False
    assert env_auto["gpus"] == []
    assert env_auto["cudnn_version"] is None
    assert env_auto["device"] == {"requested": "auto", "resolved": "cpu", "description": "cpu"}


def test_absent_engines_carry_a_one_line_reason(env_auto: dict) -> None:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    for name in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        status = env_auto["onnxruntime"]["providers"][name]
        if name not in available:
            assert status != "ok"
            assert name in status and "\n" not in status
    try:
        import tensorrt  # noqa: F401
    except ModuleNotFoundError:
        assert env_auto["tensorrt"] == {"version": None, "reason": "python package 'tensorrt' not installed"}
    nvml = env_auto["nvml"]
    # What NVML must report here, decided without trainrelay (and without pynvml for the driver):
    # pynvml must be importable, and the NVIDIA driver's libnvidia-ml must load and initialise.
    pynvml_installed = importlib.util.find_spec("pynvml") is not None
    driver_works, driver_version = _nvml_from_the_driver()
    if pynvml_installed and driver_works:
        assert nvml == {"available": True, "driver_version": driver_version, "reason": None}
    else:
        assert nvml["available"] is False and nvml["driver_version"] is None
        assert nvml["reason"] and "\n" not in nvml["reason"]
        if not pynvml_installed:
            assert nvml["reason"] == "python module 'pynvml' not installed (pip package nvidia-ml-py)"
        else:
            assert nvml["reason"].startswith("nvmlInit failed: ")


def _nvml_from_the_driver() -> tuple[bool, str | None]:
    """(NVML initialises, driver version) asked of libnvidia-ml itself through ctypes."""
    try:
        lib = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False, None
    if lib.nvmlInit_v2() != 0:  # NVML_SUCCESS is 0
        return False, None
    try:
        buffer = ctypes.create_string_buffer(96)
        if lib.nvmlSystemGetDriverVersion(buffer, ctypes.c_uint(96)) != 0:
            return True, None
        return True, buffer.value.decode()
    finally:
        lib.nvmlShutdown()


def test_write_environment_is_deterministic_json(tmp_path) -> None:
    first, second = tmp_path / "a" / "environment.json", tmp_path / "b" / "environment.json"
    write_environment(first, "cpu")
    write_environment(second, "cpu")
    assert first.read_bytes() == second.read_bytes()
    data = json.loads(first.read_text())
    assert list(data) == sorted(data)
    assert data["device"]["resolved"] == "cpu"
    assert not list(first.parent.glob(".tmp-*"))


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is present, so device: cuda is valid here")
def test_cuda_request_without_gpu_stops_before_writing(tmp_path) -> None:
    target = tmp_path / "environment.json"
    with pytest.raises(DeviceError, match=r"^config 'device: cuda' but torch .* sees no CUDA device"):
        write_environment(target, "cuda")
    assert not target.exists()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_gpu_machine_fields(tmp_path) -> None:
    data = write_environment(tmp_path / "environment.json", "cuda")
    assert data["cuda_available"] is True
    assert data["device"]["resolved"] == "cuda"
    assert data["gpus"][0]["name"] == torch.cuda.get_device_name(0)
    assert data["gpus"][0]["total_memory_bytes"] > 2**30
    assert isinstance(data["cudnn_version"], int)
