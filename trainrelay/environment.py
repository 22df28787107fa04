"""Preflight: record what this machine can actually run, before any GPU hour is spent.

``environment.json`` answers "why did this run use the CPU / skip TensorRT?" after the fact.
Whether an inference engine works is decided by running it: every ONNX Runtime execution provider
of interest builds a session for a one-node model and runs it once; listing
``get_available_providers()`` is not enough, because a provider can be listed and still fail to
load its CUDA/cuDNN/TensorRT libraries (ONNX Runtime then silently falls back to the CPU).
A requested ``device: cuda`` that is absent stops the workflow here with one line.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainrelay import atomic
from trainrelay.core.devices import describe_device, resolve_device
from trainrelay.errors import ANSI_ESCAPE, first_line

# The providers the benchmark stage can use; others (OpenVINO, DirectML...) are out of scope.
PROBED_PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider")


NO_MESSAGE = "no message"  # a reason for an exception whose message is empty
# "2026-01-01 10:00:00.123 [W:onnxruntime:Default, provider_bridge.cc:123 Get] message"
_ORT_LOG_PREFIX = re.compile(r"^.*?\[[EWIV]:onnxruntime:[^\]]*\]\s*")


@contextlib.contextmanager
def _captured_stderr_fd() -> Iterator[list[str]]:
    """Capture what native code writes to file descriptor 2 (ONNX Runtime logs there, not to sys.stderr)."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode("utf-8", "replace").splitlines())


def _probe_model_bytes() -> bytes:
    """A one-node ONNX graph (y = x + x) that every execution provider supports."""
    # imported here: the preflight probes what is installed; each import is part of the probe
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "provider_probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _failure_reason(provider: str, caught: list[warnings.WarningMessage], native_lines: list[str]) -> str:
    # Prefer ONNX Runtime's own words: its Python warning (provider not in this build) or the
    # native log line that says why the provider's libraries failed to load.
    for message in caught:
        text = first_line(str(message.message), NO_MESSAGE)
        if provider in text:
            # onnxruntime joins two sentences without a space ("names.Available providers").
            return text.replace("names.Available", "names. Available")
    for raw in native_lines:
        line = _ORT_LOG_PREFIX.sub("", ANSI_ESCAPE.sub("", raw)).strip()
        if provider.removesuffix("ExecutionProvider") in line or "Failed" in line or "Error" in line:
            return line
    return f"{provider} did not register in the session; onnxruntime fell back to CPUExecutionProvider"


def ort_provider_status(provider: str) -> str:
    """``"ok"`` when ``provider`` creates a session and runs a one-node model, else the reason (one line)."""
    try:
        # a probe: importing it is part of the check
        import onnxruntime as ort
    except Exception as exc:
        return f"onnxruntime cannot be imported: {first_line(exc, NO_MESSAGE)}"
    model = _probe_model_bytes()
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    try:
        with warnings.catch_warnings(record=True) as caught, _captured_stderr_fd() as native_lines:
            warnings.simplefilter("always")
            session = ort.InferenceSession(model, providers=[provider])
            (y,) = session.run(None, {"x": x})
    except Exception as exc:
        return first_line(exc, NO_MESSAGE)
    # A provider that failed to load is silently replaced by the CPU one: check who runs the graph.
    if session.get_providers()[0] != provider:
        return _failure_reason(provider, caught, native_lines)
    if not np.array_equal(y, x + x):
        return f"{provider} ran the probe model but returned wrong values {y.tolist()}"
    return "ok"


def _onnxruntime_info() -> dict[str, Any]:
    try:
        # a probe: importing it is part of the check
        import onnxruntime as ort
    except Exception as exc:
        reason = f"onnxruntime cannot be imported: {first_line(exc, NO_MESSAGE)}"
        return {
            "version": None,
            "available_providers": [],
            "providers": dict.fromkeys(PROBED_PROVIDERS, reason),
        }
    return {
        "version": ort.__version__,
        "available_providers": list(ort.get_available_providers()),
        "providers": {name: ort_provider_status(name) for name in PROBED_PROVIDERS},
    }


def _tensorrt_info() -> dict[str, Any]:
    try:
        # a probe: TensorRT is an optional GPU extra
        import tensorrt
    except ModuleNotFoundError:
        return {"version": None, "reason": "python package 'tensorrt' not installed"}
    except Exception as exc:
        return {
            "version": None,
            "reason": f"python package 'tensorrt' fails to import: {first_line(exc, NO_MESSAGE)}",
        }
    return {"version": str(tensorrt.__version__), "reason": None}


def _nvml_info() -> dict[str, Any]:
    try:
        # a probe: nvidia-ml-py is an optional GPU extra
        import pynvml
    except ModuleNotFoundError:
        return {
            "available": False,
            "driver_version": None,
            "reason": "python module 'pynvml' not installed (pip package nvidia-ml-py)",
        }
    except Exception as exc:
        return {
            "available": False,
            "driver_version": None,
            "reason": f"pynvml fails to import: {first_line(exc, NO_MESSAGE)}",
        }
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        return {
            "available": False,
            "driver_version": None,
            "reason": f"nvmlInit failed: {first_line(exc, NO_MESSAGE)}",
        }
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else str(driver)
    finally:
        pynvml.nvmlShutdown()
    return {"available": True, "driver_version": driver, "reason": None}


def _gpus() -> list[dict[str, Any]]:
    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append(
            {
                "index": index,
                "name": props.name,
                "total_memory_bytes": int(props.total_memory),
                "compute_capability": f"{props.major}.{props.minor}",
            }
        )
    return gpus


def collect_environment(requested_device: str) -> dict[str, Any]:
    """Describe this machine; raise DeviceError when ``requested_device`` cannot be honoured."""
    resolved = resolve_device(requested_device)
    cuda_available = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "cuda_available": cuda_available,
        "cudnn_version": torch.backends.cudnn.version() if cuda_available else None,
        "gpus": _gpus(),
        "onnxruntime": _onnxruntime_info(),
        "tensorrt": _tensorrt_info(),
        "nvml": _nvml_info(),
        "device": {
            "requested": requested_device,
            "resolved": resolved.type,
            "description": describe_device(resolved),
        },
    }


def write_environment(path: str | os.PathLike[str], requested_device: str) -> dict[str, Any]:
    """Collect the environment and write it to ``path`` as deterministic JSON; return it."""
    info = collect_environment(requested_device)
    atomic.write_json(Path(path), info)
    return info
