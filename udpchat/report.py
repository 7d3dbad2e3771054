"""What a server reports as text: the summary, the status line, the sender table and the JSON
summary. All of it is derived from the counter declarations in :mod:`udpchat.counters`, so
that a counter declared there shows here with no more code. Pure: strings in, strings out.
"""

from __future__ import annotations

import enum
import heapq
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from udpchat.counters import (
    Brief,
    ClientStats,
    Counts,
    Declaration,
    ImpairStats,
    Kind,
    LatencyHistogram,
    LossRuns,
    SenderStats,
    StatsSnapshot,
    add_up,
)
from udpchat.wire import display_width, sender_address, terminal_cells

MAX_TABLE_SENDERS = 50
"""Rows of the per-sender table at most with ``--verbose``; the totals still count every
sender."""
BRIEF_TABLE_SENDERS = 10
"""Rows of the per-sender table at most by default."""
SUMMARY_WIDTH = 100
"""Columns of a line of the short summary at most, ``udpchat: `` included."""
SUMMARY_LINES = 3
"""Lines of the short summary at most (the sender table apart)."""
TABLE_WIDTH = 78
"""Columns of a row of the summary's sender table at most: 80 with its two-space indent."""
LINE_PREFIX = "udpchat: "
"""What the CLI puts before each line of the summary but the table's."""


def shown_value(declared: Declaration, value: Any, *, verbose: bool) -> bool:
    """Whether a counter's ``value`` shows: always with ``verbose``, else as it declares."""
    if value is None or declared.kind is Kind.PART:
        return False
    if verbose or declared.brief is Brief.ALWAYS:
        return True
    if declared.brief is Brief.NONZERO:
        return bool(sum(value.values()) if isinstance(value, dict) else value)
    return False


def pairs(counts: Counts, *, verbose: bool = True) -> list[str]:
    """Each declared counter that shows (:func:`shown_value`) as ``key=value``; totals by
    reason as ``key=N (reason=n ...)`` with the reasons that occurred."""
    shown = []
    for declared, value in counts.items():
        if not shown_value(declared, value, verbose=verbose):
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


def format_counts(stats: StatsSnapshot, *, verbose: bool = True) -> str:
    """The server's totals and the delivery totals as ``key=value`` pairs, for people and
    scripts alike."""
    return " ".join([*pairs(stats, verbose=verbose), *pairs(stats.delivery, verbose=verbose)])


def group_lines(stats: Counts, *, verbose: bool = True) -> list[str]:
    """One ``group: key=value ...`` line per group besides delivery (relay, nats, ...; the
    proxy's record and pcap) that has something to show."""
    lines = []
    for group in (value for _, value in stats.items() if isinstance(value, Counts)):
        shown = pairs(group, verbose=verbose)
        if group.text_prefix and shown:
            lines.append(f"{group.text_prefix}: {' '.join(shown)}")
    return lines


def brief_segments(stats: StatsSnapshot, processes: int = 1) -> list[list[str]]:
    """What the short summary says, as runs of words that each start with their group's
    label: the server's counts and delivery, then each group with something to say."""
    main = ["summary:", *pairs(stats, verbose=False), *pairs(stats.delivery, verbose=False)]
    if processes > 1:
        main.append(f"processes={processes}")
    groups = [
        [f"{group.text_prefix}:", *shown]
        for group in stats.groups()
        if group.text_prefix and (shown := pairs(group, verbose=False))
    ]
    return [main, *groups]


def pack(segments: Sequence[Sequence[str]], width: int, max_lines: int) -> list[str]:
    """The segments' pairs into at most ``max_lines`` lines of at most ``width`` cells, a
    segment's label never last on a line, a pair (``dropped=3 (oversize=3)``) broken only
    when it is wider than a line; what does not fit ends the last line as ``…``."""
    units = [
        f"{label} {pair}" if index == 0 else pair
        for label, *said in segments
        for index, pair in enumerate(said or [""])
    ]
    words = [
        word
        for unit in units
        for word in (unit.rstrip().split(" ") if display_width(unit) > width else [unit.rstrip()])
    ]
    lines: list[str] = []
    for word in words:
        if lines and display_width(lines[-1]) + 1 + display_width(word) <= width:
            lines[-1] += f" {word}"
        elif len(lines) < max_lines:
            lines.append(word)
        else:
            return _ended(lines, width)
    return lines


