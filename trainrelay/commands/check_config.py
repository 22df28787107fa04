"""``check-config``: check config files (merged in order) against config/schema.yaml."""

from __future__ import annotations

import argparse

from trainrelay.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", default="config/config.yaml", help="base config file")
    parser.add_argument("--configfile", action="append", default=[], help="override file(s), merged in order")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.configfile)
    print(f"config ok: run '{config['run']}', source '{config['source']}', until '{config['until']}'")
    return 0
