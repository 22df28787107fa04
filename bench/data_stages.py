"""Wall time and peak memory of the manifest and segments stages at growing data sizes.

Each size is generated once with the synthetic source (cached under --workdir), then each stage
runs in its own subprocess so that its peak resident memory can be read from the kernel
(``os.wait4`` gives that child's ``ru_maxrss``; tracemalloc would miss polars' native memory).

    .venv/bin/python bench/data_stages.py --out results/bench/data_stages.json
    .venv/bin/python bench/data_stages.py --sizes demo,x10 --out /tmp/data_stages.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
SYMBOLS = [
    "BTCUSDT",
    "ETHUSDT",
    "SOLUSDT",
    "BNBUSDT",
    "XRPUSDT",
    "ADAUSDT",
    "DOGEUSDT",
    "LTCUSDT",
    "AVAXUSDT",
    "LINKUSDT",
]
# name -> (symbols, months, start month). The demo is the embedded config (2 symbols x 2 months).
SIZES = {
    "demo": (2, 2, "2024-01"),
    "x10": (4, 10, "2023-03"),
    "x25": (10, 10, "2023-03"),  # as x10 with more symbols: memory should not grow with them
    "x100": (10, 40, "2021-09"),
    "x150": (10, 60, "2020-01"),  # 5 years x 10 symbols of 3m bars
}
RAW = "data/raw/bench/synthetic"
MANIFEST = "results/bench/manifest/base_manifest.parquet"
SEGMENTS = {
    "features_out": "results/bench/segments/features.parquet",
    "scaler_out": "results/bench/segments/scaler.json",
    "metadata_out": "results/bench/segments/segments_metadata.parquet",
}


def size_config(name: str) -> dict[str, Any]:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config = copy.deepcopy(config)
    symbols, months, start = SIZES[name]
    config["synthetic"].update({"symbols": SYMBOLS[:symbols], "months": months, "start_month": start})
    config["run"] = "bench"
    return config


def prepare(workdir: Path, config: dict[str, Any]) -> list[str]:
    """Generate the raw data for ``config`` in ``workdir`` unless the same data is already there."""
    from trainrelay.core.fingerprint import config_fingerprint
    from trainrelay.data import synthetic

    marker = workdir / "raw.fingerprint"
    fingerprint = config_fingerprint({k: config[k] for k in ("seed", "synthetic", "intervals")})
    files = [f"{RAW}/{p}" for p in synthetic.synthetic_relpaths(config)]
    if not (marker.is_file() and marker.read_text() == fingerprint):
        workdir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        synthetic.generate(config, workdir / RAW)
        marker.write_text(fingerprint)
        print(f"  generated {len(files)} raw files in {time.perf_counter() - started:.1f} s", flush=True)
    return files


def child(stage: str, workdir: str) -> None:
    """Run one stage inside ``workdir`` and print its in-process wall time as JSON."""
    os.chdir(workdir)
    config = json.loads(Path("config.json").read_text())
    files = json.loads(Path("files.json").read_text())
    from trainrelay.data.manifest import build_manifest
    from trainrelay.data.segments import build_segments

    started = time.perf_counter()
    if stage == "manifest":
        build_manifest(RAW, files, config, MANIFEST)
    else:
        build_segments(MANIFEST, config=config, **SEGMENTS)
    print(json.dumps({"seconds": time.perf_counter() - started}))


def measure(stage: str, workdir: Path) -> dict[str, float]:
    """Run ``stage`` in a subprocess; its wall time and the kernel's peak RSS of that process."""
    out, err = workdir / f"{stage}.stdout", workdir / f"{stage}.stderr"
    started = time.perf_counter()
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", stage, str(workdir)], stdout=stdout, stderr=stderr
        )
        # wait4 (not Popen.wait) returns the resource usage of this one child.
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{stage} failed in {workdir}:\n{err.read_text()}")
    inner = json.loads(out.read_text().strip().splitlines()[-1])["seconds"]
    # ru_maxrss is in KiB on Linux. CPU seconds (user + system, all threads, whole process) are
    # reported too: on a shared machine they vary less than wall time.
    return {
        "seconds": round(inner, 3),
        "process_seconds": round(wall, 3),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
    }


def run_size(name: str, root: Path) -> dict[str, Any]:
    config = size_config(name)
    workdir = root / name
    print(f"{name}: {SIZES[name][0]} symbols x {SIZES[name][1]} months", flush=True)
    files = prepare(workdir, config)
    (workdir / "config.json").write_text(json.dumps(config))
    (workdir / "files.json").write_text(json.dumps(files))
    result: dict[str, Any] = {
        "size": name,
        "symbols": SIZES[name][0],
        "months": SIZES[name][1],
        "symbol_months": SIZES[name][0] * SIZES[name][1],
        "raw_mib": round(sum((workdir / f).stat().st_size for f in files) / 2**20, 1),
    }
    for stage in ("manifest", "segments"):
        result[stage] = measure(stage, workdir)
    import polars as pl

    manifest = pl.read_parquet(workdir / MANIFEST)
    result["fine_rows"] = int(
        manifest.filter(pl.col("interval") == config["intervals"]["fine"])["rows"].sum()
    )
    result["feature_rows"] = (
        pl.scan_parquet(workdir / SEGMENTS["features_out"]).select(pl.len()).collect().item()
    )
    return result


def table(results: list[dict[str, Any]]) -> str:
    header = (
        "| size | symbols x months | fine 3m rows | feature rows "
        "| manifest s (CPU s) | manifest MiB | segments s (CPU s) | segments MiB |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['size']} | {r['symbols']} x {r['months']} | {r['fine_rows']:,} | {r['feature_rows']:,} | "
            f"{r['manifest']['seconds']:.2f} ({r['manifest']['cpu_seconds']:.2f}) | "
            f"{r['manifest']['peak_rss_mib']:.0f} | "
            f"{r['segments']['seconds']:.2f} ({r['segments']['cpu_seconds']:.2f}) | "
            f"{r['segments']['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default=",".join(SIZES), help=f"comma-separated subset of {', '.join(SIZES)}"
    )
    parser.add_argument(
        "--workdir", default="/tmp/trainrelay-bench-data", help="where generated data is cached"
    )
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--child", nargs=2, metavar=("STAGE", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {', '.join(unknown)}; choose from {', '.join(SIZES)}")
    results = [run_size(name, Path(args.workdir)) for name in sizes]
    print(table(results))
    if args.out:
        from trainrelay.atomic import write_json

        write_json(
            args.out,
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "load_average_1m_at_end": round(os.getloadavg()[0], 2),
                },
                "results": results,
            },
        )


if __name__ == "__main__":
    main()
