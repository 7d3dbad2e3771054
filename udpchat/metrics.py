"""``--metrics-port``: the server's counters in Prometheus text format, over HTTP.

A custom collector reads :meth:`Server.stats` at scrape time, so the per-message path pays
nothing for metrics; prometheus-client does the exposition format and the HTTP serving.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from udpchat.stats import StatsSnapshot

DEFAULT_METRICS_HOST = "127.0.0.1"
"""Loopback by default: the metrics say who talks to the server, which is not for everyone."""

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


class MetricsServer:
    """The HTTP endpoint, on its own daemon thread; ``close()`` stops it."""

    def __init__(self, stats: Callable[[], StatsSnapshot], host: str, port: int) -> None:
        registry = CollectorRegistry()
        registry.register(StatsCollector(stats))
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(port, host, registry)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
