"""Delivery accounting: exact figures for skipped, duplicated, reordered and restarted counters."""

from __future__ import annotations

import itertools
import math
import random
import tracemalloc
from array import array
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udpchat import accounting as accounting_module
from udpchat import fastpath
from udpchat.accounting import (
    IDLE_EVICTION_S,
    JITTER_MIN_SPACING_S,
    MAX_GAPS_PER_SENDER,
    REORDER_WINDOW,
    SENDER_BYTES,
    SKETCH_ROWS,
    SKETCH_WIDTH,
    DeliveryAccounting,
    SenderKey,
    Verdict,
    _AdmissionSketch,
    _halve,
)
from udpchat.counters import LOSS_RUN_CAP, DeliveryTotals, LossRuns, SenderStats, add_up

ALICE = (("127.0.0.1", 40000), b"alice")


def feed(counters: list[int], key: SenderKey = ALICE) -> tuple[DeliveryAccounting, list[Verdict]]:
    accounting = DeliveryAccounting()
    verdicts = [accounting.record(key, counter, float(i)) for i, counter in enumerate(counters)]
    return accounting, verdicts


def only_sender(accounting: DeliveryAccounting) -> SenderStats:
    (sender,) = accounting.senders()
    return sender


def test_in_order_counts_nothing_wrong() -> None:
    accounting, verdicts = feed([1, 2, 3, 4])
    assert verdicts == [Verdict.NEW] * 4
    sender = only_sender(accounting)
    assert (sender.received, sender.lost, sender.duplicates, sender.reordered) == (4, 0, 0, 0)
    assert sender.highest_counter == 4


def test_a_skip_is_lost_until_it_arrives() -> None:
    accounting, verdicts = feed([1, 2, 5, 6])
    assert verdicts == [Verdict.NEW] * 4
    assert only_sender(accounting).lost == 2
    assert accounting.totals().lost == 2
    assert only_sender(accounting).loss_ratio == 2 / 6


def test_a_small_swap_is_reordered_and_a_straggler_is_late() -> None:
    accounting, verdicts = feed([1, 3, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 20, 13])
    assert verdicts[2] is Verdict.REORDERED
    assert verdicts[-1] is Verdict.LATE  # 7 behind the highest (20)
    sender = only_sender(accounting)
    assert (sender.reordered, sender.late, sender.lost) == (1, 1, 6)  # 14..19 still missing


def test_duplicates() -> None:
    accounting, verdicts = feed([1, 2, 2, 3, 2])
    assert verdicts == [Verdict.NEW, Verdict.NEW, Verdict.DUPLICATE, Verdict.NEW, Verdict.DUPLICATE]
    assert only_sender(accounting).duplicates == 2
    assert only_sender(accounting).loss_ratio == 0.0


def test_counter_back_to_one_is_a_restart_not_thousands_of_reorders() -> None:
    accounting, verdicts = feed([*range(1, 1001), 1, 2, 3])
    assert verdicts[-3:] == [Verdict.NEW] * 3
    sender = only_sender(accounting)
    assert (sender.restarts, sender.reordered, sender.duplicates, sender.lost) == (1, 0, 0, 0)
    assert sender.received == 1003


def test_a_swap_at_the_very_start_is_not_a_restart() -> None:
    accounting, verdicts = feed([2, 1, 3])
    assert verdicts == [Verdict.NEW, Verdict.REORDERED, Verdict.NEW]
    sender = only_sender(accounting)
    assert (sender.restarts, sender.lost, sender.reordered) == (0, 0, 1)


def test_joining_mid_stream_counts_nothing_lost_before() -> None:
    accounting, _ = feed([500, 501, 502])
    assert only_sender(accounting).lost == 0


def test_senders_are_told_apart_by_address_and_username() -> None:
    accounting = DeliveryAccounting()
    for key in [ALICE, (("127.0.0.1", 40001), b"alice"), (("127.0.0.1", 40000), b"bob")]:
        assert accounting.record(key, 1, 0.0) is Verdict.NEW
    assert accounting.totals().senders == 3


def test_the_table_is_bounded_and_evictions_are_counted() -> None:
    accounting = DeliveryAccounting(max_senders=10)
    for port in range(25):
        accounting.record((("10.0.0.1", port), b"spoofed"), 1, float(port))
    totals = accounting.totals()
    assert totals.senders <= 10
    assert totals.senders + totals.evicted == 25
    assert {sender.port for sender in accounting.senders()} >= {24}  # the newest stays


