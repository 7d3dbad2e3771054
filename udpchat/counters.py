"""Every counter udpchat keeps, declared once.

A counter is a field of a frozen dataclass (a :class:`Counts`) whose metadata is its
declaration: help text, unit, kind, the key it has in ``key=value`` text and the name it has
in /metrics. Everything that shows counters derives from these declarations: the sum across
processes (:meth:`Counts.__add__`), the summary, status line and JSON summary
(:mod:`udpchat.report`), /metrics (:mod:`udpchat.metrics`) and the dashboard. Adding a counter
is adding a field here and counting it where it happens.

The live values are kept in a :class:`Tally`, changed under one lock, whose snapshot is the
frozen :class:`Counts`. Pure: no I/O, and nothing of udpchat is imported.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import functools
import operator
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Self, TypeVar

DECLARATION = "udpchat.counter"
"""The metadata key under which a field holds its :class:`Declaration`."""


class Kind(enum.Enum):
    """How a counter behaves, and so how it is added up across processes and exposed."""

    TOTAL = "total"
    """Only grows: a Prometheus counter; summed across processes."""
    LEVEL = "level"
    """A value now (queue depth, members): a Prometheus gauge; summed across processes."""
    FLAG = "flag"
    """A yes or no now: a gauge of 0 or 1; across processes, whether all of them say yes."""
    BY_REASON = "by_reason"
    """Totals by a label value (a drop reason): one Prometheus counter with a label."""
    UNKNOWN_OK = "unknown_ok"
    """A total the OS may not know (None): unknown in a sum when unknown in any process."""
    PART = "part"
    """A group of counters, a table or a histogram inside a snapshot: added with ``+``."""


class Brief(enum.Enum):
    """Whether a counter shows in the short summary, status line and dashboard header that a
    person reads by default (``--verbose`` and the JSON summary show every counter)."""

    ALWAYS = "always"
    """Shown, zero included: what a person wants to see is zero (``lost=0``)."""
    NONZERO = "nonzero"
    """Shown when it is not zero; a total by reason with its non-zero reasons only."""
    VERBOSE = "verbose"
    """Internals and details: shown with ``--verbose`` only."""


@dataclass(frozen=True, slots=True)
class Declaration:
    """One counter: what it means, in what unit, and the names it goes by."""

    name: str
    """The field's name: the attribute in Python and the key in the JSON summary."""
    help: str
    unit: str
    kind: Kind
    key: str
    """Its key in ``key=value`` text (the summary, the status line)."""
    metric: str
    """Its Prometheus family name, without the group's prefix and ``_total``."""
    label: str = ""
    """The label of a :attr:`Kind.BY_REASON` counter (``reason``)."""
    brief: Brief = Brief.VERBOSE
    """Whether the short summary shows it."""

    @property
    def zero(self) -> Any:
        if self.kind is Kind.BY_REASON:
            return {}
        return False if self.kind is Kind.FLAG else 0


# These helpers run only at import, while the classes below are built: no test calls them, so
# `make mutation` (which runs a function's mutants against the tests that call it) leaves them
# out. tests/test_counters.py pins what they build.
# pragma: no mutate start
def _declare(
    kind: Kind,
    help: str,
    unit: str,
    key: str,
    metric: str,
    brief: Brief,
    label: str = "",
) -> Any:
    spec = {
        "kind": kind,
        "help": help,
        "unit": unit,
        "key": key,
        "metric": metric,
        "label": label,
        "brief": brief,
    }
    if kind is Kind.BY_REASON:
        return field(default_factory=dict, metadata={DECLARATION: spec})
    if kind is Kind.UNKNOWN_OK:
        return field(default=None, metadata={DECLARATION: spec})
    return field(default=False if kind is Kind.FLAG else 0, metadata={DECLARATION: spec})


def total(
    help: str, *, unit: str, key: str = "", metric: str = "", brief: Brief = Brief.VERBOSE
) -> Any:
    """A counter that only grows."""
    return _declare(Kind.TOTAL, help, unit, key, metric, brief)


def level(
    help: str, *, unit: str, key: str = "", metric: str = "", brief: Brief = Brief.VERBOSE
) -> Any:
    """A value now, that goes up and down."""
    return _declare(Kind.LEVEL, help, unit, key, metric, brief)


def flag(help: str, *, key: str = "", metric: str = "", brief: Brief = Brief.VERBOSE) -> Any:
    """A yes or no now."""
    return _declare(Kind.FLAG, help, "", key, metric, brief)


def by_reason(
    help: str,
    *,
    unit: str,
    label: str,
    key: str = "",
    metric: str = "",
    brief: Brief = Brief.VERBOSE,
) -> Any:
    """Totals by reason: a mapping from the label's value to its count."""
    return _declare(Kind.BY_REASON, help, unit, key, metric, brief, label)


def unknown_ok(
    help: str, *, unit: str, key: str = "", metric: str = "", brief: Brief = Brief.VERBOSE
) -> Any:
    """A total that may be unknown (None)."""
    return _declare(Kind.UNKNOWN_OK, help, unit, key, metric, brief)


