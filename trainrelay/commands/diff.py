"""``diff``: what changed between two runs (config keys, inputs, stages, metric deltas)."""

from __future__ import annotations

import argparse
import json

from trainrelay.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_a", metavar="RUN_A", help="a run name (results/<name>/) or the path to a run folder"
    )
    parser.add_argument("run_b", metavar="RUN_B", help="the run to compare with RUN_A (deltas are b - a)")
    parser.add_argument(
        "--root", default=".", help="the checkout whose results/ and reports/ hold named runs (default: .)"
    )
    parser.add_argument("--json", action="store_true", help="print the differences as JSON")
    parser.add_argument(
        "--rtol",
        type=float,
        default=0.0,
        help="ignore metric changes within this relative tolerance, e.g. 0.05 for latency noise (default: 0)",
    )


def run(args: argparse.Namespace) -> int:
    # imported here: cli imports every command module to build --help (0.3 s); the libraries at the top
    # would make every command 1.6 s (measured)
    from trainrelay.report.run_diff import diff_runs, format_diff

    if not args.rtol >= 0:
        raise ConfigError(f"--rtol {args.rtol}: must be a number >= 0")
    result = diff_runs(args.run_a, args.run_b, root=args.root, rtol=args.rtol)
    print(json.dumps(result, indent=2, sort_keys=True, default=str) if args.json else format_diff(result))
    return 0