def test_gaps_per_sender_are_bounded() -> None:
    counters = [2 * n + 1 for n in range(MAX_GAPS_PER_SENDER + 10)]  # every other one lost
    accounting, _ = feed([*counters, 2])
    sender = only_sender(accounting)
    assert sender.lost == MAX_GAPS_PER_SENDER + 9  # the straggler 2 was given up on
    assert sender.late == 1
    assert accounting.totals().gaps_given_up == 9


def test_jitter_is_zero_for_a_steady_sender_and_grows_with_uneven_arrivals() -> None:
    steady = DeliveryAccounting()
    uneven = DeliveryAccounting()
    for counter in range(1, 50):
        steady.record(ALICE, counter, counter * 0.1)
        uneven.record(ALICE, counter, counter * 0.1 + (0.03 if counter % 2 else 0.0))
    assert only_sender(steady).jitter_s < 1e-9
    assert only_sender(uneven).jitter_s > 0.01


def test_last_heard_is_the_arrival_of_the_latest_new_counter() -> None:
    accounting = DeliveryAccounting()
    accounting.record(ALICE, 1, 100.0)
    accounting.record(ALICE, 2, 101.5)
    accounting.record(ALICE, 2, 103.0)  # a duplicate says nothing new about the sender
    assert only_sender(accounting).last_heard_s == 101.5


def test_totals_add_up() -> None:
    first = DeliveryTotals(senders=1, lost=2, duplicates=3)
    second = DeliveryTotals(senders=2, reordered=1, late=4)
    assert add_up([first, second]) == DeliveryTotals(
        senders=3, lost=2, duplicates=3, reordered=1, late=4
    )


class ReferenceSender:
    """The module docstring's rules, written as plainly as possible: every counter seen is kept
    in a set, so a gap is simply a counter between the session's base and its highest that is
    not in it. Slow, obviously right, and only for sequences that never hit the gap bound."""

    def __init__(self, counter: int) -> None:
        self.received, self.lost, self.duplicates = 1, 0, 0
        self.reordered, self.late, self.restarts = 0, 0, 0
        self.start(counter)

    def start(self, counter: int) -> None:
        self.base = self.highest = counter
        self.seen = {counter}

    def record(self, counter: int) -> Verdict:
        self.received += 1
        if counter > self.highest:
            self.lost += counter - self.highest - 1
            self.highest = counter
            self.seen.add(counter)
            return Verdict.NEW
        if self.base <= counter and counter not in self.seen:
            self.seen.add(counter)
            self.lost -= 1
            if self.highest - counter <= REORDER_WINDOW:
                self.reordered += 1
                return Verdict.REORDERED
            self.late += 1
            return Verdict.LATE
        if counter < self.base and self.base - counter <= REORDER_WINDOW:
            self.lost += self.base - counter - 1
            self.base = counter
            self.seen.add(counter)
            self.reordered += 1
            return Verdict.REORDERED
        if counter == 1:
            self.restarts += 1
            self.start(counter)
            return Verdict.NEW
        self.duplicates += 1
        return Verdict.DUPLICATE

    def figures(self) -> tuple[int, ...]:
        return (
            self.received, self.highest, self.lost, self.duplicates, self.reordered, self.late,
            self.restarts,
        )  # fmt: skip


def reference(
    arrivals: list[tuple[SenderKey, int]],
) -> tuple[list[Verdict], dict[SenderKey, tuple[int, ...]]]:
    senders: dict[SenderKey, ReferenceSender] = {}
    verdicts = []
    for key, counter in arrivals:
        sender = senders.get(key)
        if sender is None:
            senders[key] = ReferenceSender(counter)
            verdicts.append(Verdict.NEW)
        else:
            verdicts.append(sender.record(counter))
    return verdicts, {key: sender.figures() for key, sender in senders.items()}


def figures(accounting: DeliveryAccounting) -> dict[SenderKey, tuple[int, ...]]:
    return {
        ((s.ip, s.port), s.username.encode()): (
            s.received,
            s.highest_counter,
            s.lost,
            s.duplicates,
            s.reordered,
            s.late,
            s.restarts,
        )
        for s in accounting.senders()
    }


SENDERS = [(("127.0.0.1", 40000 + n), b"user%d" % n) for n in range(3)]
HIGHEST = 2 * MAX_GAPS_PER_SENDER - 8
"""Counters at most this, so that no sender can open more gaps than are kept."""
STEPS = ["next"] * 6 + ["skip", "repeat", "back", "restart"]