def part(
    default: Any = None,
    *,
    default_factory: Callable[[], Any] | None = None,
    help: str = "",
    unit: str = "",
    label: str = "",
) -> Any:
    """A group, table or histogram inside a snapshot, added up with ``+``; a histogram that
    /metrics shows says its help, unit and label."""
    spec = {
        "kind": Kind.PART,
        "help": help,
        "unit": unit,
        "key": "",
        "metric": "",
        "label": label,
        "brief": Brief.VERBOSE,
    }
    if default_factory is not None:
        return field(default_factory=default_factory, metadata={DECLARATION: spec})
    return field(default=default, metadata={DECLARATION: spec})


# pragma: no mutate end
_DECLARED: dict[type, tuple[Declaration, ...]] = {}


def declarations(counts_type: type) -> tuple[Declaration, ...]:
    """The declarations of a :class:`Counts` class, in field order."""
    declared = _DECLARED.get(counts_type)
    if declared is None:
        specs = [
            (each.name, dict(each.metadata[DECLARATION]))
            for each in dataclasses.fields(counts_type)
        ]
        declared = _DECLARED[counts_type] = tuple(
            Declaration(
                name=name,
                **{**spec, "key": spec["key"] or name, "metric": spec["metric"] or name},
            )
            for name, spec in specs
        )
    return declared


def _add(kind: Kind, a: Any, b: Any) -> Any:
    if kind is Kind.FLAG:
        return a and b
    if kind is Kind.BY_REASON:
        summed = dict(a)
        for reason, count in b.items():
            summed[reason] = summed.get(reason, 0) + count
        return summed
    if kind is Kind.UNKNOWN_OK:
        return None if a is None or b is None else a + b
    if kind is Kind.PART and (a is None or b is None):
        return b if a is None else a
    return a + b


class Counts:
    """A frozen group of declared counters: added up field by field as each one's kind says."""

    __slots__ = ()
    text_prefix: ClassVar[str] = ""
    """What the group's line starts with in text (``relay``); empty where it has no line."""
    metric_prefix: ClassVar[str] = "udpchat_"
    """Before each counter's metric name in /metrics."""

    def __add__(self, other: Self) -> Self:
        values = {
            declared.name: _add(
                declared.kind, getattr(self, declared.name), getattr(other, declared.name)
            )
            for declared in declarations(type(self))
        }
        return type(self)(**values)

    def items(self) -> Iterator[tuple[Declaration, Any]]:
        """Each declaration with its value here."""
        for declared in declarations(type(self)):
            yield declared, getattr(self, declared.name)


C = TypeVar("C", bound=Counts)


def add_up(counts: Sequence[C]) -> C:
    """The sum of several processes' counts (at least one)."""
    return functools.reduce(operator.add, counts)


class Tally(Generic[C]):
    """The live values of one :class:`Counts` class, changed under one lock.

    Code that counts names the counter: ``tally.add("joins")``. The name is checked, so that a
    counter that is not declared fails at once in the tests rather than count nothing.
    """

    def __init__(self, counts_type: type[C]) -> None:
        self._type = counts_type
        self.lock = threading.Lock()
        self.values: dict[str, Any] = {
            declared.name: declared.zero
            for declared in declarations(counts_type)
            if declared.kind in (Kind.TOTAL, Kind.LEVEL, Kind.BY_REASON)
        }
        """Guarded by :attr:`lock`; hot paths may change several at once under it."""

    def add(self, name: str, amount: int = 1) -> None:
        with self.lock:
            self.values[name] += amount

    def add_reason(self, name: str, reason: str, amount: int = 1) -> None:
        with self.lock:
            by_reason = self.values[name]
            by_reason[reason] = by_reason.get(reason, 0) + amount

    def snapshot(self, **now: Any) -> C:
        """The counts now; ``now`` gives the values read elsewhere (levels, flags)."""
        with self.lock:
            values = self._copy()
        values.update(now)
        return self._type(**values)

    def _copy(self) -> dict[str, Any]:
        """The values, copied under the lock."""
        return {
            name: dict(value) if isinstance(value, dict) else value
            for name, value in self.values.items()
        }


# What a server counts. Every datagram read is counted once as received and ends in exactly one
# of handled or a drop reason, so that received == handled + dropped + queued at every moment.


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


LATENCY_BOUNDS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
"""Upper bounds of the handler-latency histogram's buckets, in seconds (one more for +Inf)."""


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


def latency_bucket(latency_s: float) -> int:
    return bisect.bisect_left(LATENCY_BOUNDS_S, latency_s)


LOSS_RUN_CAP = 32
"""Loss runs are counted by length up to this many messages; a longer run counts as this long,
so that a sender's histogram stays a fixed, small size."""


def _elementwise(a: tuple[int, ...], b: tuple[int, ...], sign: int) -> tuple[int, ...]:
    length = max(len(a), len(b))
    padded_a, padded_b = a + (0,) * (length - len(a)), b + (0,) * (length - len(b))
    counts = [x + sign * y for x, y in zip(padded_a, padded_b, strict=True)]
    while counts and counts[-1] == 0:
        counts.pop()
    return tuple(counts)


