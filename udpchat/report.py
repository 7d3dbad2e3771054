"""What a server reports as text: the summary, the status line, the sender table and the JSON
summary. All of it is derived from the counter declarations in :mod:`udpchat.counters`, so
that a counter declared there shows here with no more code. Pure: strings in, strings out.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from udpchat.counters import (
    Counts,
    ImpairStats,
    Kind,
    LatencyHistogram,
    LossRuns,
    SenderStats,
    StatsSnapshot,
    add_up,
)
from udpchat.wire import display_width

MAX_TABLE_SENDERS = 50
"""Rows of the per-sender table at most; the totals still count every sender."""


def pairs(counts: Counts) -> list[str]:
    """Each declared counter as ``key=value``; totals by reason as ``key=N (reason=n ...)``
    with the reasons that occurred; unknown values left out."""
    shown = []
    for declared, value in counts.items():
        if declared.kind is Kind.PART or value is None:
            continue
        if declared.kind is Kind.FLAG:
            shown.append(f"{declared.key}={'true' if value else 'false'}")
        elif declared.kind is Kind.BY_REASON:
            reasons = " ".join(f"{reason}={count}" for reason, count in value.items() if count)
            total = sum(value.values())
            shown.append(f"{declared.key}={total}" + (f" ({reasons})" if reasons else ""))
        else:
            shown.append(f"{declared.key}={value}")
    return shown


def format_counts(stats: StatsSnapshot) -> str:
    """The server's totals and the delivery totals as ``key=value`` pairs, for people and
    scripts alike."""
    return " ".join([*pairs(stats), *pairs(stats.delivery)])


def group_lines(stats: StatsSnapshot) -> list[str]:
    """One ``group: key=value ...`` line per group besides delivery (relay, nats, ...)."""
    return [
        f"{group.text_prefix}: {' '.join(pairs(group))}"
        for group in stats.groups()
        if group.text_prefix
    ]


def summary_lines(per_process: Sequence[StatsSnapshot]) -> list[str]:
    """What a server reports at exit: the sender table, a line per group and the totals, with
    each process's share when there are several."""
    totals = add_up(per_process) if per_process else StatsSnapshot()
    lines = []
    if totals.senders:
        lines.append("senders:")
        lines.extend(f"  {row}" for row in format_sender_table(totals.senders))
    lines.extend(group_lines(totals))
    summary = f"summary: {format_counts(totals)}"
    if len(per_process) > 1:
        received = ", ".join(str(stats.received) for stats in per_process)
        summary += f" processes={len(per_process)} (received {received})"
    lines.append(summary)
    return lines


def _plain(counts: Counts) -> dict[str, Any]:
    """A group as JSON-ready values, its parts included."""
    values: dict[str, Any] = {}
    for declared, value in counts.items():
        if isinstance(value, Counts):
            values[declared.name] = _plain(value)
        elif isinstance(value, tuple):  # the sender table, the room's members
            values[declared.name] = [
                _sender(row) if isinstance(row, SenderStats) else list(row) for row in value
            ]
        elif isinstance(value, LossRuns):
            values[declared.name] = {
                str(length): runs for length, runs in value.by_length().items()
            }
        elif isinstance(value, LatencyHistogram):
            values[declared.name] = {
                "bounds_s": list(value.bounds_s),
                "counts": list(value.counts),
                "sum_s": value.sum_s,
            }
        else:
            values[declared.name] = dict(value) if isinstance(value, dict) else value
    return values


def _sender(sender: SenderStats) -> dict[str, Any]:
    return {column.key: column.value(sender) for column in SENDER_COLUMNS}


def json_summary(per_process: Sequence[StatsSnapshot]) -> str:
    """The summary as one JSON object: every counter of every group by its name, the sender
    table, and each process's received count when there are several."""
    totals = add_up(per_process) if per_process else StatsSnapshot()
    document: dict[str, Any] = {"summary": _plain(totals)}
    if len(per_process) > 1:
        document["processes"] = [stats.received for stats in per_process]
    return json.dumps(document, ensure_ascii=True)


def format_status(stats: StatsSnapshot, rate_per_s: float) -> str:
    """The periodic status line: the rate handled since the last one, the totals, the groups."""
    return " ".join(
        [f"status: rate={rate_per_s:.0f}/s {format_counts(stats)}", *group_lines(stats)]
    )


class Rate:
    """How fast a growing total grew since the previous reading, per second."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last_time = clock()
        self._last_total = 0

    def __call__(self, total: int) -> float:
        now = self._clock()
        elapsed = now - self._last_time
        rate = (total - self._last_total) / elapsed if elapsed > 0 else 0.0
        self._last_time, self._last_total = now, total
        return rate


class StatusLine:
    """Makes the periodic status line, with the rate handled since the previous one."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = Rate(clock)

    def __call__(self, stats: StatsSnapshot) -> str:
        return format_status(stats, self._rate(stats.handled))


