"""``--metrics-port``: the server's counters in Prometheus text format, over HTTP.

A custom collector reads :meth:`Server.stats` at scrape time, so the per-message path pays
nothing for metrics; prometheus-client does the exposition format. The HTTP side is an asyncio
server on the server's own loop, so a scraper costs no thread: at most ``max_connections`` are
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
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from udpchat.counters import (
    Counts,
    Declaration,
    EndpointStats,
    Kind,
    LatencyHistogram,
    LossRuns,
    Tally,
)
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

Metric = CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily


def families(counts: Counts) -> Iterator[Metric]:
    """One metric family per declared counter of ``counts`` and of the groups it holds."""
    for declared, value in counts.items():
        if isinstance(value, Counts):
            yield from families(value)
        elif isinstance(value, LatencyHistogram):
            yield _histogram(value)
        elif isinstance(value, LossRuns):
            yield _by_length(counts.metric_prefix + declared.metric, declared, value)
        elif declared.kind is not Kind.PART and value is not None:
            yield _family(counts.metric_prefix + declared.metric, declared, value)


def _family(name: str, declared: Declaration, value: Any) -> Metric:
    unit = declared.unit if name.endswith(f"_{declared.unit}") else ""
    if declared.kind is Kind.BY_REASON:
        family = CounterMetricFamily(name, declared.help, labels=[declared.label], unit=unit)
        for reason, count in value.items():
            family.add_metric([reason], count)
        return family
    if declared.kind in (Kind.LEVEL, Kind.FLAG):
        return GaugeMetricFamily(name, declared.help, int(value), unit=unit)
    return CounterMetricFamily(name, declared.help, value, unit=unit)


def _by_length(name: str, declared: Declaration, runs: LossRuns) -> CounterMetricFamily:
    """Loss runs as one counter per length that occurred."""
    family = CounterMetricFamily(name, declared.help, labels=[declared.label])
    for length, count in runs.by_length().items():
        family.add_metric([str(length)], count)
    return family


def _histogram(latency: LatencyHistogram) -> HistogramMetricFamily:
    cumulative, buckets = 0, []
    for bound, count in zip((*latency.bounds_s, float("inf")), latency.counts, strict=True):
        cumulative += count
        buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
    return HistogramMetricFamily(
        "udpchat_handler_latency_seconds",
        "Time from reading a datagram to its handler returning.",
        buckets=buckets,
        sum_value=latency.sum_s,
    )


class StatsCollector(Collector):
    """Turns a snapshot of declared counters into Prometheus metric families at each scrape."""

    def __init__(self, stats: Callable[[], Counts]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        yield from families(self._stats())


class MetricsServer:
    """The HTTP endpoint on the running event loop: ``await MetricsServer.start(...)``, then
    ``await close()``. Its own refusals are in :meth:`stats`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        max_connections: int,
        read_timeout_s: float,
    ) -> None:
        self._registry = registry
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
    ) -> MetricsServer:
        """Serve ``stats()`` (a server's, the impairment proxy's) at each scrape; ``stats``
        includes :meth:`stats` where it should (the server's ``stats()`` does)."""
        registry = CollectorRegistry()
        registry.register(StatsCollector(stats))
        metrics = cls(registry, max_connections, read_timeout_s)
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
        """(status, content type, body) for a request head; prometheus-client encodes."""
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
        encoder, content_type = choose_encoder(headers.get("Accept", ""))
        return "200 OK", content_type, encoder(self._registry)
