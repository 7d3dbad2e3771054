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
from collections.abc import Callable, Iterator
from dataclasses import astuple, dataclass, fields

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from udpchat.bus import BusStats
from udpchat.stats import StatsSnapshot

DEFAULT_METRICS_HOST = "127.0.0.1"
"""Loopback by default: the metrics say who talks to the server, which is not for everyone."""
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_READ_TIMEOUT_S = 5.0
"""Seconds a client has to send its request, and to take the answer."""
MAX_REQUEST_HEAD_BYTES = 8192
METRICS_PATHS = ("/metrics", "/")

Metric = CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily


class StatsCollector(Collector):
    """Turns a stats snapshot into Prometheus metric families at each scrape."""

    def __init__(self, stats: Callable[[], StatsSnapshot]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        yield CounterMetricFamily(
            "udpchat_datagrams_received", "Datagrams read from the socket.", stats.received
        )
        yield CounterMetricFamily(
            "udpchat_messages_handled", "Messages passed to the handler.", stats.handled
        )
        yield CounterMetricFamily(
            "udpchat_handler_errors", "Messages whose handler raised.", stats.handler_errors
        )
        dropped = CounterMetricFamily(
            "udpchat_datagrams_dropped",
            "Datagrams not handled, by reason; reason=kernel is what the OS dropped before "
            "udpchat could read it.",
            labels=["reason"],
        )
        for reason, count in stats.dropped.items():
            dropped.add_metric([reason], count)
        if stats.kernel_drops is not None:
            dropped.add_metric(["kernel"], stats.kernel_drops)
        yield dropped
        problems = CounterMetricFamily(
            "udpchat_messages_malformed",
            "Handled messages that were not clean seed text, by problem.",
            labels=["problem"],
        )
        for problem, count in stats.problems.items():
            problems.add_metric([problem], count)
        yield problems
        yield GaugeMetricFamily(
            "udpchat_queue_depth", "Messages waiting for a worker.", stats.queue_depth
        )
        delivery = stats.delivery
        yield GaugeMetricFamily(
            "udpchat_messages_lost",
            "Counters skipped by senders and not arrived (yet); falls when late ones arrive.",
            delivery.lost,
        )
        for name, value, text in (
            ("duplicates", delivery.duplicates, "Messages whose counter had arrived already."),
            ("reordered", delivery.reordered, "Messages that filled a gap a few places back."),
            ("late", delivery.late, "Messages that filled a gap further back."),
            ("restarts", delivery.restarts, "Senders whose counter went back to 1."),
            ("senders_evicted", delivery.evicted, "Senders forgotten to bound the table."),
        ):
            yield CounterMetricFamily(f"udpchat_{name}", text, value)
        yield GaugeMetricFamily("udpchat_senders", "Senders tracked now.", delivery.senders)
        if stats.relay is not None:
            yield from _relay_metrics(stats)
        if stats.bus is not None:
            yield from _bus_metrics(stats.bus)
        latency = stats.latency
        cumulative, buckets = 0, []
        for bound, count in zip((*latency.bounds_s, float("inf")), latency.counts, strict=True):
            cumulative += count
            buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
        yield HistogramMetricFamily(
            "udpchat_handler_latency_seconds",
            "Time from reading a datagram to its handler returning.",
            buckets=buckets,
            sum_value=latency.sum_s,
        )


RELAY_METRIC_HELP = {
    "joins": "Addresses admitted to the relay room.",
    "refused_full": "Joins refused because the room was full.",
    "ignored_joins": "Cookie requests ignored because answering would amplify.",
    "expired": "Members that left the room by silence.",
    "relayed_datagrams": "Datagrams relayed to members.",
    "relayed_bytes": "Bytes relayed to members.",
    "bytes_in": "Bytes the relay received.",
    "bytes_out": "Bytes the relay sent: relayed texts and handshake answers.",
    "not_relayed": "Texts not relayed because they grew in decoding.",
}


def _relay_metrics(stats: StatsSnapshot) -> Iterator[Metric]:
    relay = stats.relay
    assert relay is not None
    yield GaugeMetricFamily("udpchat_relay_members", "Members in the relay room.", relay.members)
    for name, text in RELAY_METRIC_HELP.items():
        yield CounterMetricFamily(f"udpchat_relay_{name}", text, getattr(relay, name))


BUS_METRIC_HELP = {
    "published": "Members' messages handed to NATS, buffered ones included.",
    "published_while_disconnected": "Messages buffered while NATS was unreachable.",
    "received": "Messages from the room's other servers relayed to this server's members.",
    "own_echoes": "This server's own messages back from NATS, ignored.",
    "disconnects": "Times the connection to NATS was lost.",
    "reconnects": "Times the connection to NATS came back.",
}
BUS_REASON_METRIC_HELP = {
    "publish_failures": "Members' messages that could not be published, by reason.",
    "dropped": "Messages from NATS refused (malformed, oversize, slow consumer), by reason.",
}


def _bus_metrics(bus: BusStats) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "udpchat_nats_connected", "1 while connected to NATS (every process).", int(bus.connected)
    )
    for name, text in BUS_METRIC_HELP.items():
        yield CounterMetricFamily(f"udpchat_nats_{name}", text, getattr(bus, name))
    for name, text in BUS_REASON_METRIC_HELP.items():
        family = CounterMetricFamily(f"udpchat_nats_{name}", text, labels=["reason"])
        for reason, count in sorted(getattr(bus, name).items()):
            family.add_metric([reason], count)
        yield family


