"""Forecast accuracy on ETT with the standard protocol, through the workflow's own model code.

    python bench/forecast_accuracy.py --data ../shared/data/ett/ETTh1.csv --horizon 96 --out out.json

Writes {"patchtst": {"test_mse", "test_mae", "val_mse", ...}, "dlinear": {...}, "naive": {...},
"seconds": ...} plus the settings and machine load. Every test window is scored; each model's
"paper_loader" entry also scores the windows the official test loader keeps (drop_last, batch 128),
for comparison with published tables. Skips cleanly (exit 0, nothing written) when
the data file is absent, since the ETT files are not part of the repository.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from trainrelay.atomic import write_json
from trainrelay.core.devices import resolve_device
from trainrelay.errors import TrainrelayError
from trainrelay.forecast.protocol import run_protocol


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="ETTh1.csv / ETTm1.csv (unmodified)")
    parser.add_argument("--horizon", type=int, required=True)
    parser.add_argument("--lookback", type=int, default=336)
    parser.add_argument("--out", required=True, help="result JSON")
    parser.add_argument("--models", default="patchtst,dlinear,naive")
    parser.add_argument("--epochs", type=int, default=None, help="PatchTST epochs (paper: 100)")
    parser.add_argument("--patience", type=int, default=None, help="early-stop patience (paper: 100 / 20)")
    parser.add_argument("--hold-epochs", type=int, default=None, help="type3: epochs before x0.9 decay")
    parser.add_argument("--seed", type=int, default=2021)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not Path(args.data).is_file():
        print(f"forecast_accuracy: skipped, {args.data} not found (the ETT files are not in the repo)")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = run_protocol(
            args.data,
            args.horizon,
            args.lookback,
            models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
            epochs=args.epochs,
            patience=args.patience,
            hold_epochs=args.hold_epochs,
            seed=args.seed,
            device=resolve_device(args.device),
            progress=not args.no_progress,
        )
    except TrainrelayError as exc:
        print(f"forecast_accuracy: error: {exc}", file=sys.stderr)
        return 1
    write_json(args.out, result)
    scored = {m: result[m] for m in result if isinstance(result[m], dict) and "test_mse" in result[m]}
    summary = ", ".join(
        f"{m} {e['test_mse']:.4f}/{e['test_mae']:.4f} "
        f"(paper loader {e['paper_loader']['test_mse']:.4f}/{e['paper_loader']['test_mae']:.4f})"
        for m, e in scored.items()
    )
    print(
        f"forecast_accuracy: {Path(args.data).name} H={args.horizon} test mse/mae: {summary} "
        f"({result['seconds']:.0f}s)"
    )
    for name, entry in scored.items():
        use = entry.get("resources")
        if not use:  # nothing trained (the last value)
            continue
        gpu = (
            f", GPU util {use['gpu_util_pct']:.0f}% (NVML), VRAM {use['vram_mb']:.0f} MiB"
            if use["gpu_util_pct"] is not None
            else ""
        )
        print(
            f"  {name}: {entry['samples_per_second']:,.0f} train samples/s, {entry['epochs_run']} epochs "
            f"(best {entry['best_epoch']}), CPU {use['cpu_util_pct']:.0f}%{gpu}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
