"""Delivery accounting: what the network did to each sender's messages, read from the counter.

The seed's ``pesan ke-N`` numbers each sender's messages, so the server can tell, per sender
(address + username), how many were lost so far, duplicated, reordered or late, and how
unevenly they arrived (jitter). Pure logic, no I/O and no locks: the server calls
:meth:`DeliveryAccounting.record` for each message in arrival order from one thread at a time.

Rules, per sender:

- the first counter seen starts a session; counters before it are not counted as lost (we may
  have joined mid-stream);
- a counter above the highest so far is ``new``; the counters it skips become a gap, lost until
  they arrive;
- a counter that fills a gap is ``reordered`` when it is at most :data:`REORDER_WINDOW` behind
  the highest (a small swap on the way), ``late`` when further behind (a straggler);
- a counter already seen is a ``duplicate``;
- a ``pesan ke-1`` that fills no gap is the client restarting: a new session, not a reorder.

At most :data:`MAX_GAPS_PER_SENDER` gaps stay open per sender; a counter from a gap given up on
counts as late and leaves ``lost`` as it was (it may be a straggler or a duplicate).
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import hashlib
import heapq
import random
import struct
import sys
from array import array
from typing import Any

from udpchat.counters import LOSS_RUN_CAP, DeliveryTotals, LossRuns, SenderStats
from udpchat.fastpath import account_next
from udpchat.wire import SeedFields

REORDER_WINDOW = 3
"""How far behind the highest counter a gap filler may be and still count as reordered, not
late: like TCP's duplicate-ACK threshold, three positions."""
MAX_GAPS_PER_SENDER = 64
"""Open gaps remembered per sender; beyond it the oldest is closed, its messages lost for good."""
DEFAULT_MAX_SENDERS = 10_000
"""Senders tracked at once; when full, the least active are evicted and counted."""
SENDER_BYTES = 2048
"""Memory for one sender's delivery state with its 64 gaps open and its loss-run histogram, key
included (measured 1,808 by tests/test_accounting.py)."""
EVICTION_FRACTION = 0.1
"""Share of the table evicted at once when it is full, so that eviction is rare and cheap."""
IDLE_EVICTION_S = 60.0
"""Senders silent this long are evicted before any that still talk: their figures are final."""
SKETCH_ROWS = 4
SKETCH_WIDTH = 1 << 16
"""The admission sketch: 4 rows of 65,536 16-bit counters, 512 KiB however many senders; a
row's counter is a 16-bit slice of one digest of the sender."""
_SLOTS = struct.Struct(f"<{SKETCH_ROWS}H")
SKETCH_PERIOD_PER_SENDER = 10
"""The sketch halves its counters every this many admissions per table entry, so that it
follows the recent past."""
JITTER_GAIN = 1 / 16
"""RFC 3550's smoothing gain for the interarrival jitter estimate."""
JITTER_MIN_SPACING_S = 0.01
"""Jitter is sampled at most this often per sender: arrivals closer together were read in one
burst at the socket, and their spacing says nothing about the network (and sampling each one
would cost more than accounting it)."""


class Verdict(enum.Enum):
    """Where a message stands in its sender's sequence."""

    NEW = "new"
    DUPLICATE = "duplicate"
    REORDERED = "reordered"
    LATE = "late"


SenderKey = tuple[tuple[str, int], bytes]
"""((ip, port), username as UTF-8): one sending client. Bytes, because the fast path reads
the name straight from the datagram and never decodes it."""


