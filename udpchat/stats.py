"""Counters for everything the server receives, handles and refuses, and their snapshot.

Every datagram read from the socket is counted once as ``received`` and ends in exactly one
of ``handled`` or one drop reason, so that ``received == handled + sum(dropped)`` once idle.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


class DropReason(enum.Enum):
    """Why a received datagram was not handed to the handler."""

    EMPTY = "empty"
    OVERSIZE = "oversize"
    NOT_ALLOWED = "not_allowed"
    RATE_LIMITED = "rate_limited"
    QUEUE_FULL = "queue_full"
    SHUTDOWN = "shutdown"


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
    return StatsSnapshot(
        received=sum(s.received for s in snapshots),
        handled=sum(s.handled for s in snapshots),
        handler_errors=sum(s.handler_errors for s in snapshots),
        dropped=total(s.dropped for s in snapshots),
        problems=total(s.problems for s in snapshots),
        queue_depth=sum(s.queue_depth for s in snapshots),
        kernel_drops=None if None in kernel else sum(k or 0 for k in kernel),
    )


def format_summary(stats: StatsSnapshot) -> str:
    """One line of totals, ``key=value`` so that both people and scripts can read it."""
    dropped = " ".join(f"{reason}={count}" for reason, count in stats.dropped.items() if count)
    problems = " ".join(f"{name}={count}" for name, count in sorted(stats.problems.items()))
    parts = [
        f"received={stats.received}",
        f"handled={stats.handled}",
        f"dropped={stats.dropped_total}" + (f" ({dropped})" if dropped else ""),
        f"handler_errors={stats.handler_errors}",
    ]
    if problems:
        parts.append(problems)
    if stats.queue_depth:
        parts.append(f"queued={stats.queue_depth}")
    if stats.kernel_drops is not None:
        parts.append(f"kernel_drops={stats.kernel_drops}")
    return "summary: " + " ".join(parts)


class ServerCounters:
    """The server's counts.

    Receive-side counts are written only by the event-loop thread, so they need no lock;
    worker-side counts are merged under a lock once per batch, off the per-message path.
    """

    def __init__(self) -> None:
        self.received = 0
        self.dropped = dict.fromkeys(DropReason, 0)
        self._lock = threading.Lock()
        self._handled = 0
        self._handler_errors = 0
        self._problems: dict[str, int] = {}

    def add_handled(self, handled: int, handler_errors: int, problems: Mapping[str, int]) -> None:
        """Merge what one worker batch did; called from pool threads."""
        with self._lock:
            self._handled += handled
            self._handler_errors += handler_errors
            for name, count in problems.items():
                self._problems[name] = self._problems.get(name, 0) + count

    def snapshot(self, queue_depth: int = 0, kernel_drops: int | None = None) -> StatsSnapshot:
        with self._lock:
            return StatsSnapshot(
                received=self.received,
                handled=self._handled,
                handler_errors=self._handler_errors,
                dropped={reason.value: count for reason, count in self.dropped.items()},
                problems=dict(self._problems),
                queue_depth=queue_depth,
                kernel_drops=kernel_drops,
            )
