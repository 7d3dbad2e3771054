"""A bounded loopback flood from its own process.

Usage: ``python support/flood.py HOST PORT SIZE COUNT SECONDS [KIND]``, KIND one of ``seed``
(the default: seed text padded with ``x``), ``control`` (control bytes, the costliest to escape)
or ``invalid`` (bytes that are not UTF-8).

Prints how many datagrams it sent. Stops at COUNT datagrams or after SECONDS, whichever is first.
"""

from __future__ import annotations

import socket
import sys
import time

BATCH = 256


PAYLOADS = {
    "seed": lambda size: (b"flood: pesan ke-1 " + b"x" * size)[:size],
    "control": lambda size: (bytes(range(1, 32)) * (size // 31 + 1))[:size],
    "invalid": lambda size: (bytes(range(0x80, 0x100)) * (size // 128 + 1))[:size],
}


def flood(host: str, port: int, size: int, count: int, seconds: float, kind: str = "seed") -> int:
    if not (host.startswith("127.") or host == "::1"):
        raise SystemExit("flood only targets loopback")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    payload = PAYLOADS[kind](size)
    sent = 0
    deadline = time.monotonic() + seconds
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((host, port))
        while sent < count and time.monotonic() < deadline:
            for _ in range(min(BATCH, count - sent)):
                try:
                    sock.send(payload)
                except ConnectionRefusedError:
                    continue
                sent += 1
    return sent


if __name__ == "__main__":
    host, port, size, count, seconds = sys.argv[1:6]
    kind = sys.argv[6] if len(sys.argv) > 6 else "seed"
    print(flood(host, int(port), int(size), int(count), float(seconds), kind))
