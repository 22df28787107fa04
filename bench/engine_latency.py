"""Standalone engine benchmark: the workflow's runner on ONNX files you name, as a table and JSON.

    .venv/bin/python bench/engine_latency.py results/demo/models/policy.onnx \\
        --inputs results/demo/models/policy_inputs.npy --checkpoint results/demo/checkpoints/ppo_policy.zip \\
        --batches 1 64 --json results/demo/benchmark/engine_latency.json

The method (warm-up, trials, median trial, correctness, resources) is exactly the benchmark rule's;
settings default to config/config.yaml's ``benchmark`` section. Without ``--inputs`` the inputs
are standard-normal draws (seed 0) of the model's input shape, and the JSON says so. Without
``--checkpoint`` the torch engines are reported unavailable and correctness is measured against
ONNX Runtime's CPU EP instead of torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent


def _input_shape(onnx_path: Path) -> tuple[int, ...]:
    import onnx

    dims = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    trailing = [d.dim_value for d in dims[1:]]
    if any(d < 1 for d in trailing):
        raise SystemExit(f"{onnx_path}: input has symbolic non-batch dimensions; pass --inputs")
    return tuple(trailing)


def _load_module(checkpoint: Path):
    if checkpoint.suffix == ".zip":
        from trainrelay.policy.model import load_policy

        return load_policy(checkpoint)[0]
    from trainrelay.forecast.checkpoint import load_forecaster

    return load_forecaster(checkpoint)[0]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx", nargs="+", type=Path, help="ONNX files (model name = file stem)")
    parser.add_argument(
        "--inputs", nargs="*", type=Path, default=[], help="one [n, ...] float32 .npy per model"
    )
    parser.add_argument(
        "--checkpoint", nargs="*", type=Path, default=[], help="one checkpoint per model (.pt/.zip)"
    )
    parser.add_argument("--config", type=Path, default=REPO / "config" / "config.yaml")
    parser.add_argument("--engines", nargs="*", help="default: benchmark.engines from the config")
    parser.add_argument("--batches", nargs="*", type=int, help="default: benchmark.batches")
    parser.add_argument("--iterations", type=int, help="timed calls per trial")
    parser.add_argument("--trials", type=int)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write rows and selection here")
    parser.add_argument("--trt-cache", type=Path, default=Path("results/engine_latency/trt_cache"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from trainrelay import atomic
    from trainrelay.benchmark.engines import ModelUnderTest
    from trainrelay.benchmark.select import select_engines
    from trainrelay.benchmark.stage import run_benchmark

    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name, given in (("--inputs", args.inputs), ("--checkpoint", args.checkpoint)):
        if given and len(given) != len(args.onnx):
            raise SystemExit(f"{name}: give one per ONNX file ({len(args.onnx)}), or none")
    settings = yaml.safe_load(args.config.read_text())["benchmark"]
    for key in ("engines", "batches", "iterations", "trials"):
        if getattr(args, key):
            settings[key] = getattr(args, key)

    models, provenance = [], {}
    for i, onnx_path in enumerate(args.onnx):
        if args.inputs:
            samples = np.load(args.inputs[i]).astype(np.float32)
            provenance[onnx_path.stem] = str(args.inputs[i])
        else:
            samples = (
                np.random.default_rng(0).standard_normal((64, *_input_shape(onnx_path))).astype(np.float32)
            )
            provenance[onnx_path.stem] = "random normal (seed 0)"
        module = _load_module(args.checkpoint[i]) if args.checkpoint else None
        models.append(ModelUnderTest(onnx_path.stem, module, onnx_path, samples))
    names = [m.name for m in models]
    settings["objective"] = {name: settings["objective"].get(name, "latency") for name in names}

    result = run_benchmark(models, settings, threads=args.threads, trt_cache_dir=args.trt_cache)
    table = Table(title="engine latency")
    for column in ("model", "engine", "batch", "status", "p50 ms", "p95 ms", "p99 ms", "samples/s", "rel L2"):
        table.add_column(column, justify="right" if column not in ("model", "engine", "status") else "left")
    for row in result.rows:
        if row["status"] != "ok":
            table.add_row(row["model"], row["engine"], str(row["batch"]), f"{row['status']}: {row['reason']}")
            continue
        table.add_row(
            row["model"], row["engine"], str(row["batch"]), "ok", f"{row['latency_p50_ms']:.3f}",
            f"{row['latency_p95_ms']:.3f}", f"{row['latency_p99_ms']:.3f}", f"{row['throughput_sps']:.0f}",
            f"{row['rel_l2_error']:.2g}",
        )  # fmt: skip
    Console(width=200).print(table)
    if args.json:
        selection = select_engines(result.rows, settings, names)
        rows = [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()}
                for r in result.rows]  # fmt: skip
        atomic.write_json(args.json, {"inputs": provenance, "settings": settings, "rows": rows,
                                      "selection": selection})  # fmt: skip
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
