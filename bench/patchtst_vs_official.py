"""Our PatchTST training against the official implementation, side by side on one machine.

    python bench/patchtst_vs_official.py --official PATH/PatchTST/PatchTST_supervised \\
        --data ../shared/data/ett/ETTh1.csv --epochs 2 --threads 1 --out bench/out/patchtst_vs_official.json

Both train the paper's ETTh1 setting (L=336, H=96, 3 layers, d_model 16, d_ff 128, dropout 0.3,
batch 128, lr 1e-4, seed 2021) for the same epochs with the same torch threads; by default they run
at the same time, each in its own process, so both see the same machine load (``--sequential``
runs ours first, then theirs). Reported per side: training seconds per epoch (the training loop
only; each side's validation is left out), training samples per second, peak RSS of the process,
and the test MSE of the best-validation weights on the official test loader's windows (batch 128,
drop_last), which is what the official code prints. The ratio is ours / official samples per second.

The official code is run from the checkout you name, never copied: its own ``run_longExp.py``
with the arguments of its ``scripts/PatchTST/etth1.sh``, in a temporary folder (it writes
checkpoints and results to its working directory). One compatibility shim, nothing else: NumPy 2
removed ``np.Inf``, which its early stopping uses, so the launcher sets ``np.Inf = np.inf``.
Ours runs through ``bench/forecast_accuracy.py`` (the workflow's own model and training code).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trainrelay.atomic import write_json

REPO = Path(__file__).resolve().parent.parent

# Runs a Python script in this process after the compatibility shim, then writes the process's
# peak RSS (KiB on Linux) where the bench reads it.
LAUNCHER = """
import resource, runpy, sys
import numpy as np
np.Inf = np.inf  # removed in NumPy 2; the official early stopping still uses it
rss_file, script, *argv = sys.argv[1:]
sys.argv = [script, *argv]
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(script)))
try:
    runpy.run_path(script, run_name="__main__")
finally:
    with open(rss_file, "w") as f:
        f.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
