"""udpchat.fanout: one datagram to many addresses in one sendmmsg, through real sockets, on an
IPv4 and a dual-stack socket, and the same through the one-by-one fallback."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest

from tests.helpers import LOOPBACK
from udpchat.fanout import FanOut, pack_address
from udpchat.libc import SENDMMSG

Address = tuple[str, int]


@contextmanager
def receivers(count: int, family: int = socket.AF_INET) -> Iterator[list[socket.socket]]:
    host = LOOPBACK if family == socket.AF_INET else "::1"
    with ExitStack() as stack:
        sockets = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(family, socket.SOCK_DGRAM))
            sock.bind((host, 0))
            sock.settimeout(5)
            sockets.append(sock)
        yield sockets


def address_of(sock: socket.socket) -> Address:
    host, port = sock.getsockname()[:2]
    return host, port


def pending(sock: socket.socket) -> list[bytes]:
    """What ``sock`` holds now, read without waiting."""
    received = []
    sock.setblocking(False)
    try:
        while True:
            received.append(sock.recv(4096))
    except BlockingIOError:
        return received


@pytest.fixture(params=["sendmmsg", "one by one"])
def batched(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Each test twice: with ``sendmmsg``, and with the fallback where the OS has none."""
    if request.param == "one by one":
        monkeypatch.setattr("udpchat.fanout.SENDMMSG", None)
    elif SENDMMSG is None:
        pytest.skip("no sendmmsg in this C library")
    return bool(request.param == "sendmmsg")


def test_one_datagram_reaches_every_address_but_the_one_passed_over(batched: bool) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender, receivers(5) as members:
        out = FanOut(sender)
        audience = tuple(address_of(member) for member in members)
        assert out.send(b"[10.0.0.9] hai", audience) == 5
        assert out.send(b"[10.0.0.9] lagi", audience, skip=audience[2]) == 4
        for index, member in enumerate(members):
            expected = [b"[10.0.0.9] hai"] + ([] if index == 2 else [b"[10.0.0.9] lagi"])
            assert pending(member) == expected


def test_a_new_membership_is_packed_anew_and_an_address_that_is_none_is_not_sent(
    batched: bool,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender, receivers(3) as members:
        out = FanOut(sender)
        first = tuple(address_of(member) for member in members[:2])
        assert out.send(b"one", first) == 2
        second = (address_of(members[2]), ("not an address", 9), address_of(members[0]))
        assert out.send(b"two", second) == 2
        assert out.send(b"three", second, skip=("not an address", 9)) == 2
        assert [pending(member) for member in members] == [
            [b"one", b"two", b"three"], [b"one"], [b"two", b"three"]
        ]  # fmt: skip


def test_a_dual_stack_socket_reaches_ipv4_and_ipv6_members(batched: bool) -> None:
    with (
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sender,
        receivers(2) as four,
        receivers(2, socket.AF_INET6) as six,
    ):
        sender.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sender.bind(("::", 0))
        audience = tuple(address_of(member) for member in [*four, *six])
        assert FanOut(sender).send(b"hello", audience) == 4
        assert all(pending(member) == [b"hello"] for member in [*four, *six])


def test_nothing_is_sent_once_closed(batched: bool) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender, receivers(2) as members:
        out = FanOut(sender)
        audience = tuple(address_of(member) for member in members)
        out.close()
        assert out.send(b"late", audience) == 0
        assert all(pending(member) == [] for member in members)


def test_an_address_the_kernel_refuses_costs_only_itself(batched: bool) -> None:
    """Port 0 is refused by the kernel (EINVAL) at once, on this host: the datagrams before
    and after it still go, and it is not counted sent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender, receivers(4) as members:
        addresses = [address_of(member) for member in members]
        audience = (*addresses[:2], (LOOPBACK, 0), (LOOPBACK, 0), *addresses[2:])
        assert FanOut(sender).send(b"x", audience) == 4
        assert all(pending(member) == [b"x"] for member in members)


@pytest.mark.parametrize(
    ("family", "address", "length"),
    [
        (socket.AF_INET, ("127.0.0.1", 5002), 16),
        (socket.AF_INET6, ("127.0.0.1", 5002), 28),
        (socket.AF_INET6, ("::ffff:127.0.0.1", 5002), 28),
        (socket.AF_INET6, ("fe80::1%1", 5002), 28),
    ],
)
def test_addresses_pack_as_the_kernel_reads_them(
    family: int, address: Address, length: int
) -> None:
    packed = pack_address(family, address)
    assert len(packed) == length
    assert packed[2:4] == (5002).to_bytes(2, "big")
    if family == socket.AF_INET6:
        host = socket.inet_ntop(socket.AF_INET6, packed[8:24])
        assert host == ("::ffff:127.0.0.1" if "." in address[0] else address[0].split("%")[0])
        assert int.from_bytes(packed[24:28], "little") == (1 if "%" in address[0] else 0)


def test_what_is_not_an_address_does_not_pack() -> None:
    for address in [("not an address", 9), ("1.2.3", 9), ("fe80::1%no-such-interface", 9)]:
        with pytest.raises((ValueError, OSError)):
            pack_address(socket.AF_INET6, address)