@dataclass(frozen=True, slots=True)
class LossRuns:
    """Runs of consecutive counters a sender skipped, by length: ``counts[n - 1]`` runs of
    ``n`` messages, the last bucket holding every run of :data:`LOSS_RUN_CAP` or more.

    A run is counted when a later counter reveals it; a reordered message that fills it
    afterwards does not uncount it (``lost`` falls, the run stays). Independent loss gives
    mostly runs of 1; Gilbert-Elliott bursts give longer ones.
    """

    counts: tuple[int, ...] = ()
    """Trailing zeros left out, so that the many senders that lose nothing carry ``()``."""

    @classmethod
    def of(cls, counts: Sequence[int]) -> LossRuns:
        return cls(_elementwise(tuple(counts), (), 1))

    def __add__(self, other: LossRuns) -> LossRuns:
        return LossRuns(_elementwise(self.counts, other.counts, 1))

    def __sub__(self, other: LossRuns) -> LossRuns:
        """What was added since ``other`` (an earlier reading of the same histogram)."""
        return LossRuns(_elementwise(self.counts, other.counts, -1))

    def by_length(self) -> dict[int, int]:
        """``{length: runs}`` for the lengths that occurred."""
        return {length: count for length, count in enumerate(self.counts, 1) if count}


@dataclass(frozen=True, slots=True)
class SenderStats:
    """One sender's delivery figures, over all its sessions: a row of the sender table."""

    ip: str
    port: int
    username: str
    received: int
    highest_counter: int
    lost: int
    """Counters skipped and not (yet) arrived."""
    duplicates: int
    reordered: int
    late: int
    restarts: int
    jitter_s: float
    """Smoothed deviation of arrival gaps from the sender's mean interval (RFC 3550 style)."""
    last_heard_s: float
    """When the sender's latest new counter arrived, on the clock of ``record``'s ``arrival``
    (the server passes ``time.time()``, so that processes sharing a port agree)."""
    loss_runs: LossRuns = LossRuns()
    """The runs of counters it skipped, by length, over all its sessions."""

    @property
    def loss_ratio(self) -> float:
        """Lost over expected, where expected is every counter the sessions spanned."""
        expected = self.received - self.duplicates + self.lost
        return self.lost / expected if expected > 0 else 0.0


@dataclass(frozen=True, slots=True)
class SenderSeries:
    """One per-sender figure as a time series: in /metrics (one series per sender, bounded)
    and in a recorded run's intervals."""

    name: str
    """The :class:`SenderStats` field, and its key in a record."""
    help: str
    unit: str
    kind: Kind
    """:attr:`Kind.TOTAL` (a Prometheus counter) or :attr:`Kind.LEVEL` (a gauge)."""
    changes: bool = True
    """In an interval, the change over it (so that intervals add up to the run); else the
    value at its end (jitter)."""
    metric: str = ""
    """Its Prometheus name after ``udpchat_sender_`` (default: :attr:`name`)."""


SENDER_SERIES = (
    SenderSeries(
        "received", "Messages from the sender in the seed's format, duplicates included.",
        "messages", Kind.TOTAL,
    ),
    SenderSeries(
        "lost", "Counters the sender skipped that have not arrived (yet).", "messages", Kind.LEVEL
    ),
    SenderSeries("duplicates", "Messages whose counter had arrived already.", "messages",
                 Kind.TOTAL),
    SenderSeries("reordered", "Messages that filled a gap a few places back.", "messages",
                 Kind.TOTAL),
    SenderSeries("late", "Messages that filled a gap further back.", "messages", Kind.TOTAL),
    SenderSeries(
        "jitter_s", "Smoothed deviation of arrival gaps from the sender's mean interval "
        "(RFC 3550 style).", "seconds", Kind.LEVEL, changes=False, metric="jitter_seconds",
    ),
)  # fmt: skip
"""The per-sender figures shown as time series, declared once for /metrics and records."""


@dataclass(frozen=True, slots=True)
class DeliveryTotals(Counts):
    """Delivery figures summed over every sender, evicted ones included."""

    senders: int = level("Senders tracked now.", unit="senders", brief=Brief.NONZERO)
    lost: int = level(
        "Counters skipped by senders and not arrived (yet); falls when late ones arrive.",
        unit="messages",
        metric="messages_lost",
        brief=Brief.ALWAYS,
    )
    duplicates: int = total(
        "Messages whose counter had arrived already.", unit="messages", brief=Brief.ALWAYS
    )
    reordered: int = total(
        "Messages that filled a gap a few places back.", unit="messages", brief=Brief.ALWAYS
    )
    late: int = total(
        "Messages that filled a gap further back.", unit="messages", brief=Brief.NONZERO
    )
    restarts: int = total(
        "Senders whose counter went back to 1.", unit="senders", brief=Brief.NONZERO
    )
    evicted: int = total(
        "Senders forgotten to bound the table, the least active first (their figures stay in "
        "these totals).",
        unit="senders",
        key="senders_evicted",
        metric="senders_evicted",
        brief=Brief.NONZERO,
    )
    evicted_lost: int = total(
        "Messages lost by senders that were evicted since: part of lost, no longer in any row.",
        unit="messages",
    )
    gaps_given_up: int = total(
        "Gaps closed to bound a sender's state: their messages stay lost, a late one counts "
        "as late.",
        unit="gaps",
    )
    loss_runs: LossRuns = part(
        default_factory=LossRuns,
        help=f"Runs of consecutive counters skipped, by length in messages (the last, "
        f"{LOSS_RUN_CAP}, also counts longer runs), over every sender, evicted ones included.",
        unit="runs",
        label="length",
    )