"""


def official_args(data: Path, epochs: int) -> list[str]:
    """The arguments of the official scripts/PatchTST/etth1.sh for pred_len 96, epochs aside."""
    return [
        "--random_seed", "2021", "--is_training", "1",
        "--root_path", str(data.parent) + os.sep, "--data_path", data.name,
        "--model_id", "ETTh1_336_96", "--model", "PatchTST", "--data", "ETTh1", "--features", "M",
        "--seq_len", "336", "--pred_len", "96", "--enc_in", "7", "--e_layers", "3", "--n_heads", "4",
        "--d_model", "16", "--d_ff", "128", "--dropout", "0.3", "--fc_dropout", "0.3",
        "--head_dropout", "0", "--patch_len", "16", "--stride", "8", "--des", "Exp",
        "--train_epochs", str(epochs), "--itr", "1", "--batch_size", "128", "--learning_rate", "0.0001",
        "--num_workers", "0",  # its default is 10 loader processes: more CPU than the threads given
    ]  # fmt: skip


def _env(threads: int) -> dict[str, str]:
    n = str(threads)
    return dict(os.environ, OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, PYTHONHASHSEED="0", CUDA_VISIBLE_DEVICES="")


def _launch(name: str, script: Path, args: list[str], cwd: Path, env: dict, work: Path) -> subprocess.Popen:
    """``script`` under LAUNCHER: its output to work/<name>.log, its peak RSS to work/<name>.rss."""
    cmd = [sys.executable, "-c", LAUNCHER, str(work / f"{name}.rss"), str(script), *args]
    with open(work / f"{name}.log", "w") as log:  # the child holds its own copy of the handle
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)


def start_official(official: Path, data: Path, epochs: int, threads: int, work: Path) -> subprocess.Popen:
    args = official_args(data, epochs)
    return _launch("official", official / "run_longExp.py", args, work, _env(threads), work)


def start_ours(data: Path, epochs: int, threads: int, work: Path) -> subprocess.Popen:
    args = ["--data", str(data), "--horizon", "96", "--lookback", "336", "--models", "patchtst",
            "--epochs", str(epochs), "--seed", "2021", "--device", "cpu", "--threads", str(threads),
            "--no-progress", "--out", str(work / "ours.json")]  # fmt: skip
    env = _env(threads) | {"PYTHONPATH": str(REPO)}
    return _launch("ours", REPO / "bench" / "forecast_accuracy.py", args, REPO, env, work)


def finish(proc: subprocess.Popen, name: str, work: Path) -> None:
    code = proc.wait()
    if code != 0:
        tail = (work / f"{name}.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"patchtst_vs_official: the {name} run failed ({code}):\n{tail}")


def parse_official(work: Path) -> dict:
    text = (work / "official.log").read_text(errors="replace")
    epochs = [float(s) for s in re.findall(r"Epoch: \d+ cost time: ([0-9.]+)", text)]
    train = re.search(r"^train (\d+)$", text, re.M)
    mse = re.findall(r"mse:([0-9.eE+-]+), mae:([0-9.eE+-]+)", text)
    if not epochs or not train or not mse:
        raise SystemExit(f"patchtst_vs_official: could not read the official log {work / 'official.log'}")
    # drop_last=True: every epoch trains on whole batches of 128
    samples = int(train.group(1)) // 128 * 128
    return {
        "epoch_seconds": epochs,
        "samples_per_epoch": samples,
        "samples_per_second": samples * len(epochs) / sum(epochs),
        "test_mse": float(mse[-1][0]),
        "test_mae": float(mse[-1][1]),
        "peak_rss_mb": int((work / "official.rss").read_text()) / 1024,
    }


def parse_ours(work: Path) -> dict:
    result = json.loads((work / "ours.json").read_text())
    entry = result["patchtst"]
    sps = entry["samples_per_second"]
    samples = result["windows"]["train"]
    return {
        # training-loop seconds per epoch (history's seconds also count validation)
        "epoch_seconds": [samples / sps] * entry["epochs_run"],
        "epoch_seconds_with_validation": [row["seconds"] for row in entry["history"]],
        "samples_per_epoch": samples,
        "samples_per_second": sps,
        "test_mse": entry["paper_loader"]["test_mse"],  # the official test loader's windows
        "test_mae": entry["paper_loader"]["test_mae"],
        "test_mse_every_window": entry["test_mse"],
        "peak_rss_mb": int((work / "ours.rss").read_text()) / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--official", required=True, type=Path, help="PatchTST_supervised folder of a checkout"
    )
    parser.add_argument("--data", required=True, type=Path, help="ETTh1.csv (unmodified)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each side")
    parser.add_argument("--sequential", action="store_true", help="ours, then theirs (default: together)")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    if not (args.official / "run_longExp.py").is_file():
        print(f"patchtst_vs_official: {args.official} has no run_longExp.py; name PatchTST_supervised")
        return 2
    if not args.data.is_file():
        print(f"patchtst_vs_official: skipped, {args.data} not found (the ETT files are not in the repo)")
        return 0
    data, official = args.data.resolve(), args.official.resolve()
    load = list(os.getloadavg())
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="patchtst-vs-official-") as tmp:
        work = Path(tmp)
        if args.sequential:
            finish(start_ours(data, args.epochs, args.threads, work), "ours", work)
            finish(start_official(official, data, args.epochs, args.threads, work), "official", work)
        else:
            ours = start_ours(data, args.epochs, args.threads, work)
            theirs = start_official(official, data, args.epochs, args.threads, work)
            finish(ours, "ours", work)
            finish(theirs, "official", work)
        sides = {"ours": parse_ours(work), "official": parse_official(work)}
    ratio = sides["ours"]["samples_per_second"] / sides["official"]["samples_per_second"]
    result = {
        "settings": {
            "epochs": args.epochs,
            "threads": args.threads,
            "together": not args.sequential,
            "data": data.name,
            "lookback": 336,
            "horizon": 96,
            "batch": 128,
        },
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": load, "python": sys.version.split()[0]},
        "wall_seconds": time.time() - started,
        **sides,
        "samples_per_second_ratio": ratio,
    }
    print(f"{'':10} {'s/epoch (train)':>16} {'samples/s':>10} {'peak RSS MB':>12} {'test MSE':>9}")
    for name, side in sides.items():
        per_epoch = ", ".join(f"{s:.1f}" for s in side["epoch_seconds"])
        print(f"{name:10} {per_epoch:>16} {side['samples_per_second']:>10.1f} "
              f"{side['peak_rss_mb']:>12.0f} {side['test_mse']:>9.4f}")  # fmt: skip
    print(f"ours / official samples per second: {ratio:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