@st.composite
def arrivals_like_a_network(draw: st.DrawFn) -> list[tuple[SenderKey, int]]:
    """Mostly each sender's next counter (the common case the batch path settles inline), with
    skips, repeats, stragglers and restarts among them, the senders interleaved."""
    steps = draw(
        st.lists(
            st.tuples(st.sampled_from(SENDERS), st.sampled_from(STEPS), st.integers(1, 5)),
            max_size=300,
        )
    )
    last = dict.fromkeys(SENDERS, 0)
    arrivals = []
    for key, step, size in steps:
        counter = {
            "next": last[key] + 1,
            "skip": last[key] + 1 + size,
            "repeat": max(last[key], 1),
            "back": max(last[key] - size, 1),
            "restart": 1,
        }[step]
        counter = min(counter, HIGHEST)
        last[key] = counter if step in ("next", "skip", "restart") else max(last[key], counter)
        arrivals.append((key, counter))
    return arrivals


ARRIVALS = st.one_of(
    arrivals_like_a_network(),
    st.lists(st.tuples(st.sampled_from(SENDERS), st.integers(1, HIGHEST)), max_size=300),
)


@given(ARRIVALS)
def test_record_agrees_with_the_reference_model(arrivals: list[tuple[SenderKey, int]]) -> None:
    accounting = DeliveryAccounting()
    verdicts = [accounting.record(key, counter, 0.0) for key, counter in arrivals]
    expected_verdicts, expected = reference(arrivals)
    assert verdicts == expected_verdicts
    assert figures(accounting) == expected
    assert accounting.totals().lost == sum(sender[2] for sender in expected.values())


ACCOUNT_NEXT = {"compiled": fastpath.account_next, "python": fastpath.py_account_next}


@pytest.mark.parametrize("implementation", list(ACCOUNT_NEXT))
@given(ARRIVALS, st.lists(st.integers(min_value=1, max_value=40), min_size=1))
def test_record_batch_agrees_with_the_reference_model(
    implementation: str, arrivals: list[tuple[SenderKey, int]], batch_sizes: list[int]
) -> None:
    """The batch path settles a sender's next counter inline (compiled, or its Python twin):
    any batching gives the model's verdicts and figures, and None for what is not seed text."""
    accounting = DeliveryAccounting()
    verdicts: list[Verdict | None] = []
    position, sizes = 0, iter(batch_sizes * (len(arrivals) + 1))
    with pytest.MonkeyPatch.context() as patch:  # a fixture's would outlive each example
        patch.setattr(accounting_module, "account_next", ACCOUNT_NEXT[implementation])
        while position < len(arrivals):
            chunk = arrivals[position : position + next(sizes)]
            addresses = [key[0] for key, _ in chunk] + [("127.0.0.1", 1)]
            seeds: list[tuple[bytes, int] | None] = [(key[1], counter) for key, counter in chunk]
            got = accounting.record_batch(addresses, [*seeds, None], float(position))
            assert got[-1] is None  # not seed text
            verdicts.extend(got[:-1])
            position += len(chunk)
    expected_verdicts, expected = reference(arrivals)
    assert verdicts == expected_verdicts
    assert figures(accounting) == expected


@given(st.lists(st.integers(min_value=2, max_value=200), max_size=300))
def test_figures_stay_consistent_for_any_arrival_order(counters: list[int]) -> None:
    accounting, verdicts = feed(counters)
    totals = accounting.totals()
    assert totals.lost >= 0
    assert len(verdicts) == len(counters)
    if counters:
        sender = only_sender(accounting)
        unique = len(set(counters))
        assert sender.received - sender.duplicates - sender.late <= unique
        assert sender.lost == totals.lost


def flood_between(
    accounting: DeliveryAccounting, counters: range, forged_each: int
) -> list[SenderStats]:
    """The real sender ALICE sends ``counters``; ``forged_each`` one-shot identities arrive
    between each two of its messages. Returns ALICE's rows."""
    forged = 0
    for counter in counters:
        accounting.record(ALICE, counter, float(counter))
        for _ in range(forged_each):
            forged += 1
            accounting.record((("10.0.0.1", forged), b"x"), 1, float(counter) + 0.5)
    return [s for s in accounting.senders() if s.username == "alice"]


def test_a_flood_of_one_shot_identities_cannot_evict_a_steady_sender_or_its_loss() -> None:
    """SECURITY.md: a forged sender distorts only its own figures. Twice the table's size in
    one-shot identities arrive between each of a real sender's messages, which skip every other
    counter; the sender had spoken before the flood."""
    accounting = DeliveryAccounting(max_senders=100, seed=1)
    flood_between(accounting, range(1, 3), 0)
    (alice,) = flood_between(accounting, range(3, 200, 2), forged_each=200)
    assert (alice.received, alice.highest_counter, alice.lost) == (101, 199, 98)
    totals = accounting.totals()
    assert (totals.lost, totals.evicted_lost) == (98, 0)  # the one-shots lost nothing


