"""A run's time series: what changed from one snapshot of the counters to the next.

Pure logic on snapshots (no I/O, no clock, no thread of its own): whoever wants the series, the
recorder of ``serve --record`` (:mod:`udpchat.record`) or a live chart, takes snapshots when it
likes and hands each to its own :class:`Sampler`, which returns the :class:`Interval` since the
previous one. Everything in an interval derives from the declarations in
:mod:`udpchat.counters`: a counter declared there shows up here with no more code.

To reuse it (a live chart of messages/s, loss %, jitter, duplicates and reordering per
sender)::

    sampler = Sampler(service_snapshot(), top_senders=20, max_events=100)
    # then every interval, from one thread at a time:
    interval = sampler.sample(service_snapshot(), seconds_since_start)
    interval.rate_per_s("received")             # datagrams a second, any flat counter key
    for row in interval.senders:                # the busiest senders of the interval
        row.received, row.lost, row.loss_percent, row.jitter_s, row.loss_runs.by_length()
    interval.rest                               # every other sender, summed
    interval.events                             # first message, restart, eviction, join, leave
    interval_json(interval)                     # the record a file holds, as a dict

where ``service_snapshot()`` is ``add_up(service.per_process())`` (a server's, or a
supervisor's children's added up), whose ``senders`` must be filled (``stats()`` does so by
default). :func:`flat` and :func:`changes` serve any group of counters alone, the impairment
proxy's per-direction ones included.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from udpchat.counters import (
    SENDER_SERIES,
    Counts,
    Declaration,
    Kind,
    LossRuns,
    SenderStats,
    StatsSnapshot,
)
from udpchat.wire import sender_address

SCHEMA_VERSION = 1
"""The version of the records' layout (:func:`interval_json`, :func:`schema`); a reader
refuses a file of a newer one."""

Number = int | float | bool | None
"""A flat counter's value: a count, a level, a flag, or unknown (None)."""


def flat_declared(counts: Counts, prefix: str = "") -> Iterator[tuple[str, Declaration, Number]]:
    """Each counter of ``counts`` and of the groups it holds, with its flat key: ``received``,
    ``delivery.lost``, ``dropped.queue_full`` (a total by reason: one key per reason)."""
    for declared, value in counts.items():
        if isinstance(value, Counts):
            yield from flat_declared(value, f"{prefix}{declared.name}.")
        elif declared.kind is Kind.BY_REASON:
            for reason, count in value.items():
                yield f"{prefix}{declared.name}.{reason}", declared, count
        elif declared.kind is not Kind.PART:
            yield f"{prefix}{declared.name}", declared, value


def flat(counts: Counts) -> dict[str, Number]:
    """Every counter by its flat key (:func:`flat_declared`)."""
    return {key: value for key, _, value in flat_declared(counts)}


def changes(previous: Counts, current: Counts) -> dict[str, Number]:
    """Each counter's change from ``previous`` to ``current``, flags left out; a key new in
    ``current`` (a reason that first occurred) counts from 0; unknown (None) if either is."""
    before = flat(previous)
    changed: dict[str, Number] = {}
    for key, declared, value in flat_declared(current):
        if declared.kind is Kind.FLAG:
            continue
        earlier = before.get(key, 0)
        changed[key] = None if value is None or earlier is None else value - earlier
    return changed


def schema(counts: Counts) -> list[dict[str, str]]:
    """What each flat key of ``counts`` means, from its declaration: for a file's header, so
    that a record says what its numbers are. A total by reason is one entry, ``key.<label>``."""
    return [
        {"key": key, "kind": declared.kind.value, "unit": declared.unit, "help": declared.help}
        for key, declared in _declared_keys(counts)
    ]


def _declared_keys(counts: Counts, prefix: str = "") -> Iterator[tuple[str, Declaration]]:
    for declared, value in counts.items():
        if isinstance(value, Counts):
            yield from _declared_keys(value, f"{prefix}{declared.name}.")
        elif declared.kind is Kind.BY_REASON:
            yield f"{prefix}{declared.name}.<{declared.label}>", declared
        elif declared.kind is not Kind.PART:
            yield f"{prefix}{declared.name}", declared