def _ended(lines: list[str], width: int) -> list[str]:
    """``lines`` whose last ends with ``…`` in place of the words that did not fit."""
    last = lines[-1]
    while last and display_width(last) + 2 > width:
        last = last.rsplit(" ", 1)[0] if " " in last else last[:-1]
    return [*lines[:-1], f"{last} \u2026"]


def summary_lines(per_process: Sequence[StatsSnapshot], *, verbose: bool = False) -> list[str]:
    """What a server reports at exit: the sender table (lines that start with a space), then
    the counts. By default the counts a person reads, in at most :data:`SUMMARY_LINES` lines
    of :data:`SUMMARY_WIDTH` columns; with ``verbose`` every counter, a line per group, and
    each process's share when there are several."""
    totals = add_up(per_process) if per_process else StatsSnapshot()
    lines = []
    if totals.senders:
        lines.append("senders:")
        limit = MAX_TABLE_SENDERS if verbose else BRIEF_TABLE_SENDERS
        rows = format_sender_table(totals.senders, limit)
        lines.extend(f"  {row}" for row in rows)
    if not verbose:
        segments = brief_segments(totals, len(per_process))
        return lines + pack(segments, SUMMARY_WIDTH - len(LINE_PREFIX), SUMMARY_LINES)
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


def _sender(sender: SenderStats) -> dict[str, Any]:  # every column, rare or not
    return {column.key: column.value(sender) for column in SENDER_COLUMNS}


def json_summary(per_process: Sequence[StatsSnapshot]) -> str:
    """The summary as one JSON object: every counter of every group by its name, the sender
    table, and each process's received count when there are several."""
    totals = add_up(per_process) if per_process else StatsSnapshot()
    document: dict[str, Any] = {"summary": _plain(totals)}
    if len(per_process) > 1:
        document["processes"] = [stats.received for stats in per_process]
    return json.dumps(document, ensure_ascii=True)


def format_status(stats: StatsSnapshot, rate_per_s: float, *, verbose: bool = False) -> str:
    """The periodic status line: the rate handled since the last one, then the counts (a
    person's, or with ``verbose`` every counter) and the groups'."""
    if verbose:
        counts = [format_counts(stats), *group_lines(stats)]
    else:
        main, *groups = brief_segments(stats)
        counts = [" ".join(main[1:]), *(" ".join(group) for group in groups)]
    return " ".join([f"status: rate={rate_per_s:.0f}/s", *counts])


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

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, *, verbose: bool = False
    ) -> None:
        self._rate = Rate(clock)
        self._verbose = verbose

    def __call__(self, stats: StatsSnapshot) -> str:
        return format_status(stats, self._rate(stats.handled), verbose=self._verbose)


def client_summary(stats: ClientStats, *, verbose: bool = False) -> str:
    """What ``send`` or ``chat`` reports at exit: what the person did (messages sent, lines
    typed, delivered, not delivered), not the datagrams that kept it in the room."""
    return f"summary: {' '.join(pairs(stats, verbose=verbose)) or 'nothing sent'}"


def impair_summary(stats: ImpairStats, *, verbose: bool = False) -> list[str]:
    """What ``udpchat impair`` reports at exit: by default the counts a person reads (what the
    link carried, dropped and did, the kernel's drops), in at most :data:`SUMMARY_LINES` lines
    of :data:`SUMMARY_WIDTH` columns; with ``verbose`` every declared counter, on one line."""
    if verbose:
        return [f"impair summary: {' '.join(pairs(stats))}"]
    segments = [["impair summary:", *pairs(stats, verbose=False)]]
    return pack(segments, SUMMARY_WIDTH - len(LINE_PREFIX), SUMMARY_LINES)


def impair_report(stats: ImpairStats, *, verbose: bool = False) -> list[str]:
    """The summary, then what its files could not hold (``pcap: not_written=9 (max_bytes=9)``):
    a capture that stopped at its bound holds fewer packets than the summary counts."""
    return [*impair_summary(stats, verbose=verbose), *group_lines(stats, verbose=verbose)]


