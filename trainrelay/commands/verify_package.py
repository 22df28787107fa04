"""``verify-package FILE``: check every file of a deployment bundle against its SHA256SUMS."""

from __future__ import annotations

import argparse
import sys

from trainrelay.package.verify import MANIFEST, verify_bundle


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="the bundle (.tar.gz) or an unpacked bundle directory")


def run(args: argparse.Namespace) -> int:
    problems = verify_bundle(args.bundle)
    for line in problems:
        print(f"{args.bundle}: {line}", file=sys.stderr)
    if problems:
        return 1
    print(f"{args.bundle}: every file matches {MANIFEST}")
    return 0
