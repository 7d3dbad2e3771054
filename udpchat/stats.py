"""Counters for everything the server receives, handles and refuses, and their snapshot.

Every datagram read from the socket is counted once as ``received`` and ends in exactly one
of ``handled`` or one drop reason, so that ``received == handled + sum(dropped)`` once idle.
"""

from __future__ import annotations

import bisect
import enum
import functools
import operator
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from udpchat.accounting import DeliveryTotals, SenderStats, sum_totals

if TYPE_CHECKING:  # relay.py builds on the pipeline, which builds on this module
    from udpchat.bus import BusStats
    from udpchat.relay import RelayStats

LATENCY_BOUNDS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
"""Upper bounds of the handler-latency histogram's buckets, in seconds (one more for +Inf)."""


class DropReason(enum.Enum):
    """Why a received datagram was not handed to the handler."""

    EMPTY = "empty"
    OVERSIZE = "oversize"
    NOT_ALLOWED = "not_allowed"
    RATE_LIMITED = "rate_limited"
    QUEUE_FULL = "queue_full"
    SHUTDOWN = "shutdown"
    OUTPUT_FAILED = "output_failed"
    """The batch's output could not be written (a broken pipe, a full disk)."""
    INTERNAL_ERROR = "internal_error"
    """Parsing or accounting raised: a bug, counted rather than lost."""


@dataclass(frozen=True, slots=True)
class LatencyHistogram:
    """Time from the event loop reading a datagram's batch to the batch being handled (its
    handlers returned and its output written)."""

    counts: tuple[int, ...] = (0,) * (len(LATENCY_BOUNDS_S) + 1)
    """Messages per bucket (not cumulative); the last bucket is above every bound."""
    sum_s: float = 0.0
    bounds_s: tuple[float, ...] = LATENCY_BOUNDS_S

    @property
    def count(self) -> int:
        return sum(self.counts)

    def __add__(self, other: LatencyHistogram) -> LatencyHistogram:
        counts = tuple(a + b for a, b in zip(self.counts, other.counts, strict=True))
        return LatencyHistogram(counts, self.sum_s + other.sum_s, self.bounds_s)


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    """A consistent-enough copy of a server's counters, safe to keep and compare."""

    received: int
    handled: int
    handler_errors: int
    dropped: Mapping[str, int]
    problems: Mapping[str, int] = field(default_factory=dict)
    """Handled messages that were not clean seed text: invalid_utf8, unparsed, and so on."""
    queue_depth: int = 0
    kernel_drops: int | None = None
    """Dropped by the kernel before udpchat could read them; None where the OS cannot say."""
    delivery: DeliveryTotals = field(default_factory=DeliveryTotals)
    """Loss, duplicates and reordering read from the senders' counters, over all senders."""
    senders: tuple[SenderStats, ...] = ()
    """Per-sender figures; empty when the snapshot was taken without them."""
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    relay: RelayStats | None = None
    """The chat room's counters, for a server with ``relay=True``; else None."""
    bus: BusStats | None = None
    """The room's NATS counters, for a relay attached to NATS; else None."""

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


def combine(snapshots: Sequence[StatsSnapshot]) -> StatsSnapshot:
    """The totals of several servers' snapshots (one per process on a shared port)."""

    def total(mappings: Iterable[Mapping[str, int]]) -> dict[str, int]:
        summed: dict[str, int] = {}
        for mapping in mappings:
            for key, value in mapping.items():
                summed[key] = summed.get(key, 0) + value
        return summed

    kernel = [s.kernel_drops for s in snapshots]
    relays = [s.relay for s in snapshots if s.relay is not None]
    buses = [s.bus for s in snapshots if s.bus is not None]
    return StatsSnapshot(
        received=sum(s.received for s in snapshots),
        handled=sum(s.handled for s in snapshots),
        handler_errors=sum(s.handler_errors for s in snapshots),
        dropped=total(s.dropped for s in snapshots),
        problems=total(s.problems for s in snapshots),
        queue_depth=sum(s.queue_depth for s in snapshots),
        kernel_drops=None if None in kernel else sum(k or 0 for k in kernel),
        delivery=sum_totals(s.delivery for s in snapshots),
        senders=tuple(sender for s in snapshots for sender in s.senders),
        latency=sum((s.latency for s in snapshots), LatencyHistogram()),
        relay=functools.reduce(operator.add, relays) if relays else None,
        bus=functools.reduce(operator.add, buses) if buses else None,
    )


