"""The binance source against a loopback HTTP server with Range support that serves test-built archives."""

from __future__ import annotations

import copy
import hashlib
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest
import yaml

from trainrelay.data import archive, binance
from trainrelay.data.acquire import acquire, raw_targets
from trainrelay.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parent.parent
DEMO = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
START_MS = 1_704_067_200_000  # 2024-01-01 00:00 UTC
MONTH = "2024-01"


class ArchiveServer:
    """Files by URL path, a per-path plan of failures to serve first, and a log of requests."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.plan: dict[str, list[int | str]] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Range")))
                action = server.plan[self.path].pop(0) if server.plan.get(self.path) else None
                if isinstance(action, int):
                    self.send_error(action)
                    return
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                requested = self.headers.get("Range")
                if requested:
                    start = int(requested.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                rest = body[start:]
                self.send_header("Content-Length", str(len(rest)))
                self.end_headers()
                if action == "cut":  # promise everything, send half, hang up
                    self.wfile.write(rest[: len(rest) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(rest)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def publish(self, relpath: str, data: bytes, checksum: str | None = None) -> None:
        digest = checksum or hashlib.sha256(data).hexdigest()
        self.files[f"/{relpath}"] = data
        self.files[f"/{relpath}.CHECKSUM"] = f"{digest}  {Path(relpath).name}\n".encode()

    def hits(self, relpath: str) -> list[str | None]:
        """Range headers of the requests for one path (None: no Range)."""
        return [rng for path, rng in self.requests if path == f"/{relpath}"]


@pytest.fixture
def server() -> Iterator[ArchiveServer]:
    srv = ArchiveServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def kline_zip(tmp_path: Path, interval: str, rows: int = 2000, header: bool = False) -> bytes:
    """A real archive's bytes (built with archive.write_archive, big enough to be cut in half)."""
    step = archive.INTERVAL_MS[interval]
    open_ms = pl.Series([START_MS + i * step for i in range(rows)])
    frame = pl.DataFrame(
        {
            "open_time": open_ms.cast(pl.Datetime("ms", "UTC")),
            "open": [100.0 + i * 0.01 for i in range(rows)],
            "high": [100.5 + i * 0.01 for i in range(rows)],
            "low": [99.5 + i * 0.01 for i in range(rows)],
            "close": [100.01 + i * 0.01 for i in range(rows)],
            "volume": [1.5 + i % 7 for i in range(rows)],
            "close_time": (open_ms + step - 1).cast(pl.Datetime("ms", "UTC")),
            "quote_volume": [150.0 + i % 7 for i in range(rows)],
            "count": [10 + i % 5 for i in range(rows)],
            "taker_buy_volume": [0.5 + i % 3 for i in range(rows)],
            "taker_buy_quote_volume": [50.0 + i % 3 for i in range(rows)],
        }
    )
    path = tmp_path / f"build-{interval}-{header}.zip"
    archive.write_archive(path, archive.klines_to_csv(frame, header=header))
    return path.read_bytes()


def funding_zip(tmp_path: Path) -> bytes:
    times = pl.Series([START_MS + i * 8 * 3_600_000 for i in range(93)]).cast(pl.Datetime("ms", "UTC"))
    frame = pl.DataFrame(
        {"calc_time": times, "funding_interval_hours": [8] * 93, "last_funding_rate": [0.0001] * 93}
    )
    path = tmp_path / "build-funding.zip"
    archive.write_archive(path, archive.funding_to_csv(frame))
    return path.read_bytes()


def config_for(server: ArchiveServer, **binance_section: object) -> dict:
    config = copy.deepcopy(DEMO)
    config["source"] = "binance"
    config["binance"].update(
        {
            "base_url": server.url,
            "symbols": ["BTCUSDT"],
            "months": [MONTH],
            "retries": 3,
            "timeout_seconds": 5,
        }
    )
    config["binance"].update(binance_section)
    return config


def publish_all(server: ArchiveServer, tmp_path: Path) -> dict[str, bytes]:
    published = {
        archive.kline_relpath("futures/um", "BTCUSDT", "3m", MONTH): kline_zip(tmp_path, "3m"),
        # newer futures archives carry a header row: the same reader takes both
        archive.kline_relpath("futures/um", "BTCUSDT", "15m", MONTH): kline_zip(tmp_path, "15m", header=True),
        archive.funding_relpath("futures/um", "BTCUSDT", MONTH): funding_zip(tmp_path),
    }
    for relpath, data in published.items():
        server.publish(relpath, data)
    return published


def downloader(server: ArchiveServer, retries: int = 3) -> tuple[binance.BinanceDownloader, list[float]]:
    delays: list[float] = []
    return binance.BinanceDownloader(
        server.url, retries, 5.0, backoff_seconds=0.01, sleep=delays.append
    ), delays


