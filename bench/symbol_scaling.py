"""Time per rule of the real-market preset at 1, 2 and 4 symbols (issue 15 req. 5).

    python bench/symbol_scaling.py --symbols 1,2,4 --cores 2 --out bench/out/symbol_scaling.json

Each point is a real ``snakemake --cores N`` run of the repository's Snakefile (``--directory`` a
work folder) with ``config/presets/binance-futures-btc-eth.yaml`` and one change of source: the
synthetic market at the preset's length (``--months``, 15m bars and funding, like the real
folder), so the symbol count is the only thing that differs between the points. The shared real
data holds two futures symbols only; more are generated, which is the honest way to get four.

Training is shortened by default (``--forecaster-epochs``, ``--ppo-timesteps``) so that the three
runs fit a working session on 2 cores: the rules' times then scale with the data, and the full
preset's training time is the measured time per epoch or per PPO step times the preset's epochs
and steps (the JSON records both). ``--full`` runs the preset's own training lengths.

Reports per rule the wall seconds summed over its jobs (from the ``benchmark:`` files), the ratio
to the smallest point, and inside the top rule (train_forecaster) the seconds per epoch of each
model from ``metrics/forecaster.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml
from workflow_run import prepare_workdir, run_workflow  # bench/workflow_run.py

from trainrelay.atomic import write_json
from trainrelay.deep_merge import deep_merge
from trainrelay.report.cost import price_from_config, run_cost

REPO = Path(__file__).resolve().parent.parent
PRESET = REPO / "config/presets/binance-futures-btc-eth.yaml"
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "LTCUSDT"]
MODEL_TRAIN_KEYS = {"patchtst": "train", "dlinear": "dlinear_train", "lstm": "lstm_train", "tcn": "tcn_train"}


def point_config(n: int, months: int, epochs: int | None, timesteps: int | None) -> dict:
    preset = yaml.safe_load(PRESET.read_text())
    overrides: dict = {
        "run": f"scaling-{n}-symbols",
        "source": "synthetic",
        "synthetic": {
            "symbols": SYMBOLS[:n],
            "start_month": "2023-01",
            "months": months,
            "market": "futures/um",
        },
    }
    if epochs is not None:
        overrides["forecaster"] = {key: {"epochs": epochs} for key in MODEL_TRAIN_KEYS.values()}
    if timesteps is not None:
        overrides["policy"] = {"ppo": {"total_timesteps": timesteps}}
    return deep_merge(preset, overrides)


def run_point(workdir: Path, config: dict, cores: int) -> float:
    workdir.mkdir(parents=True, exist_ok=True)
    prepare_workdir(workdir)
    config_file = workdir / "scaling.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    return run_workflow(workdir, config_file, cores, workdir / "snakemake.log")


def per_epoch_seconds(results: Path) -> dict[str, float]:
    """Training seconds per epoch of each model train_forecaster trained (``training`` in its metrics)."""
    metrics = json.loads((results / "metrics/forecaster.json").read_text())
    return {
        name: entry["train_seconds"] / entry["epochs_run"]
        for name, entry in metrics.get("training", {}).items()
        if entry.get("epochs_run")
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--symbols", default="1,2,4", help="symbol counts, e.g. 1,2,4")
    parser.add_argument("--months", type=int, default=24, help="the preset's length (2023-01 .. 2024-12)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--forecaster-epochs", type=int, default=1)
    parser.add_argument("--ppo-timesteps", type=int, default=65536)
    parser.add_argument("--full", action="store_true", help="the preset's own epochs and PPO steps")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/trainrelay-symbol-scaling"))
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.symbols.split(",")]
    epochs = None if args.full else args.forecaster_epochs
    timesteps = None if args.full else args.ppo_timesteps
    points = []
    for n in counts:
        config = point_config(n, args.months, epochs, timesteps)
        workdir = args.workdir / f"{n}-symbols"
        print(f"{n} symbol(s): snakemake --cores {args.cores} in {workdir} ...", flush=True)
        wall = run_point(workdir, config, args.cores)
        results = workdir / "results" / config["run"]
        cost = run_cost(results, price_from_config(config), config)
        points.append({
            "symbols": n,
            "wall_seconds": wall,
            "rules": {row["rule"]: {"jobs": row["jobs"], "wall_s": row["wall_s"]} for row in cost.rules},
            "forecaster_epoch_seconds": per_epoch_seconds(results),
            "ppo_timesteps_per_fold": config["policy"]["ppo"]["total_timesteps"],
            "forecaster_epochs": {m: config["forecaster"][k]["epochs"] for m, k in MODEL_TRAIN_KEYS.items()},
        })  # fmt: skip
        print(f"{n} symbol(s): {wall:.0f} s", flush=True)
    rules = sorted(
        {r for p in points for r in p["rules"]},
        key=lambda r: -points[-1]["rules"].get(r, {"wall_s": 0})["wall_s"],
    )
    head = " ".join(f"{p['symbols']:>9} sym" for p in points)
    print(f"\n{'rule':24} {head}   ratio {counts[-1]}/{counts[0]}")
    for rule in rules:
        walls = [p["rules"].get(rule, {}).get("wall_s") for p in points]
        cells = " ".join(f"{w:>11.1f} s" if w is not None else f"{'-':>13}" for w in walls)
        ratio = walls[-1] / walls[0] if walls[0] and walls[-1] else float("nan")
        print(f"{rule:24} {cells}   {ratio:.2f}")
    print(f"{'whole run (wall)':24} " + " ".join(f"{p['wall_seconds']:>11.1f} s" for p in points))
    settings = {"months": args.months, "cores": args.cores, "full": args.full,
                "forecaster_epochs": epochs, "ppo_timesteps": timesteps, "preset": PRESET.name}  # fmt: skip
    machine = {"cpus": os.cpu_count(), "load_average_at_end": list(os.getloadavg())}
    write_json(args.out, {"settings": settings, "machine": machine, "points": points})
    return 0


if __name__ == "__main__":
    sys.exit(main())
