"""ONNX Runtime provider options, checked against what ONNX Runtime itself accepts.

The options the benchmark passes are (1) normalised by onnxruntime's own Python code, as a session
would normalise them, (2) used to create real sessions for every provider this machine has, and
(3) for the providers it lacks (CUDA, TensorRT on a CPU machine), validated against a table of the
option names and value syntax ONNX Runtime's parsers accept, so that e.g. "1" for a TensorRT flag
(which the Python binding rejects) fails here and not on a GPU machine.

What this cannot check without a GPU: that the CUDA and TensorRT EPs really register and build an
engine with these options (device ids, workspace size, profile shapes against a real engine build),
and any option syntax a newer onnxruntime-gpu changed after the sources the table was read from.
The session-creation test does exercise those providers on a machine whose onnxruntime has them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, checker, helper
from onnxruntime.capi.onnxruntime_inference_collection import check_and_normalize_provider_args

from trainrelay.benchmark.engines import ENGINE_SPECS, EngineSettings, ModelUnderTest, OrtEngine
from trainrelay.benchmark.ort_options import cuda_provider_options, shape_string, tensorrt_provider_options
from trainrelay.export.onnx_export import INPUT_NAME, OUTPUT_NAME

# ------------------------------------------------------------------------------------------------
# What ONNX Runtime accepts. The CPU-only onnxruntime wheel installed here contains no CUDA or
# TensorRT EP code to ask (its binaries hold none of these option names), so the table was read
# from ONNX Runtime's sources:
#
# * TensorRT EP through the Python API: onnxruntime/python/onnxruntime_pybind_state.cc,
#   CreateExecutionProviderInstance(), the kTensorrtExecutionProvider branch. The binding parses
#   the options itself: a flag is accepted only as "True"/"true"/"False"/"false" (anything else,
#   "1" included, throws "The value for the key '<key>' should be 'True' or 'False'"); numbers go
#   through std::stoi / std::stoull; paths and profile strings must be non-empty ("input1:dim1x
#   dim2...,input2:..."); any other key throws "Invalid TensorRT EP option". The names are that
#   branch's, plus trt_timing_cache_path and trt_engine_cache_prefix from
#   onnxruntime/core/providers/tensorrt/tensorrt_execution_provider_info.cc (provider_option_names),
#   which later releases parse too.
# * CUDA EP: onnxruntime/core/providers/cuda/cuda_execution_provider_info.cc
#   (CUDAExecutionProviderInfo::FromProviderOptions), whose booleans go through
#   onnxruntime/core/common/parse_string.h (TryParseStringWithClassicLocale): "0"/"1"/"True"/"true"/
#   "False"/"false"; its enums take the names listed there.
# * Before either parser sees them, onnxruntime's Python code turns every key and value into
#   str(...) (check_and_normalize_provider_args, installed here and called below): Python True
#   becomes "True" (accepted), 1 becomes "1" (rejected for a TensorRT flag).

TRT_FLAG = frozenset({"True", "true", "False", "false"})
CUDA_FLAG = frozenset({"0", "1", "True", "true", "False", "false"})
_SHAPES = re.compile(r"[^:,]+:\d+(x\d+)*(,[^:,]+:\d+(x\d+)*)*")

TENSORRT_ACCEPTS: dict[str, Any] = {
    "device_id": "int",
    "trt_max_partition_iterations": "int",
    "trt_min_subgraph_size": "int",
    "trt_max_workspace_size": "uint",
    "trt_dla_core": "int",
    "trt_builder_optimization_level": "int",
    "trt_auxiliary_streams": "int",
    "trt_int8_calibration_table_name": "text",
    "trt_engine_cache_path": "text",
    "trt_engine_cache_prefix": "text",
    "trt_engine_decryption_lib_path": "text",
    "trt_timing_cache_path": "text",
    "trt_tactic_sources": "text",
    "trt_extra_plugin_lib_paths": "text",
    "trt_profile_min_shapes": "shapes",
    "trt_profile_opt_shapes": "shapes",
    "trt_profile_max_shapes": "shapes",
    **dict.fromkeys(
        [
            "trt_fp16_enable",
            "trt_int8_enable",
            "trt_int8_use_native_calibration_table",
            "trt_dla_enable",
            "trt_dump_subgraphs",
            "trt_engine_cache_enable",
            "trt_engine_decryption_enable",
            "trt_force_sequential_engine_build",
            "trt_context_memory_sharing_enable",
            "trt_layer_norm_fp32_fallback",
            "trt_timing_cache_enable",
            "trt_force_timing_cache",
            "trt_detailed_build_log",
            "trt_build_heuristics_enable",
            "trt_sparsity_enable",
            "trt_cuda_graph_enable",
        ],
        TRT_FLAG,
    ),
}
CUDA_ACCEPTS: dict[str, Any] = {
    "device_id": "int",
    "user_compute_stream": "uint",
    "gpu_mem_limit": "uint",
    "tunable_op_max_tuning_duration_ms": "int",
    "arena_extend_strategy": frozenset({"kNextPowerOfTwo", "kSameAsRequested"}),
    "cudnn_conv_algo_search": frozenset({"EXHAUSTIVE", "HEURISTIC", "DEFAULT"}),
    **dict.fromkeys(
        [
            "has_user_compute_stream",
            "do_copy_in_default_stream",
            "cudnn_conv_use_max_workspace",
            "enable_cuda_graph",
            "cudnn_conv1d_pad_to_nc1d",
            "tunable_op_enable",
            "tunable_op_tuning_enable",
            "enable_skip_layer_norm_strict_mode",
            "prefer_nhwc",
            "use_ep_level_unified_stream",
            "use_tf32",
        ],
        CUDA_FLAG,
    ),
}
ACCEPTS = {"TensorrtExecutionProvider": TENSORRT_ACCEPTS, "CUDAExecutionProvider": CUDA_ACCEPTS}


def normalized(provider: str, options: dict[Any, Any]) -> dict[str, str]:
    """The options as onnxruntime's Python code hands them to the provider's parser."""
    _, option_list = check_and_normalize_provider_args([(provider, options)], None, [provider])
    return option_list[0]


def ort_rejections(provider: str, options: dict[Any, Any]) -> list[str]:
    """What ONNX Runtime's parser for ``provider`` would throw for ``options`` (empty: accepted)."""
    table, problems = ACCEPTS[provider], []
    for key, value in normalized(provider, options).items():
        kind = table.get(key)
        if kind is None:
            problems.append(f"{key}: not a {provider} option")
        elif isinstance(kind, frozenset):
            if value not in kind:
                problems.append(f"{key}={value!r}: must be one of {sorted(kind)}")
        elif kind == "int" and not re.fullmatch(r"-?\d+", value):
            problems.append(f"{key}={value!r}: must be an integer")
        elif kind == "uint" and not re.fullmatch(r"\d+", value):
            problems.append(f"{key}={value!r}: must be a non-negative integer")
        elif kind == "text" and not value:
            problems.append(f"{key}: must not be empty")
        elif kind == "shapes" and not _SHAPES.fullmatch(value):
            problems.append(f"{key}={value!r}: must be 'input:d0xd1x...[,input2:...]'")
    return problems


