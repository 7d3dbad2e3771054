"""The memory bound's queue term against what a queued datagram costs, for each address family
(``make bench-memory`` measures the whole bound against a server's peak RSS)."""

from __future__ import annotations

import sys

import pytest

from support.memory import queued_datagram_bytes
from udpchat.eventloop import run_coroutine
from udpchat.server import ServerConfig

MAX_SIZE = 1024
LONGEST_IPV4 = "255.255.255.255"
LONGEST_IPV6 = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
LARGE_INT_BYTES = sys.getsizeof(2**19)
"""A flow label or scope id of 256 or more is an int object of its own (smaller ones are
cached): a sender on the Internet picks its flow label."""


def counted_per_datagram(host: str) -> int:
    """What the bound adds for one more queued datagram of ``MAX_SIZE`` bytes."""
    one, two = (
        ServerConfig(host=host, queue_size=size, max_datagram_size=MAX_SIZE).memory_bound_bytes()
        for size in (1, 2)
    )
    return two - one


@pytest.mark.parametrize(
    ("server_host", "client_host", "measured_ip", "longest_ip", "large_ints"),
    [
        ("127.0.0.1", "127.0.0.1", "127.0.0.1", LONGEST_IPV4, 0),
        ("::", "127.0.0.1", "::ffff:127.0.0.1", LONGEST_IPV6, 2),
        ("::", "::1", "::1", LONGEST_IPV6, 2),
    ],
)
def test_the_bound_counts_what_a_queued_datagram_costs_from_any_sender(
    server_host: str, client_host: str, measured_ip: str, longest_ip: str, large_ints: int
) -> None:
    """Measured on loopback with tracemalloc, then for the costliest sender: the longest
    address, and on an IPv6 socket a flow label and scope id that are not cached small ints."""
    measured = run_coroutine(queued_datagram_bytes(server_host, client_host, MAX_SIZE, 5000))
    costliest = (
        measured
        + sys.getsizeof(longest_ip)
        - sys.getsizeof(measured_ip)
        + large_ints * LARGE_INT_BYTES
    )
    assert costliest <= counted_per_datagram(server_host)


@pytest.mark.parametrize(
    ("host", "ipv6"),
    [
        ("0.0.0.0", False),
        ("127.0.0.1", False),
        ("::", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("fe80::1%lo", True),
        ("localhost", True),  # a name may resolve to IPv6: the costlier family is counted
    ],
)
def test_the_bound_counts_the_family_the_host_binds(host: str, ipv6: bool) -> None:
    assert (counted_per_datagram(host) > counted_per_datagram("0.0.0.0")) == ipv6
