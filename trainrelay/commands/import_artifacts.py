"""``import-artifacts``: bring outputs made elsewhere into results/<run>/ so Snakemake counts them done."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src", help="folder with the artifacts (any layout; a SHA256SUMS file in it is checked)"
    )
    parser.add_argument(
        "--run", required=True, help="run name to import into: results/<run>/, reports/<run>/"
    )
    parser.add_argument("--dest", default=".", help="the workflow checkout to import into (default: .)")
    parser.add_argument(
        "--configfile",
        nargs="+",
        default=[],
        help="the config file(s) the run uses, as given to snakemake (they decide which files are declared)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing files whose content differs")


def run(args: argparse.Namespace) -> int:
    # imported here: cli imports every command module to build --help (0.3 s); the libraries at the top
    # would make every command 1.6 s (measured)
    from trainrelay.platforms.importer import import_artifacts

    summary = import_artifacts(args.src, args.run, args.dest, args.configfile, force=args.force)
    print(f"imported {summary['files']} file(s) of run {summary['run']}: {', '.join(summary['imported'])}")
    for rule, paths in summary["missing"].items():
        more = f" and {len(paths) - 1} more" if len(paths) > 1 else ""
        why = (
            f", several candidates: {', '.join(summary['ambiguous'][paths[0]])}"
            if paths[0] in summary["ambiguous"]
            else ""
        )
        print(f"not imported: {rule} (missing {paths[0]}{more}{why})")
    print(
        f"checksums and sources: results/{summary['run']}/imported/; "
        f"check with: snakemake -n --config run={summary['run']}"
    )
    return 0
