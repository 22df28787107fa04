"""Layered config files merged as Snakemake merges ``--configfile`` layers.

Standard library only: ``trainrelay.platforms.colab`` uses it on Colab's own Python before the checkout's
requirements (jsonschema, torch, ...) are installed.
"""

from __future__ import annotations

from typing import Any


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into ``base`` in place and return it: mappings merge key by key, any other
    value (lists included) replaces the one below."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value
    return base
