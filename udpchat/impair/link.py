"""One direction's impairment, the pure engine: datagrams and the times they arrive in,
datagrams and the times they leave out; no I/O.

A datagram meets, in this order: the loss (independent, or in bursts by the simple Gilbert
model), the rate limit's bounded queue (tail drop), corruption (one byte flipped), duplication
(a second copy right behind it), reordering (held back until ``reorder_distance`` later
datagrams of the same client have gone ahead) and the delay with its jitter. Jitter never
reorders: a datagram whose delay would let it overtake the one before it leaves right behind it
instead, so that every reordering is one that was asked for, and counted.

The random draws depend only on the seed and the order of the datagrams, never on the clock: a
datagram's fate (lost, corrupted, duplicated, reordered, its delay) is the same in every run
with the same seed, and only the rate limit and the memory bound, which depend on time, may drop
differently.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar

from udpchat.accounting import JITTER_GAIN, JITTER_MIN_SPACING_S
from udpchat.counters import DIRECTION, ImpairStats, Kind, declarations
from udpchat.impair.spec import (
    DEFAULT_MAX_QUEUE_BYTES,
    QUEUED_DATAGRAM_OVERHEAD_BYTES,
    Direction,
    Impairment,
    RateUnit,
)

MAX_RELEASED_WAITING = 64
"""Datagrams released early from reordering that may linger in the deadline queue, beyond as
many as are still held, before it is compacted."""


MEASURED_AT_THE_SOCKETS = ("kernel_drops",)
"""Direction counters the proxy reads from its sockets, not the link: what never reached it."""
DIRECTION_COUNTERS = tuple(
    declared.name
    for declared in declarations(ImpairStats)
    if declared.kind is Kind.BY_REASON
    and declared.label == DIRECTION
    and declared.name not in MEASURED_AT_THE_SOCKETS
)
"""The counters each :class:`Link` keeps for its direction, as declared in ImpairStats."""


T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)


class Observer(Protocol[T_contra]):
    """Told each datagram's fate as the link decides it, for a capture or a record
    (:mod:`udpchat.impair.trace`). ``number`` is the datagram's place in this direction's
    arrival order, from 1; the link calls nothing when it has no observer."""

    def taken(self, number: int, data: bytes, tag: T_contra, arrived: float) -> None: ...

    def dropped(self, number: int, reason: str, now: float) -> None:
        """Never sent: ``reason`` is the counter it went to (``dropped_loss``, ...); ``now``
        is when the link dropped it (as it took it in)."""

    def reordered(self, number: int) -> None:
        """Held back, and overtaken: it leaves after later datagrams of its client."""

    def sent(self, number: int, data: bytes, tag: T_contra, copy: bool, now: float) -> None:
        """Leaves the link at ``now``, as ``data`` (a byte flipped where corrupted); ``copy``
        for the duplicate, right behind."""


_Fate = tuple[bytes, bool, int, bool, float]
"""What the draws decided for a datagram that was not lost: the datagram as it will be sent
(one byte flipped where corrupted), whether it was corrupted, its copies, whether it is held
back for reordering, and its delay."""


class _Held(Generic[T]):
    """A datagram held back for reordering, with the copy that travels with it."""

    __slots__ = (
        "copies", "data", "deadline", "due", "number", "passes", "ready", "released", "tag",
    )  # fmt: skip

    def __init__(
        self,
        data: bytes,
        tag: T,
        ready: float,
        due: float,
        deadline: float,
        copies: int,
        number: int,
    ) -> None:
        self.number = number
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
        observer: Observer[T] | None = None,
    ) -> None:
        self.impairment = impairment
        self.observer = observer
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
        self._line: deque[tuple[float, float | None, bytes, T, int]] = deque()
        """Datagrams on their way, in the order they leave (their times never decrease), each
        with when it came out of the rate limit (None for a copy: it is not sampled twice)
        and its number."""
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

    def change(self, impairment: Impairment) -> int:
        """Do ``impairment`` from the next datagram taken on; returns that datagram's number.
        The seed's stream goes on where it was (it is not reseeded), so that the same seed,
        datagrams and changes, each at the same datagram, give the same fates; what the link
        holds already leaves as it was decided."""
        self.impairment = impairment
        self._transitions = impairment.burst_transitions
        self._losing = self._losing and self._transitions is not None
        self._measures = impairment.delay_s > 0 or impairment.rate is not None or impairment.reorder
        return self.counts["received"] + 1

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
        counts, observer = self.counts, self.observer
        loses = self.impairment.loss > 0
        for data, tag, arrived in datagrams:
            counts["received"] += 1
            number = counts["received"]
            if observer is not None:
                observer.taken(number, data, tag, arrived)
            if loses and self._lost():
                self._drop("dropped_loss", number, now)
                continue
            self._forward(self._fate(data), tag, arrived, now, out, number)
        return out

    def _lost(self) -> bool:
        """The loss draw: independent, or by the Gilbert model, whose state it moves on."""
        draw = self._random
        if self._transitions is None:
            return draw() < self.impairment.loss
        enter, leave = self._transitions
        self._losing = draw() >= leave if self._losing else draw() < enter
        return self._losing

    def _fate(self, data: bytes) -> _Fate:
        """Every draw for a datagram that was not lost, made before the rate limit, whose drops
        depend on time: so a datagram's fate depends on the seed and its place in the order
        alone."""
        impairment, draw = self.impairment, self._random
        corrupt, duplicate, reorder = impairment.corrupt, impairment.duplicate, impairment.reorder
        corrupted = bool(corrupt) and draw() < corrupt and bool(data)
        if corrupted:
            position = int(draw() * len(data))
            flipped = data[position] ^ (1 + int(draw() * 255))
            data = b"%b%c%b" % (data[:position], flipped, data[position + 1 :])
        copies = 2 if duplicate and draw() < duplicate else 1
        held = bool(reorder) and draw() < reorder
        delay = impairment.delay_s
        if impairment.jitter_s:
            delay += impairment.jitter_s * (2 * draw() - 1)
        return data, corrupted, copies, held, delay

    def _forward(
        self,
        fate: _Fate,
        tag: T,
        arrived: float,
        now: float,
        out: list[tuple[bytes, T]],
        number: int,
    ) -> None:
        """What depends on time: through the rate limit, into the room the link has (unless it
        leaves at once), then held back for reordering or on its way."""
        data, corrupted, copies, held, delay = fate
        ready = self._through_rate_limit(len(data), arrived, now)
        if ready is None:
            self._drop("dropped_rate", number, now)
            return
        due = max(ready + delay, self._last_due)
        waits = held or due > now or bool(self._line)  # else it leaves at once: no room
        if waits and not self._reserve(copies, len(data)):
            self._drop("dropped_full", number, now)
            return
        self._commit(ready, corrupted, copies)
        if held:
            deadline = now + self.impairment.reorder_hold_s
            self._hold(_Held(data, tag, ready, ready + delay, deadline, copies, number))
            return
        self._place(data, tag, ready, due, copies, now, out, number)
        if self._held:
            self._pass(tag, now, out)

    def _reserve(self, copies: int, size: int) -> bool:
        """Room for a datagram that waits, counted as queued; False when the link is full."""
        cost = copies * (size + QUEUED_DATAGRAM_OVERHEAD_BYTES)
        if self.queued_bytes + cost > self.max_queue_bytes:
            return False
        self.queued += copies
        self.queued_bytes += cost
        return True

    def _commit(self, ready: float, corrupted: bool, copies: int) -> None:
        """A datagram is taken: its turn at the rate limit is kept, what was done to it counted."""
        if self.impairment.rate is not None:
            self._rate_done.append(ready)
            self._rate_free_at = ready
        if corrupted:
            self.counts["corrupted"] += 1
        if copies == 2:
            self.counts["duplicated"] += 1

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
        line, observer = self._line, self.observer
        while line and line[0][0] <= now:
            _, ready, data, tag, number = line.popleft()
            self.queued -= 1
            self.queued_bytes -= len(data) + QUEUED_DATAGRAM_OVERHEAD_BYTES
            if ready is not None:
                self._sample(ready, now)
            if observer is not None:
                observer.sent(number, data, tag, ready is None, now)
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

    def _drop(self, reason: str, number: int, now: float) -> None:
        self.counts[reason] += 1
        self.counts["dropped"] += 1
        if self.observer is not None:
            self.observer.dropped(number, reason, now)

    def _through_rate_limit(self, size: int, arrived: float, now: float) -> float | None:
        """When a datagram taken now would be through the rate limit (without one: when it
        arrived); None when its queue is full (tail drop). :meth:`_commit` keeps the time once
        the datagram is taken."""
        rate = self.impairment.rate
        if rate is None:
            return arrived
        done = self._rate_done
        while done and done[0] <= now:
            done.popleft()
        if len(done) >= self.impairment.rate_queue:
            return None
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
        number: int,
    ) -> None:
        """Send at ``due``, or right behind the one before if that is later (order is kept);
        at once when nothing waits ahead. A queued datagram's cost is counted already."""
        due = max(due, self._last_due)
        self._last_due = due
        if due <= now and not self._line:
            if self._measures:
                self._sample(ready, now)
            for copy in range(copies):
                if self.observer is not None:
                    self.observer.sent(number, data, tag, copy == 1, now)
                out.append((data, tag))
            return
        self._line.append((due, ready, data, tag, number))
        if copies == 2:
            self._line.append((due, None, data, tag, number))

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
            if self.observer is not None:
                self.observer.reordered(held.number)
        cost = held.copies * (len(held.data) + QUEUED_DATAGRAM_OVERHEAD_BYTES)
        due = max(held.due, self._last_due)
        if due <= now and not self._line:  # leaves at once: it no longer takes room
            self.queued -= held.copies
            self.queued_bytes -= cost
        data, held.data = held.data, b""  # it may wait in _held_by_deadline a while yet
        self._place(data, held.tag, held.ready, due, held.copies, now, out, held.number)
