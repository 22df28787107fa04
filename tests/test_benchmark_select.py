"""Constraint checks and engine selection on hand-made rows."""

from __future__ import annotations

import pytest

from trainrelay.benchmark.constraints import check_row, validate_constraints
from trainrelay.benchmark.select import select_engines, select_model
from trainrelay.errors import ConfigError

ORDER = [
    "torch_eager_cpu",
    "torch_eager_cuda",
    "torch_cuda_graph",
    "ort_cpu",
    "ort_cuda",
    "ort_tensorrt_fp16",
]
CONSTRAINTS = {"latency_p95_ms": {"max": 50}, "throughput_sps": {"min": 20}, "vram_mb": {"max": 2048}}


def row(
    engine, batch, p95, sps, *, device="cpu", vram=None, rss=500.0, status="ok", correct=True, reason=None
):
    return {
        "model": "policy", "engine": engine, "device": device, "precision": "fp32", "batch": batch,
        "status": status, "reason": reason, "build_seconds": 0.1 if status == "ok" else None,
        "rel_l2_error": 1e-7 if status == "ok" else None, "tolerance": 1e-3 if status == "ok" else None,
        "correct": correct if status == "ok" else None, "latency_mean_ms": p95, "latency_p50_ms": p95,
        "latency_p95_ms": p95, "latency_p99_ms": p95, "throughput_sps": sps, "cpu_util_pct": 100.0,
        "gpu_util_pct": None, "vram_mb": vram, "peak_rss_mb": rss,
    }  # fmt: skip


def test_cpu_wins_at_batch_one_when_it_measured_faster_than_the_gpu():
    rows = [
        row("ort_cpu", 1, 0.04, 25000),
        row("ort_cuda", 1, 0.21, 4800, device="cuda", vram=180.0),
        row("ort_cuda", 64, 0.25, 256000, device="cuda", vram=190.0),
    ]
    decision = select_model(rows, CONSTRAINTS, "latency", 0.05, ORDER)
    assert decision["chosen"]["engine"] == "ort_cpu" and decision["chosen"]["batch"] == 1
    text = " ".join(decision["reasoning"])
    assert "3 of 3 measured configurations meet all constraints" in text
    assert "The best CUDA configuration, ort_cuda at batch 1, measured latency_p95_ms 0.21" in text
    # The same measurements with a throughput objective pick the GPU at batch 64.
    decision = select_model(rows, CONSTRAINTS, "throughput", 0.05, ORDER)
    assert (decision["chosen"]["engine"], decision["chosen"]["batch"]) == ("ort_cuda", 64)


def test_constraints_filter_before_ranking_and_reasons_are_sentences():
    rows = [
        row("torch_eager_cpu", 64, 80.0, 800),  # too slow at p95
        row("ort_cpu", 64, 30.0, 2100),
        row("ort_tensorrt_fp16", 64, 1.0, 64000, device="cuda", vram=4096.0),  # too much VRAM
        row("torch_eager_cuda", 64, None, None, device="cuda", status="unavailable", reason="no CUDA device"),
        row("ort_cuda", 64, 2.0, 32000, device="cuda", vram=300.0, correct=False),
    ]
    decision = select_model(rows, CONSTRAINTS, "throughput", 0.05, ORDER)
    assert decision["chosen"]["engine"] == "ort_cpu"
    reasons = decision["reasoning"]
    assert "torch_eager_cuda was not measured: no CUDA device." in reasons
    assert "torch_eager_cpu at batch 64 fails latency_p95_ms <= 50 (measured 80)." in reasons
    assert any(
        r.startswith("ort_tensorrt_fp16 at batch 64 fails vram_mb <= 2048 (measured 4096)") for r in reasons
    )
    assert any(r.startswith("ort_cuda at batch 64 fails correct") for r in reasons)
    assert "1 of 4 measured configurations meet all constraints." in reasons
    by_engine = {c["engine"]: c for c in decision["candidates"]}
    assert by_engine["ort_cpu"]["meets_all"] and not by_engine["ort_tensorrt_fp16"]["meets_all"]
    assert [c["passed"] for c in by_engine["torch_eager_cpu"]["checks"]] == [True, True, False, True, True]


def tie_sentence(decision):
    tie = [r for r in decision["reasoning"] if r.startswith("Within ")]
    assert len(tie) == 1, decision["reasoning"]
    return tie[0]


