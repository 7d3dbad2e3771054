"""The seed's design, for comparison: a blocking recvfrom loop that starts a thread per datagram.

Usage: ``python -m benchmarks.baselines.seed_threads PORT``. Prints the seed's lines to stdout.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading


def handle(data: bytes, address: tuple[str, int]) -> None:
    print(f"[{address[0]}] {data.decode('utf-8', 'replace')}")


def main(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    print("Server menunggu...", flush=True)
    for signum in (signal.SIGINT, signal.SIGTERM):  # also when started with SIGINT ignored
        signal.signal(signum, signal.default_int_handler)
    try:
        while True:
            data, address = sock.recvfrom(1024)
            threading.Thread(target=handle, args=(data, address)).start()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main(int(sys.argv[1]))
