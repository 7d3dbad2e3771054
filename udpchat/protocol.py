"""The receiving end: the ``DatagramProtocol`` on the event-loop thread.

It does only the cheap work, so that it can keep draining the socket: a size check, the
admission check where the config asks for one, and appending to the batch of this loop
iteration, which it hands to the :class:`~udpchat.pipeline.Dispatcher` once per iteration.
When the queue is full it sheds load at once: each datagram is counted as ``queue_full``
before anything is built for it, until the workers have made room. (uvloop's datagram transport
cannot pause reading; this is the cheapest point left.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from udpchat.admission import Admission
from udpchat.counters import DropReason, ServerTally
from udpchat.handlers import Address
from udpchat.logs import RateLimitedLog
from udpchat.pipeline import Dispatcher
from udpchat.sockets import plain_ip

logger = logging.getLogger("udpchat.protocol")

NOTICE_INTERVAL_S = 5.0
"""A drop's reason is said on the log at most this often (with how many it left out)."""


class DropNotices:
    """Says on the ``udpchat.protocol`` log, at WARNING, why datagrams are being dropped while
    it happens, not only in the summary: at most once per reason every
    :data:`NOTICE_INTERVAL_S`, naming the setting that governs it and its ``serve`` option, so
    that a student whose message did not appear learns why."""

    def __init__(
        self, *, max_datagram_size: int, queue_size: int, rate_limit_per_s: float | None
    ) -> None:
        self._why = {
            DropReason.EMPTY: "dropped an empty datagram from {ip}",
            DropReason.OVERSIZE: "dropped a datagram of {size} bytes from {ip}: over "
            f"max_datagram_size (--max-size) {max_datagram_size}",
            DropReason.NOT_ALLOWED: "dropped a datagram from {ip}: not in the allow-list (--allow)",
            DropReason.RATE_LIMITED: "dropped a datagram from {ip}: over rate_limit_per_s "
            f"(--rate-limit) {rate_limit_per_s:g}/s"
            if rate_limit_per_s
            else "",
            DropReason.QUEUE_FULL: "dropping datagrams: the workers fell behind by queue_size "
            f"(--queue-size) {queue_size}",
        }
        self._logs = {
            reason: RateLimitedLog(logger, NOTICE_INTERVAL_S, logging.WARNING)
            for reason in self._why
        }

    def __call__(self, reason: DropReason, data: bytes, address: Any) -> None:
        log = self._logs[reason]
        suppressed = log.due()
        if suppressed is not None:
            log.log(
                self._why[reason].format(size=len(data), ip=plain_ip(address[0])), None, suppressed
            )


class Receiver(asyncio.DatagramProtocol):
    """Size-check and append to the next batch; shed when the queue is full."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        tally: ServerTally,
        *,
        max_datagram_size: int,
        admission: Admission | None,
        notices: DropNotices,
    ):
        self._max_size = max_datagram_size
        self._notices = notices
        self._max_batch = dispatcher.max_batch
        self._admission = admission
        self._dispatcher = dispatcher
        self._tally = tally
        self._batch: list[tuple[bytes, Address]] = []
        self._loop = asyncio.get_running_loop()
        self._shedding = False
        self._slow_checks = admission is not None
        """Admission or shedding: every datagram takes :meth:`_refusal`."""

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self._slow_checks or not 0 < len(data) <= self._max_size:
            refusal = self._refusal(data, addr)
            if refusal is not None:
                self._tally.refuse(refusal)
                self._notices(refusal, data, addr)
                return
        batch = self._batch
        batch.append((data, addr))
        if len(batch) == 1:
            self._loop.call_soon(self.dispatch)
        elif len(batch) >= self._max_batch:
            self.dispatch()

    def _refusal(self, data: bytes, addr: Any) -> DropReason | None:
        """Why a datagram that failed the fast checks is dropped; None to take it after all."""
        if not data:
            return DropReason.EMPTY
        if len(data) > self._max_size:
            return DropReason.OVERSIZE
        if self._shedding:
            if self._dispatcher.full:
                return DropReason.QUEUE_FULL
            self._shedding = False
            self._slow_checks = self._admission is not None
        if self._admission is not None:
            return self._admission.refusal(plain_ip(addr[0]))
        return None

    def dispatch(self) -> None:
        """Hand the datagrams read in this loop iteration to the pool; they count as received
        from here, so that ``received == handled + dropped + queue_depth`` at every moment."""
        batch, self._batch = self._batch, []
        if batch:
            self._dispatcher.submit(batch, time.time())
            if self._dispatcher.full:
                self._shedding = self._slow_checks = True
                self._notices(DropReason.QUEUE_FULL, b"", batch[0][1])

    def error_received(self, exc: Exception) -> None:
        logger.warning("socket error: %s", exc)
