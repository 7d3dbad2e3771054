"""``serve --echo``: each message in the seed's format answered with itself, once, so that a
client can measure round-trip times (``send --rtt``).

An answer is the datagram's own bytes, never more: the server cannot be used to amplify
traffic. A forged source can still have answers reflected at it, so answers are bounded per
source address by a token bucket (``--echo-rate`` a second, bursts of twice that, as the
relay bounds a member's texts) in a table bounded by ``--max-sources``; what is not answered
is counted. Echoing runs in the pool workers, as a batch handler in front of the server's own.

An answer looks like the message it answers, so another echo server (or this one, from a
forged source) would answer it back, and so on for ever. So no answer is ever answered: each
sender's counter (``name: pesan ke-N`` from one address) is answered once (:class:`Answered`),
and a datagram that is not such a message, which nothing could tell from an answer, never.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from udpchat.admission import RateLimiter
from udpchat.counters import EchoStats, Tally
from udpchat.handlers import Batch, BatchHandler, Handler, as_batch_handler
from udpchat.logs import RateLimitedLog

logger = logging.getLogger("udpchat.echo")

DEFAULT_ECHO_RATE_PER_S = 100.0
"""Answers a second per source address: ``send --interval 0.01`` is answered in full."""
WINDOW = 64
"""Counters below a sender's highest answered that may still be answered, once (a message the
link reordered); further back, none."""
ANSWERED_SENDER_BYTES = 512
"""The most one sender costs in :class:`Answered` (the longest address and username), what the
server's memory bound counts per ``--max-sources`` entry with ``--echo`` (a test measures it)."""

SenderKey = tuple[str, int, bytes]
"""(ip, port, username as UTF-8)."""


class Answered:
    """Which counters of each sender were answered: its highest, and a bit for each of the
    :data:`WINDOW` below it. At most ``max_senders`` senders, the oldest forgotten first (a
    counter of theirs may then be answered once more: an attacker who churns the table to
    keep a loop going sends as much as the loop does). Not thread-safe: its owner locks."""

    def __init__(self, max_senders: int) -> None:
        self.max_senders = max_senders
        self.evicted = 0
        self._senders: dict[SenderKey, list[int]] = {}

    def first_time(self, sender: SenderKey, counter: int) -> bool:
        """Whether ``counter`` of ``sender`` is answered now: True once, never again."""
        entry = self._senders.get(sender)
        if entry is None:
            if len(self._senders) >= self.max_senders:
                del self._senders[next(iter(self._senders))]
                self.evicted += 1
            self._senders[sender] = [counter, 0]
            return True
        highest, below = entry
        if counter > highest:
            shift = counter - highest
            window = (below << shift | 1 << (shift - 1)) if shift <= WINDOW else 0
            entry[0], entry[1] = counter, window & ((1 << WINDOW) - 1)
            return True
        back = highest - counter
        if not 0 < back <= WINDOW or below & 1 << (back - 1):
            return False
        entry[1] = below | 1 << (back - 1)
        return True


Send = Callable[[bytes, tuple[str, int]], bool]
"""Sends a datagram from the server's socket; False when it could not."""


class Echo:
    """A batch handler that answers each message with itself, once, within the rate, then
    hands the batch to ``inner`` (the line printer, a handler of the application's)."""

    def __init__(
        self,
        inner: Handler | BatchHandler | None,
        send: Send,
        rate_per_s: float,
        max_sources: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = as_batch_handler(inner, RateLimitedLog(logger))
        self._send = send
        self._clock = clock
        self._tally = Tally(EchoStats)
        self._limiter = RateLimiter(rate_per_s, 2 * rate_per_s, max_sources, self._tally)
        self._answered = Answered(max_sources)
        self._lock = threading.Lock()
        """Guards the limiter and the answered table: workers handle batches in parallel."""

    def handle_batch(self, batch: Batch) -> int:
        refused: dict[str, int] = dict.fromkeys(("not_seed", "repeated", "over_rate"), 0)
        answers = self._answers(batch, refused)
        echoed = echoed_bytes = failures = 0
        for data, sender in answers:
            if self._send(data, sender):
                echoed += 1
                echoed_bytes += len(data)
            else:
                failures += 1
        with self._tally.lock:
            values = self._tally.values
            values["echoed"] += echoed
            values["echoed_bytes"] += echoed_bytes
            values["send_failures"] += failures
            for reason, count in refused.items():
                values[reason] += count
            values["answered_evicted"] = self._answered.evicted
        return 0 if self._inner is None else self._inner.handle_batch(batch)

    def _answers(
        self, batch: Batch, refused: dict[str, int]
    ) -> list[tuple[bytes, tuple[str, int]]]:
        """The batch's datagrams to answer, and in ``refused`` why the others are not: not a
        message, one answered already, or over the rate."""
        now = self._clock()
        answers = []
        with self._lock:
            for (data, _), sender, seed in zip(
                batch.datagrams, batch.senders, batch.seeds, strict=True
            ):
                if seed is None:
                    refused["not_seed"] += 1
                elif not self._answered.first_time((*sender, seed[0]), seed[1]):
                    refused["repeated"] += 1
                elif not self._limiter.allow(sender[0], now):
                    refused["over_rate"] += 1
                else:
                    answers.append((data, sender))
        return answers

    def stats(self) -> EchoStats:
        return self._tally.snapshot()
