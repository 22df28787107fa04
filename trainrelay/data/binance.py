"""The ``binance`` source: monthly kline and funding archives from Binance's public-data site.

For every configured symbol, interval and month it fetches ``<zip>.CHECKSUM`` and ``<zip>``, writes
the zip through a ``.part`` file that a later run resumes with an HTTP Range request, checks the
sha256 and only then renames it into place. Files already present whose checksum verifies are
skipped. Connection errors, timeouts, HTTP 429 and 5xx are retried with exponential backoff and
jitter; any other 4xx is final (404: Binance has no such symbol/interval/month).

With ``binance.archive_dir`` set, :func:`copy_local` takes the same files from a folder of archives
downloaded earlier (Binance's own ``data/<market>/monthly/...`` tree) instead: every zip is checked
against the ``.CHECKSUM`` beside it before any is copied, so a bad archive leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import requests

from trainrelay.atomic import write_bytes, write_text
from trainrelay.data import archive
from trainrelay.errors import ConfigError, DataError
from trainrelay.core.fingerprint import file_sha256
from trainrelay.core.progress import progress_bar

log = logging.getLogger(__name__)

USER_AGENT = "trainrelay/0.1 (+https://github.com/trainrelay)"
CHUNK_BYTES = 1 << 16
MAX_BACKOFF_SECONDS = 60.0
T = TypeVar("T")


@dataclass(frozen=True)
class RemoteFile:
    """One archive on the public-data site and what it holds (for messages)."""

    relpath: str
    symbol: str
    kind: str  # klines | funding
    interval: str | None
    month: str

    def describe(self) -> str:
        what = f"{self.interval} klines" if self.kind == "klines" else "funding rates"
        return f"{self.symbol} {what} for {self.month}"


class _Transient(Exception):
    """A failure worth retrying (network, timeout, 429, 5xx, cut-off transfer)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def remote_files(config: dict) -> list[RemoteFile]:
    """The archives the ``binance`` section asks for, in a stable order."""
    section = config["binance"]
    market = section["market"]
    if section["funding"] and not market.startswith("futures"):
        raise ConfigError(
            f"binance.funding is true but market '{market}' has no funding rates; "
            "set binance.funding: false or use a futures market"
        )
    intervals = list(dict.fromkeys([config["intervals"]["fine"], config["intervals"]["bar"]]))
    files = []
    for symbol in section["symbols"]:
        for month in section["months"]:
            for interval in intervals:
                relpath = archive.kline_relpath(market, symbol, interval, month)
                files.append(RemoteFile(relpath, symbol, "klines", interval, month))
            if section["funding"]:
                files.append(
                    RemoteFile(archive.funding_relpath(market, symbol, month), symbol, "funding", None, month)
                )
    return files


def binance_relpaths(config: dict) -> list[str]:
    """Every file :func:`download` leaves under the raw root (zips and their .CHECKSUM files)."""
    paths = []
    for remote in remote_files(config):
        paths += [remote.relpath, f"{remote.relpath}.CHECKSUM"]
    return sorted(paths)


