"""A receive-only sink: reads and counts, nothing else. Shows the load generator's own ceiling.

Usage: ``python -m benchmarks.baselines.sink PORT``. Prints one line per datagram's worth of
nothing; on SIGINT prints ``received=N`` to stderr.
"""

from __future__ import annotations

import signal
import socket
import sys

from udpchat.sockets import set_receive_buffer

RCVBUF = 4 * 1024 * 1024


def main(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    set_receive_buffer(sock, RCVBUF)
    sock.bind(("127.0.0.1", port))
    received = 0
    print("Server menunggu...", flush=True)
    for signum in (signal.SIGINT, signal.SIGTERM):  # also when started with SIGINT ignored
        signal.signal(signum, signal.default_int_handler)
    try:
        while True:
            sock.recv(2048)
            received += 1
    except KeyboardInterrupt:
        print(f"received={received}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]))