def test_ties_go_to_materially_less_vram_then_engine_order():
    rows = [
        row("torch_cuda_graph", 1, 0.100, 10000, device="cuda", vram=900.0),
        row("ort_cuda", 1, 0.102, 9800, device="cuda", vram=150.0),
        row("ort_cpu", 1, 0.300, 3300),
    ]
    decision = select_model(rows, CONSTRAINTS, "latency", 0.05, ORDER)
    assert decision["chosen"]["engine"] == "ort_cuda"  # within 5 % of the best, 750 MB less VRAM
    assert tie_sentence(decision) == (
        "Within 5% of the best and so tied: torch_cuda_graph at batch 1 (0.1) and ort_cuda at batch 1 "
        "(0.102); the tie goes to the one using materially less GPU memory, ort_cuda at batch 1 with "
        "150 MB VRAM (torch_cuda_graph at batch 1: 900 MB VRAM)."
    )
    decision = select_model(rows, CONSTRAINTS, "latency", 0.0, ORDER)
    assert decision["chosen"]["engine"] == "torch_cuda_graph"  # no tie band: the fastest
    assert not any(r.startswith("Within ") for r in decision["reasoning"])


def test_vram_decides_a_gpu_tie_whichever_engine_comes_first():
    # The engine earlier in config order (and measured first) uses 500 MB more: memory decides.
    rows = [
        row("torch_eager_cuda", 1, 0.100, 10000, device="cuda", vram=600.0),
        row("ort_cuda", 1, 0.101, 9900, device="cuda", vram=100.0),
    ]
    decision = select_model(rows, CONSTRAINTS, "latency", 0.05, ORDER)
    assert decision["chosen"]["engine"] == "ort_cuda"
    assert "materially less GPU memory, ort_cuda at batch 1 with 100 MB VRAM" in tie_sentence(decision)


def test_process_rss_does_not_break_a_cpu_tie():
    # Peak RSS is the whole process's and grows as engines run, so 430 vs 434 MB (or any gap)
    # says which engine ran first, not which uses less: the tie goes by config order instead.
    for first_rss, second_rss in ((434.0, 430.0), (430.0, 434.0), (900.0, 430.0)):
        rows = [
            row("torch_eager_cpu", 1, 0.040, 25000, rss=first_rss),
            row("ort_cpu", 1, 0.041, 24400, rss=second_rss),
        ]
        decision = select_model(rows, CONSTRAINTS, "latency", 0.05, ORDER)
        assert decision["chosen"]["engine"] == "torch_eager_cpu"
        sentence = tie_sentence(decision)
        assert "less memory" not in sentence and "less GPU memory" not in sentence
        assert sentence.endswith(
            "memory does not separate them because they run on the CPU, where no engine's own memory is "
            "measured (peak RSS is the process's), so the tie goes to the earlier engine in the configured "
            "order, torch_eager_cpu at batch 1."
        )


def test_same_engine_tie_within_the_vram_margin_goes_to_the_smaller_batch():
    # 140 vs 100 MB: 40 % more but only 40 MB, under the 50 MB margin, so memory does not decide
    # and the smaller batch wins although it used more.
    rows = [
        row("ort_cuda", 1, 0.100, 10000, device="cuda", vram=140.0),
        row("ort_cuda", 8, 0.101, 79000, device="cuda", vram=100.0),
    ]
    decision = select_model(rows, CONSTRAINTS, "latency", 0.05, ORDER)
    assert (decision["chosen"]["engine"], decision["chosen"]["batch"]) == ("ort_cuda", 1)
    assert tie_sentence(decision).endswith(
        "memory does not separate them because their GPU memory differs by no more than 50 MB or 10% "
        "(ort_cuda at batch 1: 140 MB VRAM; ort_cuda at batch 8: 100 MB VRAM), so the tie goes to the "
        "smaller batch, ort_cuda at batch 1."
    )
    # 1060 vs 1000 MB: 60 MB more but only 6 %, so memory does not decide either.
    rows[0]["vram_mb"], rows[1]["vram_mb"] = 1060.0, 1000.0
    decision = select_model(rows, CONSTRAINTS, "latency", 0.05, ORDER)
    assert decision["chosen"]["batch"] == 1 and "smaller batch, ort_cuda at batch 1" in tie_sentence(decision)
    # 1200 vs 1000 MB is material (200 MB, 20 %): batch 8 wins on memory.
    rows[0]["vram_mb"] = 1200.0
    decision = select_model(rows, CONSTRAINTS, "latency", 0.05, ORDER)
    assert decision["chosen"]["batch"] == 8 and "materially less GPU memory" in tie_sentence(decision)


