"""The batch reader and its transport: what ``recvmmsg`` reads is what ``recvfrom`` would have
read, in order, with the same addresses; what the server reads through it adds up as it does
through the loop's own transport; and the ``DatagramProtocol`` stays one an app can compose."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from support.waiting import EVENT_TIMEOUT_S, eventually, eventually_sync
from tests.helpers import LOOPBACK, Collector, assert_balanced, raw_send
from udpchat import DropReason, Server, ServerConfig, fastpath
from udpchat.protocol import Receiver
from udpchat.transport import BatchTransport

pytestmark = pytest.mark.skipif(
    fastpath.DatagramReader is None, reason="no compiled batch reader here (not Linux, or pure)"
)


@pytest.fixture
def receiving() -> Iterator[socket.socket]:
    """A non-blocking dual-stack socket on ``::``, port 0 (or IPv4 where IPv6 is missing)."""
    if socket.has_ipv6:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((LOOPBACK, 0))
    sock.setblocking(False)
    with sock:
        yield sock


def reader(sock: socket.socket, max_size: int, slots: int) -> Any:
    assert fastpath.DatagramReader is not None
    return fastpath.DatagramReader(sock.fileno(), max_size, slots)


def read_until(
    batch_reader: Any, count: int
) -> tuple[list[tuple[bytes, Any]], list[Any], list[int]]:
    """Read until ``count`` datagrams came (refused ones included), within the deadline; then
    check that a read finds nothing more."""
    datagrams: list[tuple[bytes, Any]] = []
    refused: list[tuple[int, Any]] = []
    counts: list[int] = []

    def all_came() -> bool:
        if got := batch_reader.read(datagrams, refused):
            counts.append(got)
        return sum(counts) >= count

    eventually_sync(all_came, what=f"{count} datagrams arrive")
    assert batch_reader.read(datagrams, refused) == 0
    return datagrams, refused, counts


def test_the_reader_reads_what_recvfrom_reads(receiving: socket.socket) -> None:
    """Same bytes, same order, same address tuples (IPv4 through the dual-stack socket, and
    IPv6), at most ``slots`` a read."""
    port = receiving.getsockname()[1]
    payloads = [b"a: pesan ke-%d" % n for n in range(1, 12)] + [b"\x00\xff" * 300]
    targets = [("127.0.0.1", port)] + (
        [("::1", port)] if receiving.family == socket.AF_INET6 else []
    )
    senders = [
        socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        for host, _ in targets
    ]

    def send_all() -> int:
        for sender, target in zip(senders, targets, strict=True):
            for payload in payloads:
                sender.sendto(payload, target)
        return len(payloads) * len(targets)

    try:
        datagrams, refused, counts = read_until(reader(receiving, 1024, 5), send_all())
        receiving.settimeout(EVENT_TIMEOUT_S)
        expected = [receiving.recvfrom(2048) for _ in range(send_all())]
    finally:
        for sender in senders:
            sender.close()
    assert datagrams == expected
    assert refused == []
    assert max(counts) == 5


def test_empty_and_oversize_datagrams_come_back_as_their_size(receiving: socket.socket) -> None:
    port = receiving.getsockname()[1]
    raw_send(("127.0.0.1", port), b"", b"x" * 10, b"y" * 11, b"z" * 3000)
    datagrams, refused, _ = read_until(reader(receiving, 10, 8), 4)
    assert [data for data, _ in datagrams] == [b"x" * 10]
    assert [size for size, _ in refused] == [0, 11, 3000]


def test_more_sources_than_the_address_table_keep_their_own_addresses(
    receiving: socket.socket,
) -> None:
    """300 source ports (the table has 256 slots): each datagram carries its own port."""
    port = receiving.getsockname()[1]
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(300)]
    try:
        for sender in senders:
            sender.bind((LOOPBACK, 0))
        batch_reader = reader(receiving, 64, 64)
        for _ in range(2):  # the second round finds the first one's addresses in the table
            for chunk in range(0, len(senders), 100):  # within the default receive buffer
                group = senders[chunk : chunk + 100]
                for sender in group:
                    sender.sendto(str(sender.getsockname()[1]).encode(), (LOOPBACK, port))
                datagrams, _, _ = read_until(batch_reader, len(group))
                assert [(int(data), address[1]) for data, address in datagrams] == [
                    (sender.getsockname()[1],) * 2 for sender in group
                ]
    finally:
        for sender in senders:
            sender.close()


def test_a_socket_error_is_raised_then_reading_goes_on() -> None:
    """An ICMP port unreachable for an earlier send comes back from the read as OSError."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        sock.setblocking(False)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
            closed.bind((LOOPBACK, 0))
            gone = closed.getsockname()
        sock.connect(gone)
        sock.send(b"nobody is there")
        batch_reader = reader(sock, 64, 4)

        def refused() -> bool:
            batch_reader.read([], [])  # raises once the ICMP error came
            return False

        with pytest.raises(ConnectionRefusedError):
            # The ICMP error comes in a softirq, which a busy machine may run after send returns.
            eventually_sync(refused)
        assert batch_reader.read([], []) == 0