def test_a_sender_that_starts_during_a_flood_of_rotating_identities_keeps_its_loss() -> None:
    """The flood of the issue that found this, scaled down tenfold: 2,000 forged identities,
    each coming back every 400 visits with a burst of one to three counters, against a table
    of 200 (so every identity is evicted before it returns), while a real sender sends
    counters 1, 3 ... 199.
    The real sender keeps being admitted more often than any one of them, so within a few
    messages it keeps its row, and from there its loss is exact; what it measured before is
    under evicted_lost (a gap across an eviction is not seen: nothing remembers it)."""
    accounting = DeliveryAccounting(max_senders=200, seed=5)
    identities = [(("10.0.0.1", 1 + n % 1000), b"f%d" % n) for n in range(2000)]
    counters = dict.fromkeys(identities, 0)
    rng = random.Random(5)
    visit = 0
    for counter in range(1, 200, 2):
        accounting.record(ALICE, counter, float(counter))
        for _ in range(400):
            key = identities[visit % len(identities)]
            visit += 1
            for _ in range(rng.randint(1, 3)):
                counters[key] += 1
                accounting.record(key, counters[key], float(counter) + 0.5)
    (alice,) = [s for s in accounting.senders() if s.username == "alice"]
    assert alice.received >= 90 and alice.highest_counter == 199
    assert alice.lost == alice.received - 1  # every other counter, exactly, within its row
    assert accounting.totals().evicted_lost <= 99 - alice.lost


def test_silent_senders_are_evicted_before_any_that_still_talk() -> None:
    accounting = DeliveryAccounting(max_senders=10, seed=3)
    for port in range(9):  # busy once, then silent
        for counter in range(1, 21):
            accounting.record((("10.0.0.1", port), b"old"), counter, 0.0)
    accounting.record((("10.0.0.2", 1), b"new"), 1, 100.0)
    accounting.record((("10.0.0.2", 2), b"newer"), 1, 100.0)  # full: evict one
    assert {s.username for s in accounting.senders()} >= {"new", "newer"}


def test_an_evicted_senders_loss_stays_in_the_totals_under_its_own_name() -> None:
    accounting = DeliveryAccounting(max_senders=10)
    for port in range(10):
        for counter in (1, 5):  # 3 lost each
            accounting.record((("10.0.0.1", port), b"u"), counter, float(port))
    accounting.record((("10.0.0.2", 1), b"new"), 1, 99.0)  # the table is full: one evicted
    totals = accounting.totals()
    assert (totals.evicted, totals.evicted_lost, totals.lost) == (1, 3, 30)


def test_every_order_in_which_gaps_fill_agrees_with_the_reference_model() -> None:
    """Three gaps, ``[2, 6)``, ``[7, 10)`` and ``[11, 14)``: the first filled in every order
    (from either end, or split in the middle while the others are open), then the second split
    while the third is open, then the third, then every counter again, each now a duplicate."""
    for order in itertools.permutations([2, 3, 4, 5]):
        counters = [1, 6, 10, 14, *order, 8, 9, 7, 12, 13, 11, *range(1, 15)]
        arrivals = [(ALICE, counter) for counter in counters]
        accounting = DeliveryAccounting()
        verdicts = [accounting.record(key, counter, 0.0) for key, counter in arrivals]
        expected_verdicts, expected = reference(arrivals)
        assert verdicts == expected_verdicts, order
        assert figures(accounting) == expected, order


def test_a_gap_filled_from_either_end_leaves_none_open() -> None:
    """A hundred gaps of one and of two counters, each filled as soon as it opens: none is
    left open to count against the bound, so none is given up and every repeat is a duplicate."""
    counters = [1]
    for top in range(1, 500, 5):
        counters += [top + 2, top + 1]  # a gap of one
        counters += [top + 5, top + 4, top + 3]  # a gap of two, filled from its top
    accounting, verdicts = feed([*counters, 2, 3, 4])
    totals = accounting.totals()
    assert (totals.lost, totals.gaps_given_up, totals.late) == (0, 0, 0)
    assert verdicts[-3:] == [Verdict.DUPLICATE] * 3


