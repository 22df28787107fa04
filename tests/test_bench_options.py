"""ONNX Runtime provider options (built from the CUDA and TensorRT EP documentation)."""

from __future__ import annotations

import pytest

from trainrelay.bench.ort_options import cuda_provider_options, shape_string, tensorrt_provider_options


def test_shape_string_uses_the_tensorrt_profile_syntax():
    assert shape_string("x", (1, 96, 2)) == "x:1x96x2"
    assert shape_string("obs", [64, 13]) == "obs:64x13"
    with pytest.raises(ValueError, match="positive"):
        shape_string("x", (0, 4))


def test_cuda_options_are_strings_with_documented_keys():
    options = cuda_provider_options(device_id=1)
    assert options == {
        "device_id": "1",
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "HEURISTIC",
        "do_copy_in_default_stream": "1",
        "use_tf32": "0",
    }


def test_tensorrt_options_profile_spans_the_batches_and_caches_in_one_folder(tmp_path):
    cache = tmp_path / "results" / "demo" / "benchmark" / "trt_cache"
    options = tensorrt_provider_options("x", (96, 2), [64, 1, 8], cache)
    # ORT's Python binding accepts only True/False for the TensorRT EP's flags
    assert options["trt_fp16_enable"] == "True"
    assert options["trt_profile_min_shapes"] == "x:1x96x2"
    assert options["trt_profile_opt_shapes"] == "x:64x96x2"
    assert options["trt_profile_max_shapes"] == "x:64x96x2"
    assert options["trt_engine_cache_enable"] == "True" and options["trt_timing_cache_enable"] == "True"
    assert options["trt_engine_cache_path"] == options["trt_timing_cache_path"] == str(cache)
    assert options["trt_max_workspace_size"] == str(1 << 30)
    assert all(isinstance(v, str) for v in options.values())
    assert tensorrt_provider_options("x", (5,), [1], cache, fp16=False)["trt_fp16_enable"] == "False"
    with pytest.raises(ValueError):
        tensorrt_provider_options("x", (5,), [], cache)
