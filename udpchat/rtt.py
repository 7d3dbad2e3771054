"""``send --rtt``: round-trip times from a ``serve --echo`` server's answers.

The seed's text stays as it is on the wire: the client remembers when it sent each of its last
:data:`RTT_WINDOW` counters, and an answer carrying one of them (the server echoes the datagram
itself) is a round trip. Pure logic with a clock passed in; the loop thread adds, a recorder's
thread takes each interval's samples, under one lock.

The run's distribution is kept in a histogram of 1 % wide buckets from 1 µs to 100 s (1,854
counters, whatever the run's length): min and max are exact, a percentile is the upper edge of
its bucket, so within 1 % above the exact one.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from array import array
from dataclasses import dataclass

from udpchat.wire import split_seed

RTT_WINDOW = 4096
"""Send times remembered: an answer to an older message counts as unmatched."""
BUCKET_RATIO = 1.01
LOWEST_S = 1e-6
HIGHEST_S = 100.0
BUCKETS = math.ceil(math.log(HIGHEST_S / LOWEST_S) / math.log(BUCKET_RATIO)) + 1
DEFAULT_SAMPLES_PER_INTERVAL = 1000
MAX_SAMPLES_PER_INTERVAL = 100_000


class RttHistogram:
    """Round trips in log-spaced buckets: bounded memory for any number of samples."""

    def __init__(self) -> None:
        self.counts = array("Q", bytes(8 * BUCKETS))
        self.count = 0
        self.min_s = math.inf
        self.max_s = 0.0

    def add(self, rtt_s: float) -> None:
        self.counts[_bucket(rtt_s)] += 1
        self.count += 1
        self.min_s = min(self.min_s, rtt_s)
        self.max_s = max(self.max_s, rtt_s)

    def percentile(self, fraction: float) -> float:
        """The round trip at or below which ``fraction`` of them were (within 1 % above)."""
        if not self.count:
            return math.nan
        rank = max(1, math.ceil(fraction * self.count))
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return min(max(LOWEST_S * BUCKET_RATIO ** (index + 1), self.min_s), self.max_s)
        return self.max_s


def _bucket(rtt_s: float) -> int:
    if rtt_s <= LOWEST_S:
        return 0
    return min(BUCKETS - 1, int(math.log(rtt_s / LOWEST_S) / math.log(BUCKET_RATIO)))


@dataclass(frozen=True, slots=True)
class RttCounts:
    replies: int
    """Answers that carried a message we sent and had not heard back: one sample each."""
    duplicate_replies: int
    """Answers to a message already answered (the link duplicated one)."""
    unmatched_replies: int
    """Answers to no message we remember: older than :data:`RTT_WINDOW`, or not ours."""


class RoundTrips:
    """The send times of a sender's last messages, and the round trips their answers made."""

    def __init__(
        self, username: str, samples_per_interval: int = DEFAULT_SAMPLES_PER_INTERVAL
    ) -> None:
        self._username = username
        self._samples_per_interval = samples_per_interval
        self._counters = array("q", [-1] * RTT_WINDOW)
        self._sent_at = array("d", bytes(8 * RTT_WINDOW))
        self._answered = bytearray(RTT_WINDOW)
        self._lock = threading.Lock()
        self.histogram = RttHistogram()
        self._samples: list[float] = []
        self._left_out = 0
        self._duplicates = 0
        self._unmatched = 0
        self.outstanding = 0
        """Messages sent and not answered yet, among the remembered ones."""

    def sent(self, text: str, at_s: float) -> None:
        """``text`` (``name: pesan ke-N``) went out at ``at_s``."""
        seed = split_seed(text)
        if seed is None:
            return
        slot = seed[1] % RTT_WINDOW
        with self._lock:
            if self._counters[slot] >= 0 and not self._answered[slot]:
                self.outstanding -= 1  # forgotten unanswered
            self._counters[slot], self._sent_at[slot], self._answered[slot] = seed[1], at_s, 0
            self.outstanding += 1

    def received(self, data: bytes, at_s: float) -> float | None:
        """An answer arrived at ``at_s``: its round trip, or None when it is not one."""
        seed = split_seed(data.decode("utf-8", "replace"))
        slot = -1 if seed is None else seed[1] % RTT_WINDOW
        with self._lock:
            if seed is None or seed[0] != self._username or self._counters[slot] != seed[1]:
                self._unmatched += 1
                return None
            if self._answered[slot]:
                self._duplicates += 1
                return None
            self._answered[slot] = 1
            self.outstanding -= 1
            rtt_s = at_s - self._sent_at[slot]
            self.histogram.add(rtt_s)
            if len(self._samples) < self._samples_per_interval:
                self._samples.append(rtt_s)
            else:
                self._left_out += 1
        return rtt_s

    def counts(self) -> RttCounts:
        with self._lock:
            return RttCounts(self.histogram.count, self._duplicates, self._unmatched)

    def counts_by_name(self) -> dict[str, int]:
        """:meth:`counts` by the names :class:`~udpchat.counters.ClientStats` gives them."""
        return dataclasses.asdict(self.counts())

    def take_interval(self) -> tuple[list[float], int]:
        """The round trips since the last call (at most ``samples_per_interval``), and how many
        more there were."""
        with self._lock:
            samples, left_out = self._samples, self._left_out
            self._samples, self._left_out = [], 0
        return samples, left_out

    def summary(self, sent: int) -> str:
        """``rtt: replies=9/10 min=40.1ms p50=41.9ms p99=49.8ms max=50.2ms``."""
        histogram = self.histogram
        line = f"rtt: replies={histogram.count}/{sent}"
        if histogram.count:
            figures = (
                ("min", histogram.min_s),
                ("p50", histogram.percentile(0.5)),
                ("p99", histogram.percentile(0.99)),
                ("max", histogram.max_s),
            )
            line += "".join(f" {name}={value * 1000:.3f}ms" for name, value in figures)
        counts = self.counts()
        if counts.duplicate_replies or counts.unmatched_replies:
            line += f" duplicates={counts.duplicate_replies} unmatched={counts.unmatched_replies}"
        return line