class _Sequence:
    """One sender's state. Gaps are kept as sorted, disjoint ``[start, end)`` ranges in two
    machine-integer arrays: 16 bytes a gap, where lists of ints cost 80."""

    __slots__ = (
        "duplicates",
        "first_arrival",
        "first_counter",
        "forgotten_below",
        "gap_ends",
        "gap_starts",
        "gaps_given_up",
        "highest",
        "jitter_s",
        "last_arrival",
        "last_arrival_counter",
        "late",
        "loss_runs",
        "lost",
        "rank",
        "received",
        "reordered",
        "restarts",
        "session_base",
    )

    def __init__(self, counter: int, arrival: float, rank: float) -> None:
        self.rank = rank
        """How often the sender was admitted lately, as the sketch said at its admission, plus a
        random fraction that breaks ties: what eviction weighs beside ``received``."""
        self.received = 1
        self.lost = 0
        self.duplicates = 0
        self.reordered = 0
        self.late = 0
        self.restarts = 0
        self.gaps_given_up = 0
        self.jitter_s = 0.0
        self.loss_runs: array[int] | None = None
        """Runs of skipped counters by length (see :class:`LossRuns`); made at the first."""
        self.start_session(counter, arrival)

    def start_session(self, counter: int, arrival: float) -> None:
        self.session_base = counter
        self.highest = counter
        self.gap_starts = array("q")
        self.gap_ends = array("q")
        self.forgotten_below = counter
        self.first_counter = counter
        self.first_arrival = arrival
        self.last_arrival = arrival
        self.last_arrival_counter = counter

    def fill_gap(self, counter: int) -> bool:
        """Remove ``counter`` from the gaps; False when it was in none."""
        index = bisect.bisect_right(self.gap_starts, counter) - 1
        if index < 0 or counter >= self.gap_ends[index]:
            return False
        start, end = self.gap_starts[index], self.gap_ends[index]
        if start == counter and end == counter + 1:
            del self.gap_starts[index], self.gap_ends[index]
        elif start == counter:
            self.gap_starts[index] = counter + 1
        elif end == counter + 1:
            self.gap_ends[index] = counter
        else:
            self.gap_ends[index] = counter
            self.gap_starts.insert(index + 1, counter + 1)
            self.gap_ends.insert(index + 1, end)
        return True

    def sample_jitter(self, counter: int, arrival: float) -> None:
        """RFC 3550's J += (|D| - J) / 16, where D is how far the time since the last arrival
        is from what the sender's mean interval predicts for the counters it advanced.

        Sampled at most every :data:`JITTER_MIN_SPACING_S`.
        """
        mean_interval = (arrival - self.first_arrival) / (counter - self.first_counter)
        advanced = counter - self.last_arrival_counter
        deviation = arrival - self.last_arrival - advanced * mean_interval
        self.jitter_s += (abs(deviation) - self.jitter_s) * JITTER_GAIN
        self.last_arrival = arrival
        self.last_arrival_counter = counter

    def open_gap(self, start: int, end: int, runs_total: array[int]) -> None:
        """Counters ``start`` to ``end - 1`` did not arrive (yet): a loss run, counted by its
        length here and in ``runs_total`` (every sender's).

        A gap past the highest counter, the common case, goes at the end of the sorted gaps
        without a search: this is the path a flood of skipped counters takes."""
        starts, ends = self.gap_starts, self.gap_ends
        if not starts or start > starts[-1]:
            starts.append(start)
            ends.append(end)
        else:
            index = bisect.bisect_left(starts, start)
            starts.insert(index, start)
            ends.insert(index, end)
        if len(starts) > MAX_GAPS_PER_SENDER:
            self.forgotten_below = ends[0]
            del starts[0], ends[0]
            self.gaps_given_up += 1
        self.lost += end - start
        bucket = min(end - start, LOSS_RUN_CAP) - 1
        runs = self.loss_runs
        if runs is None:
            runs = self.loss_runs = array("Q", bytes(8 * LOSS_RUN_CAP))
        runs[bucket] += 1
        runs_total[bucket] += 1


class _AdmissionSketch:
    """How often each sender was admitted to the table lately, evicted or not: a count-min
    sketch, so that a sender that keeps coming back is told apart from one-shot identities in
    fixed memory. Only admissions count (never the per-message path)."""

    def __init__(self, period: int, rng: random.Random) -> None:
        self._rows = [array("H", bytes(2 * SKETCH_WIDTH)) for _ in range(SKETCH_ROWS)]
        self._keyed = hashlib.blake2b(digest_size=2 * SKETCH_ROWS, key=rng.randbytes(16))
        """BLAKE2b keyed with a random secret, copied for each digest (keying it anew costs a
        third more): each row's counter is its own 16 bits of one keyed digest of the sender,
        so the rows are independent and a forger cannot pick identities that share counters (a
        salt hashed in with Python's ``hash`` gives rows that agree: a tuple's hash is nearly
        linear in its items)."""
        self._period = period
        self._added = 0

    def _slots(self, key: SenderKey) -> tuple[int, ...]:
        (ip, port), name = key
        digest = self._keyed.copy()
        digest.update(f"{ip}|{port}|".encode() + name)
        return _SLOTS.unpack(digest.digest())

    def add(self, key: SenderKey) -> int:
        """Count an admission of ``key``; returns :meth:`estimate` after it (one digest)."""
        estimate = 0xFFFF
        for row, slot in zip(self._rows, self._slots(key), strict=True):
            count = row[slot]
            if count < 0xFFFF:
                count = row[slot] = count + 1
            estimate = min(estimate, count)
        self._added += 1
        if self._added >= self._period:
            self._added = 0
            for row in self._rows:
                _halve(row)
        return estimate

    def estimate(self, key: SenderKey) -> int:
        """At least how often ``key`` was admitted lately (never less, sometimes more)."""
        return min(row[slot] for row, slot in zip(self._rows, self._slots(key), strict=True))


