"""serve --web without a browser: the address and token rules, the guard (token, Host, Origin,
CSP), the bounds (pages, a slow page), the page's data (the dashboard's columns and orders,
chart points from the sampler), the room through the front door (a page's member is a UDP
member: admission, rate, NATS), --processes, embedding, and the command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import threading
import time
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from support.nats_servers import NatsNode
from support.waiting import EVENT_TIMEOUT_S, eventually
from tests.helpers import LOOPBACK, Inbox, raw_send, start_cli, start_cli_server
from udpchat import Client, Server, ServerConfig
from udpchat.counters import WebStats
from udpchat.record import config_json
from udpchat.report import SENDER_COLUMNS, SortKey
from udpchat.web.config import WebAddressError, WebConfig, parse_web_address
from udpchat.web.security import CONTENT_SECURITY_POLICY
from udpchat.web.server_view import ServerView
from udpchat.web.view import MAX_PAGE_MESSAGE_BYTES, STATIC

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("8080", ("127.0.0.1", 8080)),
        ("0", ("127.0.0.1", 0)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("[::1]:0", ("::1", 0)),
        ("localhost:9000", ("localhost", 9000)),
    ],
)
def test_web_address_is_host_port_with_loopback_by_default(
    text: str, address: tuple[str, int]
) -> None:
    assert parse_web_address(text) == address


@pytest.mark.parametrize("text", ["", "x", ":", "::1:80", "host:70000", "host:-1", "[::1]"])
def test_a_web_address_that_is_not_host_port_is_refused(text: str) -> None:
    with pytest.raises(WebAddressError):
        parse_web_address(text)


def test_a_view_beyond_loopback_always_has_a_token_and_loopback_needs_none() -> None:
    assert WebConfig().secured().token is None
    assert WebConfig(host="::1").secured().token is None
    generated = WebConfig(host="0.0.0.0").secured().token
    assert generated is not None and len(generated) >= 32
    assert WebConfig(host="0.0.0.0").secured().token != generated  # random each time
    given = "a-token-of-my-own-choosing"
    assert WebConfig(host="0.0.0.0", token=given).secured().token == given


async def test_the_token_stays_out_of_the_record_file_and_the_configs_repr(tmp_path: Path) -> None:
    """A record file is shared (a lab report, a bug report); the token opens the page."""
    token = "a-token-of-my-own-choosing"
    web = WebConfig(token=token)
    config = ServerConfig(
        host=LOOPBACK, port=0, web=web, output_format=None, record=tmp_path / "run.jsonl"
    )
    async with Server(config):
        pass
    header = json.loads((tmp_path / "run.jsonl").read_text().splitlines()[0])
    assert header["config"]["web"]["token"] == "***"
    assert token not in (tmp_path / "run.jsonl").read_text()
    assert token not in repr(config)
    assert config_json(ServerConfig())["web"] is None


@pytest.mark.parametrize("token", ["short", "has space in it ok", "a" * 129, "ünïcödé-tokens-here"])
def test_a_token_that_a_url_cannot_carry_as_is_or_too_short_is_refused(token: str) -> None:
    with pytest.raises(ValueError, match="token"):
        WebConfig(token=token)


@contextlib.asynccontextmanager
async def web_server(
    web_config: WebConfig | None = None, **settings: Any
) -> AsyncIterator[tuple[Server, str]]:
    """A server on loopback port 0 with a web view; yields it and the view's base URL."""
    config = ServerConfig(host=LOOPBACK, port=0, web=web_config or WebConfig(), **settings)
    async with Server(config) as server:
        url = server.web_url
        assert url is not None
        yield server, url.split("?")[0]


def web_stats(server: Server) -> WebStats:
    stats = server.stats().web
    assert stats is not None
    return stats


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that keeps cookies for an IP address, as a browser does."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        yield client


