"""``environment``: record the machine (python, torch and CUDA, GPUs, ORT providers, TensorRT)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="requested device")
    parser.add_argument("--out", default=None, help="write environment.json here (default: print it)")


def run(args: argparse.Namespace) -> int:
    # imported here: cli imports every command module to build --help (0.3 s); the libraries at the top
    # would make every command 1.6 s (measured)
    from trainrelay.environment import collect_environment, write_environment

    if args.out:
        write_environment(args.out, args.device)
        print(f"wrote {args.out}")
    else:
        print(json.dumps(collect_environment(args.device), indent=2, sort_keys=True))
    return 0
