"""ONNX Runtime provider options for the CUDA and TensorRT execution providers.

Built from ONNX Runtime's execution-provider documentation (CUDA-ExecutionProvider and
TensorRT-ExecutionProvider pages). Every value is a string, which is what the Python API passes
through to the provider's option parser whatever the option's type.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def shape_string(input_name: str, shape: Sequence[int]) -> str:
    """TensorRT EP profile syntax for one input: ``name:d0xd1x...`` (e.g. ``x:1x96x2``)."""
    if not shape or any(int(d) < 1 for d in shape):
        raise ValueError(f"profile shape for '{input_name}' must be positive dimensions, got {list(shape)}")
    return f"{input_name}:" + "x".join(str(int(d)) for d in shape)


def cuda_provider_options(device_id: int = 0) -> dict[str, str]:
    """CUDA EP options for steady-state latency measurements.

    ``kSameAsRequested`` keeps the arena at what the model needs (so the VRAM column measures the
    model, not a power-of-two round-up); ``HEURISTIC`` avoids the exhaustive cuDNN search's long
    first run; copies run on the compute stream (the documented safe default); TF32 is off so
    that the fp32 engine is compared with the fp32 reference as fp32 (ORT enables TF32 by default).
    """
    return {
        "device_id": str(device_id),
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "HEURISTIC",
        "do_copy_in_default_stream": "1",
        "use_tf32": "0",
    }


def tensorrt_provider_options(
    input_name: str,
    trailing_shape: Sequence[int],
    batches: Sequence[int],
    cache_dir: str | Path,
    *,
    device_id: int = 0,
    fp16: bool = True,
    workspace_bytes: int = 1 << 30,
) -> dict[str, str]:
    """TensorRT EP options: FP16, engine + timing cache in ``cache_dir``, one batch-axis profile.

    The optimisation profile spans the benchmarked batch sizes (min = smallest, opt = max =
    largest), so one engine serves every batch and is built once; the engine and timing caches
    make the second run of the stage load it instead of rebuilding it.
    """
    if not batches:
        raise ValueError("tensorrt_provider_options needs at least one batch size")
    lo, hi = min(int(b) for b in batches), max(int(b) for b in batches)
    cache = str(Path(cache_dir))
    # The Python binding parses the TensorRT EP's flags itself and accepts only True/False (the
    # CUDA EP's parser also takes 1/0); "1" makes session creation fail and fall back to CUDA.
    return {
        "device_id": str(device_id),
        "trt_fp16_enable": "True" if fp16 else "False",
        "trt_max_workspace_size": str(int(workspace_bytes)),
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": cache,
        "trt_profile_min_shapes": shape_string(input_name, (lo, *trailing_shape)),
        "trt_profile_opt_shapes": shape_string(input_name, (hi, *trailing_shape)),
        "trt_profile_max_shapes": shape_string(input_name, (hi, *trailing_shape)),
    }