@dataclass(slots=True)
class EndpointCounters:
    """What the metrics endpoint refused, so that its own bounds are visible."""

    evicted: int = 0
    """Connections closed before their request to make room under the cap."""
    timed_out: int = 0
    bad_requests: int = 0


class _EndpointCollector(Collector):
    def __init__(self, counters: EndpointCounters) -> None:
        self._counters = counters

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "udpchat_metrics_connections_dropped",
            "Scrape connections the metrics endpoint closed without an answer, by reason.",
            labels=["reason"],
        )
        for field, value in zip(fields(self._counters), astuple(self._counters), strict=True):
            family.add_metric([field.name], value)
        yield family


class MetricsServer:
    """The HTTP endpoint on the running event loop: ``await MetricsServer.start(...)``, then
    ``await close()``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        counters: EndpointCounters,
        max_connections: int,
        read_timeout_s: float,
    ) -> None:
        self._registry = registry
        self.counters = counters
        self._max_connections = max_connections
        self._read_timeout_s = read_timeout_s
        self._open: dict[asyncio.StreamWriter, bool] = {}
        """Open connections, oldest first, each with whether it is still reading its request."""
        self._server: asyncio.Server | None = None

    @classmethod
    async def start(
        cls,
        stats: Callable[[], StatsSnapshot],
        host: str,
        port: int,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    ) -> MetricsServer:
        registry = CollectorRegistry()
        registry.register(StatsCollector(stats))
        counters = EndpointCounters()
        registry.register(_EndpointCollector(counters))
        metrics = cls(registry, counters, max_connections, read_timeout_s)
        metrics._server = await asyncio.start_server(
            metrics._serve_one, host, port, limit=MAX_REQUEST_HEAD_BYTES
        )
        return metrics

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
                self.counters.evicted += 1
                return True
        return False

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._open) >= self._max_connections and not self._make_room():
            self.counters.evicted += 1
            writer.close()
            return
        self._open[writer] = True
        try:
            async with asyncio.timeout(self._read_timeout_s):
                head = await reader.readuntil(b"\r\n\r\n")
                if writer not in self._open:
                    return  # evicted while its request arrived
                self._open[writer] = False
                status, content_type, body = self._answer(head)
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except TimeoutError:
            self.counters.timed_out += 1
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            if writer in self._open:
                self.counters.bad_requests += 1
        finally:
            self._open.pop(writer, None)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _answer(self, head: bytes) -> tuple[str, str, bytes]:
        """(status, content type, body) for a request head; prometheus-client encodes."""
        request_line, _, header_block = head.partition(b"\r\n")
        parts = request_line.split(b" ")
        if len(parts) != 3:
            self.counters.bad_requests += 1
            return "400 Bad Request", "text/plain", b"bad request\n"
        method, target, _ = parts
        if method != b"GET":
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        if target.split(b"?")[0].decode("latin-1") not in METRICS_PATHS:
            return "404 Not Found", "text/plain", b"not found: try /metrics\n"
        headers = http.client.parse_headers(io.BytesIO(header_block))
        encoder, content_type = choose_encoder(headers.get("Accept", ""))
        return "200 OK", content_type, encoder(self._registry)
