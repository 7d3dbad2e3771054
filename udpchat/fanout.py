"""One datagram to many addresses in one ``sendmmsg(2)``, which runs without the GIL.

The relay sends each text to every member of the room. One ``sendto`` a member, in Python,
holds the GIL for each against the event loop, which must read the UDP socket meanwhile (a
text from the bus to 31 members was 31 of them). Here the members' addresses are packed once
for as long as the membership stays the same (the room hands out the same tuple until it
changes), and a text is one call into the C library, which ctypes makes without the GIL.
Where the C library has no ``sendmmsg``, one ``sendto`` an address.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import threading
from collections.abc import Sequence

from udpchat.libc import SENDMMSG, IoVec, MMsgHdr
from udpchat.sockets import sendto_address

Address = tuple[str, int]

_SOCKADDR_IN = struct.Struct("=H2s4s8x")
_SOCKADDR_IN6 = struct.Struct("=H2s4s16sI")


def pack_address(family: int, address: Address) -> bytes:
    """``struct sockaddr_in`` (or ``_in6``) for ``address`` on a socket of ``family``; an IPv4
    address on an IPv6 (dual-stack) socket as ``::ffff:a.b.c.d``. ValueError or OSError for
    what is not an address."""
    ip, port = sendto_address(family, address)[0], struct.pack("!H", address[1])
    if family == socket.AF_INET:
        return _SOCKADDR_IN.pack(socket.AF_INET, port, socket.inet_pton(socket.AF_INET, ip))
    host, _, scope = ip.partition("%")
    scope_id = 0
    if scope:
        scope_id = int(scope) if scope.isdigit() else socket.if_nametoindex(scope)
    packed = socket.inet_pton(socket.AF_INET6, host)
    return _SOCKADDR_IN6.pack(socket.AF_INET6, port, b"\0" * 4, packed, scope_id)


class FanOut:
    """Sends one datagram to many addresses from ``sock``; thread-safe (one call at a time).

    :meth:`close` before the socket is closed: a send after it sends nothing, so that a call
    still running elsewhere can never write to a file descriptor the OS has given to another.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._family = sock.family
        self._lock = threading.Lock()
        self._iovec = IoVec()
        self._headers = (MMsgHdr * 0)()
        self._names: list[ctypes.Array[ctypes.c_char]] = []
        self._prepared: Sequence[Address] = ()
        self._position: dict[Address, int] = {}
        self._unpackable = 0
        """Addresses of the prepared ones that could not be packed (left at the end)."""

    def close(self) -> None:
        with self._lock:
            self._fd = -1

    def send(self, data: bytes, addresses: Sequence[Address], skip: Address | None = None) -> int:
        """``data`` to each of ``addresses`` but ``skip``; how many the kernel took."""
        with self._lock:
            if self._fd < 0 or not addresses:
                return 0
            if SENDMMSG is None:
                return self._send_one_by_one(data, addresses, skip)
            if addresses is not self._prepared:
                self._prepare(addresses)
            self._iovec.iov_base = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
            self._iovec.iov_len = len(data)
            count = len(addresses) - self._unpackable
            skipped = self._position.get(skip, count) if skip is not None else count
            return self._send_range(0, skipped) + self._send_range(skipped + 1, count)

    def _prepare(self, addresses: Sequence[Address]) -> None:
        """Pack each address once into the headers (the ones that cannot be packed last, not
        sent), for as long as the same ``addresses`` object comes."""
        names, position = [], {}
        for address in addresses:
            try:
                names.append(ctypes.create_string_buffer(pack_address(self._family, address)))
            except (ValueError, OSError):
                continue
            position[address] = len(names) - 1
        if len(self._headers) < len(addresses):
            self._headers = (MMsgHdr * len(addresses))()
        for index, name in enumerate(names):
            header = self._headers[index].msg_hdr
            header.msg_name = ctypes.addressof(name)
            header.msg_namelen = len(name) - 1  # create_string_buffer adds a NUL
            header.msg_iov = ctypes.pointer(self._iovec)
            header.msg_iovlen = 1
        self._names, self._position, self._prepared = names, position, addresses
        self._unpackable = len(addresses) - len(names)

    def _send_range(self, start: int, stop: int) -> int:
        """Headers ``start`` to ``stop``, in as few calls as the kernel allows: one refused
        datagram (a full buffer) is passed over and the rest sent on."""
        assert SENDMMSG is not None
        sent = 0
        while start < stop:
            taken = SENDMMSG(self._fd, ctypes.byref(self._headers[start]), stop - start, 0)
            if taken <= 0:
                start += 1
            else:
                sent += taken
                start += taken
        return sent

    def _send_one_by_one(
        self, data: bytes, addresses: Sequence[Address], skip: Address | None
    ) -> int:
        sent = 0
        for address in addresses:
            if address == skip:
                continue
            try:
                self._sock.sendto(data, sendto_address(self._family, address))
            except OSError:
                continue
            sent += 1
        return sent