def test_the_oldest_gap_is_given_up_only_past_the_bound() -> None:
    accounting, _ = feed([2 * n + 1 for n in range(MAX_GAPS_PER_SENDER + 1)])  # 1, 3, 5 ... 129
    assert accounting.totals().gaps_given_up == 0  # exactly the bound: all kept
    assert accounting.record(ALICE, 2, 0.0) is Verdict.LATE
    assert accounting.totals().lost == MAX_GAPS_PER_SENDER - 1
    for counter in (131, 133):  # one gap more than the bound: [4, 5) is given up
        accounting.record(ALICE, counter, 0.0)
    assert accounting.totals().gaps_given_up == 1
    lost = accounting.totals().lost
    assert accounting.record(ALICE, 4, 0.0) is Verdict.LATE  # from the gap given up
    assert accounting.totals().lost == lost  # stays lost: it may be a duplicate
    assert accounting.record(ALICE, 5, 0.0) is Verdict.DUPLICATE  # above it: still known
    assert accounting.record(ALICE, 6, 0.0) is Verdict.LATE  # the next gap is still open
    assert accounting.totals().lost == lost - 1
    assert only_sender(accounting).late == 3


def test_a_restart_is_a_restart_after_gaps_were_given_up() -> None:
    """The module docstring: a ``pesan ke-1`` that fills no gap starts a new session. Counter 1
    was the session's first, so it fills no gap, given up or not."""
    accounting, _ = feed([2 * n + 1 for n in range(MAX_GAPS_PER_SENDER + 2)])  # one given up
    assert accounting.totals().gaps_given_up == 1
    assert accounting.record(ALICE, 1, 0.0) is Verdict.NEW
    assert only_sender(accounting).restarts == 1


def test_a_session_extended_downwards_opens_the_gaps_it_skips_and_no_others() -> None:
    accounting, verdicts = feed([5, 3, 4, 4])
    assert verdicts == [Verdict.NEW, Verdict.REORDERED, Verdict.REORDERED, Verdict.DUPLICATE]
    sender = only_sender(accounting)
    assert (sender.lost, sender.reordered, sender.duplicates) == (0, 2, 1)
    downwards, _ = feed(list(range(100, 0, -1)))  # each one below the last: no gap between
    totals = downwards.totals()
    assert (totals.lost, totals.reordered, totals.gaps_given_up) == (0, 99, 0)


def test_jitter_follows_rfc_3550() -> None:
    """J += (|D| - J) / 16, where D is how far an arrival is from what the sender's mean
    interval predicts."""
    accounting = DeliveryAccounting()
    for counter, arrival in [(1, 0.0), (2, 1.0), (3, 3.0), (4, 4.0)]:
        accounting.record(ALICE, counter, arrival)
    after_3 = 0.5 / 16  # mean interval 1.5: 3.0 is 0.5 late
    after_4 = after_3 + (1 / 3 - after_3) / 16  # mean 4/3: 4.0 is 1/3 early
    assert only_sender(accounting).jitter_s == pytest.approx(after_4)


def record_one_by_one(accounting: DeliveryAccounting, counter: int, arrival: float) -> None:
    accounting.record(ALICE, counter, arrival)


def record_as_a_batch(accounting: DeliveryAccounting, counter: int, arrival: float) -> None:
    accounting.record_batch([ALICE[0]], [(ALICE[1], counter)], arrival)


@pytest.mark.parametrize("record", [record_one_by_one, record_as_a_batch])
def test_jitter_is_sampled_no_closer_than_its_spacing(
    record: Callable[[DeliveryAccounting, int, float], None],
) -> None:
    """Arrivals closer than JITTER_MIN_SPACING_S were read in one burst: not sampled. One that
    far apart is: it is the latest heard."""
    burst = DeliveryAccounting()
    for counter, arrival in [(1, 0.0), (2, 1.0), (3, 1.005)]:
        record(burst, counter, arrival)
    assert (only_sender(burst).jitter_s, only_sender(burst).last_heard_s) == (0.0, 1.0)
    spaced = DeliveryAccounting()
    for counter, arrival in [(1, 0.0), (2, JITTER_MIN_SPACING_S)]:
        record(spaced, counter, arrival)
    assert only_sender(spaced).last_heard_s == JITTER_MIN_SPACING_S


def test_a_batch_goes_on_past_what_is_not_seed_text_and_must_match_its_addresses() -> None:
    accounting = DeliveryAccounting()
    address, name = ALICE
    verdicts = accounting.record_batch([address] * 3, [(name, 1), None, (name, 2)], 0.0)
    assert verdicts == [Verdict.NEW, None, Verdict.NEW]
    with pytest.raises(ValueError, match="differ in length"):
        accounting.record_batch([address], [(name, 3), (name, 4)], 0.0)


def test_one_sender_is_the_smallest_table_and_none_is_refused() -> None:
    accounting = DeliveryAccounting(max_senders=1)
    for port in range(3):
        accounting.record((("10.0.0.1", port), b"spoofed"), 1, float(port))
    assert [sender.port for sender in accounting.senders()] == [2]
    assert accounting.totals().evicted == 2
    with pytest.raises(ValueError) as refused:
        DeliveryAccounting(max_senders=0)
    assert str(refused.value) == "max_senders must be at least 1"