def test_heavier_rows_drop_out_and_the_rest_go_by_engine_order():
    rows = [
        row("torch_eager_cpu", 1, 0.100, 10000),
        row("torch_eager_cuda", 1, 0.100, 10000, device="cuda", vram=30.0),
        row("ort_cuda", 1, 0.100, 10000, device="cuda", vram=700.0),
    ]
    decision = select_model(rows, CONSTRAINTS, "latency", 0.05, ORDER)
    assert decision["chosen"]["engine"] == "torch_eager_cpu"
    sentence = tie_sentence(decision)
    assert (
        "ort_cuda at batch 1 drops out for using materially more GPU memory (700 MB VRAM against 0 MB)"
        in (sentence)
    )
    assert sentence.endswith(
        "memory does not separate the rest because their GPU memory differs by no more than 50 MB or 10% "
        "(torch_eager_cpu at batch 1: no GPU memory; torch_eager_cuda at batch 1: 30 MB VRAM), so the tie "
        "goes to the earlier engine in the configured order, torch_eager_cpu at batch 1."
    )


def test_unmeasured_vram_leaves_a_tie_to_engine_order():
    # No VRAM constraint here, so a GPU row without a VRAM reading can pass and be tied.
    constraints = {"latency_p95_ms": {"max": 50}}
    rows = [
        row("torch_eager_cuda", 1, 0.100, 10000, device="cuda", vram=None),
        row("ort_cuda", 1, 0.100, 10000, device="cuda", vram=20.0),
    ]
    decision = select_model(rows, constraints, "latency", 0.05, ORDER)
    assert decision["chosen"]["engine"] == "torch_eager_cuda"
    assert (
        "because GPU memory was not measured for torch_eager_cuda at batch 1, so the tie goes to the "
        "earlier engine in the configured order, torch_eager_cuda at batch 1."
    ) in tie_sentence(decision)


def test_no_configuration_passing_means_no_choice():
    rows = [row("ort_cpu", 1, 70.0, 14)]
    decision = select_model(rows, CONSTRAINTS, "latency", 0.05, ORDER)
    assert decision["chosen"] is None
    assert (
        decision["reasoning"][-1]
        == "No configuration meets all constraints, so no engine is chosen for this model."
    )


def test_unmeasured_values_fail_except_gpu_columns_on_cpu_engines():
    checks = {c["constraint"]: c for c in check_row(row("ort_cpu", 1, 1.0, 1000), CONSTRAINTS)}
    assert (
        checks["vram_mb <= 2048"]["passed"] and checks["vram_mb <= 2048"]["note"] == "CPU engine: uses no GPU"
    )
    gpu = row("ort_cuda", 1, 1.0, 1000, device="cuda", vram=None)
    checks = {c["constraint"]: c for c in check_row(gpu, CONSTRAINTS)}
    assert not checks["vram_mb <= 2048"]["passed"] and checks["vram_mb <= 2048"]["note"] == "not measured"
    inf = row("ort_cpu", 1, float("inf"), 0)
    assert not {c["constraint"]: c for c in check_row(inf, CONSTRAINTS)}["latency_p95_ms <= 50"]["passed"]


def test_select_engines_covers_each_model_and_states_constraints():
    rows = [row("ort_cpu", 1, 0.05, 20000), {**row("ort_cpu", 1, 3.0, 333), "model": "forecaster"}]
    settings = {
        "constraints": CONSTRAINTS,
        "objective": {"forecaster": "throughput", "policy": "latency"},
        "tie_tolerance": 0.05,
        "engines": ORDER,
    }
    selection = select_engines(rows, settings, ["forecaster", "policy"])
    assert selection["constraints"]["described"] == [
        "latency_p95_ms <= 50",
        "throughput_sps >= 20",
        "vram_mb <= 2048",
    ]
    assert set(selection["models"]) == {"forecaster", "policy"}
    assert selection["models"]["forecaster"]["objective"] == "throughput"
    assert selection["models"]["forecaster"]["chosen"]["latency_p95_ms"] == 3.0


def test_constraint_config_is_checked():
    validate_constraints(CONSTRAINTS)
    with pytest.raises(ConfigError, match=r"benchmark\.constraints\.speed"):
        validate_constraints({"speed": {"max": 1}})
    with pytest.raises(ConfigError, match="min' and/or 'max"):
        validate_constraints({"vram_mb": {"below": 1}})