def impair_summary(stats: ImpairStats) -> str:
    """What ``udpchat impair`` reports at exit: every declared counter, on one line."""
    return f"impair summary: {' '.join(pairs(stats))}"


def impair_status(stats: ImpairStats, rate_per_s: float) -> str:
    """The proxy's periodic status line: datagrams forwarded a second since the previous one,
    then the totals."""
    return f"impair status: rate={rate_per_s:.0f}/s {' '.join(pairs(stats))}"


def sender_address(ip: str, port: int) -> str:
    """``1.2.3.4:5`` or ``[::1]:5``."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass(frozen=True, slots=True)
class Column:
    """One column of the sender table, in the summary and on the dashboard alike."""

    header: str
    short: str
    """The dashboard's narrower header."""
    value: Callable[[SenderStats], Any]
    """The cell's value (for JSON too)."""
    text: Callable[[Any], str] = str
    numeric: bool = True

    @property
    def key(self) -> str:
        return self.header

    def cell(self, sender: SenderStats) -> str:
        return self.text(self.value(sender))


SENDER_COLUMNS = (
    Column("sender", "address", lambda s: sender_address(s.ip, s.port), numeric=False),
    Column("username", "username", lambda s: s.username, numeric=False),
    Column("received", "recv", lambda s: s.received),
    Column("lost", "lost", lambda s: s.lost),
    Column("loss", "loss", lambda s: s.loss_ratio, lambda ratio: f"{ratio:.2%}"),
    Column("duplicates", "dup", lambda s: s.duplicates),
    Column("reordered", "reord", lambda s: s.reordered),
    Column("late", "late", lambda s: s.late),
    Column("restarts", "rst", lambda s: s.restarts),
    Column("jitter_ms", "jitter_ms", lambda s: s.jitter_s * 1000, lambda ms: f"{ms:.3f}"),
)
"""The sender table's columns, declared once."""


class SortKey(enum.StrEnum):
    """The sender table's order; every key puts the senders to look at first on top."""

    LOSS = "loss"
    """Highest loss ratio first, then most lost."""
    JITTER = "jitter"
    SILENCE = "silence"
    """Longest silent first."""
    RECEIVED = "received"
    USERNAME = "username"
    SENDER = "sender"
    """By ip:port."""


_SORT_ORDERS: dict[SortKey, Callable[[SenderStats], tuple[object, ...]]] = {
    SortKey.LOSS: lambda sender: (-sender.loss_ratio, -sender.lost),
    SortKey.JITTER: lambda sender: (-sender.jitter_s,),
    SortKey.SILENCE: lambda sender: (sender.last_heard_s,),
    SortKey.RECEIVED: lambda sender: (-sender.received,),
    SortKey.USERNAME: lambda sender: (sender.username,),
    SortKey.SENDER: lambda sender: (),
}


def ranked(rows: list[tuple[int, SenderStats]], key: SortKey) -> list[tuple[int, SenderStats]]:
    """(process, sender) rows sorted by ``key``, ties by address, username and process, so
    that rows do not jump between frames."""
    order = _SORT_ORDERS[key]
    return sorted(
        rows,
        key=lambda row: (*order(row[1]), row[1].ip, row[1].port, row[1].username, row[0]),
    )


def format_sender_table(
    senders: Sequence[SenderStats], limit: int = MAX_TABLE_SENDERS
) -> list[str]:
    """Per-sender delivery as aligned rows, the worst loss first; at most ``limit`` rows."""
    order = [sender for _, sender in ranked([(0, sender) for sender in senders], SortKey.LOSS)]
    rows = [tuple(column.header for column in SENDER_COLUMNS)]
    rows.extend(tuple(column.cell(sender) for column in SENDER_COLUMNS) for sender in order[:limit])
    widths = [
        max(display_width(row[index]) for row in rows) for index in range(len(SENDER_COLUMNS))
    ]

    def padded(column: Column, cell: str, width: int) -> str:
        padding = " " * (width - display_width(cell))  # cells, not characters: 用户 takes 4
        return padding + cell if column.numeric else cell + padding

    lines = [
        "  ".join(
            padded(column, cell, width)
            for column, cell, width in zip(SENDER_COLUMNS, row, widths, strict=True)
        ).rstrip()
        for row in rows
    ]
    if len(order) > limit:
        lines.append(f"... {len(order) - limit} more senders (the totals include them)")
    return lines