@dataclass(frozen=True, slots=True)
class RelayStats(Counts):
    """The room's counters at one moment: what it admitted, refused, relayed and sent."""

    text_prefix: ClassVar[str] = "relay"
    metric_prefix: ClassVar[str] = "udpchat_relay_"

    members: int = level("Members in the relay room.", unit="members", brief=Brief.ALWAYS)
    joins: int = total(
        "Addresses admitted to the room with a valid cookie (a rejoin counts again).",
        unit="joins",
        brief=Brief.ALWAYS,
    )
    refused_full: int = total(
        "Joins refused because the room was full.", unit="joins", brief=Brief.NONZERO
    )
    ignored_joins: int = total(
        "Cookie requests smaller than the cookie, ignored: answering would amplify.",
        unit="requests",
        brief=Brief.NONZERO,
    )
    expired: int = total(
        "Members that left the room by silence.", unit="members", brief=Brief.NONZERO
    )
    relayed_datagrams: int = total(
        "Datagrams sent to other members (one message to three members counts three).",
        unit="datagrams",
        brief=Brief.NONZERO,
    )
    relayed_bytes: int = total("Bytes relayed to members.", unit="bytes")
    bytes_in: int = total("Bytes the relay received.", unit="bytes")
    bytes_out: int = total(
        "Bytes the relay sent: relayed texts and handshake answers.", unit="bytes"
    )
    send_failures: int = total(
        "Datagrams the relay could not send (socket buffer full, unreachable).",
        unit="datagrams",
        brief=Brief.NONZERO,
    )
    not_relayed: int = total(
        "Texts not relayed because they grew in decoding past the header bound.",
        unit="messages",
        brief=Brief.NONZERO,
    )
    confirmations: int = total(
        "/ok answers to members' texts the room relayed (a chat client shows a line as sent "
        "only then).",
        unit="datagrams",
    )
    over_budget: int = total(
        "Members' texts not relayed: the room was over --relay-budget datagrams a second to "
        "its members (texts from the bus shed for it are counted under nats dropped).",
        unit="messages",
        brief=Brief.NONZERO,
    )
    over_rate: int = total(
        "Members' texts not relayed: their member was over --relay-rate texts a second.",
        unit="messages",
        brief=Brief.NONZERO,
    )
    malformed_joins: int = total(
        "Joins whose argument was neither a cookie nor a request's padding, refused.",
        unit="datagrams",
        brief=Brief.NONZERO,
    )
    who_pages: int = total(
        "Pages of the member list sent to members that asked (/who), each no larger than "
        "its request.",
        unit="datagrams",
    )
    who_refused: Mapping[str, int] = by_reason(
        "Members' /who not answered, by reason: over_rate (the member's --relay-rate), "
        "too_small (smaller than the answer may be: it would amplify), no_such_page.",
        unit="requests",
        label="reason",
        brief=Brief.NONZERO,
    )
    keepalives: int = total(
        "Keepalives from members, with their own cookie: each kept a member in the room.",
        unit="datagrams",
    )
    leaves: int = total(
        "Members that left with /leave and the cookie they joined with.", unit="members"
    )
    commands_refused: Mapping[str, int] = by_reason(
        "Members' room words not taken, by reason: bad_cookie (a /keepalive, /who or /leave "
        "from a member's address without the cookie it joined with: a forgery, not answered, "
        "so that it cannot put the member out), unknown (a /word the room does not know: "
        "never relayed as a text).",
        unit="datagrams",
        label="reason",
        brief=Brief.NONZERO,
    )
    expired_notices: int = total(
        "/expired answers to a keepalive or text from an address that is not a member.",
        unit="datagrams",
    )
    unanswered_non_members: int = total(
        "Datagrams from non-members smaller than /expired, unanswered: answering would amplify.",
        unit="datagrams",
    )
    unanswered: Mapping[str, int] = by_reason(
        "Datagrams the relay did not answer, lest it loop or flood, by reason: answer (one of "
        "the relay's own answers, /expired...), own_address (claiming the relay's own address), "
        "source_rate (over --answer-rate for that address), total_rate (over "
        "--answer-rate-total for all non-members).",
        unit="datagrams",
        label="reason",
    )
    sources_evicted: int = total(
        "Addresses the per-address answer limit forgot to bound its table (--max-sources).",
        unit="addresses",
    )


