"""impair --web: a change of the link's settings while it runs, through GET/PUT
/api/impairment, in the options' grammar: applied from the next datagram, the seed's stream
going on (the same seed, traffic and changes give the same fates), logged with the time,
recorded with --record, refused with the command line's own line, and only with the token
beyond loopback."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from support.waiting import eventually
from tests.helpers import LOOPBACK, raw_send, start_cli
from udpchat import Server, ServerConfig
from udpchat.impair import Direction, Impairment, ImpairProxy, Link, ProxyConfig
from udpchat.impair.spec import RateLimit
from udpchat.record import RecordOptions
from udpchat.web.config import WebConfig


def fates(link: Link[int], count: int, changes: dict[int, Impairment]) -> list[str]:
    """What the link does to ``count`` datagrams, each change made just before its datagram."""
    seen = []
    for number in range(1, count + 1):
        if number in changes:
            assert link.change(changes[number]) == number  # applies from this datagram on
        before = dict(link.counts)
        out = link.take([(f"ana: pesan ke-{number}".encode(), number, 0.0)], now=0.0)
        lost = link.counts["dropped_loss"] > before["dropped_loss"]
        seen.append("lost" if lost else f"sent x{len(out)}")
    return seen


def test_a_change_applies_from_the_next_datagram_and_the_same_changes_repeat_the_fates() -> None:
    lossy = Impairment(loss=0.5, duplicate=0.3)
    changes = {40: lossy, 80: Impairment(loss=0.2)}
    start = Impairment(loss=0.2)
    runs = [fates(Link(start, 7, Direction.UP), 120, changes) for _ in range(2)]
    assert runs[0] == runs[1]  # same seed, traffic and changes: the same fates
    assert "sent x2" not in runs[0][:39]  # no duplicates before the change
    assert "lost" in runs[0][39:79] and "sent x2" in runs[0][39:79]
    assert "sent x2" not in runs[0][79:]
    # The stream goes on, not from the seed again: after the change, the fates are not those
    # of a link that started with these settings.
    fresh = fates(Link(lossy, 7, Direction.UP), 40, {})
    assert runs[0][39:79] != fresh


@contextlib.asynccontextmanager
async def proxied(
    web: WebConfig | None = None, record: RecordOptions | None = None
) -> AsyncIterator[tuple[Server, ImpairProxy, str]]:
    async with Server(ServerConfig(host=LOOPBACK, port=0, output_format=None)) as server:
        config = ProxyConfig(
            listen_host=LOOPBACK,
            listen_port=0,
            target_host=LOOPBACK,
            target_port=server.address[1],
            seed=7,
            web=web or WebConfig(),
        )
        async with ImpairProxy(config, record=record) as proxy:
            url = proxy.web_url
            assert url is not None
            yield server, proxy, url.split("?")[0]


async def put(
    session: aiohttp.ClientSession, url: str, change: object, **headers: str
) -> tuple[int, dict[str, Any]]:
    async with session.put(
        f"{url}api/impairment", data=json.dumps(change),
        headers={"Content-Type": "application/json", **headers},
    ) as response:  # fmt: skip
        body = await response.text()
        answer = json.loads(body) if response.content_type == "application/json" else {}
        return response.status, answer


async def test_put_changes_the_loss_the_server_counts_and_get_says_so(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, "udpchat.impair")
    record = RecordOptions(tmp_path / "run.jsonl")
    async with proxied(record=record) as (server, proxy, url), aiohttp.ClientSession() as session:
        raw_send(proxy.address, *(f"ana: pesan ke-{n}".encode() for n in range(1, 11)))
        await eventually(lambda: server.stats().handled == 10)
        status, answer = await put(session, url, {"loss": "up:100%", "delay": ["down:20ms"]})
        assert status == 200
        assert answer["up"] == {"loss": "100%"} and answer["down"] == {"delay": "0.02s"}
        assert answer["change"]["from_datagram"] == {"up": 11, "down": 1}
        raw_send(proxy.address, *(f"ana: pesan ke-{n}".encode() for n in range(11, 21)))
        await eventually(lambda: proxy.stats().dropped_loss["up"] == 10)
        assert server.stats().received == 10  # the server counts what the link let through
        async with session.get(f"{url}api/impairment") as response:
            state = await response.json()
        assert state["seed"] == 7 and state["described"]["up"] == "loss=100%"
        assert [change["up"] for change in state["changes"]] == ["loss=100%"]
    logged = [r.getMessage() for r in caplog.records if "changed at" in r.getMessage()]
    assert len(logged) == 1
    assert "from datagram 11 up and 1 down: up: loss=100%; down: delay=20ms" in logged[0]
    lines = [json.loads(line) for line in (tmp_path / "run.jsonl").read_text().splitlines()]
    (change,) = [line for line in lines if line.get("type") == "change"]
    assert change["request"] == {"loss": "up:100%", "delay": ["down:20ms"]}
    assert change["from_datagram"] == {"up": 11, "down": 1} and change["t_s"] >= 0


async def test_a_knob_that_is_off_by_default_is_switched_off_with_null_or_off() -> None:
    async with proxied() as (_, proxy, url), aiohttp.ClientSession() as session:
        on = {"loss": "10%", "burst": "4", "rate": "1000/s"}
        assert (await put(session, url, on))[0] == 200
        code, answer = await put(session, url, {"burst": None, "rate": "down:off"})
        assert code == 200, answer
        assert answer["up"] == {"loss": "10%", "rate": "1000/s"}
        assert answer["down"] == {"loss": "10%"}
        assert proxy.impairments[Direction.UP] == Impairment(loss=0.1, rate=RateLimit(1000.0))
        code, answer = await put(session, url, {"loss": "off"})
        assert code == 200 and answer["described"]["down"] == ""


@pytest.mark.parametrize(
    ("option", "value"), [("delay", "5x"), ("loss", "150%"), ("jitter", "5ms")]
)
async def test_a_bad_value_gets_400_with_the_command_lines_own_line(
    option: str, value: str
) -> None:
    cli = await start_cli("impair", f"--{option}", value)
    status, _, stderr = await cli.finish()
    assert status == 2
    (line,) = [line for line in stderr.splitlines() if f"--{option}:" in line]
    cli_message = line.split(": ", 1)[1]  # after 'udpchat impair: '
    async with proxied() as (_, proxy, url), aiohttp.ClientSession() as session:
        code, answer = await put(session, url, {option: value})
        assert code == 400
        assert answer == {"error": cli_message}
        assert proxy.impairments[Direction.UP] == Impairment()  # nothing changed
        stats = proxy.stats().web
        assert stats is not None and stats.posts_refused == {"bad_change": 1}


async def test_a_change_needs_json_and_names_known_knobs() -> None:
    async with proxied() as (_, _proxy, url), aiohttp.ClientSession() as session:
        async with session.put(f"{url}api/impairment", data="loss=10%") as response:
            assert response.status == 415
        code, answer = await put(session, url, {"speed": "10%"})
        assert code == 400 and answer["error"].startswith("--speed: is not a setting of the link")
        code, answer = await put(session, url, ["loss", "10%"])
        assert code == 400


async def test_beyond_loopback_a_change_without_the_token_is_refused() -> None:
    async with (
        proxied(WebConfig(host="0.0.0.0")) as (_, proxy, _url),
        aiohttp.ClientSession() as session,
    ):
        url = proxy.web_url
        assert url is not None
        token = url.split("?token=")[1]
        base = url.split("?")[0].replace("0.0.0.0", LOOPBACK)
        code, _ = await put(session, base, {"loss": "10%"})
        assert code == 403
        assert proxy.impairments[Direction.UP] == Impairment()
        code, _ = await put(session, base, {"loss": "10%"}, Authorization=f"Bearer {token}")
        assert code == 200
        assert proxy.impairments[Direction.UP].loss == pytest.approx(0.1)


async def test_a_change_from_a_page_of_another_origin_is_refused() -> None:
    async with proxied() as (_, proxy, url), aiohttp.ClientSession() as session:
        code, _ = await put(session, url, {"loss": "10%"}, Origin="http://evil.example")
        assert code == 403
        assert proxy.impairments[Direction.UP] == Impairment()