def remote(relpath: str, interval: str = "3m") -> binance.RemoteFile:
    return binance.RemoteFile(relpath, "BTCUSDT", "klines", interval, MONTH)


def test_acquire_downloads_exactly_the_declared_files(server: ArchiveServer, tmp_path: Path) -> None:
    published = publish_all(server, tmp_path / "build")
    config = config_for(server)
    raw = tmp_path / "raw"
    acquire(config, raw)
    written = sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file())
    assert written == raw_targets(config)
    assert len(written) == 3 * 2 + 1
    for relpath, data in published.items():
        assert (raw / relpath).read_bytes() == data
        assert (raw / f"{relpath}.CHECKSUM").read_bytes() == server.files[f"/{relpath}.CHECKSUM"]
    fine = archive.read_klines(raw / archive.kline_relpath("futures/um", "BTCUSDT", "3m", MONTH))
    bar = archive.read_klines(raw / archive.kline_relpath("futures/um", "BTCUSDT", "15m", MONTH))
    assert fine.height == bar.height == 2000
    assert bar["open_time"].dt.epoch("ms")[1] == START_MS + 900_000
    assert (raw / "events/events.csv").read_text() == "timestamp,symbol,text\n"
    # Second run: everything verifies locally, nothing is requested.
    before = len(server.requests)
    acquire(config, raw)
    assert len(server.requests) == before


def test_local_file_failing_its_checksum_is_downloaded_again(server: ArchiveServer, tmp_path: Path) -> None:
    published = publish_all(server, tmp_path / "build")
    relpath = next(iter(published))
    target = tmp_path / "raw" / relpath
    target.parent.mkdir(parents=True)
    target.write_bytes(b"stale bytes")
    target.with_name(target.name + ".CHECKSUM").write_bytes(server.files[f"/{relpath}.CHECKSUM"])
    client, _ = downloader(server)
    assert client.fetch(remote(relpath), tmp_path / "raw") is True
    assert target.read_bytes() == published[relpath]


def test_checksum_mismatch_is_one_line_and_leaves_nothing(server: ArchiveServer, tmp_path: Path) -> None:
    relpath = archive.kline_relpath("futures/um", "BTCUSDT", "3m", MONTH)
    server.publish(relpath, kline_zip(tmp_path, "3m"), checksum="0" * 64)
    client, _ = downloader(server)
    with pytest.raises(DataError, match="checksum mismatch after download") as info:
        client.fetch(remote(relpath), tmp_path / "raw")
    assert "\n" not in str(info.value) and relpath in str(info.value)
    folder = tmp_path / "raw" / Path(relpath).parent
    assert list(folder.iterdir()) == []  # no zip, no .part, no .CHECKSUM


def test_partial_file_is_resumed_with_a_range_request(server: ArchiveServer, tmp_path: Path) -> None:
    relpath = archive.kline_relpath("futures/um", "BTCUSDT", "3m", MONTH)
    data = kline_zip(tmp_path, "3m")
    server.publish(relpath, data)
    target = tmp_path / "raw" / relpath
    target.parent.mkdir(parents=True)
    half = len(data) // 2
    target.with_name(target.name + ".part").write_bytes(data[:half])
    client, delays = downloader(server)
    client.fetch(remote(relpath), tmp_path / "raw")
    assert server.hits(relpath) == [f"bytes={half}-"]
    assert target.read_bytes() == data
    assert not target.with_name(target.name + ".part").exists()
    assert delays == []


def test_stale_partial_file_is_restarted_from_scratch(server: ArchiveServer, tmp_path: Path) -> None:
    relpath = archive.kline_relpath("futures/um", "BTCUSDT", "3m", MONTH)
    data = kline_zip(tmp_path, "3m")
    server.publish(relpath, data)
    target = tmp_path / "raw" / relpath
    target.parent.mkdir(parents=True)
    target.with_name(target.name + ".part").write_bytes(b"x" * 100)  # not a prefix of the real file
    client, _ = downloader(server)
    client.fetch(remote(relpath), tmp_path / "raw")
    assert server.hits(relpath) == ["bytes=100-", None]
    assert target.read_bytes() == data


def test_transfer_cut_midway_resumes_where_it_stopped(server: ArchiveServer, tmp_path: Path) -> None:
    relpath = archive.kline_relpath("futures/um", "BTCUSDT", "3m", MONTH)
    data = kline_zip(tmp_path, "3m", rows=30_000)
    assert len(data) > 4 * binance.CHUNK_BYTES
    server.publish(relpath, data)
    server.plan[f"/{relpath}"] = ["cut"]
    client, delays = downloader(server)
    client.fetch(remote(relpath), tmp_path / "raw")
    first, second = server.hits(relpath)
    assert first is None
    # the whole chunks that arrived before the cut are kept, and only the rest is asked for
    resumed_at = int(second.removeprefix("bytes=").removesuffix("-"))
    assert binance.CHUNK_BYTES <= resumed_at <= len(data) // 2
    assert (tmp_path / "raw" / relpath).read_bytes() == data
    assert len(delays) == 1


