"""Run every configured engine on every model and batch size; write metrics, raw samples, selection.

One row per model x engine x batch, in a fixed order (models as given, engines in config order,
batches ascending). An engine that cannot be built or run once here gives ``unavailable`` rows
with the reason; one that builds but breaks on a batch gives a ``failed`` row; only ``ok`` rows
carry numbers. Correctness is the relative L2 error against torch fp32 eager on the CPU on the
same real inputs, judged against the tolerance of the engine's precision.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import polars as pl
import torch

from trainrelay import atomic
from trainrelay.benchmark.constraints import validate_constraints
from trainrelay.benchmark.engines import (
    ENGINE_SPECS,
    EngineSettings,
    EngineUnavailable,
    ModelUnderTest,
    first_line,
    make_engine,
    probe,
)
from trainrelay.benchmark.select import OBJECTIVES, select_engines
from trainrelay.benchmark.timing import latency_summary, time_trials, warm_up
from trainrelay.core.progress import progress_bar
from trainrelay.core.sampler import ResourceSampler, gpu_memory_used_mb
from trainrelay.errors import ConfigError
from trainrelay.export.onnx_export import INPUT_NAME, OUTPUT_NAME, check_onnx_file
from trainrelay.export.samples import read_samples
from trainrelay.forecast.checkpoint import load_forecaster
from trainrelay.policy.model import load_policy

log = logging.getLogger(__name__)

METRIC_SCHEMA: dict[str, Any] = {
    "model": pl.String,
    "engine": pl.String,
    "device": pl.String,
    "precision": pl.String,
    "batch": pl.Int64,
    "status": pl.String,
    "reason": pl.String,
    "build_seconds": pl.Float64,
    "rel_l2_error": pl.Float64,
    "tolerance": pl.Float64,
    "correct": pl.Boolean,
    "latency_mean_ms": pl.Float64,
    "latency_p50_ms": pl.Float64,
    "latency_p95_ms": pl.Float64,
    "latency_p99_ms": pl.Float64,
    "throughput_sps": pl.Float64,
    "cpu_util_pct": pl.Float64,
    "gpu_util_pct": pl.Float64,
    "vram_mb": pl.Float64,
    "peak_rss_mb": pl.Float64,
}
RAW_SCHEMA: dict[str, Any] = {
    "model": pl.String,
    "engine": pl.String,
    "batch": pl.Int64,
    "trial": pl.Int64,
    "iteration": pl.Int64,
    "latency_ms": pl.Float64,
}


def check_settings(settings: dict[str, Any], models: list[str]) -> None:
    """Config checks the schema cannot express (known engine names, one objective per model)."""
    unknown = [e for e in settings["engines"] if e not in ENGINE_SPECS]
    if unknown:
        raise ConfigError(
            f"benchmark.engines: unknown engine(s) {', '.join(unknown)}; use {', '.join(ENGINE_SPECS)}"
        )
    for model in models:
        if settings["objective"].get(model) not in OBJECTIVES:
            raise ConfigError(f"benchmark.objective.{model} must be one of {', '.join(OBJECTIVES)}")
    validate_constraints(settings["constraints"])


def tile_batch(samples: np.ndarray, batch: int) -> np.ndarray:
    """A ``batch``-row array of real samples, cycling through them when there are fewer rows."""
    return np.ascontiguousarray(samples[np.arange(batch) % len(samples)], dtype=np.float32)


def rel_l2(output: np.ndarray, reference: np.ndarray) -> float:
    """``||output - reference|| / ||reference||`` in float64 (inf for non-finite output)."""
    out, ref = np.asarray(output, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if not np.isfinite(out).all():
        return float("inf")
    return float(np.linalg.norm(out - ref) / max(float(np.linalg.norm(ref)), 1e-12))


def _empty_row(model: str, engine: str, batch: int, status: str, reason: str | None) -> dict[str, Any]:
    spec = ENGINE_SPECS[engine]
    row = dict.fromkeys(METRIC_SCHEMA)
    row.update(
        model=model,
        engine=engine,
        device=spec.device,
        precision=spec.precision,
        batch=batch,
        status=status,
        reason=reason,
    )
    return row


# Devices whose CUDA context this process has already created (see init_cuda_context).
_CUDA_CONTEXT_READY: set[int] = set()


def init_cuda_context(device_id: int) -> bool:
    """Create the CUDA context (and torch's cuBLAS handle) on ``device_id`` once; False without CUDA.

    The context and cuBLAS workspace take hundreds of MB of device memory and stay for the life of
    the process. Made lazily by whichever engine touches the GPU first, they would be charged to
    that engine's ``vram_mb`` and to no later one; made here before the first VRAM baseline, every
    engine's baseline already holds them. ``is_available()`` and ``empty_cache()`` create no context,
    so a real allocation and a kernel are needed. ONNX Runtime's CUDA EP uses the same primary
    context through the runtime API, so this serves its engines too.
    """
    if not torch.cuda.is_available():
        return False
    if device_id not in _CUDA_CONTEXT_READY:
        device = torch.device(f"cuda:{device_id}")
        one = torch.ones((1, 1), device=device)
        _ = one @ one  # a matmul goes to cuBLAS, which creates its handle and workspace now
        torch.cuda.synchronize(device)
        del one, _
        _CUDA_CONTEXT_READY.add(device_id)
    return True


@dataclass
class BenchResult:
    rows: list[dict[str, Any]]
    raw: pl.DataFrame


def _measure_engine(
    model: ModelUnderTest,
    engine_name: str,
    settings: dict[str, Any],
    engine_settings: EngineSettings,
    references: dict[int, np.ndarray],
    raw_parts: list[pl.DataFrame],
    advance: Callable[[int], object] = lambda n: None,
) -> list[dict[str, Any]]:
    """One row per batch size; ``advance(n)`` is called as ``n`` of them are done (a progress bar)."""
    spec = ENGINE_SPECS[engine_name]
    batches = engine_settings.batches
    tolerance = float(settings["tolerance"][spec.precision])
    baseline = None
    if spec.device == "cuda":
        # The context first, so that no engine is charged for it; then free what earlier engines
        # left behind so the baseline is the GPU without this engine (a full collection is slow
        # with torch and SB3 loaded, so only where it matters).
        if init_cuda_context(engine_settings.device_id):
            gc.collect()
            torch.cuda.empty_cache()
        baseline = gpu_memory_used_mb(engine_settings.device_id)
    engine = make_engine(engine_name, model, engine_settings)
    start = time.perf_counter()
    try:
        first_run = probe(engine, tile_batch(model.samples, batches[0]), references[batches[0]].shape)
    except EngineUnavailable as exc:
        engine.close()
        log.info("%s / %s unavailable: %s", model.name, engine_name, exc)
        advance(len(batches))
        return [_empty_row(model.name, engine_name, b, "unavailable", str(exc)) for b in batches]
    build_seconds = time.perf_counter() - start
    rows = []
    try:
        for batch in batches:
            row = _empty_row(model.name, engine_name, batch, "ok", None)
            try:
                prep_start = time.perf_counter()
                run = (
                    first_run
                    if batch == batches[0]
                    else engine.prepare(tile_batch(model.samples, batch), references[batch].shape)
                )
                output = run()
                engine.sync()
                prepared = time.perf_counter() - prep_start
                error = rel_l2(output, references[batch])
                warm_up(
                    run, int(settings["warmup_iterations"]), float(settings["warmup_ms"]) / 1000, engine.sync
                )
                with ResourceSampler(
                    float(settings["sample_interval_ms"]) / 1000, baseline, engine_settings.device_id
                ) as sampler:
                    trials = time_trials(
                        run, int(settings["iterations"]), int(settings["trials"]), engine.sync
                    )
            except Exception as exc:  # the engine ran once but breaks here: a measured failure
                row.update(status="failed", reason=first_line(exc))
                rows.append(row)
                advance(1)
                log.warning("%s / %s / batch %d failed: %s", model.name, engine_name, batch, row["reason"])
                continue
            summary = latency_summary(trials, batch)
            usage = sampler.usage
            notes = list(usage.notes)
            if spec.device == "cuda" and usage.vram_mb is None:
                notes.append("vram_mb not measured: neither NVML nor torch CUDA could read GPU memory")
            row.update(
                reason="; ".join(notes) or None,
                build_seconds=build_seconds + (prepared if batch != batches[0] else 0.0),
                rel_l2_error=error,
                tolerance=tolerance,
                correct=bool(error <= tolerance),
                latency_mean_ms=summary.mean_ms,
                latency_p50_ms=summary.p50_ms,
                latency_p95_ms=summary.p95_ms,
                latency_p99_ms=summary.p99_ms,
                throughput_sps=summary.throughput_sps,
                cpu_util_pct=usage.cpu_util_pct,
                gpu_util_pct=usage.gpu_util_pct,
                vram_mb=usage.vram_mb,
                peak_rss_mb=usage.peak_rss_mb,
            )
            rows.append(row)
            advance(1)
            iterations = len(trials[0])
            raw_parts.append(
                pl.DataFrame(
                    {
                        "model": [model.name] * (iterations * len(trials)),
                        "engine": [engine_name] * (iterations * len(trials)),
                        "batch": [batch] * (iterations * len(trials)),
                        "trial": np.repeat(np.arange(len(trials)), iterations),
                        "iteration": np.tile(np.arange(iterations), len(trials)),
                        "latency_ms": np.concatenate(trials),
                    },
                    schema=RAW_SCHEMA,
                )
            )
            log.info(
                "%s / %s / batch %d: p50 %.3f ms, p95 %.3f ms, %.0f samples/s, rel_l2 %.2g",
                model.name,
                engine_name,
                batch,
                summary.p50_ms,
                summary.p95_ms,
                summary.throughput_sps,
                error,
            )
    finally:
        engine.close()
    return rows


def reference_outputs(model: ModelUnderTest, batches: tuple[int, ...]) -> dict[int, np.ndarray]:
    """fp32 outputs every engine is compared with: torch eager on the CPU, else ONNX Runtime's CPU EP.

    The ONNX Runtime fallback serves the standalone tool when only ONNX files are given; the
    workflow always has the torch module (export_onnx proved the two agree).
    """
    inputs = {batch: tile_batch(model.samples, batch) for batch in batches}
    if model.module is not None:
        module = model.module.eval()
        with torch.inference_mode():
            return {b: module(torch.from_numpy(x)).float().numpy() for b, x in inputs.items()}

    session = ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])
    return {b: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0] for b, x in inputs.items()}


def run_benchmark(
    models: list[ModelUnderTest],
    settings: dict[str, Any],
    *,
    threads: int,
    trt_cache_dir: str | Path,
    onnx_fix: str = "export the model to ONNX again",
    progress: bool = True,
) -> BenchResult:
    """Measure every engine on every model at every configured batch size.

    A corrupt ONNX file raises DataError naming it and ``onnx_fix`` before anything is measured: ONNX
    Runtime reports it as a session that does not load, which would otherwise become "unavailable"
    rows (a fact about the machine) and a quiet choice of a torch engine.
    """
    check_settings(settings, [m.name for m in models])
    for model in models:
        check_onnx_file(model.onnx_path, onnx_fix)
    torch.set_num_threads(threads)
    batches = tuple(sorted({int(b) for b in settings["batches"]}))
    engine_settings = EngineSettings(threads=threads, batches=batches, trt_cache_dir=Path(trt_cache_dir))
    rows: list[dict[str, Any]] = []
    raw_parts: list[pl.DataFrame] = []
    # One step per model x engine x batch configuration.
    total = len(models) * len(settings["engines"]) * len(batches)
    with progress_bar(total, "benchmark", "config", enabled=progress) as bar:
        for model in models:
            references = reference_outputs(model, batches)
            for engine_name in settings["engines"]:
                bar.set_postfix_str(f"{model.name} / {engine_name}", refresh=False)
                rows.extend(
                    _measure_engine(
                        model, engine_name, settings, engine_settings, references, raw_parts, bar.update
                    )
                )
    raw = pl.concat(raw_parts) if raw_parts else pl.DataFrame(schema=RAW_SCHEMA)
    return BenchResult(rows=rows, raw=raw)


def metrics_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return (
        pl.DataFrame(rows, schema=METRIC_SCHEMA, orient="row") if rows else pl.DataFrame(schema=METRIC_SCHEMA)
    )


def write_outputs(
    result: BenchResult,
    settings: dict[str, Any],
    models: list[str],
    *,
    metrics_parquet: str | Path,
    metrics_csv: str | Path,
    raw_parquet: str | Path,
    selection_json: str | Path,
) -> dict[str, Any]:
    frame = metrics_frame(result.rows)
    atomic.write_parquet(metrics_parquet, frame)
    with atomic.atomic_path(metrics_csv) as tmp:
        frame.write_csv(tmp)
    atomic.write_parquet(raw_parquet, result.raw)
    selection = select_engines(result.rows, settings, models)
    # JSON cannot hold inf (a non-finite engine output); such a row is already incorrect.
    for decision in selection["models"].values():
        for candidate in decision["candidates"]:
            if candidate["rel_l2_error"] is not None and not np.isfinite(candidate["rel_l2_error"]):
                candidate["rel_l2_error"] = None
    atomic.write_json(selection_json, selection)
    return selection


def benchmark_stage(
    *,
    forecaster_checkpoint: str | Path,
    policy_checkpoint: str | Path,
    forecaster_onnx: str | Path,
    policy_onnx: str | Path,
    forecaster_inputs: str | Path,
    policy_inputs: str | Path,
    metrics_parquet: str | Path,
    metrics_csv: str | Path,
    raw_parquet: str | Path,
    selection_json: str | Path,
    trt_cache_dir: str | Path,
    settings: dict[str, Any],
    threads: int,
) -> dict[str, Any]:
    """The benchmark rule: load both models and their real inputs, measure, select, write."""
    forecaster, f_meta = load_forecaster(forecaster_checkpoint)
    policy, p_meta = load_policy(policy_checkpoint)
    f_shape = (int(f_meta["lookback"]), len(f_meta["channels"]))
    models = [
        ModelUnderTest(
            "forecaster",
            forecaster,
            Path(forecaster_onnx),
            read_samples(forecaster_inputs, f_shape, "forecaster window"),
        ),
        ModelUnderTest(
            "policy",
            policy,
            Path(policy_onnx),
            read_samples(policy_inputs, (int(p_meta["obs_dim"]),), "policy observation"),
        ),
    ]
    result = run_benchmark(
        models,
        settings,
        threads=threads,
        trt_cache_dir=trt_cache_dir,
        onnx_fix="rerun `snakemake -j1 --forcerun export_onnx`",
    )
    return write_outputs(
        result,
        settings,
        [m.name for m in models],
        metrics_parquet=metrics_parquet,
        metrics_csv=metrics_csv,
        raw_parquet=raw_parquet,
        selection_json=selection_json,
    )
