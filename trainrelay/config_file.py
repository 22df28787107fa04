"""Read one YAML config file as a mapping, or fail with one line naming ``file:line:column``.

Its own module, with nothing but PyYAML, because notebooks/colab.ipynb's kernel (Colab's Python,
not the checkout's venv) reads the config through :mod:`trainrelay.platforms.colab` as well.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from trainrelay.errors import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping.

    PyYAML (and Snakemake) keep the last of two equal keys without a word, so a second
    ``segments:`` block silently drops the first; a config file is short enough to say so.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                first = seen[key]
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key '{key}' appears twice (first at line {first.line + 1}); keep one",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _yaml_error_line(path: Path, exc: yaml.YAMLError) -> str:
    """``file:line:column: problem``, the form editors and terminals turn into a link."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    if context and context_mark is not None:
        problem += f" ({context} at line {context_mark.line + 1}, column {context_mark.column + 1})"
    elif context:
        problem += f" ({context})"
    hint = "" if "keep one" in problem else "; fix the YAML there"
    return f"{where}: not valid YAML: {problem}{hint}"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """One config file as a mapping; ConfigError with ``file:line:column`` when it does not parse."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); save it as UTF-8"
        ) from None
    try:
        loaded = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: builds no Python objects
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error_line(path, exc)) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"{path}: a config file must be a YAML mapping (key: value lines), not a {type(loaded).__name__}"
        )
    return loaded


def check_config_files(paths: Sequence[str | Path]) -> None:
    """Parse every existing file of ``paths``; the workflow runs this before Snakemake's own load.

    Snakemake's loader reports any syntax error as "Config file is not valid JSON or YAML",
    naming neither the file nor the line. A missing file is left to Snakemake's own message.
    """
    for path in paths:
        if Path(path).is_file():
            # Snakemake hands its --configfile paths over absolute; the user typed them relative.
            relative = os.path.relpath(path)
            read_config_file(path if relative.startswith("..") else relative)