@dataclass(frozen=True, slots=True)
class BusStats(Counts):
    """The room's NATS counters at one moment."""

    text_prefix: ClassVar[str] = "nats"
    metric_prefix: ClassVar[str] = "udpchat_nats_"

    connected: bool = flag(
        "1 while connected to NATS (with several processes: every one).", brief=Brief.ALWAYS
    )
    published: int = total(
        "Members' messages handed to NATS, buffered ones included.",
        unit="messages",
        brief=Brief.NONZERO,
    )
    published_while_disconnected: int = total(
        "Messages buffered while NATS was unreachable.", unit="messages", brief=Brief.NONZERO
    )
    publish_failures: Mapping[str, int] = by_reason(
        "Members' messages that could not be published, by reason.",
        unit="messages",
        label="reason",
        brief=Brief.NONZERO,
    )
    received: int = total(
        "Messages from the room's other servers relayed to this server's members.",
        unit="messages",
        brief=Brief.NONZERO,
    )
    dropped: Mapping[str, int] = by_reason(
        "Messages from NATS refused, by reason: malformed, oversize, over_budget (the room was "
        "over --relay-budget datagrams a second to its members), slow_consumer (nats-py's "
        "subscription limit), delivery_backlog_full (the delivery thread fell behind), "
        "deliver_error.",
        unit="messages",
        label="reason",
        brief=Brief.NONZERO,
    )
    lost_in_transit: int = total(
        "Messages other servers published that never arrived here: a jump in their sequence "
        "(NATS dropped them, e.g. for a slow consumer, or they could not be published).",
        unit="messages",
        brief=Brief.NONZERO,
    )
    own_echoes: int = total("This server's own messages back from NATS, ignored.", unit="messages")
    pauses: int = total(
        "Times the room's budget was spent and this server stopped taking the room's messages "
        "for a tenth of a second: NATS dropped them for it meanwhile (counted as "
        'dropped{reason="over_budget"} once the next message of each server shows the gap).',
        unit="events",
    )
    refused_insecure: int = total(
        "Connections to a tls:// server given up before anything was sent: it offered no TLS.",
        unit="connections",
        brief=Brief.NONZERO,
    )
    disconnects: int = total(
        "Times the connection to NATS was lost.", unit="events", brief=Brief.NONZERO
    )
    reconnects: int = total("Times the connection to NATS came back.", unit="events")


@dataclass(frozen=True, slots=True)
class AdmissionStats(Counts):
    """The allow-list's and rate limiter's own tables, bounded by ``max_sources``."""

    text_prefix: ClassVar[str] = "admission"
    metric_prefix: ClassVar[str] = "udpchat_admission_"

    sources: int = level("Source addresses the rate limiter keeps a bucket for.", unit="sources")
    sources_evicted: int = total(
        "Rate-limiter buckets dropped to bound the table; the source starts again full.",
        unit="sources",
        brief=Brief.NONZERO,
    )
    allow_cache_resets: int = total(
        "Times the allow-list's cache of decisions was full and started over.", unit="events"
    )


@dataclass(frozen=True, slots=True)
class EndpointStats(Counts):
    """What the metrics endpoint refused, so that its own bounds are visible."""

    text_prefix: ClassVar[str] = "metrics"
    metric_prefix: ClassVar[str] = "udpchat_metrics_"

    connections_dropped: Mapping[str, int] = by_reason(
        "Scrape connections closed without an answer, by reason: evicted (to make room under "
        "the cap), timed_out, incomplete (closed before its request was whole).",
        unit="connections",
        label="reason",
        brief=Brief.NONZERO,
    )
    bad_requests: int = total(
        "Malformed requests answered 400 or 431.", unit="requests", brief=Brief.NONZERO
    )


@dataclass(frozen=True, slots=True)
class EchoStats(Counts):
    """What ``serve --echo`` answered, and what it did not: each answer is the datagram itself,
    never larger, within ``--echo-rate`` a second per source address."""

    text_prefix: ClassVar[str] = "echo"
    metric_prefix: ClassVar[str] = "udpchat_echo_"

    echoed: int = total(
        "Datagrams answered with their own bytes.", unit="datagrams", brief=Brief.ALWAYS
    )
    echoed_bytes: int = total("Bytes sent back: at most the bytes answered.", unit="bytes")
    over_rate: int = total(
        "Datagrams not answered: their source address was over --echo-rate.",
        unit="datagrams",
        brief=Brief.NONZERO,
    )
    repeated: int = total(
        "Messages not answered: their sender's counter was answered already (or is further "
        "back than the window), as an answer coming back would be: no answer is answered.",
        unit="datagrams",
        brief=Brief.NONZERO,
    )
    not_seed: int = total(
        "Datagrams not answered: not a message in the seed's format, so nothing tells them "
        "from an answer.",
        unit="datagrams",
        brief=Brief.NONZERO,
    )
    send_failures: int = total(
        "Answers the OS would not send (socket buffer full, unreachable).",
        unit="datagrams",
        brief=Brief.NONZERO,
    )
    sources_evicted: int = total(
        "Per-source rate buckets dropped to bound the table; the source starts again full.",
        unit="sources",
    )
    answered_evicted: int = total(
        "Senders whose answered counters were forgotten to bound that table (--max-sources).",
        unit="senders",
    )