def sender_schema() -> list[dict[str, str]]:
    """The per-sender fields of an interval, from :data:`~udpchat.counters.SENDER_SERIES`."""
    return [
        {
            "key": series.name,
            "unit": series.unit,
            "in_interval": "change" if series.changes else "value at its end",
            "help": series.help,
        }
        for series in SENDER_SERIES
    ]


SenderKey = tuple[str, int, str]
"""(ip, port, username): a row of the sender table."""


def _key(sender: SenderStats) -> SenderKey:
    return sender.ip, sender.port, sender.username


@dataclass(frozen=True, slots=True)
class SenderInterval:
    """One sender's interval (or every other sender's, summed: :attr:`Interval.rest`)."""

    sender: str
    """``ip:port``; empty for the rest."""
    username: str
    received: int
    lost: int
    """The change in its lost counters: new gaps less those filled late (may be negative)."""
    duplicates: int
    reordered: int
    late: int
    jitter_s: float
    """Its jitter at the interval's end (for the rest: the largest)."""
    loss_runs: LossRuns
    """The loss runs that opened in the interval, by length."""

    @property
    def loss_percent(self) -> float | None:
        """Lost over expected in the interval, as the sender table's ``loss``; None when
        nothing was expected."""
        expected = self.received - self.duplicates + self.lost
        return 100.0 * self.lost / expected if expected > 0 else None


def _sender_interval(current: SenderStats, previous: SenderStats | None) -> SenderInterval:
    values: dict[str, Any] = {}
    for series in SENDER_SERIES:
        now = getattr(current, series.name)
        before = 0 if previous is None else getattr(previous, series.name)
        values[series.name] = now - before if series.changes else now
    runs = current.loss_runs if previous is None else current.loss_runs - previous.loss_runs
    return SenderInterval(
        sender=sender_address(current.ip, current.port),
        username=current.username,
        loss_runs=runs,
        **values,
    )


def _summed(rows: list[SenderInterval]) -> SenderInterval:
    total = LossRuns()
    for row in rows:
        total += row.loss_runs
    values: dict[str, Any] = {
        series.name: (
            sum(getattr(row, series.name) for row in rows)
            if series.changes
            else max((getattr(row, series.name) for row in rows), default=0.0)
        )
        for series in SENDER_SERIES
    }
    return SenderInterval(sender="", username="", loss_runs=total, **values)


class EventKind(enum.StrEnum):
    """What happened to a sender or a member between two snapshots."""

    SENDER_FIRST = "sender_first"
    """Its first message since it was tracked (again, after an eviction)."""
    SENDER_RESTART = "sender_restart"
    """Its counter went back to 1: the client restarted."""
    SENDER_EVICTED = "sender_evicted"
    """Forgotten to bound the sender table; its figures stay in the totals."""
    MEMBER_JOINED = "member_joined"
    MEMBER_LEFT = "member_left"
    """Left the room: said ``/leave``, or expired by silence."""


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    sender: str
    """``ip:port``."""
    username: str
    """The sender's username; empty for a member (the room knows addresses only)."""


@dataclass(frozen=True, slots=True)
class Interval:
    """What happened between two snapshots."""

    t_s: float
    """Seconds from the first snapshot (the run's start) to this interval's end."""
    elapsed_s: float
    totals: dict[str, Number]
    """Every counter at the interval's end, by flat key (:func:`flat`)."""
    deltas: dict[str, Number]
    """Every counter's change over the interval (:func:`changes`): they add up to the run."""
    senders: tuple[SenderInterval, ...]
    """The busiest senders of the interval, by messages received, at most ``top_senders``."""
    rest: SenderInterval
    """Every other sender that sent in the interval, summed."""
    rest_senders: int
    """How many senders :attr:`rest` sums."""
    loss_runs: LossRuns
    """The loss runs that opened in the interval, every sender's (evicted ones included)."""
    events: tuple[Event, ...]
    events_left_out: int
    """Events beyond ``max_events`` in the interval: counted, not listed."""

    def rate_per_s(self, key: str) -> float | None:
        """A counter's change over the interval, per second; None where unknown."""
        delta = self.deltas.get(key)
        if delta is None or self.elapsed_s <= 0:
            return None
        return delta / self.elapsed_s


_EVENT_ORDER = {kind: index for index, kind in enumerate(EventKind)}