_HALF_MASK = int.from_bytes(b"\xff\x7f" * SKETCH_WIDTH, "little")
"""0x7FFF in every 16-bit counter: what is left of each after the whole row shifts right once.
Its bytes reversed are the same pattern, so it reads the same in either byte order."""


def _halve(row: array[int]) -> None:
    """Halve every 16-bit counter of ``row`` in place: the row as one integer, shifted right
    and masked, so 64 Ki counters cost one big-integer operation (0.2 ms, where a loop over
    them took 30 ms: with a small table the sketch halves every few hundred admissions)."""
    as_int = int.from_bytes(row.tobytes(), sys.byteorder)
    row[:] = array("H", ((as_int >> 1) & _HALF_MASK).to_bytes(2 * len(row), sys.byteorder))


class DeliveryAccounting:
    """Per-sender sequence accounting, bounded to ``max_senders`` senders."""

    def __init__(self, max_senders: int = DEFAULT_MAX_SENDERS, seed: int | None = None) -> None:
        if max_senders < 1:
            raise ValueError("max_senders must be at least 1")
        self._max_senders = max_senders
        self._random = random.Random(seed)
        """Breaks ties among the least active when evicting (a seed makes it reproducible)."""
        self._admissions = _AdmissionSketch(SKETCH_PERIOD_PER_SENDER * max_senders, self._random)
        self._senders: dict[SenderKey, _Sequence] = {}
        self._evicted = DeliveryTotals()
        """What the evicted senders had, so that the totals keep it."""
        self._loss_runs = array("Q", bytes(8 * LOSS_RUN_CAP))
        """Every sender's loss runs by length, evicted ones included: counted as they open, so
        that the totals need no pass over the senders for them."""

    def record(self, key: SenderKey, counter: int, arrival: float) -> Verdict:
        """Account one message and say where it stands; ``arrival`` in seconds, any epoch.

        The module docstring's rules, in its order: a new sender, a counter ahead of the
        highest, one at or behind it (:meth:`_behind`)."""
        sequence = self._senders.get(key)
        if sequence is None:
            self._admit(key, counter, arrival)
            return Verdict.NEW
        sequence.received += 1
        if counter > sequence.highest:
            self._ahead(sequence, counter, arrival)
            return Verdict.NEW
        return self._behind(sequence, counter, arrival)

    def _admit(self, key: SenderKey, counter: int, arrival: float) -> None:
        """A sender not in the table, after making room when it is full."""
        if len(self._senders) >= self._max_senders:
            self._evict(arrival)
        rank = self._admissions.add(key) + self._random.random()
        self._senders[key] = _Sequence(counter, arrival, rank)

    def _ahead(self, sequence: _Sequence, counter: int, arrival: float) -> None:
        """A counter above the highest: what it skipped opens a gap; the jitter is sampled."""
        highest = sequence.highest
        if counter > highest + 1:
            sequence.open_gap(highest + 1, counter, self._loss_runs)
        sequence.highest = counter
        if arrival - sequence.last_arrival >= JITTER_MIN_SPACING_S:
            sequence.sample_jitter(counter, arrival)

    def _behind(self, sequence: _Sequence, counter: int, arrival: float) -> Verdict:
        """A counter at or below the highest: one return per rule, in the docstring's order."""
        if sequence.fill_gap(counter):
            sequence.lost -= 1
            if sequence.highest - counter <= REORDER_WINDOW:
                sequence.reordered += 1
                return Verdict.REORDERED
            sequence.late += 1
            return Verdict.LATE
        base = sequence.session_base
        if counter < base and base - counter <= REORDER_WINDOW:
            # The session's first messages were themselves swapped: extend it downwards.
            if base - counter > 1:
                sequence.open_gap(counter + 1, base, self._loss_runs)
            if sequence.forgotten_below == base:
                sequence.forgotten_below = counter
            sequence.session_base = counter
            sequence.reordered += 1
            return Verdict.REORDERED
        if counter < sequence.forgotten_below and counter > base:
            # In a gap given up on: a straggler or a duplicate, no telling; lost stays as it is.
            sequence.late += 1
            return Verdict.LATE
        if counter == 1:
            sequence.restarts += 1
            sequence.start_session(counter, arrival)
            return Verdict.NEW
        sequence.duplicates += 1
        return Verdict.DUPLICATE

    def record_batch(
        self, addresses: list[Any], seeds: list[SeedFields | None], arrival: float
    ) -> list[Verdict | None]:
        """Account a batch read at one ``arrival`` time, in order; None where a datagram was
        not seed text.

        The common case, a sender's next counter, is settled inline (compiled where a C
        compiler was found: :func:`udpchat.fastpath.account_next`); every other case goes
        through :meth:`record`, so the rules live in one place.
        """
        return account_next(
            self._senders, self.record, addresses, seeds, arrival, JITTER_MIN_SPACING_S, Verdict.NEW
        )

    def _evict(self, now: float) -> None:
        """Forget the least active senders; their figures stay in the totals, their loss also
        under ``evicted_lost``.

        First those silent for :data:`IDLE_EVICTION_S` (their figures are final), then those
        least active: the fewest messages in the table plus admissions lately (evicted or
        not, as the sketch counted them at the sender's admission), ties drawn at random (at
        admission). A forged source address costs an attacker nothing, so a flood of
        identities churns the table; a real sender that keeps talking keeps being admitted
        more often than any one forged identity, and so keeps its row, unless the flood comes
        from more identities than the table holds, each faster than that sender.

        The attacker's lever: one pass over the table per eviction, so 1 /
        :data:`EVICTION_FRACTION` senders weighed per forged identity admitted. Each weighing
        reads two attributes and makes one tuple (no digest, no draw), which keeps a flood of
        identities within a stated factor of a clean flood (SECURITY.md).
        """
        count = max(1, int(self._max_senders * EVICTION_FRACTION))
        horizon = now - IDLE_EVICTION_S
        least_active = heapq.nsmallest(
            count,
            (
                (sequence.last_arrival > horizon, sequence.received + sequence.rank, key)
                for key, sequence in self._senders.items()
            ),
        )
        pop = self._senders.pop
        evicted = [pop(key) for _, _, key in least_active]
        gone = _sum_sequences(evicted, senders=0, evicted=len(evicted))
        self._evicted += dataclasses.replace(gone, evicted_lost=gone.lost)

    def totals(self) -> DeliveryTotals:
        """Summed over the senders tracked now and those evicted; O(senders), for snapshots."""
        current = _sum_sequences(list(self._senders.values()), len(self._senders), 0)
        totals = self._evicted + current
        return dataclasses.replace(totals, loss_runs=LossRuns.of(self._loss_runs))

    def senders(self) -> tuple[SenderStats, ...]:
        return tuple(
            SenderStats(
                ip=ip,
                port=port,
                username=username.decode("utf-8"),
                received=sequence.received,
                highest_counter=sequence.highest,
                lost=sequence.lost,
                duplicates=sequence.duplicates,
                reordered=sequence.reordered,
                late=sequence.late,
                restarts=sequence.restarts,
                jitter_s=sequence.jitter_s,
                last_heard_s=sequence.last_arrival,
                loss_runs=_NO_RUNS
                if sequence.loss_runs is None
                else LossRuns.of(sequence.loss_runs),
            )
            for ((ip, port), username), sequence in self._senders.items()
        )


_NO_RUNS = LossRuns()


def _sum_sequences(sequences: list[_Sequence], senders: int, evicted: int) -> DeliveryTotals:
    return DeliveryTotals(
        senders=senders,
        evicted=evicted,
        lost=sum(sequence.lost for sequence in sequences),
        duplicates=sum(sequence.duplicates for sequence in sequences),
        reordered=sum(sequence.reordered for sequence in sequences),
        late=sum(sequence.late for sequence in sequences),
        restarts=sum(sequence.restarts for sequence in sequences),
        gaps_given_up=sum(sequence.gaps_given_up for sequence in sequences),
    )