def impair_status(stats: ImpairStats, rate_per_s: float, *, verbose: bool = False) -> str:
    """The proxy's periodic status line: datagrams forwarded a second since the previous one,
    then the totals (those a person reads, unless ``verbose``)."""
    return f"impair status: rate={rate_per_s:.0f}/s {' '.join(pairs(stats, verbose=verbose))}"


DEFAULT_IDLE_AFTER_S = 10.0
"""Silence after which a sender is marked idle when there is no room (``--relay``) timeout."""


def idle_after_s(relay: bool, peer_timeout_s: float) -> float:
    """When a sender counts as idle in the live views: the room's own timeout with a room."""
    return peer_timeout_s if relay else DEFAULT_IDLE_AFTER_S


def short_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h01m``: short enough for a table cell."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def heard(silent_s: float, idle_after_s: float) -> tuple[str, bool]:
    """The live views' last column: ``3s ago``, or ``1m05s idle`` past ``idle_after_s``; and
    whether the sender is idle."""
    idle = silent_s > idle_after_s
    return f"{short_duration(silent_s)} {'idle' if idle else 'ago'}", idle


@dataclass(frozen=True, slots=True)
class Column:
    """One column of the sender table, in the summary, the JSON summary and on the dashboard."""

    key: str
    """Its name in the JSON summary, and in the orders in which a table gives way."""
    header: str
    """Its header in the summary."""
    short: str
    """Its narrower header on the dashboard."""
    value: Callable[[SenderStats], Any]
    """The cell's value (for JSON too)."""
    text: Callable[[Any], str] = str
    numeric: bool = True
    rare: bool = False
    """Shown only when some sender has it non-zero: most runs have none."""
    cut_middle: bool = False
    """Cut in the middle when it must be (an address keeps its port), else at the end."""

    def cell(self, sender: SenderStats) -> str:
        return self.text(self.value(sender))


SENDER_COLUMNS = (
    Column(
        "sender",
        "sender",
        "address",
        lambda s: sender_address(s.ip, s.port),
        numeric=False,
        cut_middle=True,
    ),
    Column("username", "username", "username", lambda s: s.username, numeric=False),
    Column("received", "received", "recv", lambda s: s.received),
    Column("lost", "lost", "lost", lambda s: s.lost),
    Column("loss", "loss", "loss", lambda s: s.loss_ratio, lambda ratio: f"{ratio:.2%}"),
    Column("duplicates", "dup", "dup", lambda s: s.duplicates, rare=True),
    Column("reordered", "reordered", "reord", lambda s: s.reordered, rare=True),
    Column("late", "late", "late", lambda s: s.late, rare=True),
    Column("restarts", "restarts", "rst", lambda s: s.restarts, rare=True),
    Column("jitter_ms", "jitter_ms", "jitter_ms", lambda s: s.jitter_s * 1000, "{:.3f}".format),
)
"""The sender table's columns, declared once."""

GiveWay = tuple[tuple[str, int], ...]
"""The order in which a table narrows to fit: (column key, cells) cuts a text column to that
many cells, (column key, 0) leaves the column out. Figures are never cut, only left out."""

SUMMARY_GIVE_WAY: GiveWay = (
    ("sender", 21),  # an IPv4 address and port whole; an IPv6 one cut in the middle
    ("username", 16),
    ("restarts", 0),
    ("late", 0),
    ("reordered", 0),
    ("duplicates", 0),
    ("sender", 0),
    ("jitter_ms", 0),
)
"""How the summary's sender table fits :data:`TABLE_WIDTH`."""


@dataclass(frozen=True, slots=True)
class Cells:
    """One column of a text table, to lay out: its header and a cell per row."""

    key: str
    header: str
    cells: tuple[str, ...]
    numeric: bool = True
    cut_middle: bool = False

    @property
    def natural_width(self) -> int:
        return max(map(display_width, (self.header, *self.cells)))


