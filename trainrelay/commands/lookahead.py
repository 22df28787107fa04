"""``lookahead``: perturb every raw bar after a cut time, recompute, and require the past unchanged."""

from __future__ import annotations

import argparse
from pathlib import Path

from trainrelay.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config/config.yaml", help="base config file of the run")
    parser.add_argument(
        "--configfile", action="append", default=[], help="override file(s), as given to snakemake"
    )
    parser.add_argument("--results", default=None, help="the finished run's folder (default: results/<run>)")
    parser.add_argument("--cuts", type=int, default=5, help="number of cut times (default 5)")
    parser.add_argument(
        "--at",
        action="append",
        default=[],
        metavar="TIME",
        help="a cut time (ISO, repeatable) instead of --cuts",
    )
    parser.add_argument("--out", default=None, help="JSON report (default: <results>/lookahead.json)")
    parser.add_argument(
        "--workdir",
        default=None,
        help="folder the manifest's raw paths are relative to (default: <results>/../..)",
    )
    parser.add_argument("--device", default=None, help="override the config's device (auto | cpu | cuda)")
    parser.add_argument(
        "--atol", type=float, default=0.0, help="absolute tolerance for floats (default 0: exact; see docs)"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="perturbation seed (default: the config's seed)"
    )


def run(args: argparse.Namespace) -> int:
    # imported here: cli imports every command module to build --help (0.3 s); the libraries at the top
    # would make every command 1.6 s (measured)
    from trainrelay.lookahead import LookaheadLeak, format_table, leak_line, run_lookahead, write_report

    config = load_config(args.config, args.configfile)
    results = Path(args.results or f"results/{config['run']}")
    report = run_lookahead(
        results,
        config,
        cuts=args.cuts,
        at=args.at,
        workdir=args.workdir,
        device=args.device,
        atol=args.atol,
        seed=args.seed,
    )
    out = Path(args.out) if args.out else results / "lookahead.json"
    write_report(report, out)
    print(format_table(report))
    stale = [r["file"] for r in report.reproduced if not r["reproduced"]]
    if stale:
        print(f"note: recomputing gave other bytes than {len(stale)} file(s) of the run, e.g. {stale[0]}")
    leak = report.first_leak()
    if leak is not None:
        raise LookaheadLeak(f"{leak_line(leak)}; see {out}")
    print(f"no look-ahead: {len(report.cuts)} cut(s), every stage unchanged at or before each cut ({out})")
    return 0