def test_a_full_table_evicts_a_tenth_the_least_active_first() -> None:
    accounting = DeliveryAccounting(max_senders=10)
    ports = list(range(100, 110))
    for port in ports:  # port 109 sends once, 108 twice, ... 100 ten times
        for counter in range(1, 111 - port):
            accounting.record((("10.0.0.1", port), b"x"), counter, float(counter))
    accounting.record((("10.0.0.1", 1), b"x"), 1, 100.0)
    totals = accounting.totals()
    assert (totals.senders, totals.evicted) == (10, 1)
    assert {sender.port for sender in accounting.senders()} == {*ports[:-1], 1}


def test_totals_sum_every_senders_figures() -> None:
    accounting = DeliveryAccounting()
    bob = (("127.0.0.1", 40001), b"bob")
    for key, counters in [(ALICE, [1, 3, 2, 3, 9, 4]), (bob, [5, 6, 1])]:
        for counter in counters:
            accounting.record(key, counter, 0.0)
    assert accounting.totals() == DeliveryTotals(
        senders=2,
        lost=4,
        duplicates=1,
        reordered=1,
        late=1,
        restarts=1,
        loss_runs=LossRuns((1, 0, 0, 0, 1)),  # 2 skipped, then 4 to 8
    )


def test_in_order_counters_open_no_gap_so_an_older_one_stays_open() -> None:
    """Only a skip opens a gap: twice the bound on open gaps in next counters after one skip
    leave that gap open, so its straggler still fills it."""
    accounting, verdicts = feed([1, 3, *range(4, 4 + 2 * MAX_GAPS_PER_SENDER), 2])
    assert verdicts[-1] is Verdict.LATE
    totals = accounting.totals()
    assert (totals.lost, totals.gaps_given_up, totals.late) == (0, 0, 1)


def test_a_sender_silent_for_exactly_the_idle_time_is_evicted_as_silent() -> None:
    """IDLE_EVICTION_S of silence is silent, however active the sender was; half a second
    less is not. The talkers' addresses sort first, so the order of keys decides nothing."""
    now = 1000.0
    accounting = DeliveryAccounting(max_senders=10, seed=3)
    silent, almost = (("10.0.0.9", 1), b"silent"), (("10.0.0.9", 2), b"almost")
    for key, heard in [(silent, now - IDLE_EVICTION_S), (almost, now - IDLE_EVICTION_S + 0.5)]:
        for counter in range(1, 6):
            accounting.record(key, counter, heard)
    for port in range(8):  # talking, once each
        accounting.record((("10.0.0.1", port), b"talker"), 1, now - 1)
    accounting.record((("10.0.0.1", 99), b"new"), 1, now)  # the table is full: one evicted
    names = sorted(sender.username for sender in accounting.senders())
    assert names == ["almost", "new", *["talker"] * 8]


def test_a_sender_admitted_before_outlasts_newcomers_that_sent_as_much() -> None:
    """The least active have the fewest messages in the table plus admissions lately, evicted
    or not: a sender back after its eviction counts its first admission, so it keeps its row
    against one-shot newcomers with as many messages in the table, one after another."""
    accounting = DeliveryAccounting(max_senders=10, seed=4)
    back = (("10.0.0.9", 9), b"back")
    accounting.record(back, 1, 0.0)
    for port in range(8):
        for counter in range(1, 4):
            accounting.record((("10.0.0.1", port), b"steady"), counter, 100.0)
    accounting.record((("10.0.0.2", 0), b"once"), 1, 100.0)  # the table is full
    accounting.record((("10.0.0.2", 1), b"once"), 1, 100.0)  # `back` was silent: evicted
    accounting.record(back, 2, 100.0)  # admitted again: a one-shot is evicted
    for port in range(2, 7):
        accounting.record((("10.0.0.2", port), b"once"), 1, 100.0)  # each evicts a one-shot
    names = sorted(sender.username for sender in accounting.senders())
    assert names == ["back", "once", *["steady"] * 8]
    assert accounting.totals().evicted == 7


def test_ties_are_drawn_at_random_and_a_seed_makes_the_draw_reproducible() -> None:
    def kept(seed: int) -> set[int]:
        accounting = DeliveryAccounting(max_senders=100, seed=seed)
        for port in range(101):  # the 101st evicts 10 of 100 equally active senders
            accounting.record((("10.0.0.1", port), b"x"), 1, 0.0)
        return {sender.port for sender in accounting.senders()}

    assert kept(7) == kept(7)
    assert kept(7) != kept(8)
    assert kept(7) != set(range(10, 101))  # not the first admitted