def test_transient_errors_are_retried_with_exponential_backoff(server: ArchiveServer, tmp_path: Path) -> None:
    relpath = archive.kline_relpath("futures/um", "BTCUSDT", "3m", MONTH)
    data = kline_zip(tmp_path, "3m")
    server.publish(relpath, data)
    server.plan[f"/{relpath}"] = [500, 503, 429]
    client, delays = downloader(server, retries=3)
    client.fetch(remote(relpath), tmp_path / "raw")
    assert (tmp_path / "raw" / relpath).read_bytes() == data
    assert len(server.hits(relpath)) == 4
    # base 0.01 s doubling per attempt, plus up to one base of jitter
    for attempt, delay in enumerate(delays):
        assert 0.01 * 2**attempt <= delay <= 0.01 * 2**attempt + 0.01
    assert len(delays) == 3


def test_retries_run_out_with_one_clear_line(server: ArchiveServer, tmp_path: Path) -> None:
    relpath = archive.kline_relpath("futures/um", "BTCUSDT", "3m", MONTH)
    server.publish(relpath, kline_zip(tmp_path, "3m"))
    server.plan[f"/{relpath}"] = [500] * 10
    client, delays = downloader(server, retries=2)
    with pytest.raises(DataError, match=r"failed after 3 attempt\(s\) \(last: HTTP 500\)") as info:
        client.fetch(remote(relpath), tmp_path / "raw")
    assert "\n" not in str(info.value)
    assert len(server.hits(relpath)) == 3 and len(delays) == 2


def test_missing_month_is_a_final_404_with_a_clear_message(server: ArchiveServer, tmp_path: Path) -> None:
    config = config_for(server, symbols=["NOSUCHUSDT"], funding=False)
    with pytest.raises(DataError) as info:
        acquire(config, tmp_path / "raw")
    message = str(info.value)
    assert "\n" not in message
    assert "not found on Binance (HTTP 404): there is no NOSUCHUSDT 3m klines for 2024-01" in message
    assert len(server.requests) == 1  # a 404 is final: no retry


def test_other_client_errors_are_final(server: ArchiveServer, tmp_path: Path) -> None:
    relpath = archive.kline_relpath("futures/um", "BTCUSDT", "3m", MONTH)
    server.publish(relpath, kline_zip(tmp_path, "3m"))
    server.plan[f"/{relpath}.CHECKSUM"] = [403]
    client, delays = downloader(server)
    with pytest.raises(DataError, match="HTTP 403"):
        client.fetch(remote(relpath), tmp_path / "raw")
    assert delays == []


def test_unreachable_server_is_retried_then_reported(tmp_path: Path) -> None:
    client = binance.BinanceDownloader(
        "http://127.0.0.1:9", 1, 2.0, backoff_seconds=0.0, sleep=lambda s: None
    )
    with pytest.raises(DataError, match=r"failed after 2 attempt\(s\) \(last: ConnectionError") as info:
        client.fetch(remote(archive.kline_relpath("futures/um", "BTCUSDT", "3m", MONTH)), tmp_path)
    assert "\n" not in str(info.value)


def test_config_checks_and_targets(server: ArchiveServer) -> None:
    config = config_for(server, symbols=["BTCUSDT", "ETHUSDT"], months=["2024-01", "2024-02"])
    targets = raw_targets(config)
    assert len(targets) == 2 * 2 * 3 * 2 + 1
    assert "data/futures/um/monthly/fundingRate/ETHUSDT/ETHUSDT-fundingRate-2024-02.zip.CHECKSUM" in targets
    spot = config_for(server, market="spot", funding=True)
    with pytest.raises(ConfigError, match=r"binance\.funding is true but market 'spot' has no funding rates"):
        raw_targets(spot)
    spot["binance"]["funding"] = False
    assert all(p.startswith("data/spot/monthly/klines/") for p in raw_targets(spot)[:-1])


@pytest.mark.internet
@pytest.mark.skipif(os.environ.get("TRAINRELAY_INTERNET") != "1", reason="needs the public internet")
def test_real_binance_funding_archive(tmp_path: Path) -> None:
    config = copy.deepcopy(DEMO)
    relpath = archive.funding_relpath("futures/um", "BTCUSDT", MONTH)
    client = binance.BinanceDownloader(config["binance"]["base_url"], 3, 60.0)
    client.fetch(binance.RemoteFile(relpath, "BTCUSDT", "funding", None, MONTH), tmp_path)
    frame = archive.read_funding(tmp_path / relpath)
    assert frame.height == 93 and (frame["funding_interval_hours"] == 8).all()