class BinanceDownloader:
    """Downloads archives with resume, checksum verification and retries."""

    def __init__(
        self,
        base_url: str,
        retries: int,
        timeout_seconds: float,
        backoff_seconds: float = 1.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.timeout = timeout_seconds
        self.backoff = backoff_seconds
        self.session = session or requests.Session()
        self.session.headers.setdefault("User-Agent", USER_AGENT)
        self.sleep = sleep
        self._jitter = random.Random()

    def url(self, relpath: str) -> str:
        return f"{self.base_url}/{relpath}"

    def fetch(self, remote: RemoteFile, raw_root: str | Path) -> bool:
        """Make ``raw_root/remote.relpath`` and its .CHECKSUM present and verified; True if downloaded."""
        target = Path(raw_root) / remote.relpath
        if target.is_file() and archive.checksum_path(target).is_file():
            try:
                archive.verify_checksum(target)
                log.info("binance: %s already present, checksum ok", remote.relpath)
                return False
            except DataError as exc:
                log.warning("binance: %s; downloading it again", exc)
        checksum_text = self._with_retries(remote, ".CHECKSUM", lambda: self._get_text(remote, ".CHECKSUM"))
        expected = _parse_checksum(checksum_text, self.url(remote.relpath) + ".CHECKSUM")
        part = target.with_name(target.name + ".part")
        target.parent.mkdir(parents=True, exist_ok=True)
        for fresh in (False, True):
            if fresh:
                part.unlink(missing_ok=True)
            resumed_from = part.stat().st_size if part.is_file() else 0
            self._with_retries(remote, "", lambda: self._download_once(remote, part))
            actual = file_sha256(part)
            if actual == expected:
                break
            part.unlink()
            if not resumed_from:
                raise DataError(
                    f"{self.url(remote.relpath)}: checksum mismatch after download "
                    f"(expected {expected[:12]}…, got {actual[:12]}…); "
                    "the transfer or the file is corrupt, re-run acquire later"
                )
            log.warning(
                "binance: %s resumed from byte %d fails its checksum; restarting",
                remote.relpath,
                resumed_from,
            )
        os.replace(part, target)
        write_text(archive.checksum_path(target), checksum_text)
        log.info("binance: %s downloaded (%d bytes)", remote.relpath, target.stat().st_size)
        return True

    def _with_retries(self, remote: RemoteFile, suffix: str, attempt: Callable[[], T]) -> T:
        url = self.url(remote.relpath) + suffix
        for number in range(self.retries + 1):
            try:
                return attempt()
            except _Transient as exc:
                if number == self.retries:
                    raise DataError(
                        f"{url}: failed after {self.retries + 1} attempt(s) (last: {exc}); check the network "
                        "and binance.base_url, or raise binance.retries"
                    ) from None
                delay = min(MAX_BACKOFF_SECONDS, self.backoff * 2**number) + self._jitter.uniform(
                    0, self.backoff
                )
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, MAX_BACKOFF_SECONDS))
                log.warning(
                    "binance: %s: %s; retry %d/%d in %.2fs", url, exc, number + 1, self.retries, delay
                )
                self.sleep(delay)
        raise AssertionError("unreachable")

    def _check_status(self, response: requests.Response, remote: RemoteFile, url: str) -> None:
        status = response.status_code
        if status == 404:
            raise DataError(
                f"{url}: not found on Binance (HTTP 404): there is no {remote.describe()}; "
                "check binance.symbols, binance.months, binance.market and intervals"
            )
        if status == 429 or status >= 500:
            raise _Transient(f"HTTP {status}", _retry_after(response))
        if 400 <= status < 500 and status != 416:
            raise DataError(
                f"{url}: HTTP {status} {response.reason}; the request was refused, check binance.base_url"
            )

    def _get_text(self, remote: RemoteFile, suffix: str) -> str:
        url = self.url(remote.relpath) + suffix
        try:
            with self.session.get(url, timeout=self.timeout) as response:
                self._check_status(response, remote, url)
                return response.text
        except requests.RequestException as exc:
            raise _Transient(_short(exc)) from None

    def _download_once(self, remote: RemoteFile, part: Path) -> None:
        """One GET into ``part``, resuming from its size; what arrived before a failure is kept."""
        url = self.url(remote.relpath)
        offset = part.stat().st_size if part.is_file() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with self.session.get(url, headers=headers, stream=True, timeout=self.timeout) as response:
                self._check_status(response, remote, url)
                if response.status_code == 416:
                    return  # the part already holds everything; the checksum decides
                append = offset > 0 and response.status_code == 206
                if append and not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
                    append = False  # the server answered another range: start over
                with open(part, "ab" if append else "wb") as handle:
                    for chunk in response.iter_content(CHUNK_BYTES):
                        handle.write(chunk)
        except requests.RequestException as exc:
            raise _Transient(_short(exc)) from None


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.strip().isdigit() else None


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def _parse_checksum(text: str, url: str) -> str:
    token = text.split()[0].lower() if text.split() else ""
    if len(token) != 64 or any(c not in "0123456789abcdef" for c in token):
        raise DataError(f"{url}: not a sha256 checksum file (starts with '{text[:40].strip()}')")
    return token


