"""serve --web in a real browser: Debian's headless Chromium driven by Playwright for Python
(``executable_path``: Playwright's driver comes with its wheel, no browser is downloaded). One
browser and one ``serve --relay --web`` for the module, as a person at the projector has them:
the senders appear, a chart moves, a hostile name stays text, a foreign page's WebSocket is
refused, and lines go both ways between the page and a UDP member."""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Dialog,
    Error,
    Page,
    expect,
    sync_playwright,
)

from support.waiting import EVENT_TIMEOUT_S, eventually_sync
from tests.helpers import LOOPBACK
from udpchat.report import SENDER_COLUMNS
from udpchat.wire import COOKIE, JOIN, JOINED, parse_members, relay_join_request, who_request

CHROMIUM = "/usr/bin/chromium"
"""Debian's ``chromium`` package (``.ci/run`` installs it when missing)."""
SHOWN_WITHIN_MS = 2000
"""The issue's bound: a sender is on the page within 2 s of its first datagram."""
HOSTILE = "<img src=x onerror=alert(1)>"
SENDERS = ("ana", "budi", HOSTILE)


@dataclass
class Served:
    process: subprocess.Popen[str]
    udp: tuple[str, int]
    url: str


def read_until(process: subprocess.Popen[str], pattern: str) -> re.Match[str]:
    assert process.stderr is not None
    deadline = time.monotonic() + EVENT_TIMEOUT_S
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        if found := re.search(pattern, line):
            return found
    raise AssertionError(f"the server never said {pattern!r}")


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    process = subprocess.Popen(
        [sys.executable, "-m", "udpchat", "serve", "--host", LOOPBACK, "--port", "0",
         "--relay", "--relay-rate", "50", "--web", f"{LOOPBACK}:0", "--quiet"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        port = int(read_until(process, r"listening on \S+ port (\d+)")[1])
        url = read_until(process, r"web view on (http://\S+)")[1]
        yield Served(process, (LOOPBACK, port), url)
    finally:
        process.kill()
        process.wait()
        assert process.stderr is not None
        process.stderr.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@dataclass
class Seen:
    """What a page did besides showing: the dialogs it opened, the errors it logged (a script
    error, a Content-Security-Policy violation)."""

    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def page_error(self, error: Error) -> None:
        self.errors.append(str(error))

    def console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)


@pytest.fixture(scope="module")
def seen() -> Seen:
    return Seen()


@pytest.fixture(scope="module")
def page(browser: Browser, served: Served, seen: Seen) -> Iterator[Page]:
    """The view's page, opened once for the module (as on the projector)."""
    context = browser.new_context()
    opened = context.new_page()
    opened.on("dialog", seen.dialog)
    opened.on("pageerror", seen.page_error)
    opened.on("console", seen.console)
    opened.goto(served.url)
    expect(opened.get_by_test_id("status")).to_have_text("connected")
    yield opened
    context.close()


class Senders:
    """The seed's clients, each from a socket of its own, sending every 0.1 s until stopped
    (at most 30 s)."""

    def __init__(self, address: tuple[str, int], names: tuple[str, ...]) -> None:
        self._stop = threading.Event()
        self._sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in names]
        self._thread = threading.Thread(target=self._send, args=(address, names), daemon=True)
        self._thread.start()

    def _send(self, address: tuple[str, int], names: tuple[str, ...]) -> None:
        for counter in range(1, 301):
            for sock, name in zip(self._sockets, names, strict=True):
                sock.sendto(f"{name}: pesan ke-{counter}".encode(), address)
            if self._stop.wait(0.1):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self._sockets:
            sock.close()


def test_three_senders_appear_within_two_seconds_and_a_chart_moves(
    page: Page, served: Served, seen: Seen
) -> None:
    rows = page.get_by_test_id("senders").locator("tbody tr")
    rates = page.get_by_test_id("chart-rates")
    senders = Senders(served.udp, SENDERS)
    try:
        expect(rows).to_have_count(3, timeout=SHOWN_WITHIN_MS)
        first = rates.get_attribute("data-last")
        expect(rates).not_to_have_attribute(
            "data-last", first or "", timeout=EVENT_TIMEOUT_S * 1000
        )
        assert int(rates.get_attribute("data-points") or 0) >= 2
    finally:
        senders.stop()
    names = page.get_by_test_id("senders").locator("tbody td.text").all_text_contents()
    assert set(SENDERS) <= set(names)
    # The hostile name is those characters, in the table and the charts' legends alike, and
    # nothing of it ran or became an element.
    expect(page.get_by_text(HOSTILE, exact=True).first).to_be_visible()
    assert page.locator("img").count() == 0
    assert seen.dialogs == []
    assert seen.errors == []  # no script error, no Content-Security-Policy violation


