"""``check-config``: check config files (merged in order) against config/schema.yaml."""

from __future__ import annotations

import argparse

from trainrelay.config import load_config
from trainrelay.errors import ConfigError

BASE = "config/config.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", default=BASE, help="base config file")
    parser.add_argument("--configfile", action="append", default=[], help="override file(s), merged in order")


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, args.configfile)
    except ConfigError as exc:
        # A preset (config/presets/*.yaml) is an overlay, not a whole config: given as the base it
        # lacks most keys. Say how to check it instead of listing 80 missing keys.
        if "is a required property" in str(exc) and args.config != BASE and not args.configfile:
            raise ConfigError(
                f"{exc}. If {args.config} is a preset or an override, check it over the base config: "
                f"python -m trainrelay check-config --configfile {args.config}"
            ) from exc
        raise
    print(f"config ok: run '{config['run']}', source '{config['source']}', until '{config['until']}'")
    return 0
