"""The receiving end: the ``DatagramProtocol`` on the event-loop thread.

It does only the cheap work, so that it can keep draining the socket: a size check, the
admission check where the config asks for one, and handing the datagrams to the
:class:`~udpchat.pipeline.Dispatcher` in batches. It has two entry points. Any asyncio
transport calls :meth:`Receiver.datagram_received` once per datagram; those of one loop
iteration are handed over as one batch, and while the queue is full each is counted as
``queue_full`` before anything is built for it (uvloop's datagram transport cannot pause
reading; this is the cheapest point left). The batch reader's transport
(:class:`~udpchat.transport.BatchTransport`, where the fast path is compiled) calls
:meth:`Receiver.datagrams_received` once per read, and the dispatcher keeps what fits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
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

    def __call__(self, reason: DropReason, size: int, address: Any) -> None:
        log = self._logs[reason]
        suppressed = log.due()
        if suppressed is not None:
            log.log(self._why[reason].format(size=size, ip=plain_ip(address[0])), None, suppressed)


class Receiver(asyncio.DatagramProtocol):
    """Size-check and append to the next batch; shed when the queue is full.

    Subclass it or wrap it like any ``DatagramProtocol``: every datagram it takes, by either
    entry point, is counted as received and ends as handled or dropped.
    """

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
        self.transport: asyncio.BaseTransport | None = None
        """The transport reading for it, once connected."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self._slow_checks or not 0 < len(data) <= self._max_size:
            refusal = self._refusal(len(data), addr)
            if refusal is not None:
                self._refuse(refusal, len(data), addr)
                return
        batch = self._batch
        batch.append((data, addr))
        if len(batch) == 1:
            self._loop.call_soon(self.dispatch)
        elif len(batch) >= self._max_batch:
            self.dispatch()

    def datagrams_received(
        self, datagrams: list[tuple[bytes, Address]], refused: Sequence[tuple[int, Address]] = ()
    ) -> None:
        """The batch entry point: the datagrams one read of the socket took, in order, as
        ``(data, address)``; ``refused`` gives the ``(size, address)`` of those it read but did
        not copy, being empty or over ``max_datagram_size``. The list becomes the dispatcher's:
        the caller must not touch it again."""
        for size, addr in refused:
            refusal = self._refusal(size, addr)
            assert refusal is not None, "only a datagram outside the size bounds is refused"
            self._refuse(refusal, size, addr)
        if self._admission is not None and not self._dispatcher.full:
            # a full queue drops them all before admission, as datagram_received does: no
            # sender spends rate-limit tokens on datagrams never delivered
            datagrams = [entry for entry in datagrams if self._admitted(entry)]
        if datagrams:
            self.dispatch()  # what datagram_received took before, if anything, goes first
            self._submit(datagrams)

    def _admitted(self, entry: tuple[bytes, Address]) -> bool:
        data, addr = entry
        assert self._admission is not None
        refusal = self._admission.refusal(plain_ip(addr[0]))
        if refusal is not None:
            self._refuse(refusal, len(data), addr)
        return refusal is None

    def _refuse(self, refusal: DropReason, size: int, addr: Any) -> None:
        self._tally.refuse(refusal)
        self._notices(refusal, size, addr)

    def _refusal(self, size: int, addr: Any) -> DropReason | None:
        """Why a datagram of ``size`` bytes that failed the fast checks is dropped; None to take
        it after all."""
        if size == 0:
            return DropReason.EMPTY
        if size > self._max_size:
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
            self._submit(batch)

    def _submit(self, batch: list[tuple[bytes, Address]]) -> None:
        self._dispatcher.submit(batch, time.time())
        if self._dispatcher.full:
            self._shedding = self._slow_checks = True
            self._notices(DropReason.QUEUE_FULL, 0, batch[0][1])

    def error_received(self, exc: Exception) -> None:
        logger.warning("socket error: %s", exc)