class Scripts(HTMLParser):
    """Every script element and every event-handler attribute of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline: list[str] = []
        self.handlers: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handlers.extend(name for name, _ in attrs if name.startswith("on"))
        if tag == "script":
            self.scripts.append(dict(attrs))
            self._in_script = True

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(data)


async def test_the_page_has_no_inline_script_and_a_policy_that_forbids_it(
    session: aiohttp.ClientSession,
) -> None:
    async with web_server() as (_, url):
        async with session.get(url) as response:
            assert response.status == 200
            policy = response.headers["Content-Security-Policy"]
            html = await response.text()
        async with session.get(f"{url}static/server.js") as response:
            assert response.status == 200
            assert response.headers["Content-Security-Policy"] == policy
        for path, status, headers in [
            ("nothing", 404, {}),
            ("ws", 400, {}),  # not an upgrade
            ("api/state", 403, {"Host": "evil.example"}),
        ]:  # every answer, errors and refusals too
            async with session.get(f"{url}{path}", headers=headers) as response:
                assert response.status == status
                assert response.headers["Content-Security-Policy"] == policy
                assert response.headers["X-Content-Type-Options"] == "nosniff"
                assert response.headers["Referrer-Policy"] == "no-referrer"  # the token stays
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval'
    assert directives["default-src"] == "'none'"
    assert policy == CONTENT_SECURITY_POLICY
    pages = {"served": html, **{path.name: path.read_text() for path in STATIC.glob("*.html")}}
    for page, text in pages.items():  # every page of the package, the impairment's too
        scripts = Scripts()
        scripts.feed(text)
        assert scripts.scripts and all(script.get("src") for script in scripts.scripts), page
        assert scripts.inline == [] and scripts.handlers == [], page
    for code in STATIC.glob("*.js"):  # the page's own code builds nodes, never parses HTML
        text = code.read_text()
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", text)


async def test_a_loopback_view_answers_only_to_a_loopback_name(
    session: aiohttp.ClientSession,
) -> None:
    """DNS rebinding: a site whose name resolves to 127.0.0.1 reads nothing."""
    async with web_server() as (server, url):
        for host in ("localhost", "127.0.0.1", "[::1]"):
            async with session.get(f"{url}api/state", headers={"Host": host}) as response:
                assert response.status == 200, host
        async with session.get(f"{url}api/state", headers={"Host": "evil.example"}) as response:
            assert response.status == 403
        assert web_stats(server).refused == {"host": 1}


async def test_a_view_beyond_loopback_refuses_everything_without_its_token(
    session: aiohttp.ClientSession,
) -> None:
    """Bound to every address (reached here over loopback only), as a lab's projector is."""
    async with web_server(WebConfig(host="0.0.0.0")) as (server, _):
        url = server.web_url
        assert url is not None and "?token=" in url
        token = url.split("?token=")[1]
        base = url.replace("0.0.0.0", LOOPBACK).split("?")[0]
        for path in ("", "api/state", "static/server.js", "ws"):
            async with session.get(f"{base}{path}") as response:
                assert response.status == 403, path
        async with session.get(f"{base}api/state?token=wrong-{token}") as response:
            assert response.status == 403
        bearer = {"Authorization": f"Bearer {token}"}
        async with session.get(f"{base}api/state", headers=bearer) as response:
            assert response.status == 200
        # The printed URL: its token becomes a cookie, and leaves the address bar.
        async with session.get(f"{base}?token={token}", allow_redirects=False) as response:
            assert response.status == 303
            assert response.headers["Location"] == "/"
            cookie = response.cookies[f"udpchat-token-{server.web_address[1]}"]
            assert cookie.value == token and cookie["httponly"] and cookie["samesite"] == "Strict"
        async with session.get(base) as response:  # the session keeps the cookie
            assert response.status == 200
        assert web_stats(server).refused == {"token": 5}


def malformed_request(address: tuple[str, int], request: bytes) -> bytes:
    """What the view answers to bytes that are not HTTP a parser takes."""
    with socket.create_connection(address, timeout=EVENT_TIMEOUT_S) as sock:
        sock.sendall(request)
        return sock.recv(4096)