@dataclass(frozen=True, slots=True)
class ClientStats(Counts):
    """What ``send`` or ``chat`` did, for its ``--record``."""

    text_prefix: ClassVar[str] = "client"
    metric_prefix: ClassVar[str] = "udpchat_client_"

    sent: int = total("Datagrams sent: messages, and the room's words.", unit="datagrams")
    send_errors: int = total(
        "Sends the OS reported refused (nothing listens there: ICMP port unreachable).",
        unit="datagrams",
    )
    received: int = total(
        "Datagrams from the server: echoes, others' texts, the room's answers.", unit="datagrams"
    )
    replies: int = total(
        "Echoes that measured a round trip (send --rtt): one per message answered.",
        unit="datagrams",
    )
    duplicate_replies: int = total(
        "Echoes of a message already answered (the link duplicated one).", unit="datagrams"
    )
    unmatched_replies: int = total(
        "Echoes of no message remembered: too old, or not this sender's.", unit="datagrams"
    )
    messages: int = total(
        "The seed's messages sent (send): what the person asked for.",
        unit="messages",
        brief=Brief.NONZERO,
    )
    typed: int = total(
        "Lines typed for the room (chat), commands (/help) apart.",
        unit="lines",
        brief=Brief.NONZERO,
    )
    confirmed: int = total(
        "Lines the room confirmed (chat).", unit="messages", key="delivered", brief=Brief.NONZERO
    )
    not_delivered: int = total(
        "Lines the room did not confirm in time, or typed while out of the room (chat).",
        unit="messages",
        brief=Brief.NONZERO,
    )
    resent: int = total(
        "Lines not delivered sent again after a rejoin (chat: an empty line or /resend).",
        unit="lines",
        brief=Brief.NONZERO,
    )
    forgotten: int = total(
        "Lines not delivered that were not kept to send again: more than chat keeps.",
        unit="lines",
        brief=Brief.NONZERO,
    )
    hidden_repeats: int = total(
        "Other members' lines sent again after their rejoin that had been shown already, not "
        "shown twice (chat).",
        unit="lines",
    )


@dataclass(frozen=True, slots=True)
class RecordStats(Counts):
    """What a recording (``--record``) wrote, and what it could not."""

    text_prefix: ClassVar[str] = "record"
    metric_prefix: ClassVar[str] = "udpchat_record_"

    recording: bool = flag(
        "1 while the record file is being written; 0 once it stopped (its bound reached, a "
        "write failed, or the run ended)."
    )
    records: int = total("Records written.", unit="records", metric="records_written")
    written_bytes: int = total("Bytes written to the record file.", unit="bytes")
    not_written: Mapping[str, int] = by_reason(
        "Records not written, by reason: queue_full (the writer fell behind), max_bytes (the "
        "file reached its bound), write_failed (the disk refused: full, gone; recording stops).",
        unit="records",
        label="reason",
        brief=Brief.NONZERO,
    )


@dataclass(frozen=True, slots=True)
class CaptureStats(RecordStats):
    """What a capture (``impair --pcap``) wrote, and what it could not: counted as a record
    file's, under its own name."""

    text_prefix: ClassVar[str] = "pcap"
    metric_prefix: ClassVar[str] = "udpchat_pcap_"


@dataclass(frozen=True, slots=True)
class WebStats(Counts):
    """The browser view's own bounds and refusals (``--web``), so that what it turns away and
    whom it drops are visible."""

    text_prefix: ClassVar[str] = "web"
    metric_prefix: ClassVar[str] = "udpchat_web_"

    clients: int = level(
        "Browser pages connected now (WebSockets).", unit="clients", brief=Brief.ALWAYS
    )
    members: int = level(
        "Browser pages that joined the room now, each a member with its own UDP socket.",
        unit="members",
        brief=Brief.NONZERO,
    )
    refused: Mapping[str, int] = by_reason(
        "Requests refused, by reason: token (missing or wrong), host (a loopback view asked "
        "under a foreign name: DNS rebinding), origin (a WebSocket or change from another "
        "site), full (--web-max-clients pages connected already), bad_request (not HTTP that "
        "the server could parse).",
        unit="requests",
        label="reason",
        metric="requests_refused",
        brief=Brief.NONZERO,
    )
    slow_clients_dropped: int = total(
        "Pages disconnected because what waited for them passed the send buffer bound.",
        unit="clients",
        brief=Brief.NONZERO,
    )
    posts: int = total(
        "Lines posted to the room from browser pages.", unit="messages", brief=Brief.NONZERO
    )
    posts_refused: Mapping[str, int] = by_reason(
        "Page requests refused, by reason: malformed, invalid_username, too_long, command "
        "(a /word, never sent as a text), not_in_room, join_failed; bad_change (impair's PUT "
        "/api/impairment).",
        unit="requests",
        label="reason",
        brief=Brief.NONZERO,
    )


