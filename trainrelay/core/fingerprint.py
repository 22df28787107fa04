"""Stable fingerprints of config sections and files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def config_fingerprint(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys): equal configs, equal fingerprints."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
