"""Who may reach the handler: an allow-list of networks and a per-source token bucket.

Pure logic with bounded tables; the event-loop thread calls :meth:`Admission.refusal` for each
datagram before it is queued, so refused floods never take queue space from legitimate senders.
What each table's bound refuses is counted (:class:`~udpchat.counters.AdmissionStats`).
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from udpchat.counters import AdmissionStats, DropReason, Tally

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_MAX_SOURCES = 65536
"""Sources remembered by the rate limiter and the allow-list cache, at most."""
SOURCE_BYTES = 256
"""Memory for one entry of the admission tables (rate limiter, allow-list cache)."""


def parse_network(text: str) -> IPNetwork:
    """``10.0.0.0/8``, ``::1/128`` or a bare address (one host); ValueError says what is wrong."""
    return ipaddress.ip_network(text.strip(), strict=False)


class SourceFilter:
    """Accepts sources inside any of the allowed networks; decisions are cached per address."""

    def __init__(
        self,
        networks: Sequence[IPNetwork],
        max_cached: int = DEFAULT_MAX_SOURCES,
        tally: Tally[AdmissionStats] | None = None,
    ) -> None:
        self._networks = tuple(networks)
        self._cache: dict[str, bool] = {}
        self._max_cached = max_cached
        self._tally = tally or Tally(AdmissionStats)

    def allows(self, ip: str) -> bool:
        allowed = self._cache.get(ip)
        if allowed is None:
            try:
                address = ipaddress.ip_address(ip.split("%", 1)[0])
            except ValueError:
                return False
            allowed = any(address in network for network in self._networks)
            if len(self._cache) >= self._max_cached:
                self._cache.clear()
                self._tally.add("allow_cache_resets")
            self._cache[ip] = allowed
        return allowed


class RateLimiter:
    """A token bucket per source: ``rate_per_s`` messages a second, bursts of ``burst``.

    At most ``max_sources`` buckets are kept; when full, the oldest is evicted (counted as
    ``sources_evicted``) and that source starts again with a full bucket, so spoofed sources
    can cost us a bounded table and nothing more. Not thread-safe: its owner holds a lock
    where needed.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: float | None = None,
        max_sources: int = DEFAULT_MAX_SOURCES,
        tally: Tally[Any] | None = None,
    ) -> None:
        """``tally`` counts ``sources_evicted`` (the admission's, or ``--echo``'s)."""
        if rate_per_s <= 0:
            raise ValueError("rate must be positive")
        self.rate_per_s = rate_per_s
        self.burst = burst if burst is not None else max(1.0, rate_per_s)
        self.max_sources = max_sources
        self._tally = tally or Tally(AdmissionStats)
        self._buckets: dict[Hashable, list[float]] = {}
        self._order: deque[Hashable] = deque()
        """The sources in the order they were added, so the oldest is evicted in constant time:
        taking the dict's first key instead scans the slots its earlier deletions left (with
        65,536 sources under churn, 44-86 us a datagram against 1-2 us)."""

    def allow(self, source: Hashable, now: float) -> bool:
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                del self._buckets[self._order.popleft()]
                self._tally.add("sources_evicted")
            self._buckets[source] = [self.burst - 1.0, now]
            self._order.append(source)
            return True
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate_per_s)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    @property
    def sources(self) -> int:
        return len(self._buckets)


@dataclass(slots=True)
class TokenBucket:
    """``rate_per_s`` tokens a second, up to ``burst``. Not thread-safe: its owner holds a lock."""

    rate_per_s: float
    burst: float
    tokens: float
    refilled_at: float

    @classmethod
    def full(cls, rate_per_s: float, burst: float, now: float) -> TokenBucket:
        return cls(rate_per_s, burst, burst, now)

    def take(self, amount: float, now: float, keep: float = 0.0) -> bool:
        """Take ``amount`` tokens if there are that many now, and ``keep`` more left after;
        False (taking none) if not."""
        self.tokens = min(self.burst, self.tokens + (now - self.refilled_at) * self.rate_per_s)
        self.refilled_at = now
        if self.tokens < amount + keep:
            return False
        self.tokens -= amount
        return True


class Admission:
    """The allow-list, then the rate limit; says why a datagram is refused, or None to admit it."""

    def __init__(
        self,
        networks: Sequence[IPNetwork],
        rate_per_s: float | None,
        burst: float | None,
        max_sources: int,
        clock: Callable[[], float],
    ) -> None:
        self._tally = Tally(AdmissionStats)
        self._filter = SourceFilter(networks, max_sources, self._tally) if networks else None
        self._limiter = None
        if rate_per_s is not None:
            self._limiter = RateLimiter(rate_per_s, burst, max_sources, self._tally)
        self._clock = clock

    def stats(self) -> AdmissionStats:
        sources = 0 if self._limiter is None else self._limiter.sources
        return self._tally.snapshot(sources=sources)

    def refusal(self, ip: str) -> DropReason | None:
        if self._filter is not None and not self._filter.allows(ip):
            return DropReason.NOT_ALLOWED
        if self._limiter is not None and not self._limiter.allow(ip, self._clock()):
            return DropReason.RATE_LIMITED
        return None
