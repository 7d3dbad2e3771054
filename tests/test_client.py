from __future__ import annotations

import asyncio
import socket
import threading

from tests.conftest import LOOPBACK
from udpchat import Client


class BlockingSeedServer:
    """The seed's server design: a plain blocking ``recvfrom(1024)`` loop on its own thread."""

    def __init__(self, expected: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.settimeout(10)
        self.address: tuple[str, int] = self.sock.getsockname()
        self.received: list[bytes] = []
        self._expected = expected
        self._thread = threading.Thread(target=self._receive)
        self._thread.start()

    def _receive(self) -> None:
        with self.sock:
            while len(self.received) < self._expected:
                data, _ = self.sock.recvfrom(1024)
                self.received.append(data)

    async def join(self) -> list[bytes]:
        await asyncio.to_thread(self._thread.join, 10)
        return self.received


async def test_client_sends_seed_messages_to_a_blocking_server() -> None:
    server = BlockingSeedServer(expected=4)
    sent: list[str] = []
    async with Client(*server.address) as client:
        count = await client.send_every("bob", interval_s=0.01, count=4, on_sent=sent.append)
    received = await server.join()
    assert count == 4
    assert sent == [f"bob: pesan ke-{n}" for n in range(1, 5)]
    assert received == [text.encode() for text in sent]


async def test_single_send_is_one_plain_datagram() -> None:
    server = BlockingSeedServer(expected=1)
    async with Client(*server.address) as client:
        client.send("anything at all ✓")
    assert await server.join() == ["anything at all ✓".encode()]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
    return port


async def test_nothing_listening_is_reported_once_and_sending_goes_on() -> None:
    port = free_udp_port()
    errors: list[Exception] = []
    first_error = asyncio.Event()

    def on_error(error: Exception) -> None:
        errors.append(error)
        first_error.set()

    async with Client(LOOPBACK, port, on_error=on_error) as client:
        client.send("a: pesan ke-1")
        await asyncio.wait_for(first_error.wait(), 10)
        await client.send_every("a", interval_s=0.005, count=5)
        assert client.sent == 6
    assert len(errors) == 1
    assert isinstance(errors[0], ConnectionRefusedError)