def test_the_admission_sketch_counts_exactly_for_its_period_then_halves() -> None:
    sketch = _AdmissionSketch(period=4, rng=random.Random(1))
    often, once = ALICE, (("127.0.0.1", 40001), b"once")
    for expected in (1, 2, 3):
        sketch.add(often)
        assert sketch.estimate(often) == expected
    sketch.add(once)  # the period's 4th admission: every counter halves
    assert (sketch.estimate(often), sketch.estimate(once)) == (1, 0)
    for expected in (2, 3, 4):
        sketch.add(often)
        assert sketch.estimate(often) == expected
    sketch.add(once)  # the next period's 4th
    assert (sketch.estimate(often), sketch.estimate(once)) == (2, 0)


def test_a_sketch_counter_stops_at_its_16_bit_ceiling_and_halves_from_there() -> None:
    sketch = _AdmissionSketch(period=0xFFFF + 3, rng=random.Random(1))
    for _ in range(0xFFFF + 2):
        sketch.add(ALICE)
    assert sketch.estimate(ALICE) == 0xFFFF
    sketch.add(ALICE)  # the period's last admission: halved
    assert sketch.estimate(ALICE) == 0x7FFF
    sketch.add(ALICE)
    assert sketch.estimate(ALICE) == 0x8000


@given(counts=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=64), at=st.integers(0, 1023))
def test_halving_a_row_halves_every_counter_and_no_other(counts: list[int], at: int) -> None:
    """The row is halved as one integer (shifted, then masked per counter): the oracle halves
    each counter alone; a run of counters anywhere in the row, the rest zero or full."""
    for background in (0, 0xFFFF):
        row = array("H", [background]) * SKETCH_WIDTH
        row[at : at + len(counts)] = array("H", counts)
        expected = array("H", [background >> 1]) * SKETCH_WIDTH
        expected[at : at + len(counts)] = array("H", [count >> 1 for count in counts])
        _halve(row)
        assert row == expected


