"""``runpod-plan``: the upload checklist and the step order for running a config on RunPod."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from trainrelay.atomic import write_json
from trainrelay.config import load_config
from trainrelay.errors import ConfigError

DEFAULT_CONFIG = "config/config.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="base config file")
    parser.add_argument("--configfile", action="append", default=[], help="override file(s), merged in order")
    parser.add_argument(
        "--datacenter",
        default=os.environ.get("TRAINRELAY_RUNPOD_DATACENTER"),
        help="RunPod datacenter of the volume, e.g. US-KS-2 (default: $TRAINRELAY_RUNPOD_DATACENTER)",
    )
    parser.add_argument("--root", default=".", help="the checkout whose files are measured")
    parser.add_argument("--json", metavar="PATH", help="also write the plan as JSON")
    parser.add_argument(
        "--from",
        dest="previous",
        metavar="RUN",
        help="estimate time and cost from this run (a name under results/ or a folder); "
        "default: results/<run> of the same config when it was measured",
    )
    parser.add_argument(
        "--price-per-hour",
        type=float,
        metavar="X",
        help="pod price per hour (default: cost.per_hour of the config, else of profiles/runpod)",
    )
    parser.add_argument(
        "--check-s3",
        action="store_true",
        help="check the volume's S3 API with the SNAKEMAKE_STORAGE_S3_* keys and TRAINRELAY_RUNPOD_VOLUME_ID",
    )


def run(args: argparse.Namespace) -> int:
    # imported here: cli imports every command module to build --help (0.3 s); the libraries at the top
    # would make every command 1.6 s (measured)
    from trainrelay.platforms.runpod import S3_PREFIX, VOLUME_VAR, build_plan, check_s3_access, render_plan
    from trainrelay.report.cost import named_results

    if args.check_s3:
        # Expanded as Snakemake expands the profile's value: an unset variable stays $NAME and is named.
        target = check_s3_access(os.path.expandvars(S3_PREFIX))
        print(f"S3 access ok: bucket '{target.bucket}' at {target.endpoint}")
        return 0
    config = load_config(args.config, args.configfile)
    extra = ([] if args.config == DEFAULT_CONFIG else [args.config]) + list(args.configfile)
    volume = os.environ.get(VOLUME_VAR)
    previous = named_results(args.root, args.previous) if args.previous else None
    plan = build_plan(
        args.root,
        config,
        extra,
        datacenter=args.datacenter,
        volume_id=volume,
        previous=previous,
        price=_price(args, config),
    )
    print(render_plan(plan), end="")
    if args.json:
        write_json(args.json, plan.to_dict())
    return 0


def _price(args: argparse.Namespace, config: dict):
    """--price-per-hour, else the config's cost.per_hour, else profiles/runpod's (the pod's price)."""
    # imported here: cli imports every command module to build --help (0.3 s); the libraries at the top
    # would make every command 1.6 s (measured)
    from trainrelay.report.cost import price_from_config, profile_cost

    section = dict(config.get("cost") or {})
    source = "config cost"
    if section.get("per_hour") is None and (Path(args.root) / "profiles" / "runpod").is_dir():
        section.update(profile_cost(args.root, "runpod"))
        source = "profiles/runpod"
    if args.price_per_hour is not None:
        if not args.price_per_hour >= 0:
            raise ConfigError(f"--price-per-hour {args.price_per_hour}: must be a number >= 0")
        section["per_hour"] = args.price_per_hour
        source = "the command line"
    return price_from_config({"cost": section}, source=source)
