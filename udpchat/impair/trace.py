"""What the link did, datagram by datagram: ``impair --record`` (per interval, direction and
client) and ``impair --pcap`` (every datagram in a capture, its fate in the packet's comment).

A :class:`Tracer` is a direction's :class:`~udpchat.impair.link.Observer`: the link tells it
each datagram's fate as it decides it, on the event loop, and the tracer counts it for the
interval and hands a packet to the capture, whose file is written by a thread of its own
(:class:`~udpchat.record.RecordWriter`, bounded like any record). It remembers a datagram from
its arrival until it leaves or is dropped: no longer than the link holds it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from udpchat.impair.spec import Direction
from udpchat.record import Record, RecordWriter
from udpchat.wire import sender_address

T = TypeVar("T")

Endpoint = tuple[str, int]

MAX_REMEMBERED_CLIENTS = 65536
"""Clients whose last captured packet is remembered (for ``reordered: sent after #M``); the
table starts over beyond it."""

FATES = ("lost", "rate_dropped", "queue_full", "duplicated", "reordered", "corrupted")
"""What an interval counts per client, beside what it took in and sent on."""
DROP_FATES = {"dropped_loss": "lost", "dropped_rate": "rate_dropped", "dropped_full": "queue_full"}
"""The link's drop counters, by the names an interval gives them."""


def drop_comment(reason: str, bursty: bool) -> str:
    """A dropped datagram's comment in the capture."""
    if reason == "dropped_loss":
        return "lost (burst)" if bursty else "lost (loss)"
    if reason == "dropped_rate":
        return "dropped: rate queue full"
    return "dropped: link full"


def corrupted_byte(sent: bytes, taken: bytes) -> int | None:
    """Where ``sent`` differs from ``taken`` (the link flips one byte), or None."""
    if sent is taken or sent == taken:
        return None
    return next(index for index, (a, b) in enumerate(zip(sent, taken, strict=True)) if a != b)


@dataclass(slots=True)
class _Flight:
    """A datagram on the link, from its arrival."""

    data: bytes
    source: Endpoint
    destination: Endpoint
    client: str
    arrived: float
    reordered: bool = False
    frame: int | None = None
    """Its packet's number in the capture, once written (for its copy's comment)."""


@dataclass(slots=True)
class _ClientInterval:
    received: int = 0
    sent: int = 0
    fates: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FATES, 0))
    delays_ms: list[float] = field(default_factory=list)
    """Each datagram's delay, first copies only: summed into mean, min, max."""

    def as_record(self) -> dict[str, Any]:
        delays = self.delays_ms
        delay = (
            {
                "mean": round(sum(delays) / len(delays), 3),
                "min": round(min(delays), 3),
                "max": round(max(delays), 3),
            }
            if delays
            else None
        )
        return {"received": self.received, "sent": self.sent, **self.fates, "delay_ms": delay}


class Intervals:
    """What each client's datagrams met in each direction since the last interval; on the
    event loop."""

    def __init__(self, max_clients: int) -> None:
        self._max_clients = max_clients
        self._table: dict[tuple[str, str], _ClientInterval] = {}

    def row(self, direction: Direction, client: str) -> _ClientInterval:
        key = (client, direction.value)
        row = self._table.get(key)
        if row is None:
            row = self._table[key] = _ClientInterval()
        return row

    def take(self) -> tuple[list[dict[str, Any]], int]:
        """The interval's rows, the busiest ``max_clients`` (most taken in), and how many more
        there were; the table starts again."""
        table, self._table = self._table, {}
        ordered = sorted(table.items(), key=lambda item: (-item[1].received, item[0]))
        rows = [
            {"client": client, "direction": direction, **row.as_record()}
            for (client, direction), row in ordered[: self._max_clients]
        ]
        return rows, max(0, len(ordered) - self._max_clients)


