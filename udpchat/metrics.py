"""``--metrics-port``: the server's counters in Prometheus text format, over HTTP.

:mod:`udpchat.exposition` turns the counters into the format, at scrape time; it is imported
when an endpoint starts, so that importing this module (the server, the supervisor and the
impairment proxy do) loads no prometheus-client. The HTTP side is an asyncio server on the
server's own loop, so a scraper costs no thread: at most ``max_connections`` are
open, each must send its request within ``read_timeout_s``, and when the cap is reached the
connection that has waited longest for its request is closed to make room, so that a flood of
idle connections cannot lock out a real scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import logging
import os
from collections.abc import Callable

from udpchat.counters import Counts, EndpointStats, Tally
from udpchat.logs import RateLimitedLog

logger = logging.getLogger("udpchat.metrics")

DEFAULT_METRICS_HOST = "127.0.0.1"
"""Loopback by default: the metrics say who talks to the server, which is not for everyone."""
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_READ_TIMEOUT_S = 5.0
"""Seconds a client has to send its request, and to take the answer."""
MAX_REQUEST_HEAD_BYTES = 8192
METRICS_PATHS = ("/metrics", "/")
CONNECTION_DROP_REASONS = ("evicted", "timed_out", "incomplete")


class MetricsServer:
    """The HTTP endpoint on the running event loop: ``await MetricsServer.start(...)``, then
    ``await close()``. Its own refusals are in :meth:`stats`."""

    def __init__(
        self,
        render: Callable[[str], tuple[str, bytes]],
        max_connections: int,
        read_timeout_s: float,
    ) -> None:
        self._render = render
        """(content type, body) for a request's ``Accept`` header."""
        self._tally = Tally(EndpointStats)
        self._tally.values["connections_dropped"] = dict.fromkeys(CONNECTION_DROP_REASONS, 0)
        self._bad_request_log = RateLimitedLog(logger, level=logging.WARNING)
        self._max_connections = max_connections
        self._read_timeout_s = read_timeout_s
        self._open: dict[asyncio.StreamWriter, bool] = {}
        """Open connections, oldest first, each with whether it is still reading its request."""
        self._server: asyncio.Server | None = None

    @classmethod
    async def start(
        cls,
        stats: Callable[[], Counts],
        host: str,
        port: int,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        sender_series: int = 0,
    ) -> MetricsServer:
        """Serve ``stats()`` (a server's, the impairment proxy's) at each scrape; ``stats``
        includes :meth:`stats` where it should (the server's ``stats()`` does). With
        ``sender_series``, that many of a server's busiest senders get series of their own."""
        from udpchat.exposition import renderer  # noqa: PLC0415 - prometheus-client only here

        metrics = cls(renderer(stats, sender_series), max_connections, read_timeout_s)
        metrics._server = await asyncio.start_server(
            metrics._serve_one, host, port, limit=MAX_REQUEST_HEAD_BYTES
        )
        return metrics

    def stats(self) -> EndpointStats:
        return self._tally.snapshot()

    @property
    def serving(self) -> bool:
        return self._server is not None

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._open):
            writer.close()
        await self._server.wait_closed()
        self._server = None

    def _make_room(self) -> bool:
        """Close the oldest connection still waiting for its request; False when none is."""
        for writer, reading in self._open.items():
            if reading:
                del self._open[writer]
                writer.close()
                self._tally.add_reason("connections_dropped", "evicted")
                return True
        return False

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._open) >= self._max_connections and not self._make_room():
            self._tally.add_reason("connections_dropped", "evicted")
            writer.close()
            return
        self._open[writer] = True
        try:
            async with asyncio.timeout(self._read_timeout_s):
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.LimitOverrunError:
                    answer = self._refuse("431 Request Header Fields Too Large", "head too long")
                else:
                    answer = self._answer(head)
                if writer not in self._open:
                    return  # evicted while its request arrived
                self._open[writer] = False
                status, content_type, body = answer
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except TimeoutError:
            self._tally.add_reason("connections_dropped", "timed_out")
        except (asyncio.IncompleteReadError, ConnectionError):
            if writer in self._open:
                self._tally.add_reason("connections_dropped", "incomplete")
        finally:
            self._open.pop(writer, None)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _refuse(self, status: str, why: str) -> tuple[str, str, bytes]:
        """A malformed request's answer: counted, and logged at most once an interval."""
        self._tally.add("bad_requests")
        self._bad_request_log.record(f"metrics: refused a malformed request ({why})")
        return status, "text/plain", f"{status[4:].lower()}\n".encode()

    def _answer(self, head: bytes) -> tuple[str, str, bytes]:
        """(status, content type, body) for a request head; :mod:`udpchat.exposition` encodes."""
        request_line, _, header_block = head.partition(b"\r\n")
        parts = request_line.split(b" ")
        if len(parts) != 3:
            return self._refuse("400 Bad Request", "not a request line")
        method, target, _ = parts
        if method != b"GET":
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        if target.split(b"?")[0].decode("latin-1") not in METRICS_PATHS:
            return "404 Not Found", "text/plain", b"not found: try /metrics\n"
        try:
            headers = http.client.parse_headers(io.BytesIO(header_block))
        except http.client.HTTPException:  # more than http.client's 100 headers
            return self._refuse("431 Request Header Fields Too Large", "too many headers")
        content_type, body = self._render(headers.get("Accept", ""))
        return "200 OK", content_type, body


class MetricsStartError(OSError):
    """The metrics endpoint could not listen; the UDP socket was closed again."""


async def start_metrics(
    stats: Callable[[], Counts], host: str, port: int, sender_series: int = 0
) -> MetricsServer:
    """The metrics endpoint on this loop, or :class:`MetricsStartError` saying why not."""
    try:
        return await MetricsServer.start(stats, host, port, sender_series=sender_series)
    except OSError as error:
        # The OS's own words: asyncio's strerror is "error while attempting to bind on ...".
        words = os.strerror(error.errno) if error.errno else str(error)
        raise MetricsStartError(
            error.errno, f"cannot serve metrics on {host} port {port}: {words}"
        ) from None
