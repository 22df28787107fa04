"""``runpod-plan``: the upload checklist and the step order for running a config on RunPod."""

from __future__ import annotations

import argparse
import os

from trainrelay.config import load_config

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
        "--check-s3",
        action="store_true",
        help="check the volume's S3 API with the SNAKEMAKE_STORAGE_S3_* keys and TRAINRELAY_RUNPOD_VOLUME_ID",
    )


def run(args: argparse.Namespace) -> int:
    from trainrelay.atomic import write_json
    from trainrelay.runpod import S3_PREFIX, VOLUME_VAR, build_plan, check_s3_access, render_plan

    if args.check_s3:
        # Expanded as Snakemake expands the profile's value: an unset variable stays $NAME and is named.
        target = check_s3_access(os.path.expandvars(S3_PREFIX))
        print(f"S3 access ok: bucket '{target.bucket}' at {target.endpoint}")
        return 0
    config = load_config(args.config, args.configfile)
    extra = ([] if args.config == DEFAULT_CONFIG else [args.config]) + list(args.configfile)
    volume = os.environ.get(VOLUME_VAR)
    plan = build_plan(args.root, config, extra, datacenter=args.datacenter, volume_id=volume)
    print(render_plan(plan), end="")
    if args.json:
        write_json(args.json, plan.to_dict())
    return 0