def fit(columns: Sequence[Cells], width: int, give_way: GiveWay, gap: int = 2) -> list[int]:
    """Each column's width, 0 for those left out: natural widths, narrowed step by step as
    ``give_way`` says until the table fits ``width`` (or no step is left)."""
    widths = {column.key: column.natural_width for column in columns}
    for key, cells in give_way:
        if sum(widths.values()) + gap * (len(widths) - 1) <= width:
            break
        if key in widths:
            if cells:
                widths[key] = min(widths[key], cells)
            else:
                del widths[key]
    return [widths.get(column.key, 0) for column in columns]


def cut(text: str, cells: int, *, middle: bool = False) -> str:
    """``text`` in at most ``cells`` terminal cells, with ``…`` where it was cut."""
    if display_width(text) <= cells:
        return text
    if middle:
        head = cut(text, (cells + 1) // 2)[:-1]
        tail = cut(text[::-1], cells - display_width(head))[:-1][::-1]
        return f"{head}\u2026{tail}"
    kept, used = [], 1
    for char in text:
        used += terminal_cells(char)
        if used > cells:
            break
        kept.append(char)
    return "".join(kept) + "\u2026"


def table_lines(columns: Sequence[Cells], widths: Sequence[int], gap: int = 2) -> list[str]:
    """The header and a line per row, in the ``widths`` of :func:`fit`: figures to the right,
    text to the left and cut to fit, columns of width 0 left out."""
    laid = [(column, width) for column, width in zip(columns, widths, strict=True) if width]
    rows = len(laid[0][0].cells) if laid else 0

    def padded(column: Cells, text: str, width: int) -> str:
        text = cut(text, width, middle=column.cut_middle)
        padding = " " * (width - display_width(text))  # cells, not characters: 用户 takes 4
        return padding + text if column.numeric else text + padding

    return [
        (" " * gap)
        .join(
            padded(column, column.header if row < 0 else column.cells[row], width)
            for column, width in laid
        )
        .rstrip()
        for row in range(-1, rows)
    ]


def sender_cells(
    senders: Sequence[SenderStats],
    *,
    short: bool = False,
    shown: Callable[[str], str] = str,
) -> list[Cells]:
    """The sender columns with something to show (a rare one only when some sender has it),
    for ``senders`` in order, under their short headers or not; ``shown`` makes a text cell
    (a name, an address) what the view may show."""
    return [
        Cells(
            column.key,
            column.short if short else column.header,
            tuple(
                column.cell(sender) if column.numeric else shown(column.cell(sender))
                for sender in senders
            ),
            column.numeric,
            column.cut_middle,
        )
        for column in shown_columns(senders)
    ]


def shown_columns(senders: Sequence[SenderStats]) -> list[Column]:
    """The sender columns with something to show: a rare one only when some sender has it."""
    return [
        column
        for column in SENDER_COLUMNS
        if not column.rare or any(column.value(sender) for sender in senders)
    ]


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


def ranked(
    rows: list[tuple[int, SenderStats]], key: SortKey, limit: int | None = None
) -> list[tuple[int, SenderStats]]:
    """(process, sender) rows sorted by ``key``, ties by address, username and process, so
    that rows do not jump between frames; the first ``limit`` only, when given (found without
    sorting them all)."""
    order = _SORT_ORDERS[key]

    def rank(row: tuple[int, SenderStats]) -> tuple[object, ...]:
        return (*order(row[1]), row[1].ip, row[1].port, row[1].username, row[0])

    if limit is None:
        return sorted(rows, key=rank)
    return heapq.nsmallest(limit, rows, key=rank)


def format_sender_table(
    senders: Sequence[SenderStats],
    limit: int = MAX_TABLE_SENDERS,
    width: int = TABLE_WIDTH,
) -> list[str]:
    """Per-sender delivery as aligned rows within ``width`` columns, the worst loss first; at
    most ``limit`` rows."""
    order = [sender for _, sender in ranked([(0, sender) for sender in senders], SortKey.LOSS)]
    columns = sender_cells(order[:limit])
    lines = table_lines(columns, fit(columns, width, SUMMARY_GIVE_WAY))
    if len(order) > limit:
        lines.append(f"... {len(order) - limit} more senders (the totals include them)")
    return lines