MAX_TABLE_SENDERS = 50
"""Rows of the per-sender table at most; the totals still count every sender."""


def format_counts(stats: StatsSnapshot) -> str:
    """Totals as ``key=value`` pairs, so that both people and scripts can read them."""
    dropped = " ".join(f"{reason}={count}" for reason, count in stats.dropped.items() if count)
    problems = " ".join(f"{name}={count}" for name, count in sorted(stats.problems.items()))
    delivery = stats.delivery
    parts = [
        f"received={stats.received}",
        f"handled={stats.handled}",
        f"dropped={stats.dropped_total}" + (f" ({dropped})" if dropped else ""),
        f"handler_errors={stats.handler_errors}",
    ]
    if problems:
        parts.append(problems)
    parts.append(f"queued={stats.queue_depth}")
    if stats.kernel_drops is not None:
        parts.append(f"kernel_drops={stats.kernel_drops}")
    parts.append(
        f"senders={delivery.senders} lost={delivery.lost} duplicates={delivery.duplicates} "
        f"reordered={delivery.reordered} late={delivery.late} restarts={delivery.restarts}"
    )
    if delivery.evicted:
        parts.append(f"senders_evicted={delivery.evicted}")
    return " ".join(parts)


def format_summary(stats: StatsSnapshot) -> str:
    """The final line of totals."""
    return f"summary: {format_counts(stats)}"


def format_relay(relay: RelayStats) -> str:
    """The chat room's counters as ``key=value`` pairs."""
    return "relay: " + " ".join(f"{name}={value}" for name, value in asdict(relay).items())


def format_bus(bus: BusStats) -> str:
    """The room's NATS counters as ``key=value`` pairs; reasons in parentheses, as for drops."""
    parts = []
    for name, value in asdict(bus).items():
        if isinstance(value, dict):
            reasons = " ".join(f"{reason}={count}" for reason, count in sorted(value.items()))
            parts.append(f"{name}={sum(value.values())}" + (f" ({reasons})" if reasons else ""))
        else:
            parts.append(f"{name}={str(value).lower() if isinstance(value, bool) else value}")
    return "nats: " + " ".join(parts)


def summary_lines(per_process: Sequence[StatsSnapshot]) -> list[str]:
    """What a server reports at exit: the per-sender table, the relay's counters and the totals,
    with each process's share when there are several."""
    totals = combine(per_process)
    lines = []
    if totals.senders:
        lines.append("senders:")
        lines.extend(f"  {row}" for row in format_sender_table(totals.senders))
    if totals.relay is not None:
        lines.append(format_relay(totals.relay))
    if totals.bus is not None:
        lines.append(format_bus(totals.bus))
    summary = format_summary(totals)
    if len(per_process) > 1:
        received = ", ".join(str(stats.received) for stats in per_process)
        summary += f" processes={len(per_process)} (received {received})"
    lines.append(summary)
    return lines


def format_status(stats: StatsSnapshot, rate_per_s: float) -> str:
    """The periodic status line: the rate handled since the last one, then the totals."""
    return f"status: rate={rate_per_s:.0f}/s {format_counts(stats)}"