class _Blank(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>another site</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@contextlib.contextmanager
def foreign_site() -> Iterator[str]:
    """A page of another origin on loopback (a site elsewhere would be stopped by the
    browser's own local-network checks before it reached ours)."""
    site = http.server.ThreadingHTTPServer((LOOPBACK, 0), _Blank)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{site.server_address[1]}/"
    finally:
        site.shutdown()
        site.server_close()


def test_a_websocket_from_a_page_of_another_origin_is_refused(page: Page, served: Served) -> None:
    socket_url = re.sub(r"^http", "ws", served.url.split("?")[0]) + "ws"
    with foreign_site() as other:  # another origin, on this machine
        foreign = page.context.new_page()
        foreign.goto(other)
        outcome = foreign.evaluate(
            """url => new Promise(resolve => {
                const socket = new WebSocket(url);
                socket.onopen = () => resolve("opened");
                socket.onerror = () => resolve("refused");
            })""",
            socket_url,
        )
        foreign.close()
    assert outcome == "refused"
    expect(page.get_by_test_id("status")).to_have_text("connected")  # the view's own page is


class Member:
    """A UDP member of the room, joined with the cookie handshake as ``udpchat chat`` does."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(EVENT_TIMEOUT_S)
        self.sock.connect(address)
        self.sock.send(relay_join_request().encode())
        self.cookie = self._answer(COOKIE)
        self.sock.send(f"{JOIN} {self.cookie} ana".encode())
        self._answer(JOINED)

    def _answer(self, command: str) -> str:
        while True:
            text = self.sock.recv(2048).decode()
            if text.startswith(f"{command} "):
                return text.split(" ", 1)[1]

    def who(self) -> list[str]:
        """The room's members (one page: the module's room is small), ``ip name`` each."""
        self.sock.send(who_request(self.cookie, 1).encode())
        while (answer := parse_members(self.sock.recv(2048).decode())) is None:
            pass
        return answer[2]

    def line(self, containing: str) -> str:
        while True:
            text = self.sock.recv(2048).decode()
            if containing in text:
                return text


def test_a_line_posted_in_the_browser_reaches_a_udp_member_and_the_reverse(
    page: Page, served: Served, seen: Seen
) -> None:
    member = Member(served.udp)
    try:
        page.get_by_test_id("username").fill("budi")
        page.get_by_test_id("join").click()
        expect(page.get_by_test_id("text")).to_be_enabled()
        page.get_by_test_id("text").fill("halo dari browser")
        page.get_by_test_id("send").click()
        assert re.fullmatch(
            r"\[127\.0\.0\.1\] budi: halo dari browser", member.line("halo dari browser")
        )
        expect(page.get_by_test_id("notices")).to_contain_text("sent: budi: halo dari browser")
        member.sock.send(f"ana: {HOSTILE} halo dari UDP".encode())
        line = f"[{LOOPBACK}] ana: {HOSTILE} halo dari UDP"
        expect(page.get_by_test_id("room")).to_contain_text(line)
        # The page's member is one of the room's, by the address its page was told.
        joined = re.search(
            r"joined as budi from (\S+):\d+", page.get_by_test_id("notices").inner_text()
        )
        assert joined and f"{joined[1]} budi" in member.who()
        assert page.locator("img").count() == 0
        assert seen.dialogs == [] and seen.errors == []
    finally:
        member.sock.close()


@dataclass
class Link:
    listen: tuple[str, int]
    url: str


@pytest.fixture(scope="module")
def link(served: Served) -> Iterator[Link]:
    """``impair --web`` in front of the module's server."""
    process = subprocess.Popen(
        [sys.executable, "-m", "udpchat", "impair", "--listen", f"{LOOPBACK}:0",
         "--to", f"{LOOPBACK}:{served.udp[1]}", "--seed", "1", "--web", f"{LOOPBACK}:0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        port = int(read_until(process, r"impair: listening on \S+ port (\d+)")[1])
        url = read_until(process, r"web view on (http://\S+)")[1]
        yield Link((LOOPBACK, port), url)
    finally:
        process.kill()
        process.wait()
        assert process.stderr is not None
        process.stderr.close()


def sender_row(served: Served, username: str) -> dict[str, str] | None:
    """The server's sender table row for ``username``, by column, from its page's API."""
    with urllib.request.urlopen(f"{served.url}api/state") as answer:
        table = json.load(answer)["table"]
    headers = [column.key for column in SENDER_COLUMNS]
    for row in table["rows"]:
        cells = dict(zip(headers, row["cells"], strict=True))
        if cells["username"] == username:
            return cells
    return None


def test_changing_the_loss_on_the_links_page_changes_what_the_server_counts(
    browser: Browser, served: Served, link: Link
) -> None:
    through = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(link.url)
        expect(page.get_by_test_id("status")).to_have_text("connected")
        expect(page.get_by_test_id("seed")).to_have_text("1")
        for counter in range(1, 6):
            through.sendto(f"lewat: pesan ke-{counter}".encode(), link.listen)
        eventually_sync(lambda: (sender_row(served, "lewat") or {}).get("received") == "5")
        page.get_by_test_id("knob-loss-up").fill("100%")
        page.get_by_test_id("apply").click()
        expect(page.get_by_test_id("changes")).to_contain_text("from datagram 6 up")
        expect(page.get_by_test_id("knob-loss-up")).to_have_value("100%")
        for counter in range(6, 11):  # lost on the way, by the page's change
            through.sendto(f"lewat: pesan ke-{counter}".encode(), link.listen)
        page.get_by_test_id("knob-loss-up").fill("")  # an empty field turns the loss off
        page.get_by_test_id("apply").click()
        expect(page.get_by_test_id("changes")).to_contain_text("from datagram 11 up")
        through.sendto(b"lewat: pesan ke-11", link.listen)
        eventually_sync(lambda: (sender_row(served, "lewat") or {}).get("received") == "6")
        row = sender_row(served, "lewat")
        assert row is not None and row["lost"] == "5"  # counters 6 to 10 never arrived
    finally:
        context.close()
        through.close()
