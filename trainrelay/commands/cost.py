"""``cost``: what a run cost, per rule and in all, from its benchmark files (docs/cost.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from trainrelay.core.artifacts import reports_path, reports_relpath
from trainrelay.errors import ConfigError, DataError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a run name (results/<name>/) or the path to a run folder")
    parser.add_argument("--root", default=".", help="the checkout holding results/ and reports/")
    parser.add_argument(
        "--price-per-hour", type=float, metavar="X", help="price of one machine hour (replaces cost.per_hour)"
    )
    parser.add_argument(
        "--gpu-price-per-hour",
        type=float,
        metavar="X",
        help="price of a GPU rule's hour (cost.gpu_per_hour)",
    )
    parser.add_argument("--unit", help="what prices count: USD, compute units, ... (cost.unit)")
    parser.add_argument(
        "--profile",
        help="take the price from profiles/<name>/config.yaml (its `config: cost:`), e.g. runpod",
    )
    parser.add_argument("--json", action="store_true", help="print the costs as JSON")


def recorded_cost_config(root: str, run: str, results) -> tuple[dict, str]:
    """The ``cost:`` section the run was made with (its report.json records the resolved config),
    else config/config.yaml's; with where it came from."""
    in_workdir = reports_path(root, results.name, "report", "json")
    for report in (in_workdir, results / reports_relpath("report", "json")):
        if report.is_file():
            try:
                config = json.loads(report.read_text(encoding="utf-8")).get("config") or {}
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(config, dict) and "cost" in config:
                return config, str(report)
    base = Path(root) / "config" / "config.yaml"
    if base.is_file():
        return yaml.safe_load(base.read_text(encoding="utf-8")) or {}, str(base)
    return {}, "defaults"


def run(args: argparse.Namespace) -> int:
    # imported here: cli imports every command module to build --help (0.3 s); the libraries at the top
    # would make every command 1.6 s (measured)
    from trainrelay.report.cost import (
        busy_seconds,
        named_results,
        price_from_config,
        profile_cost,
        render,
        run_cost,
    )

    for flag in ("price_per_hour", "gpu_price_per_hour"):
        value = getattr(args, flag)
        if value is not None and not value >= 0:
            raise ConfigError(f"--{flag.replace('_', '-')} {value}: must be a number >= 0")
    results = named_results(args.root, args.run)
    config, source = recorded_cost_config(args.root, args.run, results)
    cost_cfg = dict(config.get("cost") or {})
    if args.profile:
        cost_cfg.update(profile_cost(args.root, args.profile))
        source = f"profiles/{args.profile}"
    overrides = {"per_hour": args.price_per_hour, "gpu_per_hour": args.gpu_price_per_hour, "unit": args.unit}
    given = {k: v for k, v in overrides.items() if v is not None}
    if given:
        cost_cfg.update(given)
        source = "the command line"
    price = price_from_config({"cost": cost_cfg}, source=source)
    cost = run_cost(results, price, config, with_times=True)
    if not cost.jobs:
        raise DataError(
            f"run '{args.run}': no benchmark files in {results / 'benchmarks'}: no job of it has finished "
            "(a rule writes its file when it succeeds)"
        )
    busy = busy_seconds(cost.jobs)
    if args.json:
        data = cost.to_dict()
        data["busy_s_from_file_times"] = busy
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(render(cost, busy), end="")
    return 0