def _flag(value: str) -> bool:
    return value in {"1", "True", "true"}


def _dims(profile: str) -> dict[str, list[int]]:
    return {
        name: [int(d) for d in dims.split("x")] for name, dims in (p.split(":") for p in profile.split(","))
    }


# ------------------------------------------------------------------------------------------------


def test_the_table_rejects_what_onnxruntime_rejects():
    # the TensorRT binding's flags: True/False only (the bug review found: "1" fell back to CUDA)
    for bad in ["1", "0", 1, 0, "yes", ""]:
        assert ort_rejections("TensorrtExecutionProvider", {"trt_fp16_enable": bad}), bad
    for good in ["True", "False", "true", True, False]:
        assert not ort_rejections("TensorrtExecutionProvider", {"trt_fp16_enable": good}), good
    # the CUDA EP's parser takes 1/0 as well
    for good in ["1", "0", 1, True]:
        assert not ort_rejections("CUDAExecutionProvider", {"use_tf32": good}), good
    assert ort_rejections("CUDAExecutionProvider", {"use_tf32": "on"})
    assert ort_rejections("CUDAExecutionProvider", {"cudnn_conv_algo_search": "heuristic"})
    assert ort_rejections("TensorrtExecutionProvider", {"trt_fp16": "True"})  # unknown key
    assert ort_rejections("TensorrtExecutionProvider", {"trt_profile_min_shapes": "x:1,96"})
    assert ort_rejections("TensorrtExecutionProvider", {"trt_max_workspace_size": "1GB"})


