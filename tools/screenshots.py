"""``make screenshots``: both web pages as a person sees them, for docs/guide/web.md.

Starts ``serve --relay --web`` and ``impair --web`` in front of it on free loopback ports,
three senders (one through the link, whose loss is then raised through its API), a page's
member that posts and a UDP member that answers; waits for the charts to hold some seconds;
then headless Chromium (Debian's, driven by Playwright) takes each page. Bounded: about 20 s.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

from udpchat.wire import COOKIE, JOIN, JOINED, relay_join_request

CHROMIUM = "/usr/bin/chromium"
LOOPBACK = "127.0.0.1"
SENDING_S = 12.0
"""How long the senders send before the pictures: enough for the charts to show a change."""
OUT = Path("docs/images")


@contextmanager
def started(*args: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    """``udpchat ARGS`` until the block ends; what its start-up lines said."""
    process = subprocess.Popen(
        [sys.executable, "-m", "udpchat", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    said: dict[str, str] = {}
    assert process.stderr is not None
    try:
        deadline = time.monotonic() + 10
        while "url" not in said and time.monotonic() < deadline:
            line = process.stderr.readline()
            if found := re.search(r"listening on \S+ port (\d+)", line):
                said["port"] = found[1]
            if found := re.search(r"web view on (http://\S+)", line):
                said["url"] = found[1]
        assert "url" in said, f"udpchat {' '.join(args)} did not start"
        yield process, said
    finally:
        process.terminate()
        process.wait(10)
        process.stderr.close()


def send(address: tuple[str, int], names: list[str], stop: threading.Event) -> None:
    """The seed's clients, one socket each, every 0.2 s until ``stop``."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in names]
    counter = 0
    while not stop.wait(0.2) and counter < 1000:
        counter += 1
        for sock, name in zip(sockets, names, strict=True):
            sock.sendto(f"{name}: pesan ke-{counter}".encode(), address)
    for sock in sockets:
        sock.close()


def member(address: tuple[str, int]) -> socket.socket:
    """A UDP member of the room, joined as ``ana``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(5)
    sock.connect(address)
    sock.send(relay_join_request().encode())
    while not (text := sock.recv(2048).decode()).startswith(COOKIE):
        pass
    sock.send(f"{JOIN} {text.split()[1]} ana".encode())
    while not sock.recv(2048).decode().startswith(JOINED):
        pass
    return sock


def change_loss(url: str, loss: str) -> None:
    request = urllib.request.Request(
        f"{url}api/impairment", data=json.dumps({"loss": loss}).encode(), method="PUT",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request) as answer:
        answer.read()


def picture(page: Page, path: Path) -> None:
    """The page with its charts over the last minute, after an update."""
    page.get_by_test_id("window").select_option("60")
    page.wait_for_timeout(1500)
    page.screenshot(path=str(path), full_page=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT)
    out: Path = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    with ExitStack() as stack:
        _, served = stack.enter_context(
            started("serve", "--host", LOOPBACK, "--port", "0", "--relay", "--quiet",
                    "--web", f"{LOOPBACK}:0")
        )  # fmt: skip
        port = int(served["port"])
        _, link = stack.enter_context(
            started("impair", "--listen", f"{LOOPBACK}:0", "--to", f"{LOOPBACK}:{port}",
                    "--seed", "7", "--delay", "20ms", "--jitter", "5ms", "--web", f"{LOOPBACK}:0")
        )  # fmt: skip
        direct = threading.Thread(target=send, args=((LOOPBACK, port), ["ana", "budi"], stop))
        lossy = threading.Thread(
            target=send, args=((LOOPBACK, int(link["port"])), ["cici-lewat-impair"], stop)
        )
        direct.start()
        lossy.start()
        ana = member((LOOPBACK, port))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(served["url"])
            expect(page.get_by_test_id("status")).to_have_text("connected")
            page.get_by_test_id("username").fill("dewi")
            page.get_by_test_id("join").click()
            expect(page.get_by_test_id("text")).to_be_enabled()
            page.get_by_test_id("text").fill("halo dari browser")
            page.get_by_test_id("send").click()
            ana.send(b"ana: halo dewi, <b>ini</b> dari terminal")
            time.sleep(SENDING_S / 2)
            change_loss(link["url"], "up:20%")
            time.sleep(SENDING_S / 2)
            picture(page, out / "web-serve.png")
            link_page = browser.new_page(viewport={"width": 1280, "height": 900})
            link_page.goto(link["url"])
            expect(link_page.get_by_test_id("status")).to_have_text("connected")
            picture(link_page, out / "web-impair.png")
            browser.close()
        stop.set()
        direct.join()
        lossy.join()
        ana.close()
    print(f"wrote {out / 'web-serve.png'} and {out / 'web-impair.png'}")


if __name__ == "__main__":
    main()
