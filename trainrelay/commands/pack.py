"""``pack``: many small raw files -> one deterministic tar (+ sha256 list); ``--unpack`` on the pod."""

from __future__ import annotations

import argparse

from trainrelay.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", help="folder to pack, e.g. data/raw/demo/synthetic")
    parser.add_argument("--out", help="tar to write (a <out>.sha256 file is written beside it)")
    parser.add_argument(
        "--unpack", metavar="TAR", help="extract TAR (made by pack) instead, verifying sha256"
    )
    parser.add_argument(
        "--into", metavar="DIR", help="with --unpack: destination folder, e.g. data/raw/demo/synthetic"
    )


def run(args: argparse.Namespace) -> int:
    # imported here: cli imports every command module to build --help (0.3 s); the libraries at the top
    # would make every command 1.6 s (measured)
    from trainrelay.platforms.packing import pack, unpack

    if args.unpack:
        if not args.into or args.source or args.out:
            raise ConfigError("pack --unpack TAR takes --into DIR and no SOURCE/--out")
        result = unpack(args.unpack, args.into)
        print(
            f"unpacked {result.files} files ({result.bytes} bytes) into {result.dest}, every sha256 verified"
        )
        return 0
    if not args.source or not args.out:
        raise ConfigError("pack needs SOURCE and --out TAR (or --unpack TAR --into DIR)")
    result = pack(args.source, args.out)
    saved = result.loose_volume_bytes - result.packed_volume_bytes
    print(
        f"packed {len(result.files)} files ({result.payload_bytes} bytes) into {result.tar_path} "
        f"({result.tar_bytes} bytes, sha256 {result.tar_sha256})\n"
        f"network volume space: {result.loose_volume_bytes} bytes loose (64 KB minimum per file), "
        f"{result.packed_volume_bytes} packed, {saved} saved"
    )
    return 0
