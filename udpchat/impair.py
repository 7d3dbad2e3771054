"""``udpchat impair``: a UDP proxy that puts a lossy, slow, jittery, reordering link between the
clients and a server, so that the delivery accounting has something to count on loopback.

Each direction is one :class:`Link`: ``up`` carries every client's datagrams to the server,
``down`` the server's answers back. A datagram meets, in this order: the loss (independent, or
in bursts by the simple Gilbert model), the rate limit's bounded queue (tail drop), corruption
(one byte flipped), duplication (a second copy right behind it), reordering (held back until
``reorder_distance`` later datagrams of the same client have gone ahead) and the delay with its
jitter. Jitter never reorders: a datagram whose delay would let it overtake the one before it
leaves right behind it instead, so that every reordering is one that was asked for, and counted.

:class:`Link` is the pure decision logic: datagrams and the times they arrive in, datagrams and
the times they leave out; no I/O. Its random draws depend only on the seed and the order of the
datagrams, never on the clock: a datagram's fate (lost, corrupted, duplicated, reordered, its
delay) is the same in every run with the same seed, and only the rate limit and the memory
bound, which depend on time, may drop differently. :class:`ImpairProxy` is the I/O around two
links: it reads the clients' datagrams, opens a socket of its own towards the server for each
client (so that the server, and its relay's cookies, tell the clients apart), and sends what the
links let through when they say.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import math
import random
import re
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from udpchat.accounting import JITTER_GAIN, JITTER_MIN_SPACING_S
from udpchat.counters import DIRECTION, ImpairStats, Kind, declarations
from udpchat.logs import RateLimitedLog
from udpchat.report import Rate, impair_status
from udpchat.runtime import (
    LoopChoice,
    StartsAndStops,
    periodically,
    run_coroutine,
    stop_on_signals,
    tune_for_throughput,
)
from udpchat.server import MAX_UDP_PAYLOAD, start_metrics
from udpchat.settings import Bounds, ConfigError, check_bounds, setting
from udpchat.sockets import (
    ARRIVAL_ANCILLARY_BYTES,
    MAX_PORT,
    MAX_RCVBUF,
    arrival_time,
    bind_udp_socket,
    realtime_offset,
    stamp_arrivals,
)
from udpchat.wakeup import Wakeup

if TYPE_CHECKING:
    from udpchat.metrics import MetricsServer

logger = logging.getLogger("udpchat.impair")
status_logger = logging.getLogger("udpchat.status")

DEFAULT_LISTEN = ("127.0.0.1", 5003)
DEFAULT_TARGET = ("127.0.0.1", 5002)
DEFAULT_MAX_CLIENTS = 256
"""Clients at once, each with a socket (a file descriptor) of its own towards the server."""
MAX_CLIENTS = 65536
DEFAULT_IDLE_TIMEOUT_S = 60.0
"""Silence after which a client's socket is closed: six of the chat client's keepalives."""
DEFAULT_MAX_QUEUE_BYTES = 8 * 2**20
"""Bytes a link holds at most (delay line, rate queue and held datagrams), per direction."""
QUEUED_DATAGRAM_OVERHEAD_BYTES = 256
"""Beside its payload, what a datagram the link holds costs: its bytes object's header (33
bytes) and its entries (measured with tracemalloc: 128 bytes delayed or rate-limited, 184 held
for reordering; rounded up)."""
MIN_QUEUE_BYTES = MAX_UDP_PAYLOAD + QUEUED_DATAGRAM_OVERHEAD_BYTES
"""Room for one datagram of any size, at least."""
MAX_QUEUE_BYTES = 2**32
DEFAULT_RATE_QUEUE = 1000
"""Datagrams waiting at the rate limit, at most; beyond it the tail is dropped."""
MAX_RATE_QUEUE = 1_000_000
DEFAULT_REORDER_HOLD_S = 1.0
"""How long a datagram picked for reordering waits for the ones that are to overtake it; it
leaves then even if fewer came (and counts as reordered only if one did)."""
MAX_DELAY_S = 60.0
MAX_RELEASED_WAITING = 64
"""Datagrams released early from reordering that may linger in the deadline queue, beyond as
many as are still held, before it is compacted."""
MAX_REORDER_DISTANCE = 1000
DEFAULT_DRAIN_TIMEOUT_S = 2.0
"""Seconds to send what the links still hold when stopping; the rest stays counted as queued."""
DEFAULT_RCVBUF = 4 * 2**20
READ_BATCH = 256
"""Datagrams read from one socket per wake-up, at most, so that neither direction starves."""
BASE_RSS_BYTES = 48 * 2**20
"""A proxy process at rest: the interpreter, uvloop, typer, rich (measured 39.6 MiB)."""
CLIENT_BYTES = 2048
"""What one client costs the process: its socket object, table entry and reader registration
(measured about 1 KB of Python heap with tracemalloc, beside the event loop's own handle)."""


class Direction(enum.Enum):
    UP = "up"
    """From the clients to the server."""
    DOWN = "down"
    """From the server back to the clients."""


DIRECTION_COUNTERS = tuple(
    declared.name
    for declared in declarations(ImpairStats)
    if declared.kind is Kind.BY_REASON and declared.label == DIRECTION
)
"""The counters each :class:`Link` keeps for its direction, as declared in ImpairStats."""


# Values as people write them: 10%, 20ms, 1000/s.

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_RATE_UNITS = {"": 1.0, "B": 1.0, "kB": 1e3, "MB": 1e6}


def parse_share(text: str) -> float:
    """``10%`` or ``0.1``: a probability, from 0 to 1."""
    found = re.fullmatch(_NUMBER + r"\s*(%?)", text.strip())
    if found is None:
        raise ValueError(f"write a share as 10% or 0.1, not {text!r}")
    value = float(found[1]) / (100 if found[2] else 1)
    if value > 1:
        raise ValueError(f"must be 0% to 100%, not {text!r}")
    return value


def parse_duration(text: str) -> float:
    """``20ms``, ``1.5s`` or ``500us``, in seconds: the unit is required."""
    found = re.fullmatch(_NUMBER + r"\s*(us|ms|s)", text.strip())
    if found is None:
        raise ValueError(f"write a duration as 20ms, 0.5s or 500us, not {text!r}")
    return float(found[1]) * _DURATION_UNITS[found[2]]


def parse_count(text: str) -> int:
    if not text.strip().isdigit():
        raise ValueError(f"must be a whole number, not {text!r}")
    return int(text)


def parse_burst(text: str) -> float:
    """A mean burst length in datagrams: ``4``."""
    found = re.fullmatch(_NUMBER, text.strip())
    if found is None:
        raise ValueError(f"write a mean burst length in datagrams, such as 4, not {text!r}")
    return float(found[1])


class RateUnit(enum.Enum):
    DATAGRAMS = "datagrams"
    BYTES = "bytes"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A link's speed: so many datagrams, or bytes, a second."""

    per_s: float
    unit: RateUnit = RateUnit.DATAGRAMS

    def __str__(self) -> str:
        return f"{self.per_s:g}{'B' if self.unit is RateUnit.BYTES else ''}/s"


def parse_rate(text: str) -> RateLimit:
    """``1000/s`` (datagrams) or ``64kB/s``, ``1MB/s``, ``500B/s`` (bytes; k and M are 1000s)."""
    found = re.fullmatch(_NUMBER + r"\s*(B|kB|MB)?/s", text.strip())
    if found is None:
        raise ValueError(f"write a rate as 1000/s (datagrams) or 64kB/s (bytes), not {text!r}")
    unit = RateUnit.BYTES if found[2] else RateUnit.DATAGRAMS
    return RateLimit(float(found[1]) * _RATE_UNITS[found[2] or ""], unit)


def split_host_port(text: str) -> tuple[str, int]:
    """``127.0.0.1:5003``, ``[::1]:5003`` or ``localhost:5003`` as (host, port)."""
    found = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", text.strip())
    if found is None:
        raise ValueError(f"write HOST:PORT, such as 127.0.0.1:5002 or [::1]:5002, not {text!r}")
    host = found[1] or found[3]
    port = int(found[2] or found[4])
    if not 0 <= port <= MAX_PORT:
        raise ValueError(f"the port must be 0 to {MAX_PORT}, not {port}")
    return host, port


def knob(
    default: Any,
    help: str,
    parse: Callable[[str], Any],
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Any:
    """An :class:`Impairment` field: its range, its help (the option's), and how it is written."""
    metadata = {"bounds": Bounds(minimum, maximum), "help": help, "parse": parse}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, slots=True)
class Impairment:
    """What one direction of the link does to datagrams; the default does nothing.

    Checked when built: a wrong value raises :class:`~udpchat.settings.ConfigError` (a
    ``ValueError``) naming the field.
    """

    loss: float = knob(0.0, "Share of datagrams lost (10% or 0.1).", parse_share, maximum=1)
    burst: float | None = knob(
        None,
        "Mean length of a run of losses, in datagrams: --loss then comes in bursts (simple "
        "Gilbert model: a lossless state and a state that loses every datagram).",
        parse_burst,
        minimum=1,
        maximum=1e6,
    )
    delay_s: float = knob(
        0.0, "Delay added to every datagram (20ms).", parse_duration, maximum=MAX_DELAY_S
    )
    jitter_s: float = knob(
        0.0,
        "Spread of the delay: uniform within --delay plus or minus this (5ms); never reorders.",
        parse_duration,
        maximum=MAX_DELAY_S,
    )
    reorder: float = knob(
        0.0,
        "Share of datagrams held back until --reorder-distance later datagrams of the same "
        "client have gone ahead.",
        parse_share,
        maximum=1,
    )
    reorder_distance: int = knob(
        1,
        "How many later datagrams of the same client overtake a reordered one.",
        parse_count,
        minimum=1,
        maximum=MAX_REORDER_DISTANCE,
    )
    reorder_hold_s: float = knob(
        DEFAULT_REORDER_HOLD_S,
        "How long a reordered datagram waits for those that are to overtake it, at most.",
        parse_duration,
        minimum=0.001,
        maximum=MAX_DELAY_S,
    )
    duplicate: float = knob(
        0.0, "Share of datagrams sent twice, the copy right behind.", parse_share, maximum=1
    )
    corrupt: float = knob(
        0.0, "Share of datagrams sent with one byte flipped.", parse_share, maximum=1
    )
    rate: RateLimit | None = knob(
        None,
        "Speed limit: 1000/s (datagrams) or 64kB/s (bytes); beyond it datagrams wait in a "
        "queue of --rate-queue, and the tail is dropped.",
        parse_rate,
    )
    rate_queue: int = knob(
        DEFAULT_RATE_QUEUE,
        "Datagrams waiting at the rate limit, at most.",
        parse_count,
        minimum=1,
        maximum=MAX_RATE_QUEUE,
    )

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.jitter_s > self.delay_s:
            raise ConfigError(
                "jitter_s",
                f"must be at most {{delay_s}} ({self.delay_s:g} s), not {self.jitter_s:g} s: "
                "a delay cannot be negative",
            )
        if self.burst is not None:
            if not 0 < self.loss < 1:
                raise ConfigError("burst", "needs {loss} above 0% and below 100%")
            if self.burst < self.loss / (1 - self.loss):
                raise ConfigError(
                    "burst",
                    f"must be at least {self.loss / (1 - self.loss):.3g} for a {{loss}} of "
                    f"{self.loss:.1%}, not {self.burst:g}",
                )
        if self.rate is not None and not (math.isfinite(self.rate.per_s) and self.rate.per_s > 0):
            raise ConfigError("rate", f"must be above 0/s, not {self.rate}")

    @property
    def burst_transitions(self) -> tuple[float, float] | None:
        """(p, r): the chances of entering and of leaving the losing state at each datagram,
        such that the share lost is ``loss`` and a run of losses lasts ``burst`` on average;
        None for independent losses."""
        if self.burst is None:
            return None
        leave = 1 / self.burst
        return leave * self.loss / (1 - self.loss), leave

    @property
    def active(self) -> bool:
        """Whether it does anything at all."""
        return self != Impairment()

    @property
    def delays(self) -> bool:
        """Whether datagrams wait a time counted from their arrival (``--delay``). The rate
        limit counts from the read instead: what was read late still leaves spaced."""
        return self.delay_s > 0

    @staticmethod
    def option(name: str) -> tuple[str, str, str, str | None]:
        """A field's option as the command line writes it: (``--reorder-distance``, its
        metavar, its help, its default as written, or None where the default is off)."""
        for each in fields(Impairment):
            if each.name == name:
                metavar, write = _WRITTEN[each.metadata["parse"]]
                default = write(each.default) if each.default else None
                return f"--{_written_name(name)}", metavar, str(each.metadata["help"]), default
        raise KeyError(name)


def _written_name(name: str) -> str:
    """``reorder_hold_s`` as the command line and the texts write it: ``reorder-hold``."""
    return name.removesuffix("_s").replace("_", "-")


IMPAIRMENT_FIELDS = tuple(each.name for each in fields(Impairment))
_WRITTEN: dict[Callable[[str], Any], tuple[str, Callable[[Any], str]]] = {
    parse_share: ("SHARE", lambda share: f"{share * 100:g}%"),
    parse_duration: ("TIME", lambda seconds: f"{seconds:g}s"),
    parse_count: ("N", str),
    parse_burst: ("LENGTH", lambda length: f"{length:g}"),
    parse_rate: ("RATE", str),
}
"""Each way of writing a value: its metavar, and a value written so that it parses back."""


def impairments(
    settings: Mapping[str, Sequence[str]],
) -> dict[Direction, Impairment]:
    """Each direction's :class:`Impairment` from values as written on the command line:
    ``{"loss": ["10%", "down:1%"]}`` is 10% up and 1% down. A value applies to both
    directions unless it starts with ``up:`` or ``down:``; a later value overrides an earlier
    one. Raises :class:`~udpchat.settings.ConfigError` naming the field."""
    values: dict[Direction, dict[str, Any]] = {direction: {} for direction in Direction}
    parsers = {each.name: each.metadata["parse"] for each in fields(Impairment)}
    for name, texts in settings.items():
        for text in texts:
            where, _, written = text.rpartition(":") if text[:1].isalpha() else ("", "", text)
            try:
                directions = _directions(where)
                value = parsers[name](written)
            except ValueError as error:
                raise ConfigError(name, str(error)) from None
            for direction in directions:
                values[direction][name] = value
    built = {}
    for direction, chosen in values.items():
        try:
            built[direction] = Impairment(**chosen)
        except ConfigError as error:
            if values[Direction.UP] == values[Direction.DOWN]:
                raise
            raise ConfigError(error.setting, f"{direction.value}: {error.problem}") from None
    return built


def _directions(prefix: str) -> tuple[Direction, ...]:
    if not prefix:
        return tuple(Direction)
    try:
        return (Direction(prefix),)
    except ValueError:
        raise ValueError(f"a direction is up: or down:, not {prefix}:") from None


T = TypeVar("T")


class _Held(Generic[T]):
    """A datagram held back for reordering, with the copy that travels with it."""

    __slots__ = ("copies", "data", "deadline", "due", "passes", "ready", "released", "tag")

    def __init__(
        self, data: bytes, tag: T, ready: float, due: float, deadline: float, copies: int
    ) -> None:
        self.data = data
        self.tag = tag
        self.ready = ready
        self.due = due
        self.deadline = deadline
        self.copies = copies
        self.passes = 0
        self.released = False


class Link(Generic[T]):
    """One direction's impairment as a pure function of the seed and the datagrams with their
    arrival times: :meth:`take` gives what leaves at once, :meth:`release` what leaves by a
    later time, :attr:`next_due` when to ask again. ``T`` tags each datagram with its client
    (where it goes, and whose datagrams may overtake it); the link never looks inside it.

    Bounded: what it holds costs at most ``max_queue_bytes`` (payloads plus
    :data:`QUEUED_DATAGRAM_OVERHEAD_BYTES` each); what would exceed it is dropped and counted.
    """

    def __init__(
        self,
        impairment: Impairment,
        seed: int,
        direction: Direction,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
    ) -> None:
        self.impairment = impairment
        self.direction = direction
        self.max_queue_bytes = max_queue_bytes
        self.counts: dict[str, int] = dict.fromkeys(DIRECTION_COUNTERS, 0)
        """This direction's counters, by their ImpairStats names."""
        self.queued = 0
        """Datagrams held now (copies count apart)."""
        self.queued_bytes = 0
        self._random = random.Random(f"udpchat impair {seed} {direction.value}").random
        self._transitions = impairment.burst_transitions
        self._losing = False
        """The Gilbert model's state: True while every datagram is lost."""
        self._line: deque[tuple[float, float | None, bytes, T]] = deque()
        """Datagrams on their way, in the order they leave (their times never decrease), each
        with when it came out of the rate limit (None for a copy: it is not sampled twice)."""
        self._measures = impairment.delay_s > 0 or impairment.rate is not None or impairment.reorder
        self.jitter_s = 0.0
        """RFC 3550's jitter over each datagram's transit from its arrival (the kernel's stamp
        where the proxy reads one), or from the rate limit, to being sent, as sent (the timer's
        lateness included), sampled as udpchat's accounting samples arrivals: what the link
        applied, measured as the server measures it."""
        self._last_transit: float | None = None
        self._last_sampled = -math.inf
        self._last_due = -math.inf
        self._rate_done: deque[float] = deque()
        """When each datagram at the rate limit will have gone through it."""
        self._rate_free_at = -math.inf
        self._held: dict[T, list[_Held[T]]] = {}
        self._held_by_deadline: deque[_Held[T]] = deque()
        """Held datagrams in the order their wait ends; those released early stay until they
        reach the front (without their payload), at most as many as are still held, plus
        :data:`MAX_RELEASED_WAITING`."""
        self._released_waiting = 0

    @property
    def next_due(self) -> float | None:
        """When :meth:`release` will next have something to do; None when nothing is held."""
        held = self._held_by_deadline
        while held and held[0].released:
            held.popleft()
            self._released_waiting -= 1
        due = self._line[0][0] if self._line else None
        if held and (due is None or held[0].deadline < due):
            return held[0].deadline
        return due

    def take(
        self, datagrams: Iterable[tuple[bytes, T, float]], now: float
    ) -> list[tuple[bytes, T]]:
        """Take datagrams, each with when it arrived (by ``now``: a delay counts from there,
        however late it was read; the rate limit and the reorder hold count from ``now``);
        returns what leaves now, in order (what was due already first)."""
        out = self.release(now)
        impairment = self.impairment
        counts = self.counts
        draw = self._random
        loss, transitions = impairment.loss, self._transitions
        corrupt, duplicate, reorder = impairment.corrupt, impairment.duplicate, impairment.reorder
        delay_s, jitter_s = impairment.delay_s, impairment.jitter_s
        rate = impairment.rate
        for taken, tag, arrived in datagrams:
            data = taken
            counts["received"] += 1
            if loss:
                if transitions is None:
                    lost = draw() < loss
                else:
                    enter, leave = transitions
                    lost = self._losing = draw() >= leave if self._losing else draw() < enter
                if lost:
                    self._drop("dropped_loss")
                    continue
            # Every draw for this datagram is made before the rate limit, whose drops depend on
            # time: so a datagram's fate depends on the seed and its place in the order alone.
            if corrupt and draw() < corrupt and data:
                position = int(draw() * len(data))
                flipped = data[position] ^ (1 + int(draw() * 255))
                data = b"%b%c%b" % (data[:position], flipped, data[position + 1 :])
                corrupted = True
            else:
                corrupted = False
            copies = 2 if duplicate and draw() < duplicate else 1
            held = reorder and draw() < reorder
            delay = delay_s + jitter_s * (2 * draw() - 1) if jitter_s else delay_s
            ready = arrived
            if rate is not None:
                ready = self._rate_ready(len(data), rate, now)
                if ready < 0:
                    self._drop("dropped_rate")
                    continue
            due = max(ready + delay, self._last_due)
            waits = held or due > now or self._line  # else it leaves at once, taking no room
            cost = copies * (len(data) + QUEUED_DATAGRAM_OVERHEAD_BYTES)
            if waits:
                if self.queued_bytes + cost > self.max_queue_bytes:
                    self._drop("dropped_full")
                    continue
                self.queued += copies
                self.queued_bytes += cost
            if rate is not None:
                self._rate_done.append(ready)
                self._rate_free_at = ready
            if corrupted:
                counts["corrupted"] += 1
            if copies == 2:
                counts["duplicated"] += 1
            if held:
                deadline = now + impairment.reorder_hold_s
                self._hold(_Held(data, tag, ready, ready + delay, deadline, copies))
                continue
            self._place(data, tag, ready, due, copies, now, out)
            if self._held:
                self._pass(tag, now, out)
        return out

    def release(self, now: float) -> list[tuple[bytes, T]]:
        """What leaves by ``now``: datagrams whose time came, and those held for reordering
        whose wait is over."""
        out: list[tuple[bytes, T]] = []
        held = self._held_by_deadline
        while held and (held[0].released or held[0].deadline <= now):
            waited = held.popleft()
            if waited.released:
                self._released_waiting -= 1
            else:
                self._unhold(waited, now, out)
        line = self._line
        while line and line[0][0] <= now:
            _, ready, data, tag = line.popleft()
            self.queued -= 1
            self.queued_bytes -= len(data) + QUEUED_DATAGRAM_OVERHEAD_BYTES
            if ready is not None:
                self._sample(ready, now)
            out.append((data, tag))
        return out

    def _sample(self, ready: float, now: float) -> None:
        """RFC 3550: J += (|D| - J) / 16, D the change in transit since the datagram sampled
        before; sampled at most every JITTER_MIN_SPACING_S of sending, as the accounting
        samples arrivals, so that both estimate over the same pairs."""
        if now - self._last_sampled < JITTER_MIN_SPACING_S:
            return
        transit_s = now - ready
        if self._last_transit is not None:
            self.jitter_s += (abs(transit_s - self._last_transit) - self.jitter_s) * JITTER_GAIN
        self._last_transit, self._last_sampled = transit_s, now

    def _drop(self, reason: str) -> None:
        self.counts[reason] += 1
        self.counts["dropped"] += 1

    def _rate_ready(self, size: int, rate: RateLimit, now: float) -> float:
        """When a datagram taken now would be through the rate limit; -1 when its queue is
        full (tail drop). The caller commits the time once the datagram is taken."""
        done = self._rate_done
        while done and done[0] <= now:
            done.popleft()
        if len(done) >= self.impairment.rate_queue:
            return -1.0
        cost = size if rate.unit is RateUnit.BYTES else 1
        return max(now, self._rate_free_at) + cost / rate.per_s

    def _place(
        self,
        data: bytes,
        tag: T,
        ready: float,
        due: float,
        copies: int,
        now: float,
        out: list[tuple[bytes, T]],
    ) -> None:
        """Send at ``due``, or right behind the one before if that is later (order is kept);
        at once when nothing waits ahead. A queued datagram's cost is counted already."""
        due = max(due, self._last_due)
        self._last_due = due
        if due <= now and not self._line:
            if self._measures:
                self._sample(ready, now)
            for _ in range(copies):
                out.append((data, tag))
            return
        self._line.append((due, ready, data, tag))
        if copies == 2:
            self._line.append((due, None, data, tag))

    def _hold(self, held: _Held[T]) -> None:
        self._held.setdefault(held.tag, []).append(held)
        self._held_by_deadline.append(held)

    def _pass(self, tag: T, now: float, out: list[tuple[bytes, T]]) -> None:
        """A datagram of ``tag`` went ahead of that client's held ones: release those that
        have been overtaken often enough."""
        waiting = self._held.get(tag)
        if not waiting:
            return
        distance = self.impairment.reorder_distance
        for held in waiting:
            held.passes += 1
        for held in [held for held in waiting if held.passes >= distance]:
            self._unhold(held, now, out)
            self._released_waiting += 1
        by_deadline = self._held_by_deadline
        if self._released_waiting > len(by_deadline) // 2 + MAX_RELEASED_WAITING:
            self._held_by_deadline = deque(held for held in by_deadline if not held.released)
            self._released_waiting = 0

    def _unhold(self, held: _Held[T], now: float, out: list[tuple[bytes, T]]) -> None:
        held.released = True
        waiting = self._held[held.tag]
        waiting.remove(held)
        if not waiting:
            del self._held[held.tag]
        if held.passes:
            self.counts["reordered"] += 1
        cost = held.copies * (len(held.data) + QUEUED_DATAGRAM_OVERHEAD_BYTES)
        due = max(held.due, self._last_due)
        if due <= now and not self._line:  # leaves at once: it no longer takes room
            self.queued -= held.copies
            self.queued_bytes -= cost
        data, held.data = held.data, b""  # it may wait in _held_by_deadline a while yet
        self._place(data, held.tag, held.ready, due, held.copies, now, out)


NO_SEED = "random"
"""What a :class:`ProxyConfig` without a seed does, in the command line's help."""


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """Everything an :class:`ImpairProxy` needs, checked when built (a
    :class:`~udpchat.settings.ConfigError` names the field)."""

    listen_host: str = DEFAULT_LISTEN[0]
    listen_port: int = setting(DEFAULT_LISTEN[1], minimum=0, maximum=MAX_PORT)
    target_host: str = DEFAULT_TARGET[0]
    target_port: int = setting(DEFAULT_TARGET[1], minimum=1, maximum=MAX_PORT)
    up: Impairment = Impairment()
    """What happens to the clients' datagrams on their way to the server."""
    down: Impairment = Impairment()
    """What happens to the server's answers on their way back."""
    seed: int | None = setting(None, minimum=0, maximum=2**63 - 1)
    """The same seed and the same datagrams give the same decisions; None: a random seed
    (:attr:`ImpairProxy.seed` says which, so that a run can be repeated): :data:`NO_SEED`."""
    max_clients: int = setting(DEFAULT_MAX_CLIENTS, minimum=1, maximum=MAX_CLIENTS)
    idle_timeout_s: float = setting(DEFAULT_IDLE_TIMEOUT_S, minimum=0.01, maximum=86_400)
    max_queue_bytes: int = setting(
        DEFAULT_MAX_QUEUE_BYTES, minimum=MIN_QUEUE_BYTES, maximum=MAX_QUEUE_BYTES
    )
    """What each direction holds at most, payloads and overhead."""
    drain_timeout_s: float = setting(DEFAULT_DRAIN_TIMEOUT_S, minimum=0, maximum=60)
    rcvbuf: int | None = setting(DEFAULT_RCVBUF, minimum=1, maximum=MAX_RCVBUF)
    """Receive buffer to ask for on the listening socket; None keeps the OS default."""
    stats_interval_s: float | None = setting(None, minimum=0.1)
    metrics_port: int | None = setting(None, minimum=0, maximum=MAX_PORT)
    metrics_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        check_bounds(self)
        for name in ("listen_host", "target_host", "metrics_host"):
            if not getattr(self, name):
                raise ConfigError(name, "must not be empty")

    def memory_bound_bytes(self) -> int:
        """The most memory the proxy process holds, whatever the traffic: the two links at
        their bound, the client table full, and one read batch of the largest datagrams."""
        return (
            BASE_RSS_BYTES
            + 2 * self.max_queue_bytes
            + self.max_clients * CLIENT_BYTES
            + READ_BATCH * (MAX_UDP_PAYLOAD + QUEUED_DATAGRAM_OVERHEAD_BYTES)
        )


def proxy_config(
    listen: str = "{}:{}".format(*DEFAULT_LISTEN),
    to: str = "{}:{}".format(*DEFAULT_TARGET),
    **settings: Any,
) -> ProxyConfig:
    """A :class:`ProxyConfig` from values as the command line writes them: ``listen`` and
    ``to`` as ``HOST:PORT``, each :class:`Impairment` field as a list of values for
    :func:`impairments`, the other fields as they are. A :class:`~udpchat.settings.ConfigError`
    names the argument at fault (``listen``, ``to``, ``loss``, ``max_clients``)."""
    written = {name: settings.pop(name) for name in IMPAIRMENT_FIELDS if name in settings}
    directions = impairments({name: values for name, values in written.items() if values})
    hosts = {}
    for argument, text in (("listen", listen), ("to", to)):
        try:
            hosts[argument] = split_host_port(text)
        except ValueError as error:
            raise ConfigError(argument, str(error)) from None
    (listen_host, listen_port), (target_host, target_port) = hosts["listen"], hosts["to"]
    try:
        return ProxyConfig(
            listen_host=listen_host,
            listen_port=listen_port,
            target_host=target_host,
            target_port=target_port,
            up=directions[Direction.UP],
            down=directions[Direction.DOWN],
            **settings,
        )
    except ConfigError as error:
        if error.setting not in ADDRESS_ARGUMENTS:
            raise
        raise ConfigError(ADDRESS_ARGUMENTS[error.setting], error.problem) from None


ADDRESS_ARGUMENTS = {
    "listen_host": "listen",
    "listen_port": "listen",
    "target_host": "to",
    "target_port": "to",
}
"""The :func:`proxy_config` argument that sets each address field."""


class TargetUnresolvedError(OSError):
    """The server's address (``to``) does not resolve; nothing was bound."""


def read_batch(
    sock: socket.socket, stamped: bool, now: float, source: object
) -> list[tuple[bytes, Any, float]]:
    """Up to :data:`READ_BATCH` datagrams waiting on ``sock``: each with its sender and when it
    arrived, the kernel's stamp where ``stamped`` (:func:`~udpchat.sockets.stamp_arrivals`;
    never after ``now``, nor more than :data:`MAX_DELAY_S` before), else ``now``. ``source``
    names the socket in the debug log."""
    batch = []
    offset = realtime_offset() if stamped else 0.0
    oldest = now - MAX_DELAY_S  # older stamps (a clock step) leave at once all the same
    for _ in range(READ_BATCH):
        try:
            if stamped:
                data, ancillary, _, address = sock.recvmsg(MAX_UDP_PAYLOAD, ARRIVAL_ANCILLARY_BYTES)
                arrived = arrival_time(ancillary, offset)
                arrived = now if arrived is None else min(max(arrived, oldest), now)
                batch.append((data, address, arrived))
            else:
                data, address = sock.recvfrom(MAX_UDP_PAYLOAD)
                batch.append((data, address, now))
        except (BlockingIOError, InterruptedError):
            break
        except ConnectionRefusedError:  # the server's port refused an earlier datagram
            continue
        except OSError as error:
            logger.debug("impair: reading from %s: %s", source, error)
            break
    return batch


class _Client:
    """One client: its address, and its own connected socket towards the server."""

    __slots__ = ("address", "last_heard", "send", "sock", "stamped")

    def __init__(self, address: Any, sock: socket.socket, now: float, stamped: bool) -> None:
        self.address = address
        self.sock = sock
        self.send = sock.send
        self.last_heard = now
        self.stamped = stamped
        """Whether the kernel stamps the server's datagrams' arrival on ``sock``."""

    def __str__(self) -> str:
        return f"the server for {self.address}"


@dataclass(frozen=True, slots=True)
class ProxyResult:
    """How serving ended: the final counters and whether the links were emptied in time."""

    stats: ImpairStats
    drained: bool


class ImpairProxy(StartsAndStops):
    """The impaired link as an asyncio object: ``async with ImpairProxy(config) as proxy``,
    then send to ``proxy.address`` instead of the server's."""

    def __init__(self, config: ProxyConfig | None = None) -> None:
        self.config = config = config or ProxyConfig()
        self.seed = config.seed if config.seed is not None else secrets.randbits(32)
        self._up: Link[_Client] = Link(config.up, self.seed, Direction.UP, config.max_queue_bytes)
        self._down: Link[_Client] = Link(
            config.down, self.seed, Direction.DOWN, config.max_queue_bytes
        )
        self._clients: dict[Any, _Client] = {}
        self._refused = 0
        self._expired = 0
        self._refusal_log = RateLimitedLog(logger, level=logging.WARNING)
        self._sock: socket.socket | None = None
        self._stamped_up = False
        """Whether the kernel stamps the clients' datagrams' arrival (a delaying uplink)."""
        self._target: tuple[Any, ...] | None = None
        self._target_family = socket.AF_INET
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeups: dict[Direction, Wakeup] = {}
        self._background = contextlib.AsyncExitStack()
        self._metrics: MetricsServer | None = None
        self._should_exit = asyncio.Event()
        self._stopping = False
        self._emptied = asyncio.Event()

    @property
    def address(self) -> tuple[str, int]:
        """Where clients send: the bound (host, port), the port the OS chose for port 0."""
        if self._sock is None:
            raise RuntimeError("the proxy is not started")
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        return None if self._metrics is None else self._metrics.address

    async def start(self) -> None:
        """Resolve the server, bind, and start forwarding (and the metrics endpoint)."""
        if self._sock is not None:
            raise RuntimeError("the proxy is already started")
        config = self.config
        self._loop = loop = asyncio.get_running_loop()
        try:
            found = await loop.getaddrinfo(
                config.target_host, config.target_port, type=socket.SOCK_DGRAM
            )
        except socket.gaierror as error:
            raise TargetUnresolvedError(
                error.errno, f"cannot resolve the server {config.target_host}: {error.strerror}"
            ) from None
        family, _, _, _, target = found[0]
        self._target_family, self._target = family, target
        sock = bind_udp_socket(config.listen_host, config.listen_port, rcvbuf=config.rcvbuf)
        try:
            if config.metrics_port is not None:
                self._metrics = await start_metrics(
                    self.stats, config.metrics_host, config.metrics_port
                )
                self._background.push_async_callback(self._metrics.close)
            sweep_s = min(config.idle_timeout_s / 4, 1.0)
            await self._background.enter_async_context(periodically(sweep_s, self._expire_idle))
        except BaseException:
            sock.close()
            await self._background.aclose()
            raise
        self._sock = sock
        self._stamped_up = config.up.delays and stamp_arrivals(sock)
        self._wakeups = {
            direction: Wakeup(loop, functools.partial(self._on_time, direction))
            for direction in Direction
        }
        loop.add_reader(sock.fileno(), self._read_clients)
        host, port = self.address
        logger.info(
            "impair: listening on %s port %d, forwarding to %s port %d, seed %d",
            host, port, config.target_host, config.target_port, self.seed,
        )  # fmt: skip
        for direction, impairment in ((Direction.UP, config.up), (Direction.DOWN, config.down)):
            if impairment.active:
                logger.info("impair: %s: %s", direction.value, describe(impairment))
        if self._metrics is not None:
            logger.info("impair: metrics on http://%s:%d/metrics", *self._metrics.address)

    async def stop(self) -> bool:
        """Stop taking datagrams in, send what the links hold as it falls due (within
        ``drain_timeout_s``), then close. Returns whether the links were emptied; what they
        still hold stays counted as queued."""
        if self._sock is None or self._loop is None:
            return True
        self._should_exit.set()
        self._stopping = True
        self._loop.remove_reader(self._sock.fileno())
        for client in self._clients.values():
            self._loop.remove_reader(client.sock.fileno())
        self._check_emptied()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.drain_timeout_s):
                await self._emptied.wait()
        for wakeup in self._wakeups.values():
            wakeup.close()
        for client in self._clients.values():
            client.sock.close()
        self._clients.clear()
        self._sock.close()
        self._sock = None
        await self._background.aclose()
        return not self._up.queued and not self._down.queued

    def request_stop(self) -> None:
        """Ask :meth:`serve_until_stopped` to stop; on the proxy's loop."""
        self._should_exit.set()

    def abandon(self) -> None:
        """Stop without waiting for the links to empty (an operator's second Ctrl-C); what they
        hold stays counted as queued. On the proxy's loop."""
        self._emptied.set()
        self._should_exit.set()

    async def serve_until_stopped(self) -> ProxyResult:
        """Start (unless started), forward until :meth:`request_stop`, then stop; with a status
        line every ``stats_interval_s`` on the ``udpchat.status`` logger."""
        if self._sock is None:
            await self.start()
        rate = Rate()

        def log_status() -> None:
            stats = self.stats()
            status_logger.info("%s", impair_status(stats, rate(sum(stats.forwarded.values()))))

        try:
            async with periodically(self.config.stats_interval_s, log_status):
                await self._should_exit.wait()
        finally:
            drained = await self.stop()
        return ProxyResult(self.stats(), drained)

    def stats(self) -> ImpairStats:
        """The counters now."""
        up, down = self._up, self._down
        by_direction = {
            name: {Direction.UP.value: up.counts[name], Direction.DOWN.value: down.counts[name]}
            for name in DIRECTION_COUNTERS
        }
        return ImpairStats(
            **by_direction,
            queued=up.queued + down.queued,
            jitter_up_us=round(up.jitter_s * 1e6),
            jitter_down_us=round(down.jitter_s * 1e6),
            clients=len(self._clients),
            clients_refused=self._refused,
            clients_expired=self._expired,
            endpoint=None if self._metrics is None else self._metrics.stats(),
        )

    # The event loop's side: read, let the link decide, send; wake up when the link says.

    def _read_clients(self) -> None:
        assert self._sock is not None
        now = time.monotonic()
        clients = self._clients
        batch = []
        for data, address, arrived in read_batch(self._sock, self._stamped_up, now, "clients"):
            client = clients.get(address)
            if client is None:
                client = self._admit(address, now)
                if client is None:
                    continue
            client.last_heard = now
            batch.append((data, client, arrived))
        if batch:
            self._send_up(self._up.take(batch, now))
            self._schedule(Direction.UP)

    def _read_server(self, client: _Client) -> None:
        now = time.monotonic()
        batch = [
            (data, client, arrived)
            for data, _, arrived in read_batch(client.sock, client.stamped, now, client)
        ]
        if batch:
            self._send_down(self._down.take(batch, now))
            self._schedule(Direction.DOWN)

    def _send_up(self, out: list[tuple[bytes, _Client]]) -> None:
        failed = 0
        for data, client in out:
            try:
                client.send(data)
            except OSError:
                failed += 1
        self._sent(self._up, len(out), failed)

    def _send_down(self, out: list[tuple[bytes, _Client]]) -> None:
        assert self._sock is not None
        send = self._sock.sendto
        failed = 0
        for data, client in out:
            try:
                send(data, client.address)
            except OSError:
                failed += 1
        self._sent(self._down, len(out), failed)

    @staticmethod
    def _sent(link: Link[_Client], count: int, failed: int) -> None:
        counts = link.counts
        counts["forwarded"] += count - failed
        counts["send_failures"] += failed
        counts["dropped"] += failed

    def _admit(self, address: Any, now: float) -> _Client | None:
        """A new client's own socket towards the server; None (counted) when the table is
        full or the OS has no socket to give."""
        assert self._loop is not None and self._target is not None
        if len(self._clients) >= self.config.max_clients:
            self._refuse(f"client table full ({self.config.max_clients} clients)")
            return None
        try:
            sock = socket.socket(self._target_family, socket.SOCK_DGRAM)
        except OSError as error:
            self._refuse(f"no socket for a new client: {error.strerror}")
            return None
        try:
            sock.setblocking(False)
            sock.connect(self._target)
        except OSError as error:
            sock.close()
            self._refuse(f"cannot reach the server for a new client: {error.strerror}")
            return None
        stamped = self.config.down.delays and stamp_arrivals(sock)
        client = self._clients[address] = _Client(address, sock, now, stamped)
        self._loop.add_reader(sock.fileno(), self._read_server, client)
        return client

    def _refuse(self, why: str) -> None:
        self._refused += 1
        self._refusal_log.record(f"impair: refused a datagram from a new client: {why}")

    def _expire_idle(self) -> None:
        assert self._loop is not None
        deadline = time.monotonic() - self.config.idle_timeout_s
        for address, client in list(self._clients.items()):
            if client.last_heard < deadline:
                self._loop.remove_reader(client.sock.fileno())
                client.sock.close()
                del self._clients[address]
                self._expired += 1

    def _link(self, direction: Direction) -> Link[_Client]:
        return self._up if direction is Direction.UP else self._down

    def _schedule(self, direction: Direction) -> None:
        """Wake up when the link next has something to send, unless a wake-up comes sooner."""
        due = self._link(direction).next_due
        if due is None:
            self._check_emptied()
            return
        wakeup = self._wakeups[direction]
        if wakeup.when is None or due < wakeup.when:
            wakeup.at(due)

    def _on_time(self, direction: Direction) -> None:
        out = self._link(direction).release(time.monotonic())
        if out:
            (self._send_up if direction is Direction.UP else self._send_down)(out)
        self._schedule(direction)

    def _check_emptied(self) -> None:
        if self._stopping and not self._up.queued and not self._down.queued:
            self._emptied.set()


def describe(impairment: Impairment) -> str:
    """What a direction does, as the options write it: ``loss=10% delay=20ms``."""
    shown = []
    for each in fields(impairment):
        value = getattr(impairment, each.name)
        if value == each.default:
            continue
        if each.metadata["parse"] is parse_share:
            text = f"{value * 100:g}%"
        elif each.metadata["parse"] is parse_duration:
            text = f"{value * 1000:g}ms"
        else:
            text = str(value)
        shown.append(f"{_written_name(each.name)}={text}")
    return " ".join(shown)


def run_proxy(config: ProxyConfig, loop: LoopChoice = LoopChoice.AUTO) -> ProxyResult:
    """Serve ``config`` until SIGINT, SIGTERM or SIGHUP; a second one stops without waiting
    for the links to empty. The ``impair`` command is this call."""

    async def serve() -> ProxyResult:
        proxy = ImpairProxy(config)
        with stop_on_signals(proxy, logger).installed():
            return await proxy.serve_until_stopped()

    tune_for_throughput()
    return run_coroutine(serve(), loop)