async def test_malformed_requests_are_counted_and_logged_in_one_line_at_most(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Anyone who reaches the port, token or not, can send them: no traceback per request
    (aiohttp's own log), but a count and a rate-limited line."""
    caplog.set_level(logging.DEBUG)
    requests = [
        b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000 + b"\r\n\r\n",
        b"\x16\x03\x01 not http at all\r\n\r\n",  # a TLS hello, say
    ]
    async with web_server() as (server, _):
        for request in requests * 2:
            answer = await asyncio.to_thread(malformed_request, server.web_address, request)
            assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0]
        assert web_stats(server).refused == {"bad_request": 6}
    assert not [record for record in caplog.records if record.exc_info]
    logged = [
        record.getMessage() for record in caplog.records if "malformed" in record.getMessage()
    ]
    assert len(logged) == 1 and "\n" not in logged[0], logged


async def test_a_websocket_from_a_page_of_another_origin_is_refused(
    session: aiohttp.ClientSession,
) -> None:
    async with web_server() as (server, url):
        ws_url = f"{url}ws"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(ws_url, origin="http://evil.example")
        assert refused.value.status == 403
        port = server.web_address[1]
        foreign = [
            f"http://x:{port}",  # another name for the host
            f"http://127.0.0.1:{port + 1}",  # another port of this host: another origin
            "null",  # a sandboxed frame, a file:// page, a data: URL
            f"ws://127.0.0.1:{port}",  # no page has this origin
        ]
        for origin in foreign:
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await session.ws_connect(ws_url, origin=origin)
        async with session.ws_connect(ws_url, origin=url.rstrip("/")) as page:
            assert (await page.receive_json())["type"] == "hello"
        async with session.ws_connect(ws_url) as page:  # a script, not a browser: no Origin
            assert (await page.receive_json())["type"] == "hello"
        assert web_stats(server).refused == {"origin": 1 + len(foreign)}


async def test_pages_beyond_the_bound_are_refused_and_counted(
    session: aiohttp.ClientSession,
) -> None:
    async with web_server(WebConfig(max_clients=2)) as (server, url):
        async with session.ws_connect(f"{url}ws") as first, session.ws_connect(f"{url}ws"):
            await first.receive_json()
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(f"{url}ws")
            assert refused.value.status == 503
            assert web_stats(server).clients == 2
        assert web_stats(server).refused == {"full": 1}
        await eventually(lambda: web_stats(server).clients == 0)
        async with session.ws_connect(f"{url}ws") as again:  # room again once they left
            assert (await again.receive_json())["type"] == "hello"


async def test_a_server_with_pages_open_stops_within_its_drain_timeout_and_half_a_second(
    session: aiohttp.ClientSession,
) -> None:
    """SECURITY.md's bound on a stop holds with pages open: the view closes them as it stops,
    rather than wait for them to leave (aiohttp would wait a second, then cancel them)."""
    config = ServerConfig(host=LOOPBACK, port=0, relay=True, web=WebConfig(), drain_timeout_s=0.5)
    server = Server(config)
    await server.start()
    url = server.web_url
    assert url is not None
    pages = [await session.ws_connect(f"{url}ws") for _ in range(2)]
    assert (await join(pages[0], "budi"))["type"] == "member"
    started = time.monotonic()
    await server.stop()
    stop_s = time.monotonic() - started
    for page in pages:
        async for _ in page:  # what was sent before the stop, then the end
            pass
    assert stop_s <= 1.0, f"stopped in {stop_s:.2f} s with two pages open"
    assert web_stats(server).clients == 0


async def test_what_no_page_sends_is_refused_and_counted(session: aiohttp.ClientSession) -> None:
    """A binary frame and a frame past the bound are no page's: counted as malformed, as
    text that is not JSON is; the one past the bound also closes the page (aiohttp's 1009)."""
    async with web_server() as (server, url):
        async with session.ws_connect(f"{url}ws") as page:
            await page.send_str("not json")
            assert (await next_of(page, "refused"))["reason"] == "malformed"
            await page.send_bytes(b'{"type": "join"}')
            await page.send_str("x" * (MAX_PAGE_MESSAGE_BYTES + 1))
            async for _ in page:  # its updates, then the close
                pass
            assert page.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        assert web_stats(server).posts_refused == {"malformed": 3}


async def stalled_page(address: tuple[str, int]) -> socket.socket:
    """A WebSocket that never reads what it is sent, with the smallest receive window."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, address)
    host, port = address
    await loop.sock_sendall(
        sock,
        f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode(),
    )
    return sock


async def test_a_page_that_stops_reading_is_dropped_and_never_slows_the_server(
    session: aiohttp.ClientSession,
) -> None:
    fast = WebConfig(update_interval_s=0.02, max_client_buffer_bytes=4096)
    async with web_server(fast) as (server, url):
        stalled = await stalled_page(server.web_address)
        try:
            async with session.ws_connect(f"{url}ws") as reader:
                await eventually(lambda: web_stats(server).clients == 2)
                sent = 0
                while not web_stats(server).slow_clients_dropped:
                    sent += 1
                    raw_send(server.address, f"ana: pesan ke-{sent}".encode())
                    await asyncio.sleep(0.005)  # the stalled page's updates pile up meanwhile
                    assert sent < 4000, "the stalled page was never dropped"
                # The server went on handling, and the page that reads is still served.
                await eventually(lambda: server.stats().handled == sent)
                updates = 0
                while updates < 3:
                    updates += (await reader.receive_json())["type"] == "update"
                assert web_stats(server).clients == 1
        finally:
            stalled.close()


async def test_the_table_has_the_dashboards_columns_and_every_order(
    session: aiohttp.ClientSession,
) -> None:
    async with web_server() as (server, url):
        raw_send(server.address, b"ana: pesan ke-1", b"ana: pesan ke-3", b"budi: pesan ke-1")
        await eventually(lambda: server.stats().handled == 3)
        async with session.ws_connect(f"{url}ws") as page:
            hello = await page.receive_json()
    assert [column["header"] for column in hello["columns"]] == [c.short for c in SENDER_COLUMNS]
    assert hello["sorts"] == [key.value for key in SortKey]
    table = hello["update"]["table"]
    rows = table["rows"]
    names = [row["cells"][1] for row in rows]
    ordered = {key: [names[index] for index in order] for key, order in table["orders"].items()}
    assert ordered["loss"] == ["ana", "budi"]  # ana lost counter 2
    assert ordered["username"] == ["ana", "budi"]
    assert sorted(ordered["received"]) == ["ana", "budi"]
    ana = rows[names.index("ana")]
    assert ana["lost"] and ana["cells"][3:5] == ["1", "33.33%"] and not ana["idle"]


async def test_each_update_carries_a_chart_point_from_the_sampler_and_late_pages_get_history(
    session: aiohttp.ClientSession,
) -> None:
    fast = WebConfig(update_interval_s=0.05)
    async with web_server(fast) as (server, url):
        async with session.ws_connect(f"{url}ws") as page:
            assert (await page.receive_json())["type"] == "hello"
            raw_send(server.address, *(f"ana: pesan ke-{n}".encode() for n in (1, 2, 4)))
            point: dict[str, Any] = {}
            async with asyncio.timeout(EVENT_TIMEOUT_S):
                while not point.get("loss"):
                    point = (await page.receive_json())["point"]["groups"]
            (label,) = point["loss"]
            assert label.startswith("ana 127.0.0.1:") and point["loss"][label] == pytest.approx(25)
            assert set(point) == {"rates", "loss", "jitter", "duplicates", "reordered", "drops"}
        async with session.ws_connect(f"{url}ws") as late:
            hello = await late.receive_json()
    received = sum(p["groups"]["rates"]["received"] for p in hello["points"])
    assert received > 0  # the interval that had ana's messages, in the history
    assert [chart["key"] for chart in hello["charts"]] == list(point)


async def test_a_page_that_opens_late_costs_no_encoding_of_the_history(
    session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The history is encoded once, point by point, as it is taken: a page that opens (or
    reconnects) fifteen minutes into a class would otherwise have megabytes of it encoded on
    the server's event loop (about 50 ms for ten senders)."""
    fast = WebConfig(update_interval_s=0.02, history_s=10)
    async with web_server(fast) as (server, url):
        view = server._web  # how much history it keeps
        assert view is not None
        counter = 0

        async def two_seconds_of_history() -> bool:  # ten senders in every point, as in a class
            nonlocal counter
            counter += 1
            raw_send(server.address, *(f"u{n}: pesan ke-{counter}".encode() for n in range(10)))
            return len(view.history) >= 100

        await eventually(two_seconds_of_history)
        encoded: list[int] = []
        dumps = json.dumps

        def counted(value: Any, **options: Any) -> str:
            text = dumps(value, **options)
            if threading.current_thread() is threading.main_thread():  # the event loop's
                encoded.append(len(text))
            return text

        monkeypatch.setattr(json, "dumps", counted)
        async with session.ws_connect(f"{url}ws", max_msg_size=0) as page:
            hello = await page.receive_json()
            encoded_for_the_page = sum(encoded)  # on the loop: the hello, and any update
        history = sum(map(len, view.history))
        assert len(hello["points"]) >= 100
        assert len(hello["points"][-1]["groups"]["jitter"]) == 10
        assert encoded_for_the_page < history / 2, (encoded, history)


async def join(page: aiohttp.ClientWebSocketResponse, username: str) -> dict[str, Any]:
    """Ask to join as ``username``; the view's answer (member, or refused)."""
    await page.send_json({"type": "join", "username": username})
    return await next_of(page, "member", "refused")


async def next_of(page: aiohttp.ClientWebSocketResponse, *kinds: str) -> dict[str, Any]:
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        while True:
            message: dict[str, Any] = await page.receive_json()
            if message["type"] in kinds:
                return message


async def test_a_page_joins_as_a_member_of_its_own_and_posts_both_ways(
    session: aiohttp.ClientSession,
) -> None:
    async with web_server(relay=True) as (server, url), Client(*server.address) as ana:
        inbox = Inbox()
        await ana.join_room(inbox)
        async with session.ws_connect(f"{url}ws") as page:
            hello = await page.receive_json()
            assert hello["relay"] is True
            refused = await join(page, "bad\u202ename")
            assert refused["reason"] == "invalid_username" and "U+202E" in refused["text"]
            member = await join(page, "budi")
            assert member["username"] == "budi"
            ip, port = member["address"].rsplit(":", 1)
            # Through the front door: the room holds ana, the view's watch and budi's member.
            assert (ip, int(port)) in server.relay.room.members()  # type: ignore[union-attr]
            await page.send_json({"type": "post", "text": "halo <b>ana</b>"})
            assert (await next_of(page, "sent"))["text"] == "budi: halo <b>ana</b>"
            assert (await inbox.wait_for(1)) == [f"[{ip}] budi: halo <b>ana</b>"]
            ana.send("ana: halo\x1b[31m budi")  # escaped for the page, as for a terminal
            line = await next_of(page, "line")
            while "ana:" not in line["text"]:
                line = await next_of(page, "line")
            assert line["text"] == f"[{LOOPBACK}] ana: halo\\x1b[31m budi"
            assert web_stats(server).members == 1
            # /who lists the page's member by its address and name, and the view's watch.
            who = await ana.who()
            assert f"{ip} budi" in who and f"{LOOPBACK} udpchat-web" in who and len(who) == 3
            await page.send_json({"type": "post", "text": "x" * 2000})
            assert (await next_of(page, "refused"))["reason"] == "too_long"
            await page.send_json({"type": "post", "text": "two\nlines"})
            assert (await next_of(page, "refused"))["reason"] == "malformed"
            # A /word is never a text for the room; // sends one slash, as in chat.
            await page.send_json({"type": "post", "text": "/quit"})
            refused = await next_of(page, "refused")
            assert refused["reason"] == "command" and "// sends" in refused["text"]
            await page.send_json({"type": "post", "text": "//shrug"})
            assert (await next_of(page, "sent"))["text"] == "budi: /shrug"
            assert (await inbox.wait_for(2))[1] == f"[{ip}] budi: /shrug"
        await eventually(lambda: len(server.relay.room.members()) == 2)  # type: ignore[union-attr]
        stats = web_stats(server)
        assert stats.posts == 2
        assert stats.posts_refused == {
            "invalid_username": 1, "too_long": 1, "malformed": 1, "command": 1,
        }  # fmt: skip


async def test_a_page_member_is_rate_limited_like_any_member(
    session: aiohttp.ClientSession,
) -> None:
    async with (
        web_server(relay=True, relay_rate_per_s=1.0) as (server, url),
        Client(*server.address) as ana,
        session.ws_connect(f"{url}ws") as page,
    ):
        inbox = Inbox()
        await ana.join_room(inbox)
        await page.receive_json()
        await join(page, "budi")
        for n in range(10):
            await page.send_json({"type": "post", "text": f"spam {n}"})
        relay = server.relay
        assert relay is not None
        await eventually(lambda: relay.stats().over_rate == 8)  # a burst of two went through
        assert await inbox.wait_for(2) == ["[127.0.0.1] budi: spam 0", "[127.0.0.1] budi: spam 1"]


async def test_a_full_room_refuses_a_page_as_it_refuses_any_member(
    session: aiohttp.ClientSession,
) -> None:
    async with web_server(relay=True, max_peers=1) as (server, url):
        async with session.ws_connect(f"{url}ws") as page:
            await page.receive_json()  # the view's watch holds the only place
            await eventually(lambda: len(server.relay.room.members()) == 1)  # type: ignore[union-attr]
            refused = await join(page, "budi")
        assert refused["reason"] == "join_failed" and "full" in refused["text"]


async def test_a_page_sees_and_reaches_members_on_another_node_of_a_nats_room(
    nats_node: NatsNode, session: aiohttp.ClientSession
) -> None:
    other_config = ServerConfig(host=LOOPBACK, port=0, relay=True, nats=(nats_node.url,))
    async with (
        web_server(relay=True, nats=(nats_node.url,)) as (_, url),
        Server(other_config) as other,
        Client(*other.address) as cici,
        session.ws_connect(f"{url}ws") as page,
    ):
        inbox = Inbox()
        await cici.join_room(inbox)
        await page.receive_json()
        member = await join(page, "budi")
        await page.send_json({"type": "post", "text": "dari web"})
        ip = member["address"].rsplit(":", 1)[0]
        assert await inbox.wait_for(1) == [f"[{ip}] budi: dari web"]
        cici.send("cici: dari node lain")
        line = await next_of(page, "line")
        while "cici" not in line["text"]:
            line = await next_of(page, "line")
        assert line["text"] == f"[{LOOPBACK}] cici: dari node lain"


async def test_the_view_mounts_in_an_applications_own_aiohttp_app(
    session: aiohttp.ClientSession,
) -> None:
    async with Server(ServerConfig(host=LOOPBACK, port=0, relay=True)) as server:
        view = ServerView(WebConfig(), server)
        app = web.Application()

        async def own_page(_: web.Request) -> web.Response:
            return web.Response(text="the application's own page")

        app.router.add_get("/", own_page)
        app.add_subapp("/udpchat/", view.application())
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, LOOPBACK, 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            base = f"http://{LOOPBACK}:{port}"
            async with session.get(f"{base}/") as response:
                assert await response.text() == "the application's own page"
            async with session.get(f"{base}/udpchat/") as response:
                assert "static/server.js" in await response.text()
                assert "Content-Security-Policy" in response.headers
            async with session.get(f"{base}/udpchat/static/uplot/LICENSE") as response:
                assert "MIT" in await response.text()
            async with session.ws_connect(f"{base}/udpchat/ws") as page:
                assert (await page.receive_json())["relay"] is True
                assert (await join(page, "budi"))["username"] == "budi"
        finally:
            await runner.cleanup()


async def test_serve_web_prints_its_url_and_serves_the_supervisors_totals(
    session: aiohttp.ClientSession,
) -> None:
    cli, port = await start_cli_server("--processes", "2", "--web", "0", "-q")  # loopback
    line = await cli.read_stderr_until("web view on")
    match = re.search(r"web view on (http://127\.0\.0\.1:\d+/)$", line)
    assert match, line
    raw_send((LOOPBACK, port), *(f"u{n}: pesan ke-1".encode() for n in range(20)))

    async def state() -> dict[str, Any]:
        async with session.get(f"{match.group(1)}api/state") as response:
            document: dict[str, Any] = await response.json()
            return document

    async def every_sender_shown() -> bool:
        return bool((await state())["table"]["senders"] == 20)

    await eventually(every_sender_shown)
    table = (await state())["table"]
    assert table["processes"] == 2
    assert {row["process"] for row in table["rows"]} <= {1, 2}
    cli.signal()
    status, _, stderr = await cli.finish()
    assert status == 0, stderr
    assert "web: clients=0" in stderr  # the web view's counters in the summary


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--web", "nonsense"], "--web: 'nonsense' is not [HOST:]PORT"),
        (["--web", "0", "--web-token", "short"], "--web-token: must be 16 to 128"),
        (["--web", "0", "--web-max-clients", "0"], "--web-max-clients: must be 1 to 1024"),
        (  # the view's members join from the server's machine: refused, the room is unusable
            ["--relay", "--allow", "10.0.0.0/8", "--web", "0"],
            "--allow: must hold 127.0.0.1, the web view's address towards the server",
        ),
    ],
)
async def test_wrong_web_options_are_usage_errors_naming_the_option(
    options: list[str], message: str
) -> None:
    cli = await start_cli("serve", "--port", "0", *options)
    status, _, stderr = await cli.finish()
    assert status == 2
    assert message in stderr


async def test_a_web_port_in_use_is_a_one_line_start_up_failure() -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        cli = await start_cli("serve", "--host", LOOPBACK, "--port", "0", "--web", f"{port}")
        status, _, stderr = await cli.finish()
    assert status == 3
    assert stderr.strip().splitlines()[-1] == (
        f"udpchat: cannot serve the web view on 127.0.0.1 port {port}: Address already in use; "
        "is another server on it? --web 0 picks a free port"
    )


def test_the_docs_show_both_pages_as_make_screenshots_takes_them() -> None:
    page = (ROOT / "docs/guide/web.md").read_text()
    for name in ("web-serve.png", "web-impair.png"):
        assert f"](../images/{name})" in page
        assert (ROOT / "docs/images" / name).read_bytes().startswith(b"\x89PNG")
    assert "python -m tools.screenshots" in (ROOT / "Makefile").read_text()
