"""``serve --echo``: each accepted datagram answered with itself, so that a client can measure
round-trip times (``send --rtt``).

An answer is the datagram's own bytes, never more: the server cannot be used to amplify
traffic. A forged source can still have answers reflected at it, so answers are bounded per
source address by a token bucket (``--echo-rate`` a second, bursts of twice that, as the
relay bounds a member's texts) in a table bounded by ``--max-sources``; what is not answered
is counted. Echoing runs in the pool workers, as a batch handler in front of the server's own.
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

Send = Callable[[bytes, tuple[str, int]], bool]
"""Sends a datagram from the server's socket; False when it could not."""


class Echo:
    """A batch handler that answers each datagram with itself, within the rate, then hands
    the batch to ``inner`` (the line printer, a handler of the application's)."""

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
        self._lock = threading.Lock()
        """Guards the limiter: workers handle batches in parallel."""

    def handle_batch(self, batch: Batch) -> int:
        now = self._clock()
        with self._lock:
            allowed = [self._limiter.allow(ip, now) for ip, _ in batch.senders]
        echoed = echoed_bytes = failures = 0
        for (data, _), sender, allow in zip(batch.datagrams, batch.senders, allowed, strict=True):
            if not allow:
                continue
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
            values["over_rate"] += len(allowed) - sum(allowed)
        return 0 if self._inner is None else self._inner.handle_batch(batch)

    def stats(self) -> EchoStats:
        return self._tally.snapshot()