def download(config: dict, raw_root: str | Path, backoff_seconds: float = 1.0) -> None:
    """Fetch every configured archive into ``raw_root`` (see :func:`binance_relpaths`)."""
    section = config["binance"]
    downloader = BinanceDownloader(
        section["base_url"], int(section["retries"]), float(section["timeout_seconds"]), backoff_seconds
    )
    files = remote_files(config)
    fetched = 0
    with progress_bar(len(files), "acquire", "archive") as bar:
        for remote in files:
            fetched += downloader.fetch(remote, raw_root)
            bar.update()
    log.info("binance: %d file(s) downloaded, %d already present", fetched, len(files) - fetched)


def copy_local(config: dict, raw_root: str | Path) -> None:
    """Copy every configured archive and its .CHECKSUM from ``binance.archive_dir`` into ``raw_root``.

    The folder holds Binance's layout (``data/futures/um/monthly/klines/BTCUSDT/15m/...zip``, as
    data.binance.vision and Binance's download scripts lay it out). All zips are verified first:
    a missing zip or .CHECKSUM, or a mismatch, raises DataError naming the file before any is copied.
    """
    folder = Path(config["binance"]["archive_dir"])
    if not folder.is_dir():
        raise DataError(
            f"{folder}: folder not found (binance.archive_dir); set it to the folder holding Binance's "
            "data/<market>/monthly/... tree (relative paths start at the workdir), or to null to download"
        )
    files = remote_files(config)
    verified = []
    with progress_bar(len(files), "acquire: verify", "archive") as bar:
        for remote in files:
            verified.append((remote, *_verified_local(folder, remote)))
            bar.update()
    copied = 0
    with progress_bar(len(verified), "acquire: copy", "archive") as bar:
        for remote, source, checksum_text, expected in verified:
            bar.update()
            target = Path(raw_root) / remote.relpath
            present = target.is_file() and archive.checksum_path(target).is_file()
            if present and file_sha256(target) == expected:
                continue
            data = source.read_bytes()
            if hashlib.sha256(data).hexdigest() != expected:  # it changed since it was verified
                raise DataError(
                    f"{source}: changed while being copied (checksum mismatch); run acquire again"
                )
            write_bytes(target, data)
            write_text(archive.checksum_path(target), checksum_text)
            copied += 1
    log.info("binance: %d archive(s) copied from %s, %d already present", copied, folder, len(files) - copied)


def _verified_local(folder: Path, remote: RemoteFile) -> tuple[Path, str, str]:
    """``folder/remote.relpath``, its .CHECKSUM text and sha256, after checking the zip against it."""
    source = folder / remote.relpath
    if not source.is_file():
        raise DataError(
            f"{source}: not found: binance.archive_dir has no {remote.describe()}; put the archive and "
            "its .CHECKSUM there, or fix binance.symbols, months, market or intervals"
        )
    check = archive.checksum_path(source)
    if not check.is_file():
        raise DataError(
            f"{check}: missing, so {source.name} cannot be verified; put Binance's .CHECKSUM file beside it "
            "(data.binance.vision has one for every archive)"
        )
    try:
        checksum_text = check.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{check}: unreadable checksum file ({exc}); download it again") from None
    expected = _parse_checksum(checksum_text, str(check))
    actual = file_sha256(source)
    if actual != expected:
        raise DataError(
            f"{source}: checksum mismatch with {check.name} (expected {expected[:12]}…, got {actual[:12]}…); "
            "the archive is corrupt or incomplete: download it again"
        )
    return source, checksum_text, expected
