"""``python -m trainrelay <command>``: the library's commands for people, notebooks and CI.

The workflow's rules call the same library functions through ``scripts/``; these commands exist
for work outside a Snakemake run (checking a results folder, exporting dashboard state, ...).
A user error prints one line and exits 1: a TrainrelayError, and an OSError of the user's machine
(disk full, quota, read-only folder, permissions, a path given on the command line that does not
exist), however a library wrapped it. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from trainrelay import __version__
from trainrelay.workflow.rulerun import setup_logging, user_error_line

# command -> (module, help). Each module has `add_arguments(parser)` and `run(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "environment": (
        "trainrelay.commands.environment",
        "record the machine (python, torch, CUDA, ORT, TensorRT)",
    ),
    "acquire": ("trainrelay.commands.acquire", "fetch or generate the raw data of a config"),
    "check-config": ("trainrelay.commands.check_config", "check a config file against the schema"),
    "validate": ("trainrelay.commands.validate", "check a results folder against the required-artifact list"),
    "import-artifacts": ("trainrelay.commands.import_artifacts", "import outputs made elsewhere as done"),
    "dashboard": (
        "trainrelay.commands.dashboard",
        "export dashboard state (and run history) from a results folder",
    ),
    "diff": (
        "trainrelay.commands.diff",
        "what changed between two runs: config keys, inputs, stages, metric deltas",
    ),
    "verify-package": ("trainrelay.commands.verify_package", "check a deployment bundle against SHA256SUMS"),
    "pack": ("trainrelay.commands.pack", "pack many small raw files into one verified tar, or --unpack it"),
    "cost": (
        "trainrelay.commands.cost",
        "what a run cost per rule and in all, from its benchmark files x the price per hour",
    ),
    "runpod-plan": ("trainrelay.commands.runpod_plan", "print the RunPod upload checklist and step order"),
    "lookahead": (
        "trainrelay.commands.lookahead",
        "perturb the data after cut times, recompute, and require everything before them unchanged",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainrelay", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"trainrelay {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(level=10 if args.verbose else 20)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except Exception as exc:
        message = user_error_line(exc) or _missing_path(exc)
        if message is None:
            raise
        print(f"trainrelay: error: {message}", file=sys.stderr)
        return 1


def _missing_path(exc: BaseException) -> str | None:
    """A file or folder named on the command line that is not there (in a rule, that is a bug)."""
    if isinstance(exc, FileNotFoundError | NotADirectoryError | IsADirectoryError) and exc.filename:
        return f"'{exc.filename}': {exc.strerror}; check the path"
    return None


if __name__ == "__main__":
    sys.exit(main())
