"""The inference engines the benchmark compares, behind one small interface.

An engine is built once per model (``build``), prepared once per batch size (``prepare`` returns
a zero-argument callable that runs one inference on that batch and returns the output on the
host), and closed. Every call includes the host-to-device copy of the input and the copy of the
output back: that is what a caller of the engine pays, and it is why a small network at batch 1
can be faster on the CPU than on a GPU.

Whether an engine works here is decided by building it and running it once (:func:`probe`),
never by listing providers: ONNX Runtime silently falls back to the CPU when a listed provider
cannot load its libraries, so the session's actual provider is checked too.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from trainrelay.benchmark.ort_options import cuda_provider_options, tensorrt_provider_options
from trainrelay.export.onnx_export import INPUT_NAME, OUTPUT_NAME


class EngineUnavailable(Exception):
    """The engine cannot run on this machine; the message is the one-line reason."""


def first_line(exc: BaseException | str) -> str:
    """First non-empty line of an exception's message (ONNX Runtime's can span pages)."""
    text = str(exc)
    for line in text.splitlines():
        if line.strip():
            line = line.strip()
            return f"{type(exc).__name__}: {line}" if isinstance(exc, BaseException) else line
    return type(exc).__name__ if isinstance(exc, BaseException) else "no message"


@dataclass(frozen=True)
class EngineSpec:
    name: str
    runtime: str  # torch | onnxruntime
    device: str  # cpu | cuda
    precision: str  # fp32 | bf16 | fp16


ENGINE_SPECS: dict[str, EngineSpec] = {
    spec.name: spec
    for spec in (
        EngineSpec("torch_eager_cpu", "torch", "cpu", "fp32"),
        EngineSpec("torch_eager_cuda", "torch", "cuda", "fp32"),
        EngineSpec("torch_cuda_graph", "torch", "cuda", "fp32"),
        EngineSpec("torch_cuda_graph_bf16", "torch", "cuda", "bf16"),
        EngineSpec("ort_cpu", "onnxruntime", "cpu", "fp32"),
        EngineSpec("ort_cuda", "onnxruntime", "cuda", "fp32"),
        EngineSpec("ort_tensorrt_fp16", "onnxruntime", "cuda", "fp16"),
    )
}
REFERENCE_ENGINE = "torch_eager_cpu"


@dataclass
class ModelUnderTest:
    """One model as every engine sees it: the fp32 torch module (CPU, eval), its ONNX file, real inputs."""

    name: str
    module: nn.Module | None  # None: ONNX only (the standalone tool); torch engines are then unavailable
    onnx_path: Path
    samples: np.ndarray  # float32 [n, ...] real inputs from the run's data


@dataclass(frozen=True)
class EngineSettings:
    threads: int
    batches: tuple[int, ...]
    trt_cache_dir: Path
    device_id: int = 0


def _require_torch_cuda(device_id: int = 0) -> torch.device:
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"a CUDA {torch.version.cuda} build"
        raise EngineUnavailable(f"no CUDA device: torch {torch.__version__} ({build}) sees none")
    return torch.device(f"cuda:{device_id}")  # the device ORT and NVML are pointed at too


class Engine(ABC):
    def __init__(self, spec: EngineSpec, model: ModelUnderTest, settings: EngineSettings) -> None:
        self.spec, self.model, self.settings = spec, model, settings

    @abstractmethod
    def build(self) -> None:
        """Create the engine; raise EngineUnavailable when it cannot exist on this machine."""

    @abstractmethod
    def prepare(self, batch: np.ndarray, out_shape: tuple[int, ...]) -> Callable[[], np.ndarray]:
        """A callable that runs one inference on ``batch`` and returns the host output."""

    def sync(self) -> None:  # noqa: B027 - a no-op by default: CPU engines have nothing to wait for
        """Wait for queued device work (no-op on the CPU)."""

    def close(self) -> None:  # noqa: B027 - a no-op by default: nothing held
        """Release what the engine holds (device memory, sessions)."""


class TorchEngine(Engine):
    """torch eager on the CPU (the reference) or on CUDA."""

    def build(self) -> None:
        if self.model.module is None:
            raise EngineUnavailable("no torch module for this model (only its ONNX file was given)")
        if self.spec.device == "cuda":
            self.device = _require_torch_cuda(self.settings.device_id)
        else:
            self.device = torch.device("cpu")
            torch.set_num_threads(self.settings.threads)
        self.module = copy.deepcopy(self.model.module).to(self.device).eval()

    def prepare(self, batch: np.ndarray, out_shape: tuple[int, ...]) -> Callable[[], np.ndarray]:
        host = torch.from_numpy(np.ascontiguousarray(batch))
        module, device = self.module, self.device

        def run() -> np.ndarray:
            with torch.inference_mode():
                return module(host.to(device)).float().cpu().numpy()

        return run

    def sync(self) -> None:
        if self.spec.device == "cuda":
            torch.cuda.synchronize()

    def close(self) -> None:
        self.module = None
        if self.spec.device == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()


class CudaGraphEngine(TorchEngine):
    """torch on CUDA with the forward captured once per batch size as a CUDA graph (optionally bf16).

    Follows torch's CUDA-graph recipe: static input buffer, warm-up on a side stream, capture,
    then each call copies the new input into the static buffer and replays the graph. Under bf16
    the forward runs in ``torch.autocast`` with its weight cache off (cached casts would live
    outside the graph's memory pool).
    """

    def _autocast(self) -> Any:
        enabled = self.spec.precision == "bf16"
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled, cache_enabled=False)

    def prepare(self, batch: np.ndarray, out_shape: tuple[int, ...]) -> Callable[[], np.ndarray]:
        host = torch.from_numpy(np.ascontiguousarray(batch))
        static_in = host.to(self.device)
        module = self.module
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode(), self._autocast():
            for _ in range(3):
                module(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph), self._autocast():
            static_out = module(static_in)
        self._graphs = [*getattr(self, "_graphs", []), graph]

        def run() -> np.ndarray:
            static_in.copy_(host)
            graph.replay()
            return static_out.float().cpu().numpy()

        return run

    def close(self) -> None:
        self._graphs = []
        super().close()


class OrtEngine(Engine):
    """ONNX Runtime with the CPU, CUDA or TensorRT execution provider (IO binding on CUDA)."""

    PROVIDERS: ClassVar[dict[str, str]] = {
        "ort_cpu": "CPUExecutionProvider",
        "ort_cuda": "CUDAExecutionProvider",
        "ort_tensorrt_fp16": "TensorrtExecutionProvider",
    }

    def providers(self, trailing_shape: tuple[int, ...]) -> list[Any]:
        """The provider list passed to the session (the first entry is the one under test)."""
        device_id = self.settings.device_id
        cuda = ("CUDAExecutionProvider", cuda_provider_options(device_id))
        if self.spec.name == "ort_cpu":
            return ["CPUExecutionProvider"]
        if self.spec.name == "ort_cuda":
            return [cuda]
        trt = tensorrt_provider_options(
            INPUT_NAME,
            trailing_shape,
            self.settings.batches,
            self.settings.trt_cache_dir,
            device_id=device_id,
        )
        # CUDA EP behind TensorRT takes nodes TensorRT rejects, as ONNX Runtime's docs recommend.
        return [("TensorrtExecutionProvider", trt), cuda]

    def build(self) -> None:
        wanted = self.PROVIDERS[self.spec.name]
        gpu_build = wanted in ort.get_available_providers()
        if self.spec.device == "cuda" and gpu_build and hasattr(ort, "preload_dlls"):
            # onnxruntime-gpu finds CUDA/cuDNN from the nvidia-* wheels (torch's) only once preloaded.
            with contextlib.suppress(Exception):
                ort.preload_dlls()
        if self.spec.name == "ort_tensorrt_fp16" and gpu_build:
            Path(self.settings.trt_cache_dir).mkdir(parents=True, exist_ok=True)  # TensorRT EP writes there
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.settings.threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        trailing = tuple(int(d) for d in self.model.samples.shape[1:])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                session = ort.InferenceSession(
                    str(self.model.onnx_path), options, providers=self.providers(trailing)
                )
            except Exception as exc:
                raise EngineUnavailable(first_line(exc)) from exc
        actual = session.get_providers()
        if actual[0] != wanted:
            raise EngineUnavailable(self._fallback_reason(ort, wanted, actual, caught))
        self.session, self.ort = session, ort

    @staticmethod
    def _fallback_reason(
        ort: Any, wanted: str, actual: list[str], caught: list[warnings.WarningMessage]
    ) -> str:
        available = ort.get_available_providers()
        if wanted not in available:
            return (
                f"{wanted} is not in this onnxruntime {ort.__version__} build "
                f"(it has {', '.join(available)}); install onnxruntime-gpu (make setup-gpu)"
            )
        for message in caught:
            if wanted in str(message.message):
                return first_line(str(message.message))
        return (
            f"{wanted} is in the build but did not register (its CUDA/cuDNN/TensorRT libraries failed to "
            f"load); onnxruntime fell back to {actual[0]}"
        )

    def prepare(self, batch: np.ndarray, out_shape: tuple[int, ...]) -> Callable[[], np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        session = self.session
        if self.spec.device == "cpu":
            feeds = {INPUT_NAME: batch}
            return lambda: session.run([OUTPUT_NAME], feeds)[0]
        run, bound = iobinding_runner(self.ort, session, batch, out_shape, "cuda", self.settings.device_id)
        self._bound = [*getattr(self, "_bound", []), bound]
        return run

    def close(self) -> None:
        self._bound = []
        self.session = None


def iobinding_runner(
    ort: Any, session: Any, batch: np.ndarray, out_shape: tuple[int, ...], device: str, device_id: int = 0
) -> tuple[Callable[[], np.ndarray], tuple[Any, ...]]:
    """A call through ONNX Runtime's IO binding, with buffers on ``device`` allocated once.

    Each call pays the host-to-device copy of the input (``update_inplace`` keeps the buffer's
    address, as bound) and the copy of the output back to the host. Returns the callable and the
    objects that must stay alive while it is used.
    """
    x_dev = ort.OrtValue.ortvalue_from_numpy(batch, device, device_id)
    y_dev = ort.OrtValue.ortvalue_from_shape_and_type(list(out_shape), np.float32, device, device_id)
    binding = session.io_binding()
    binding.bind_ortvalue_input(INPUT_NAME, x_dev)
    binding.bind_ortvalue_output(OUTPUT_NAME, y_dev)

    def run() -> np.ndarray:
        x_dev.update_inplace(batch)
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    return run, (x_dev, y_dev, binding)


def make_engine(name: str, model: ModelUnderTest, settings: EngineSettings) -> Engine:
    spec = ENGINE_SPECS[name]
    if spec.runtime == "onnxruntime":
        return OrtEngine(spec, model, settings)
    if name.startswith("torch_cuda_graph"):
        return CudaGraphEngine(spec, model, settings)
    return TorchEngine(spec, model, settings)


def probe(engine: Engine, batch: np.ndarray, out_shape: tuple[int, ...]) -> Callable[[], np.ndarray]:
    """Build ``engine`` and run it once on ``batch``; EngineUnavailable (one line) when either fails."""
    try:
        engine.build()
        run = engine.prepare(batch, out_shape)
        out = run()
        engine.sync()
    except EngineUnavailable:
        raise
    except Exception as exc:
        raise EngineUnavailable(first_line(exc)) from exc
    if tuple(np.shape(out)) != tuple(out_shape):
        raise EngineUnavailable(
            f"{engine.spec.name} returned shape {list(np.shape(out))}, expected {list(out_shape)}"
        )
    return run