class StatusLine:
    """Makes the periodic status line, with the rate handled since the previous one."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last_time = clock()
        self._last_handled = 0

    def __call__(self, stats: StatsSnapshot) -> str:
        now = self._clock()
        elapsed = now - self._last_time
        rate = (stats.handled - self._last_handled) / elapsed if elapsed > 0 else 0.0
        self._last_time, self._last_handled = now, stats.handled
        return format_status(stats, rate)


def format_sender_table(
    senders: Sequence[SenderStats], limit: int = MAX_TABLE_SENDERS
) -> list[str]:
    """Per-sender delivery as aligned rows, the worst loss first; at most ``limit`` rows."""
    ranked = sorted(
        senders,
        key=lambda s: (-s.lost, -s.duplicates - s.reordered - s.late, s.ip, s.port, s.username),
    )
    rows = [
        (
            "sender",
            "username",
            "received",
            "lost",
            "loss",
            "duplicates",
            "reordered",
            "late",
            "restarts",
            "jitter_ms",
        ),
    ]
    rows.extend(
        (
            f"{sender.ip}:{sender.port}"
            if ":" not in sender.ip
            else f"[{sender.ip}]:{sender.port}",
            sender.username,
            str(sender.received),
            str(sender.lost),
            f"{sender.loss_ratio:.2%}",
            str(sender.duplicates),
            str(sender.reordered),
            str(sender.late),
            str(sender.restarts),
            f"{sender.jitter_s * 1000:.3f}",
        )
        for sender in ranked[:limit]
    )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(width) if column < 2 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    if len(ranked) > limit:
        lines.append(f"... {len(ranked) - limit} more senders (the totals include them)")
    return lines


class ServerCounters:
    """The server's counts, every one changed under one lock, so that any snapshot, from any
    thread, has ``received == handled + dropped + queued`` exactly.

    The lock is taken once per batch on the hot path (one hand-off, one finish), and once per
    refused datagram.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received = 0
        self.queued = 0
        """Taken in and not yet counted as handled or dropped: waiting or in a worker."""
        self._dropped = dict.fromkeys(DropReason, 0)
        self._handled = 0
        self._handler_errors = 0
        self._problems: dict[str, int] = {}
        self._latency_counts = [0] * (len(LATENCY_BOUNDS_S) + 1)
        self._latency_sum_s = 0.0

    def take_in(self, received: int, queued: int) -> None:
        """``received`` datagrams read, ``queued`` of them queued and the rest dropped as
        ``queue_full``; on the event-loop thread."""
        with self._lock:
            self._received += received
            self.queued += queued
            self._dropped[DropReason.QUEUE_FULL] += received - queued

    def refuse(self, reason: DropReason) -> None:
        """One datagram read and dropped before it was queued."""
        with self._lock:
            self._received += 1
            self._dropped[reason] += 1

    def add_handled(
        self, handled: int, handler_errors: int, problems: Mapping[str, int], latency_s: float
    ) -> None:
        """Merge one handled batch, whose messages all took ``latency_s``; from pool threads."""
        bucket = bisect.bisect_left(LATENCY_BOUNDS_S, latency_s)
        with self._lock:
            self.queued -= handled
            self._handled += handled
            self._handler_errors += handler_errors
            for name, count in problems.items():
                self._problems[name] = self._problems.get(name, 0) + count
            self._latency_counts[bucket] += handled
            self._latency_sum_s += latency_s * handled

    def add_dropped(self, reason: DropReason, count: int) -> None:
        """``count`` queued datagrams dropped (output failed, shut down before a worker took
        them)."""
        with self._lock:
            self.queued -= count
            self._dropped[reason] += count

    def snapshot(
        self,
        kernel_drops: int | None = None,
        delivery: DeliveryTotals | None = None,
        senders: tuple[SenderStats, ...] = (),
        relay: RelayStats | None = None,
        bus: BusStats | None = None,
    ) -> StatsSnapshot:
        with self._lock:
            return StatsSnapshot(
                received=self._received,
                handled=self._handled,
                handler_errors=self._handler_errors,
                dropped={reason.value: count for reason, count in self._dropped.items()},
                problems=dict(self._problems),
                queue_depth=self.queued,
                kernel_drops=kernel_drops,
                delivery=delivery or DeliveryTotals(),
                senders=senders,
                latency=LatencyHistogram(tuple(self._latency_counts), self._latency_sum_s),
                relay=relay,
                bus=bus,
            )
