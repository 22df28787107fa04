"""Config checking with one-line errors.

Snakemake's own ``validate`` reports a schema violation as a multi-line dump of the schema. Users
need one line that names the key and what to do, so the workflow first runs :func:`check_config`
(the same JSON schema, reported as ``config: <dotted.key>: <problem>``) and then
``snakemake.utils.validate`` for its defaults.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from trainrelay.config_file import read_config_file
from trainrelay.deep_merge import deep_merge
from trainrelay.errors import ConfigError

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "config" / "schema.yaml"


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _dotted(path: Any) -> str:
    return ".".join(str(part) for part in path) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    where = _dotted(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        key = ".".join([*map(str, error.absolute_path), extra[0]]) if extra else where
        return f"config: unknown key '{key}' (allowed here: {', '.join(allowed)})"
    if error.validator == "required":
        return f"config: {where}: {error.message}"
    if error.validator == "type":
        return f"config: {where}: {error.instance!r} is not of type {error.validator_value}"
    if error.validator == "enum":
        return f"config: {where}: {error.instance!r} is not one of {error.validator_value}"
    return f"config: {where}: {error.message}"


def config_errors(config: dict[str, Any], schema: dict[str, Any] | None = None) -> list[str]:
    """Every schema violation of ``config`` as a one-line message, most specific first."""
    schema = schema if schema is not None else load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (-len(e.absolute_path), e.message))
    return [_describe(error) for error in errors] or consistency_errors(config)


# Stages that read the precomputed forecasts with the policy (config `until` values).
FORECASTER_ONLY_STAGES = ("embeddings", "train_forecaster", "precompute")
INTERVAL_MINUTES = {
    "1m": 1, "3m": 3, "5m": 5, "15m": 15, "30m": 30, "1h": 60, "2h": 120, "4h": 240, "8h": 480, "1d": 1440,
}  # fmt: skip


def consistency_errors(config: dict[str, Any]) -> list[str]:
    """Settings that are valid one by one but wrong together (checked once the schema holds)."""
    problems = []
    fold = config["forecaster"]["fold"]
    if fold != 0 and config["until"] not in FORECASTER_ONLY_STAGES:
        # One forecast table feeds every walk-forward fold's policy; only a forecaster fitted on fold
        # 0 (whose train rows come before every fold's val and test) keeps it out of sample.
        problems.append(
            f"config: forecaster.fold: {fold} would leak: fold {fold}'s train and val rows overlap earlier "
            "folds' test rows, and every fold's policy reads its forecasts; set forecaster.fold: 0, "
            "or until: precompute to study that forecaster alone"
        )
    hours = config["policy"]["funding_every_hours"]
    if hours is not None and config["source"] != "files":
        bar = config["intervals"]["bar"]
        if (hours * 60) % INTERVAL_MINUTES[bar]:
            # Funding is charged at the bars that close on a funding time; with longer or misaligned
            # bars some settlements fall inside a bar and would never be charged.
            problems.append(
                f"config: policy.funding_every_hours: {hours:g} is not a whole number of {bar} bars "
                f"(intervals.bar), so settlements inside a bar would go uncharged; use a bar that "
                "divides the funding interval"
            )
    if config["until"] not in FORECASTER_ONLY_STAGES and not text_events_configured(config):
        # Without text events the text part of the observation would be zeros posing as "no news".
        text_on = config["policy"]["observation"]["text"]
        ablation = "no_text" in (config["policy"]["ablations"] or [])
        if text_on or ablation:
            what = "policy.observation.text is true" if text_on else "policy.ablations has no_text"
            problems.append(
                f"config: {what} but source '{config['source']}' has no text events (events.path is null); "
                "set policy.observation.text: false and drop no_text from policy.ablations, or give "
                "events.path"
            )
    return problems


def text_events_configured(config: dict[str, Any]) -> bool:
    """Whether the configured source brings text events (the synthetic market writes its own)."""
    if config.get("source", "synthetic") == "synthetic":
        return bool((config.get("synthetic") or {}).get("text_events", True))
    return bool((config.get("events") or {}).get("path"))


def check_config(config: dict[str, Any], schema: dict[str, Any] | None = None, source: str = "") -> None:
    """Raise ConfigError with one line for the first violation (and a count of the others)."""
    problems = config_errors(config, schema)
    if not problems:
        return
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    hint = f"; fix it in {source}" if source else ""
    raise ConfigError(f"{problems[0]}{more}{hint}")


def load_config(path: str | Path, overrides: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Load a config file (plus override files, merged deeply in order) and check it."""
    config: dict[str, Any] = {}
    for item in [path, *overrides]:
        deep_merge(config, read_config_file(item))
    check_config(config, source=str(path))
    return config


# The config sections each stage reads. A rule's `params: config=` carries their digest
# (rules/common.smk: config_params), so a changed seed, split or model setting reruns that rule
# (Snakemake's "params" rerun trigger) and, through the new outputs, everything downstream; `python
# -m trainrelay diff` recomputes the same digests to say which stages two runs differ in. How a run
# is driven (checkpoint, tracking, until) is left out. The device is the environment rule's own
# param: a new device reruns the preflight and, since the stages read its environment.json, what
# was computed on the old one.
ACQUIRE_KEYS: dict[str, list[str]] = {
    "synthetic": ["source", "seed", "synthetic", "events", "intervals"],
    "binance": ["source", "binance", "events", "intervals"],
    "files": ["source", "files", "events"],
    "freqtrade": ["source", "freqtrade", "events", "intervals"],
}


def stage_config_keys(config: dict[str, Any]) -> dict[str, list[str]]:
    """Stage -> the config sections its rules' digest covers, for the configured source."""
    acquire = ACQUIRE_KEYS.get(str(config.get("source", "synthetic")), ["source"])
    return {
        "acquire": acquire,
        "manifest": [*acquire, "manifest"],
        "segments": [*acquire, "manifest", "segments"],
        "embeddings": ["seed", "events", "embeddings"],
        "tune": ["seed", "forecaster", "tune"],
        "forecaster": ["seed", "forecaster", "tune"],
        "policy": ["seed", "policy"],
        "engines": ["seed", "benchmark"],
        "report": ["report", "package"],
        "package": ["package"],
    }


def config_digest(config: dict[str, Any], keys: Sequence[str]) -> str:
    """A short, stable digest of the config sections ``keys``: a rule's ``params`` value.

    Snakemake reruns a job whose params changed since it ran, so a rule that carries the digest of
    the sections it reads is rebuilt when one of them changes (a new seed, another split), and
    only then; key order and YAML formatting do not matter.
    """
    chosen = {key: config.get(key) for key in sorted(set(keys))}
    text = json.dumps(chosen, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