class Sampler:
    """Turns successive snapshots of a server into intervals; remembers the previous one only
    (its sender table: bounded by the server's ``max_senders``)."""

    def __init__(self, first: StatsSnapshot, *, top_senders: int, max_events: int) -> None:
        self.top_senders = top_senders
        self.max_events = max_events
        self._previous = first
        self._previous_t_s = 0.0
        self._previous_senders = {_key(sender): sender for sender in first.senders}

    def sample(self, snapshot: StatsSnapshot, t_s: float) -> Interval:
        """The interval from the previous snapshot (or the first) to ``snapshot``, taken
        ``t_s`` seconds after the first."""
        previous, before = self._previous, self._previous_senders
        now = {_key(sender): sender for sender in snapshot.senders}
        events: list[Event] = []
        rows = []
        for key, sender in now.items():
            earlier = before.get(key)
            if earlier is not None and sender.received < earlier.received:
                events.append(Event(EventKind.SENDER_EVICTED, sender_address(*key[:2]), key[2]))
                earlier = None  # evicted and back within the interval: a new row
            if earlier is None:
                events.append(Event(EventKind.SENDER_FIRST, sender_address(*key[:2]), key[2]))
            elif sender.restarts > earlier.restarts:
                events.append(Event(EventKind.SENDER_RESTART, sender_address(*key[:2]), key[2]))
            row = _sender_interval(sender, earlier)
            if row.received or row.lost:
                rows.append((key, row))
        events.extend(
            Event(EventKind.SENDER_EVICTED, sender_address(*key[:2]), key[2])
            for key in before.keys() - now.keys()
        )
        events.extend(_member_events(previous.members, snapshot.members))
        rows.sort(key=lambda item: (-item[1].received, item[0]))
        listed = [row for _, row in rows[: self.top_senders]]
        others = [row for _, row in rows[self.top_senders :]]
        events.sort(key=lambda event: (_EVENT_ORDER[event.kind], event.sender, event.username))
        interval = Interval(
            t_s=t_s,
            elapsed_s=t_s - self._previous_t_s,
            totals=flat(snapshot),
            deltas=changes(previous, snapshot),
            senders=tuple(listed),
            rest=_summed(others),
            rest_senders=len(others),
            loss_runs=snapshot.delivery.loss_runs - previous.delivery.loss_runs,
            events=tuple(events[: self.max_events]),
            events_left_out=max(0, len(events) - self.max_events),
        )
        self._previous, self._previous_t_s, self._previous_senders = snapshot, t_s, now
        return interval


def _member_events(
    before: tuple[tuple[str, int], ...], now: tuple[tuple[str, int], ...]
) -> Iterator[Event]:
    earlier, current = set(before), set(now)
    for ip, port in current - earlier:
        yield Event(EventKind.MEMBER_JOINED, sender_address(ip, port), "")
    for ip, port in earlier - current:
        yield Event(EventKind.MEMBER_LEFT, sender_address(ip, port), "")


def runs_json(runs: LossRuns) -> dict[str, int]:
    """``{"length": runs}``: JSON keys are strings."""
    return {str(length): count for length, count in runs.by_length().items()}


def sender_json(row: SenderInterval) -> dict[str, object]:
    document: dict[str, object] = {"sender": row.sender, "username": row.username}
    document.update({series.name: getattr(row, series.name) for series in SENDER_SERIES})
    document["loss_runs"] = runs_json(row.loss_runs)
    return document


def interval_json(interval: Interval) -> dict[str, object]:
    """The interval as a file records it (``"type": "interval"``); its events are records
    of their own (:func:`event_json`)."""
    rest = sender_json(interval.rest)
    del rest["sender"], rest["username"]
    return {
        "type": "interval",
        "t_s": round(interval.t_s, 6),
        "elapsed_s": round(interval.elapsed_s, 6),
        "totals": interval.totals,
        "deltas": interval.deltas,
        "senders": [sender_json(row) for row in interval.senders],
        "rest": {"senders": interval.rest_senders, **rest},
        "loss_runs": runs_json(interval.loss_runs),
        "events_left_out": interval.events_left_out,
    }


def event_json(event: Event, t_s: float) -> dict[str, object]:
    return {
        "type": "event",
        "t_s": round(t_s, 6),
        "event": event.kind.value,
        "sender": event.sender,
        "username": event.username,
    }
