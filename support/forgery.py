"""A datagram with a forged source address, on loopback and without privileges: how the tests
and ``make attack`` play an attacker who claims to be someone else."""

from __future__ import annotations

import socket

NOWHERE = ("127.0.0.9", 9)
"""Where :func:`forge`'s socket is connected, so that it takes none of the claimed address's
traffic: the kernel gives a datagram to a connected socket only from its peer."""


def forge(claimed: tuple[str, int], target: tuple[str, int], text: str) -> None:
    """One datagram to ``target`` whose source is ``claimed``, a bound port shared with
    ``SO_REUSEPORT`` (so the socket at ``claimed`` must share it): a forged source, without
    the privileges a raw socket needs."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(claimed)
        sock.connect(NOWHERE)
        sock.sendto(text.encode(), target)