@dataclass(frozen=True, slots=True)
class StatsSnapshot(Counts):
    """A server's counters at one moment, safe to keep, compare and add up across processes.

    Taken under one lock, so ``received == handled + dropped_total + queue_depth`` holds in
    every snapshot, from any thread.
    """

    received: int = total(
        "Datagrams read from the socket.",
        unit="datagrams",
        metric="datagrams_received",
        brief=Brief.ALWAYS,
    )
    handled: int = total(
        "Messages handled: their handler returned and their output was written.",
        unit="messages",
        metric="messages_handled",
        brief=Brief.ALWAYS,
    )
    dropped: Mapping[str, int] = by_reason(
        "Datagrams read but not handled, by reason.",
        unit="datagrams",
        label="reason",
        metric="datagrams_dropped",
        brief=Brief.NONZERO,
    )
    handler_errors: int = total(
        "Handled messages whose handler raised.", unit="messages", brief=Brief.NONZERO
    )
    problems: Mapping[str, int] = by_reason(
        "Handled messages that were not clean seed text, by problem.",
        unit="messages",
        label="problem",
        metric="messages_malformed",
        brief=Brief.NONZERO,
    )
    texts: int = total(
        "Handled messages that were chat text ('name: anything', as 'chat' sends), not the "
        "seed's numbered format: counted, not a problem.",
        unit="messages",
        brief=Brief.NONZERO,
    )
    commands: int = total(
        "Handled messages that were the room's words (/join, /keepalive, /leave, /who): "
        "answered by a relay, not printed by it.",
        unit="messages",
        brief=Brief.NONZERO,
    )
    queue_depth: int = level(
        "Datagrams taken in and not yet handled or dropped: waiting or in a worker.",
        unit="datagrams",
        key="queued",
        brief=Brief.NONZERO,
    )
    kernel_drops: int | None = unknown_ok(
        "Datagrams the kernel dropped before udpchat could read them (receive buffer full); "
        "unknown where the OS cannot say.",
        unit="datagrams",
        brief=Brief.ALWAYS,
    )
    batches: int = total(
        "Batches of datagrams handed to the worker pool (what arrives before a batch is taken"
        " joins it).",
        unit="batches",
    )
    jobs_started: int = total(
        "Pool jobs started: a second one starts only when the running one stalls.",
        unit="jobs",
        metric="pool_jobs_started",
    )
    stop_reads_capped: int = total(
        "Stops whose last read of the socket hit its cap with datagrams still arriving: what "
        "the socket held after it was neither received nor a kernel drop.",
        unit="stops",
    )
    delivery: DeliveryTotals = part(default_factory=DeliveryTotals)
    """Loss, duplicates and reordering read from the senders' counters, over all senders."""
    senders: tuple[SenderStats, ...] = part(default=())
    """Per-sender figures; empty when the snapshot was taken without them."""
    members: tuple[tuple[str, int], ...] = part(default=())
    """The room's members now (address and port), for a server with ``relay=True``."""
    latency: LatencyHistogram = part(default_factory=LatencyHistogram)
    relay: RelayStats | None = part()
    """The chat room's counters, for a server with ``relay=True``; else None."""
    bus: BusStats | None = part()
    """The room's NATS counters, for a relay attached to NATS; else None."""
    admission: AdmissionStats | None = part()
    """The allow-list's and rate limiter's tables, where the config asks for either."""
    endpoint: EndpointStats | None = part()
    """The metrics endpoint's refusals, where the config asks for one."""
    record: RecordStats | None = part()
    """What ``--record`` wrote, where the config asks for it."""
    echo: EchoStats | None = part()
    """What ``--echo`` answered, where the config asks for it."""
    web: WebStats | None = part()
    """The browser view's refusals and drops, where the config asks for one."""

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def groups(self) -> Iterator[Counts]:
        """The groups this snapshot carries, delivery first."""
        for _, value in self.items():
            if isinstance(value, Counts):
                yield value


# What ``udpchat impair`` counts, per direction: ``up`` carries the clients' datagrams to the
# server, ``down`` the server's answers back. In each direction every datagram taken in, and
# every copy made of one, is forwarded, dropped or still queued:
# received + duplicated == forwarded + dropped + queued.

DIRECTION = "direction"
"""The label of the proxy's per-direction counters."""


@dataclass(frozen=True, slots=True)
class ImpairStats(Counts):
    """What the impairment proxy did to the datagrams it carried, by direction."""

    text_prefix: ClassVar[str] = "impair"
    metric_prefix: ClassVar[str] = "udpchat_impair_"

    received: Mapping[str, int] = by_reason(
        "Datagrams taken onto the link: from a client in the table (up), from the server (down).",
        unit="datagrams",
        label=DIRECTION,
        metric="datagrams_received",
        brief=Brief.ALWAYS,
    )
    forwarded: Mapping[str, int] = by_reason(
        "Datagrams sent on, copies included.",
        unit="datagrams",
        label=DIRECTION,
        metric="datagrams_forwarded",
        brief=Brief.ALWAYS,
    )
    dropped: Mapping[str, int] = by_reason(
        "Datagrams not sent on, for any reason: the sum of the four below.",
        unit="datagrams",
        label=DIRECTION,
        metric="datagrams_dropped",
        brief=Brief.ALWAYS,
    )
    dropped_loss: Mapping[str, int] = by_reason(
        "Datagrams dropped by the random or burst loss.",
        unit="datagrams",
        label=DIRECTION,
        metric="datagrams_lost",
        brief=Brief.NONZERO,
    )
    dropped_rate: Mapping[str, int] = by_reason(
        "Datagrams tail-dropped because the rate limit's queue was full.",
        unit="datagrams",
        label=DIRECTION,
        metric="datagrams_rate_dropped",
        brief=Brief.NONZERO,
    )
    dropped_full: Mapping[str, int] = by_reason(
        "Datagrams dropped because the link held its bound of queued bytes already.",
        unit="datagrams",
        label=DIRECTION,
        metric="datagrams_queue_full",
        brief=Brief.NONZERO,
    )
    send_failures: Mapping[str, int] = by_reason(
        "Datagrams the OS would not send (socket buffer full, nothing listening, client gone).",
        unit="datagrams",
        label=DIRECTION,
        metric="datagrams_send_failed",
        brief=Brief.NONZERO,
    )
    kernel_drops: Mapping[str, int] = by_reason(
        "Datagrams the kernel dropped before the proxy could read them (its receive buffer "
        "full): up, at the socket the clients send to; down, at the clients' sockets towards "
        "the server. Never taken onto the link, so in no other count here.",
        unit="datagrams",
        label=DIRECTION,
        metric="datagrams_kernel_dropped",
        brief=Brief.ALWAYS,
    )
    duplicated: Mapping[str, int] = by_reason(
        "Datagrams sent twice (each counts once here and twice in forwarded).",
        unit="datagrams",
        label=DIRECTION,
        metric="datagrams_duplicated",
        brief=Brief.NONZERO,
    )
    reordered: Mapping[str, int] = by_reason(
        "Datagrams sent after at least one later datagram of the same client.",
        unit="datagrams",
        label=DIRECTION,
        metric="datagrams_reordered",
        brief=Brief.NONZERO,
    )
    corrupted: Mapping[str, int] = by_reason(
        "Datagrams sent with one byte flipped.",
        unit="datagrams",
        label=DIRECTION,
        metric="datagrams_corrupted",
        brief=Brief.NONZERO,
    )
    queued: int = level(
        "Datagrams held now, both directions: waiting for their delay, the rate limit or the "
        "datagrams that are to overtake them.",
        unit="datagrams",
        metric="datagrams_queued",
        brief=Brief.NONZERO,
    )
    jitter_up_us: int = level(
        "RFC 3550 jitter of the up link's transit (rate limit out to sent, as sent): what it "
        "applied, as a receiver would measure it.",
        unit="microseconds",
        brief=Brief.NONZERO,
    )
    jitter_down_us: int = level(
        "RFC 3550 jitter of the down link's transit, as for jitter_up_us.",
        unit="microseconds",
        brief=Brief.NONZERO,
    )
    clients: int = level(
        "Clients with a socket of their own towards the server now.", unit="clients"
    )
    clients_refused: int = total(
        "Datagrams from new clients refused because the client table was full.",
        unit="datagrams",
        brief=Brief.NONZERO,
    )
    clients_expired: int = total("Clients forgotten after their idle timeout.", unit="clients")
    endpoint: EndpointStats | None = part()
    """The metrics endpoint's refusals, where the config asks for one."""
    record: RecordStats | None = part()
    """What ``--record`` wrote, where asked."""
    capture: CaptureStats | None = part()
    """What ``--pcap`` wrote, where asked."""
    web: WebStats | None = part()
    """The web view's refusals and drops (``impair --web``), where asked."""


