"""The ``acquire`` stage: dispatch on ``config["source"]`` and list the files it writes.

:func:`raw_targets` is what the Snakefile declares as the rule's outputs, so it is pure, fast and
lists exactly the files :func:`acquire` writes, relative to the raw root :func:`raw_root`.

The raw root is ``data/raw/<run>/<source>/``: each run (``config.run``) owns its raw data, as it owns
``results/<run>/``, so a second run with other source settings never rewrites the files an earlier
run was built from (which made Snakemake want to rebuild the earlier run from scratch).
"""

from __future__ import annotations

import logging
from pathlib import Path

from trainrelay.data import binance, files_source, freqtrade, synthetic
from trainrelay.data.events import EVENTS_RELPATH, empty_events, normalise_events, write_events
from trainrelay.errors import ConfigError

log = logging.getLogger(__name__)

SOURCES = ("synthetic", "binance", "files", "freqtrade")


def _source(config: dict) -> str:
    source = config.get("source")
    if source not in SOURCES:
        raise ConfigError(f"source: '{source}' is not one of {', '.join(SOURCES)}")
    return source


def raw_root(config: dict) -> str:
    """The folder, relative to the workdir, that acquire writes the run's raw data into."""
    return f"data/raw/{config['run']}/{_source(config)}"


def raw_targets(config: dict) -> list[str]:
    """Every file :func:`acquire` writes, relative to the raw root, sorted."""
    source = _source(config)
    if source == "synthetic":
        return synthetic.synthetic_relpaths(config)
    if source == "binance":
        paths = binance.binance_relpaths(config)
    elif source == "freqtrade":
        paths = freqtrade.freqtrade_relpaths(config)
    else:
        paths = [files_source.series_relpath(config["files"]["symbol"])]
    return sorted([*paths, EVENTS_RELPATH])


def local_source_files(config: dict) -> list[str]:
    """The files on this machine that acquire reads for a local source (a freqtrade folder's
    candle and funding files, ``files.path``, ``events.path``): the acquire rule's inputs, so a
    newer download reruns acquire and everything after it. Downloads (``binance`` without
    ``archive_dir``) and the synthetic market have none. Raises DataError/ConfigError as acquire
    would, naming what is missing."""
    source = _source(config)
    paths: list[str] = []
    if source == "freqtrade":
        paths = [str(item.path) for item in freqtrade.source_files(config)]
    elif source == "files" and config["files"].get("path"):
        paths = [str(config["files"]["path"])]
    events = (config.get("events") or {}).get("path")
    if events and source != "synthetic":
        paths.append(str(events))
    return sorted(paths)


def _user_events(config: dict, raw_root: Path) -> None:
    """``events.path`` normalised to events/events.csv, or the header-only file when it is null."""
    path = (config.get("events") or {}).get("path")
    frame = normalise_events(path) if path else empty_events()
    write_events(raw_root / EVENTS_RELPATH, frame)
    log.info("events: %d text event(s)%s", frame.height, f" from {path}" if path else " (none configured)")


def acquire(config: dict, raw_root: str | Path) -> None:
    """Write the raw data of the configured source under ``raw_root``."""
    source = _source(config)
    raw_root = Path(raw_root)
    expected = raw_targets(config)  # validates the config before any work
    if source == "synthetic":
        if (config.get("events") or {}).get("path"):
            log.warning("events.path is ignored with source: synthetic, which writes its own headlines")
        synthetic.generate(config, raw_root)
    elif source == "binance":
        if config["binance"].get("archive_dir"):
            binance.copy_local(config, raw_root)
        else:
            binance.download(config, raw_root)
        _user_events(config, raw_root)
    elif source == "freqtrade":
        freqtrade.acquire_freqtrade(config, raw_root)
        _user_events(config, raw_root)
    else:
        files_source.acquire_files(config["files"], raw_root)
        _user_events(config, raw_root)
    missing = [p for p in expected if not (raw_root / p).is_file()]
    if missing:  # raw_targets and the writers disagree: a bug, not a user error
        raise RuntimeError(f"acquire did not write {len(missing)} declared file(s), e.g. {missing[0]}")