def test_a_new_identity_costs_one_digest_and_one_draw_whatever_the_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The slow path an attacker picks at will: with the table full, each new identity takes
    one digest (its admission) and one draw (its tie-break), never one per sender weighed at
    an eviction; a pass over the table weighs each sender by what it holds."""
    accounting = DeliveryAccounting(max_senders=100, seed=6)
    sketch = accounting._admissions
    digests = draws = 0
    slots, draw = sketch._slots, accounting._random.random

    def counted_slots(key: SenderKey) -> tuple[int, ...]:
        nonlocal digests
        digests += 1
        return slots(key)

    def counted_draw() -> float:
        nonlocal draws
        draws += 1
        return draw()

    monkeypatch.setattr(sketch, "_slots", counted_slots)
    monkeypatch.setattr(accounting._random, "random", counted_draw)
    for port in range(1000):  # ten tables' worth: 90 evictions of 10
        accounting.record((("10.0.0.1", port), b"forged"), 1, float(port))
    assert accounting.totals().evicted == 900
    assert (digests, draws) == (1000, 1000)


def admitted_a_quarter_row(seed: int) -> tuple[_AdmissionSketch, dict[SenderKey, int]]:
    """A sketch that admitted 16,384 keys (a quarter of a row's counters) one to three times
    each, and those counts."""
    sketch = _AdmissionSketch(period=1 << 30, rng=random.Random(seed))
    admitted = {(("10.0.0.1", port), b"a"): 1 + port % 3 for port in range(16_384)}
    for key, times in admitted.items():
        for _ in range(times):
            sketch.add(key)
    return sketch, admitted


def test_the_sketch_never_underestimates_and_each_row_spreads_keys_over_all_its_counters() -> None:
    """Each row puts a key on any of its 65,536 counters alike: 16,384 keys take about as many
    of them as uniform draws would, 65,536 * (1 - e^(-1/4)), about 14,500 (within 3%)."""
    sketch, admitted = admitted_a_quarter_row(seed=2)
    assert all(sketch.estimate(key) >= times for key, times in admitted.items())
    uniform = SKETCH_WIDTH * (1 - math.exp(-len(admitted) / SKETCH_WIDTH))
    rows = zip(*(sketch._slots(key) for key in admitted), strict=True)
    taken = [len(set(row)) for row in rows]
    assert len(taken) == SKETCH_ROWS
    assert all(abs(count - uniform) < 0.03 * uniform for count in taken), (taken, uniform)


def test_the_sketchs_rows_rarely_all_overcount_the_same_key() -> None:
    """Count-min: a row counts a key too often only where another key shares its counter, and
    four rows with their own salts all do so rarely. At a quarter load each row is 22% taken,
    so about 0.2% of keys (0.22⁴) are over-counted, or estimated above 0 when never admitted;
    rows that agree would make that 22%."""
    sketch, admitted = admitted_a_quarter_row(seed=2)
    over = sum(sketch.estimate(key) > times for key, times in admitted.items())
    assert over < 0.01 * len(admitted)
    never = [(("10.0.0.2", port), b"n") for port in range(10_000)]
    assert sum(sketch.estimate(key) > 0 for key in never) < 0.01 * len(never)


def test_where_a_sender_counts_in_the_sketch_depends_on_its_secret() -> None:
    """A forger who knows the hash but not the server's random key cannot work out offline
    which identities share counters: another key puts the same senders elsewhere."""
    keys = [(("10.0.0.1", port), b"a") for port in range(100)]

    def slots(seed: int) -> list[tuple[int, ...]]:
        sketch = _AdmissionSketch(period=1 << 30, rng=random.Random(seed))
        return [sketch._slots(key) for key in keys]

    assert slots(1) == slots(1)
    assert (
        sum(
            a == b
            for one, two in zip(slots(1), slots(2), strict=True)
            for a, b in zip(one, two, strict=True)
        )
        < 10
    )


def test_the_admission_sketch_takes_half_a_mebibyte_however_large_the_table() -> None:
    """SECURITY.md: 512 KiB, 4 rows of 65,536 16-bit counters, whatever ``max_senders``
    (an array built from bytes keeps a sixteenth more room)."""
    DeliveryAccounting(max_senders=1)  # whatever a first call allocates once
    sizes = []
    tracemalloc.start()
    try:
        for max_senders in (1, 100_000):
            before = tracemalloc.get_traced_memory()[0]
            accounting = DeliveryAccounting(max_senders)
            sizes.append(tracemalloc.get_traced_memory()[0] - before)
            del accounting
    finally:
        tracemalloc.stop()
    assert all(512 * 1024 <= size <= 576 * 1024 for size in sizes), sizes


@given(
    skips=st.lists(
        st.lists(st.integers(min_value=0, max_value=LOSS_RUN_CAP + 5), max_size=40),
        min_size=1,
        max_size=4,
    )
)
def test_loss_runs_are_the_skipped_stretches_by_length_evicted_senders_kept(
    skips: list[list[int]],
) -> None:
    """Oracle: each sender counts up, skipping ``skip`` counters before each message; a
    stretch of n skipped is one run of n (of the cap, when longer). One sender fits the table:
    the others are evicted as they come, and the totals keep their runs."""
    accounting = DeliveryAccounting(max_senders=1)
    expected_total: dict[int, int] = {}
    for port, sender_skips in enumerate(skips):
        key: SenderKey = (("10.0.0.1", port), b"x")
        counter, expected = 1, dict[int, int]()
        accounting.record(key, counter, 0.0)
        for skip in sender_skips:
            counter += skip + 1
            accounting.record(key, counter, 0.0)
            if skip:
                length = min(skip, LOSS_RUN_CAP)
                expected[length] = expected.get(length, 0) + 1
        for length, runs in expected.items():
            expected_total[length] = expected_total.get(length, 0) + runs
        (row,) = (sender for sender in accounting.senders() if sender.port == port)
        assert row.loss_runs.by_length() == expected
    assert accounting.totals().loss_runs.by_length() == expected_total


def test_loss_runs_add_and_subtract_as_histograms() -> None:
    earlier, later = LossRuns((1, 2)), LossRuns((1, 3, 0, 4))
    assert (later - earlier).by_length() == {2: 1, 4: 4}
    assert (earlier + later).counts == (2, 5, 0, 4)
    assert (later - later).counts == ()
    assert LossRuns.of([0, 0, 0]) == LossRuns()


def test_a_sender_with_every_gap_open_and_its_loss_runs_fits_its_memory_bound() -> None:
    """SENDER_BYTES is what server.memory_bound_bytes counts per sender: a sender at its worst
    (every gap open, its run histogram made) stays within it, its key included."""
    accounting = DeliveryAccounting()
    for counter in (1, 3):  # what the first sender and first gap allocate once
        accounting.record((("10.0.0.1", 1), b"y"), counter, 0.0)
    key: SenderKey = (("255.255.255.255", 65535), b"x" * 32)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for counter in range(1, 2 * MAX_GAPS_PER_SENDER + 4, 2):
            accounting.record((key[0], key[1] + b""), counter, 0.0)
        size = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert accounting.totals().gaps_given_up > 0
    assert size <= SENDER_BYTES, size
