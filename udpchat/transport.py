"""The compiled batch reader as an asyncio datagram transport.

Where the fast path is compiled on Linux, the server reads its socket with ``recvmmsg``: each
time the loop finds the socket readable, one system call takes up to a batch of datagrams
without the GIL (so a pool worker runs while the kernel copies), the bytes and addresses are
built in C, and the protocol gets them in one call,
:meth:`~udpchat.protocol.Receiver.datagrams_received`, instead of one Python call per datagram.
Elsewhere (no compiler, not Linux, ``UDPCHAT_PURE=1``) the loop's own datagram transport reads
one datagram at a time and calls ``datagram_received``.

The reader's memory is fixed: a batch's buffers (at most ``MAX_BATCH_BYTES`` and one datagram)
and a table of 256 source addresses, well under a megabyte, inside the server's base.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from udpchat import fastpath
from udpchat.handlers import Address

if TYPE_CHECKING:
    from udpchat._fastpath import DatagramReader


class BatchProtocol(Protocol):
    """A ``DatagramProtocol`` with a batch entry point, as :class:`BatchTransport` calls it."""

    def connection_made(self, transport: asyncio.DatagramTransport) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...

    def error_received(self, exc: Exception) -> None: ...

    def datagrams_received(
        self, datagrams: list[tuple[bytes, Address]], refused: Sequence[tuple[int, Address]]
    ) -> None: ...


class BatchTransport(asyncio.DatagramTransport):
    """Reads ``sock`` with ``reader`` each time the loop finds it readable.

    :meth:`sendto` never buffers: when the socket's buffer is full the datagram is not sent
    (UDP promises no more) and the protocol's ``error_received`` hears why.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: BatchProtocol,
        reader: DatagramReader,
    ) -> None:
        super().__init__(extra={"socket": sock, "sockname": sock.getsockname(), "peername": None})
        self._loop = loop
        self._sock = sock
        self._fileno = sock.fileno()
        self._protocol = protocol
        self._reader = reader
        self._closing = False
        protocol.connection_made(self)
        loop.add_reader(self._fileno, self._read_ready)

    def _read_ready(self) -> None:
        datagrams: list[tuple[bytes, Address]] = []
        refused: list[tuple[int, Address]] = []
        try:
            self._reader.read(datagrams, refused)
        except OSError as error:  # an ICMP error for an earlier send, say
            self._protocol.error_received(error)
            return
        if datagrams or refused:
            self._protocol.datagrams_received(datagrams, refused)

    def sendto(self, data: Any, addr: Any = None) -> None:
        try:
            if addr is None:
                self._sock.send(data)
            else:
                self._sock.sendto(data, addr)
        except OSError as error:
            self._protocol.error_received(error)

    def get_protocol(self) -> Any:
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Stop reading now; the protocol's ``connection_lost`` and the socket's close follow
        on the next loop iteration, as with asyncio's own transports."""
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fileno)
        self._loop.call_soon(self._finish_close)

    def abort(self) -> None:
        self.close()

    def _finish_close(self) -> None:
        try:
            self._protocol.connection_lost(None)
        finally:
            self._sock.close()


def batch_transport(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    protocol: BatchProtocol,
    *,
    max_datagram_size: int,
    slots: int,
) -> BatchTransport | None:
    """A :class:`BatchTransport` reading up to ``slots`` datagrams of at most
    ``max_datagram_size`` bytes at once; None where the compiled reader is missing (then the
    caller takes the loop's own transport)."""
    if fastpath.DatagramReader is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    reader = fastpath.DatagramReader(sock.fileno(), max_datagram_size, slots)
    return BatchTransport(loop, sock, protocol, reader)