def test_shape_string_uses_the_tensorrt_profile_syntax():
    assert shape_string("x", (1, 96, 2)) == "x:1x96x2"
    assert shape_string("obs", [64, 13]) == "obs:64x13"
    assert _SHAPES.fullmatch(shape_string("x", (1, 96, 2)))
    with pytest.raises(ValueError, match="positive"):
        shape_string("x", (0, 4))


def test_cuda_options_are_accepted_by_the_cuda_ep():
    options = cuda_provider_options(device_id=1)
    assert ort_rejections("CUDAExecutionProvider", options) == []
    parsed = normalized("CUDAExecutionProvider", options)
    assert int(parsed["device_id"]) == 1
    assert parsed["arena_extend_strategy"] == "kSameAsRequested"  # VRAM measures the model
    assert not _flag(parsed["use_tf32"])  # fp32 compared as fp32
    assert _flag(parsed["do_copy_in_default_stream"])


def test_tensorrt_options_are_accepted_by_the_tensorrt_ep(tmp_path):
    cache = tmp_path / "results" / "demo" / "benchmark" / "trt_cache"
    for fp16 in (True, False):
        options = tensorrt_provider_options("x", (96, 2), [64, 1, 8], cache, fp16=fp16)
        assert ort_rejections("TensorrtExecutionProvider", options) == []
        parsed = normalized("TensorrtExecutionProvider", options)
        assert parsed["trt_fp16_enable"] in TRT_FLAG and _flag(parsed["trt_fp16_enable"]) is fp16
        assert _flag(parsed["trt_engine_cache_enable"]) and _flag(parsed["trt_timing_cache_enable"])
        assert parsed["trt_engine_cache_path"] == parsed["trt_timing_cache_path"] == str(cache)
        assert int(parsed["trt_max_workspace_size"]) == 1 << 30
        # one profile spans the benchmarked batches: min = smallest, opt = max = largest
        lo, opt, hi = (_dims(parsed[f"trt_profile_{k}_shapes"]) for k in ("min", "opt", "max"))
        assert lo == {"x": [1, 96, 2]} and opt == hi == {"x": [64, 96, 2]}
    with pytest.raises(ValueError):
        tensorrt_provider_options("x", (5,), [], cache)


def _tiny_model(path: Path, trailing: tuple[int, ...]) -> Path:
    """A one-node ONNX model with the benchmark's input/output names and a dynamic batch axis."""
    shape = ["batch", *trailing]
    graph = helper.make_graph(
        [helper.make_node("Relu", [INPUT_NAME], [OUTPUT_NAME])],
        "tiny",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("engine", [name for name, s in ENGINE_SPECS.items() if s.runtime == "onnxruntime"])
def test_the_engines_provider_lists_work_in_onnxruntime(engine, tmp_path):
    """Every provider entry the benchmark passes: a real session where this onnxruntime has the
    provider, the option table where it has not."""
    trailing = (96, 2)
    onnx_path = _tiny_model(tmp_path / "tiny.onnx", trailing)
    samples = np.random.default_rng(0).normal(size=(8, *trailing)).astype(np.float32)
    settings = EngineSettings(threads=1, batches=(1, 8), trt_cache_dir=tmp_path / "trt_cache")
    ort_engine = OrtEngine(ENGINE_SPECS[engine], ModelUnderTest("tiny", None, onnx_path, samples), settings)
    entries = [e if isinstance(e, tuple) else (e, {}) for e in ort_engine.providers(trailing)]
    assert entries[0][0] == OrtEngine.PROVIDERS[engine]
    for provider, options in entries:
        if provider in ACCEPTS:
            assert ort_rejections(provider, options) == [], (provider, options)
        else:
            assert provider == "CPUExecutionProvider" and not options  # the CPU EP takes none here
    here = [(p, o) for p, o in entries if p in ort.get_available_providers()]
    if not here:
        pytest.skip(f"{entries[0][0]} is not in this onnxruntime build: checked against the table only")
    session = ort.InferenceSession(str(onnx_path), providers=here)
    assert session.get_providers()[0] == here[0][0]
    (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: samples})
    np.testing.assert_array_equal(out, np.maximum(samples, 0))