class Capture:
    """The loop's side of ``--pcap``: numbers the packets as the file will (a packet the
    writer's queue refuses gets no number), and writes each packet's comment."""

    def __init__(self, writer: RecordWriter, wall_offset_s: float) -> None:
        self.writer = writer
        self._wall_offset_s = wall_offset_s
        self.frames = 0
        self._last_frame: dict[tuple[Direction, str], int] = {}

    def packet(
        self, direction: Direction, flight: _Flight, at_s: float, comment: str, sent: bool = True
    ) -> int | None:
        """Queue a packet (the datagram as its sender sent it) at ``at_s``, when the link was
        done with it, so that the capture's times never go back; its frame number, or None.
        Only a packet ``sent`` on is one a reordered datagram can be sent after."""
        record: Record = {
            "type": "packet",
            "time_s": at_s + self._wall_offset_s,
            "source": flight.source,
            "destination": flight.destination,
            "data": flight.data,
            "comment": comment,
            "inbound": direction is Direction.UP,
        }
        if not self.writer.put(record):
            return None
        self.frames += 1
        if sent:
            if len(self._last_frame) >= MAX_REMEMBERED_CLIENTS:
                self._last_frame.clear()
            self._last_frame[(direction, flight.client)] = self.frames
        return self.frames

    def last_frame(self, direction: Direction, client: str) -> int | None:
        return self._last_frame.get((direction, client))


Endpoints = Callable[[T], tuple[Endpoint, Endpoint]]
"""A datagram's (source, destination) as the proxy saw it arrive, from its client."""


class Tracer(Generic[T]):
    """One direction's observer: counts each datagram's fate for the interval and writes it to
    the capture, either where asked."""

    def __init__(
        self,
        direction: Direction,
        endpoints: Endpoints[T],
        client_of: Callable[[T], Endpoint],
        *,
        bursty: bool,
        intervals: Intervals | None,
        capture: Capture | None,
    ) -> None:
        self.direction = direction
        self._endpoints = endpoints
        self._client_of = client_of
        self._bursty = bursty
        self._intervals = intervals
        self._capture = capture
        self._flights: dict[int, _Flight] = {}
        self._last_sent: tuple[int, _Flight] | None = None
        """The datagram sent last: its copy, if it has one, is sent right after it."""

    def _row(self, flight: _Flight) -> Any:
        return (
            None if self._intervals is None else self._intervals.row(self.direction, flight.client)
        )

    def taken(self, number: int, data: bytes, tag: T, arrived: float) -> None:
        source, destination = self._endpoints(tag)
        client = sender_address(*self._client_of(tag)[:2])
        flight = self._flights[number] = _Flight(data, source, destination, client, arrived)
        row = self._row(flight)
        if row is not None:
            row.received += 1

    def dropped(self, number: int, reason: str, now: float) -> None:
        flight = self._flights.pop(number)
        row = self._row(flight)
        if row is not None:
            row.fates[DROP_FATES[reason]] += 1
        if self._capture is not None:
            comment = drop_comment(reason, self._bursty)
            self._capture.packet(self.direction, flight, now, comment, sent=False)

    def reordered(self, number: int) -> None:
        self._flights[number].reordered = True

    def sent(self, number: int, data: bytes, tag: T, copy: bool, now: float) -> None:
        if copy:
            self._sent_copy(number, now)
            return
        flight = self._flights.pop(number)
        self._last_sent = (number, flight)
        delay_ms = (now - flight.arrived) * 1000
        corrupted = corrupted_byte(data, flight.data)
        row = self._row(flight)
        if row is not None:
            row.sent += 1
            row.delays_ms.append(delay_ms)
            row.fates["reordered"] += flight.reordered
            row.fates["corrupted"] += corrupted is not None
        if self._capture is not None:
            parts = []
            if flight.reordered:
                after = self._capture.last_frame(self.direction, flight.client)
                parts.append(f"reordered: sent after #{after}" if after else "reordered")
            if corrupted is not None:
                parts.append(f"corrupted: byte {corrupted}")
            parts.append(f"delayed {delay_ms:.1f} ms")
            flight.frame = self._capture.packet(self.direction, flight, now, "; ".join(parts))

    def _sent_copy(self, number: int, now: float) -> None:
        last = self._last_sent
        assert last is not None and last[0] == number, "a copy leaves right behind its original"
        flight = last[1]
        row = self._row(flight)
        if row is not None:
            row.sent += 1
            row.fates["duplicated"] += 1
        if self._capture is not None:
            original = f"#{flight.frame}" if flight.frame else "a packet not captured"
            self._capture.packet(self.direction, flight, now, f"duplicate of {original}")


def wall_offset() -> float:
    """Seconds to add to the link's monotonic times for the capture's wall-clock times."""
    return time.time() - time.monotonic()