def test_the_reader_refuses_nonsense() -> None:
    assert fastpath.DatagramReader is not None
    with pytest.raises(ValueError, match="at least 1"):
        fastpath.DatagramReader(0, 0, 4)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        batch_reader = reader(sock, 8, 1)
        with pytest.raises(TypeError):
            batch_reader.read(None, [])


class Recorder(asyncio.DatagramProtocol):
    """A protocol that keeps what the batch transport gives it."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[bytes, Any]]] = []
        self.refused: list[tuple[int, Any]] = []
        self.errors: list[Exception] = []
        self.lost = asyncio.Event()

    def datagrams_received(self, datagrams: list[tuple[bytes, Any]], refused: Any) -> None:
        self.batches.append(datagrams)
        self.refused.extend(refused)

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()


async def test_the_transport_reads_sends_and_closes() -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.setblocking(False)
    recorder = Recorder()
    transport = BatchTransport(loop, sock, recorder, reader(sock, 16, 4))
    assert transport.get_extra_info("sockname") == sock.getsockname()
    assert transport.get_protocol() is recorder
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind((LOOPBACK, 0))
        peer.settimeout(10)
        for payload in (b"one", b"two", b"x" * 17):
            peer.sendto(payload, sock.getsockname())
        await eventually(lambda: sum(map(len, recorder.batches)) == 2 and recorder.refused != [])
        transport.sendto(b"back", peer.getsockname())
        assert peer.recvfrom(64)[0] == b"back"
        transport.sendto(b"nowhere", ("127.0.0.1", 0))  # refused by the OS: reported, not raised
    assert [data for batch in recorder.batches for data, _ in batch] == [b"one", b"two"]
    assert [size for size, _ in recorder.refused] == [17]
    assert len(recorder.errors) == 1
    transport.close()
    assert transport.is_closing()
    await asyncio.wait_for(recorder.lost.wait(), 10)
    assert sock.fileno() == -1


async def test_the_server_reads_in_batches_and_everything_adds_up(collector: Collector) -> None:
    """Through the batch reader: seed text is handled, an empty and an oversize datagram are
    dropped for their reasons, and ``received == handled + dropped + queued``."""
    config = ServerConfig(host=LOOPBACK, port=0, max_datagram_size=64)
    async with Server(config, collector) as server:
        assert isinstance(server.protocol, Receiver)
        assert isinstance(server.protocol.transport, BatchTransport)
        payloads = [b"ana: pesan ke-%d" % n for n in range(1, 201)]
        raw_send(server.address, *payloads, b"", b"x" * 65)
        await collector.wait_for(len(payloads))
        await eventually(lambda: server.stats().received == len(payloads) + 2)
        stats = server.stats()
    assert [message.counter for message in collector.messages] == list(range(1, 201))
    assert stats.dropped[DropReason.EMPTY.value] == 1
    assert stats.dropped[DropReason.OVERSIZE.value] == 1
    assert stats.batches < len(payloads)
    assert_balanced(stats, len(payloads) + 2)


async def test_an_app_composes_the_protocol_on_a_socket_of_its_own(collector: Collector) -> None:
    """The server's ``DatagramProtocol`` takes datagrams an app reads elsewhere, one at a time
    (``datagram_received``), and counts them with the rest."""
    loop = asyncio.get_running_loop()
    async with Server(ServerConfig(host=LOOPBACK, port=0), collector) as server:

        class Forward(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                server.protocol.datagram_received(data, addr)

        transport, _ = await loop.create_datagram_endpoint(Forward, local_addr=(LOOPBACK, 0))
        try:
            raw_send(server.address, b"ana: pesan ke-1")
            raw_send(transport.get_extra_info("sockname"), b"budi: pesan ke-1", b"")
            await collector.wait_for(2)
            await eventually(lambda: server.stats().received == 3)
        finally:
            transport.close()
        stats = server.stats()
    assert sorted(message.username or "" for message in collector.messages) == ["ana", "budi"]
    assert stats.dropped[DropReason.EMPTY.value] == 1
    assert_balanced(stats)
