"""The interval sampler: what changed between two snapshots, derived from the declarations,
checked against simple oracles (a table of what each sender did, sums over the run)."""

from __future__ import annotations

import dataclasses
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_counters import every_group_filled
from udpchat.accounting import DeliveryAccounting
from udpchat.counters import SENDER_SERIES, LossRuns, SenderStats, StatsSnapshot
from udpchat.series import (
    EventKind,
    Sampler,
    changes,
    flat,
    interval_json,
    schema,
)


def sender(port: int, received: int, **figures: object) -> SenderStats:
    values: dict[str, object] = {
        "ip": "10.0.0.1",
        "port": port,
        "username": f"u{port}",
        "received": received,
        "highest_counter": received,
        "lost": 0,
        "duplicates": 0,
        "reordered": 0,
        "late": 0,
        "restarts": 0,
        "jitter_s": 0.0,
        "last_heard_s": 0.0,
    }
    values.update(figures)
    return SenderStats(**values)  # type: ignore[arg-type]


def test_flat_keys_name_every_counter_of_every_group_and_changes_subtract_them() -> None:
    before = every_group_filled()
    after = dataclasses.replace(
        before,
        received=before.received + 7,
        dropped={**before.dropped, "queue_full": 3},
        kernel_drops=None,
        delivery=dataclasses.replace(before.delivery, lost=before.delivery.lost - 2),
    )
    keys = flat(after)
    assert keys["received"] == before.received + 7
    assert keys["dropped.some_reason"] == before.dropped["some_reason"]
    assert keys["relay.joins"] == after.relay.joins if after.relay else False
    delta = changes(before, after)
    assert delta["received"] == 7
    assert delta["dropped.queue_full"] == 3  # a reason new in the later one counts from 0
    assert delta["dropped.some_reason"] == 0
    assert delta["delivery.lost"] == -2  # a level changes both ways
    assert delta["kernel_drops"] is None  # unknown now: its change is unknown
    assert "bus.connected" in keys and "bus.connected" not in delta  # a flag has no change
    described = {entry["key"] for entry in schema(after)}
    for key in keys:
        parent = key.rsplit(".", 1)[0]
        assert key in described or any(d.startswith(f"{parent}.<") for d in described), key


def snapshot(*senders: SenderStats, members: tuple[tuple[str, int], ...] = ()) -> StatsSnapshot:
    return StatsSnapshot(senders=senders, members=members)


def test_the_busiest_senders_are_listed_and_the_rest_summed() -> None:
    sampler = Sampler(snapshot(sender(1, 10), sender(2, 10)), top_senders=2, max_events=10)
    interval = sampler.sample(
        snapshot(
            sender(1, 11, lost=3, jitter_s=0.5, loss_runs=LossRuns((1, 1))),
            sender(2, 30, duplicates=2),
            sender(3, 5, jitter_s=0.25),
            sender(4, 15, lost=1, jitter_s=0.125, loss_runs=LossRuns((1,))),
        ),
        2.5,
    )
    assert [(row.sender, row.received) for row in interval.senders] == [
        ("10.0.0.1:2", 20),
        ("10.0.0.1:4", 15),
    ]
    rest = interval.rest
    assert (interval.rest_senders, rest.received, rest.lost, rest.jitter_s) == (2, 6, 3, 0.5)
    assert rest.loss_runs == LossRuns((1, 1))
    assert interval.senders[0].loss_percent == 0.0
    assert interval.senders[1].loss_percent == 100 * 1 / 16
    assert interval.elapsed_s == 2.5
    assert [(event.kind, event.sender) for event in interval.events] == [
        (EventKind.SENDER_FIRST, "10.0.0.1:3"),
        (EventKind.SENDER_FIRST, "10.0.0.1:4"),
    ]
    document = interval_json(interval)
    assert document["rest"] == {
        "senders": 2,
        "received": 6,
        "lost": 3,
        "duplicates": 0,
        "reordered": 0,
        "late": 0,
        "jitter_s": 0.5,
        "loss_runs": {"1": 1, "2": 1},
    }
    first = document["senders"]
    assert isinstance(first, list)
    assert set(first[0]) == {"sender", "username", "loss_runs", *(s.name for s in SENDER_SERIES)}


def test_events_say_who_came_restarted_was_evicted_joined_and_left_within_a_bound() -> None:
    sampler = Sampler(
        snapshot(sender(1, 10), sender(2, 10), sender(3, 10), members=(("10.0.0.9", 1),)),
        top_senders=5,
        max_events=4,
    )
    interval = sampler.sample(
        snapshot(
            sender(1, 12, restarts=1),
            sender(3, 2),  # fewer than before: evicted, then back
            sender(4, 1),
            members=(("10.0.0.8", 2),),
        ),
        1.0,
    )
    assert [(event.kind, event.sender) for event in interval.events] == [
        (EventKind.SENDER_FIRST, "10.0.0.1:3"),
        (EventKind.SENDER_FIRST, "10.0.0.1:4"),
        (EventKind.SENDER_RESTART, "10.0.0.1:1"),
        (EventKind.SENDER_EVICTED, "10.0.0.1:2"),
    ]
    assert interval.events_left_out == 3  # 3 evicted, a member joined, one left
    assert [row.received for row in interval.senders] == [2, 2, 1]  # 3 counts as new


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    intervals=st.integers(1, 6),
    top_senders=st.integers(0, 4),
    max_senders=st.integers(1, 6),
)
def test_a_run_of_intervals_adds_up_to_its_totals(
    seed: int, intervals: int, top_senders: int, max_senders: int
) -> None:
    """Oracle: senders with random loss, duplicates and swaps, accounted for real in a table
    small enough to evict. Over the run, the intervals' deltas add up to the last snapshot,
    their loss runs to its histogram, and each interval's rows and rest to the change of the
    table's own figures."""
    rng = random.Random(seed)
    accounting = DeliveryAccounting(max_senders=max_senders, seed=seed)
    counters = dict.fromkeys(range(8), 0)

    def taken() -> StatsSnapshot:
        return StatsSnapshot(delivery=accounting.totals(), senders=accounting.senders())

    first = taken()
    sampler = Sampler(first, top_senders=top_senders, max_events=1000)
    lost = 0
    runs = LossRuns()
    for index in range(intervals):
        before = {(s.port, s.username): s.received for s in accounting.senders()}
        for _ in range(rng.randrange(40)):
            port = rng.randrange(8)
            counters[port] += 1 + (rng.random() < 0.3) * rng.randrange(1, 6)
            counter = counters[port] - (rng.random() < 0.1)
            for _ in range(1 + (rng.random() < 0.1)):
                accounting.record((("10.0.0.1", port), b"u"), max(counter, 1), float(index))
        current = taken()
        interval = sampler.sample(current, float(index + 1))
        lost_change = interval.deltas["delivery.lost"]
        assert isinstance(lost_change, int)
        lost += lost_change
        runs += interval.loss_runs
        listed = sum(row.received for row in interval.senders) + interval.rest.received
        table = sum(s.received - before.get((s.port, s.username), 0) for s in current.senders)
        evicted_back = [
            s for s in current.senders if s.received < before.get((s.port, s.username), 0)
        ]
        assert listed == table + sum(before[(s.port, s.username)] for s in evicted_back)
        assert len(interval.senders) <= top_senders
    assert lost == accounting.totals().lost - first.delivery.lost
    assert runs == accounting.totals().loss_runs
