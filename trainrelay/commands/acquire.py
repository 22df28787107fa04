"""``acquire``: fetch or generate the raw data of a config, outside a Snakemake run."""

from __future__ import annotations

import argparse

from trainrelay.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config/config.yaml", help="base config file")
    parser.add_argument("--configfile", action="append", default=[], help="override file(s)")
    parser.add_argument("--raw-root", default=None, help="default: data/raw/<run>/<source>")


def run(args: argparse.Namespace) -> int:
    # imported here: cli imports every command module to build --help (0.3 s); the libraries at the top
    # would make every command 1.6 s (measured)
    from trainrelay.data.acquire import acquire, raw_root, raw_targets

    config = load_config(args.config, args.configfile)
    root = args.raw_root or raw_root(config)
    acquire(config, root)
    print(f"{len(raw_targets(config))} raw files under {root}")
    return 0