COUNT_GROUPS: tuple[type[Counts], ...] = (
    StatsSnapshot,
    DeliveryTotals,
    RelayStats,
    BusStats,
    AdmissionStats,
    EndpointStats,
    RecordStats,
    EchoStats,
    WebStats,
    ImpairStats,
)
"""Every group of declared counters: a server's, and the impairment proxy's."""


class ServerTally(Tally[StatsSnapshot]):
    """The server's live counts: one hand-off and one finish per batch on the hot path, one
    call per datagram refused before it was queued, each under the one lock, so that any
    snapshot from any thread has ``received == handled + dropped + queued`` exactly."""

    def __init__(self) -> None:
        super().__init__(StatsSnapshot)
        self.values["dropped"] = {reason.value: 0 for reason in DropReason}
        self._latency_counts = [0] * (len(LATENCY_BOUNDS_S) + 1)
        self._latency_sum_s = 0.0

    @property
    def queued(self) -> int:
        return int(self.values["queue_depth"])

    def take_in(self, received: int, queued: int, new_batch: bool) -> None:
        """``received`` datagrams read as one batch, ``queued`` of them queued (as a batch of
        their own, or joining one not yet taken) and the rest dropped as ``queue_full``; on the
        event-loop thread."""
        values = self.values
        with self.lock:
            values["received"] += received
            values["queue_depth"] += queued
            values["dropped"][DropReason.QUEUE_FULL.value] += received - queued
            if new_batch:
                values["batches"] += 1

    def refuse(self, reason: DropReason) -> None:
        """One datagram read and dropped before it was queued."""
        values = self.values
        with self.lock:
            values["received"] += 1
            values["dropped"][reason.value] += 1

    def add_handled(
        self,
        handled: int,
        handler_errors: int,
        problems: Mapping[str, int],
        latency_s: float,
        kinds: Mapping[str, int] | None = None,
    ) -> None:
        """Merge one handled batch, whose messages all took ``latency_s``; from pool threads.
        ``kinds``: texts that were neither seed text nor a problem, by the counter that counts
        them (``texts``, ``commands``)."""
        bucket = latency_bucket(latency_s)
        values = self.values
        with self.lock:
            values["queue_depth"] -= handled
            values["handled"] += handled
            values["handler_errors"] += handler_errors
            if problems:
                counted = values["problems"]
                for name, count in problems.items():
                    counted[name] = counted.get(name, 0) + count
            for name, count in (kinds or {}).items():
                values[name] += count
            self._latency_counts[bucket] += handled
            self._latency_sum_s += latency_s * handled

    def add_dropped(self, reason: DropReason, count: int) -> None:
        """``count`` queued datagrams dropped (output failed, shut down before a worker took
        them, or an internal error)."""
        values = self.values
        with self.lock:
            values["queue_depth"] -= count
            values["dropped"][reason.value] += count

    def _copy(self) -> dict[str, Any]:
        values = super()._copy()
        values["latency"] = LatencyHistogram(tuple(self._latency_counts), self._latency_sum_s)
        return values
