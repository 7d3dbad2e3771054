"""The counters as Prometheus metric families, and their exposition: the one module that imports
prometheus-client, so that only a process serving metrics pays for loading it.

A custom collector reads a snapshot at scrape time, so the per-message path pays nothing for
metrics; prometheus-client does the exposition format.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from udpchat.counters import (
    SENDER_SERIES,
    Counts,
    Declaration,
    Kind,
    LatencyHistogram,
    LossRuns,
    SenderStats,
    StatsSnapshot,
)
from udpchat.wire import sender_address

SENDER_LABELS = ("username", "sender")
SENDERS_LEFT_OUT = "udpchat_sender_series_left_out"

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


def sender_families(senders: Sequence[SenderStats], limit: int) -> Iterator[Metric]:
    """``udpchat_sender_*`` for the ``limit`` busiest senders (most received), labelled with
    their username and address, and how many were left out: a flood of identities cannot
    make a scrape, or Prometheus's series, grow without bound."""
    busiest = heapq.nlargest(limit, senders, key=lambda s: (s.received, s.ip, s.port, s.username))
    for series in SENDER_SERIES:
        name = f"udpchat_sender_{series.metric or series.name}"
        family: Metric
        if series.kind is Kind.TOTAL:
            family = CounterMetricFamily(name, series.help, labels=SENDER_LABELS)
        else:
            family = GaugeMetricFamily(name, series.help, labels=SENDER_LABELS)
        for sender in busiest:
            labels = [sender.username, sender_address(sender.ip, sender.port)]
            family.add_metric(labels, getattr(sender, series.name))
        yield family
    yield GaugeMetricFamily(
        SENDERS_LEFT_OUT,
        "Senders tracked but not shown as udpchat_sender_* series: beyond --metrics-senders, "
        "the least busy.",
        len(senders) - len(busiest),
    )


class StatsCollector(Collector):
    """Turns a snapshot of declared counters into Prometheus metric families at each scrape;
    with ``sender_series``, a server's busiest senders too."""

    def __init__(self, stats: Callable[[], Counts], sender_series: int = 0) -> None:
        self._stats = stats
        self._sender_series = sender_series

    def collect(self) -> Iterator[Metric]:
        counts = self._stats()
        yield from families(counts)
        if self._sender_series and isinstance(counts, StatsSnapshot):
            yield from sender_families(counts.senders, self._sender_series)


def renderer(
    stats: Callable[[], Counts], sender_series: int = 0
) -> Callable[[str], tuple[str, bytes]]:
    """A function from a request's ``Accept`` header to (content type, body): ``stats()`` read
    and encoded at each call, in the format the client asks for."""
    registry = CollectorRegistry()
    registry.register(StatsCollector(stats, sender_series))

    def render(accept: str) -> tuple[str, bytes]:
        encoder, content_type = choose_encoder(accept)
        return content_type, encoder(registry)

    return render
