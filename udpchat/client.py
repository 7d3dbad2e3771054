"""The async client: sends the seed's messages on a steady timer, or single texts on demand."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from types import TracebackType

from udpchat.wire import COOKIE, JOIN, JOINED, LEAVE, decode, format_message, relay_join_request

logger = logging.getLogger("udpchat.client")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5002
DEFAULT_INTERVAL_S = 1.0
JOIN_ATTEMPTS = 3
JOIN_TIMEOUT_S = 1.0
JOIN_QUEUE_SIZE = 16


class JoinError(OSError):
    """The relay server did not answer a join."""


class _SendProtocol(asyncio.DatagramProtocol):
    """Reports ICMP errors (nothing listening) once per streak, not once per datagram, and
    passes what the server sends back (relayed messages, join answers) to the client."""

    def __init__(self, on_error: Callable[[Exception], None] | None) -> None:
        self._on_error = on_error
        self.send_errors = 0
        self.in_error = False
        self.on_datagram: Callable[[bytes], None] | None = None

    def datagram_received(self, data: bytes, addr: object) -> None:
        if self.on_datagram is not None:
            self.on_datagram(data)

    def error_received(self, exc: Exception) -> None:
        self.send_errors += 1
        if not self.in_error:
            self.in_error = True
            if self._on_error is not None:
                self._on_error(exc)


class Client:
    """A connected UDP sender: ``async with Client(host, port) as client: client.send(text)``.

    The socket is connected, so the OS reports "nothing listens there" (ICMP port unreachable)
    to :attr:`send_errors` and ``on_error``, and sending goes on regardless, as UDP does.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.sent = 0
        self._protocol = _SendProtocol(on_error)
        self._errors_at_last_send = 0
        self._transport: asyncio.DatagramTransport | None = None

    @property
    def send_errors(self) -> int:
        return self._protocol.send_errors

    async def open(self) -> None:
        # Resolved here rather than by the loop, so that every loop reports the same errors.
        family, _, _, _, address = (
            await asyncio.to_thread(
                socket.getaddrinfo, self.host, self.port, type=socket.SOCK_DGRAM
            )
        )[0]
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: self._protocol, remote_addr=(str(address[0]), int(address[1])), family=family
        )

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def send(self, text: str) -> None:
        """Send one text as one datagram."""
        if self._transport is None:
            raise RuntimeError("the client is not open")
        protocol = self._protocol
        if protocol.in_error and protocol.send_errors == self._errors_at_last_send:
            protocol.in_error = False  # the previous send drew no error: the peer is back
        self._errors_at_last_send = protocol.send_errors
        self._transport.sendto(text.encode("utf-8"))
        self.sent += 1

    async def join_room(
        self,
        on_text: Callable[[str], None],
        *,
        attempts: int = JOIN_ATTEMPTS,
        timeout_s: float = JOIN_TIMEOUT_S,
    ) -> None:
        """Join a ``serve --relay`` room: ask for a cookie, echo it, and from then on pass each
        relayed text (``[ip] text``, not yet escaped for display) to ``on_text``.

        Raises :class:`JoinError` when the server does not answer, as UDP cannot tell.
        """
        answers: asyncio.Queue[str] = asyncio.Queue(maxsize=JOIN_QUEUE_SIZE)
        joined = False

        def receive(data: bytes) -> None:
            text, _ = decode(data)
            if joined and not text.startswith("/"):
                on_text(text)
            elif not answers.full():
                answers.put_nowait(text)

        self._protocol.on_datagram = receive
        request = relay_join_request()
        for _ in range(attempts):
            self.send(request)
            cookie = await self._answer(answers, COOKIE, timeout_s)
            if cookie is None:
                continue
            self.send(f"{JOIN} {cookie}")
            if await self._answer(answers, JOINED, timeout_s) is not None:
                joined = True
                return
        raise JoinError(f"no answer to {JOIN} from {self.host} port {self.port}")

    @staticmethod
    async def _answer(answers: asyncio.Queue[str], command: str, timeout_s: float) -> str | None:
        """The argument of the next answer that is ``command``; None after the timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    text = await answers.get()
                    name, _, argument = text.partition(" ")
                    if name == command:
                        return argument
        except TimeoutError:
            return None

    def leave_room(self) -> None:
        if self._transport is not None:
            self.send(LEAVE)

    async def send_every(
        self,
        username: str,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        count: int | None = None,
        on_sent: Callable[[str], None] | None = None,
    ) -> int:
        """Send ``username: pesan ke-N`` for N = 1, 2, ... every ``interval_s``; returns how many.

        Send times are fixed on a grid from the start, so the time spent sending does not add
        up to drift. After a stall longer than one interval the grid restarts instead of bursting.
        """
        loop = asyncio.get_running_loop()
        next_send = loop.time()
        counter = 0
        while count is None or counter < count:
            counter += 1
            text = format_message(username, counter)
            self.send(text)
            if on_sent is not None:
                on_sent(text)
            if count is not None and counter >= count:
                break
            next_send += interval_s
            now = loop.time()
            if now - next_send > interval_s:
                next_send = now
            await asyncio.sleep(max(0.0, next_send - now))
        return counter

    async def __aenter__(self) -> Client:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
