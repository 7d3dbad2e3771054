from __future__ import annotations

import asyncio
import socket
import sys

import pexpect
import pytest

from support.waiting import EVENT_TIMEOUT_S, eventually
from tests.helpers import (
    LOOPBACK,
    BlockingSeedServer,
    free_udp_port,
    start_cli,
    wait_until_reading_stdin,
)
from udpchat import Client
from udpchat.cli import main


async def test_client_sends_seed_messages_to_a_blocking_server() -> None:
    server = BlockingSeedServer(expected=4)
    sent: list[str] = []
    async with Client(*server.address) as client:
        count = await client.send_every("bob", interval_s=0.01, count=4, on_sent=sent.append)
    received = await server.join()
    assert count == 4
    assert sent == [f"bob: pesan ke-{n}" for n in range(1, 5)]
    assert received == [text.encode() for text in sent]


async def test_a_round_trips_clock_starts_before_its_datagram_goes_out() -> None:
    server = BlockingSeedServer(expected=3)
    events: list[tuple[str, str]] = []
    async with Client(*server.address) as client:
        send = client.send

        def logged_send(text: str) -> None:
            events.append(("send", text))
            send(text)

        client.send = logged_send  # type: ignore[method-assign]
        await client.send_every(
            "bob",
            interval_s=0.01,
            count=3,
            on_sending=lambda text: events.append(("sending", text)),
            on_sent=lambda text: events.append(("sent", text)),
        )
    await server.join()
    assert events == [
        (event, f"bob: pesan ke-{n}") for n in range(1, 4) for event in ("sending", "send", "sent")
    ]


async def test_single_send_is_one_plain_datagram() -> None:
    server = BlockingSeedServer(expected=1)
    async with Client(*server.address) as client:
        client.send("anything at all ✓")
    assert await server.join() == ["anything at all ✓".encode()]


async def test_nothing_listening_is_reported_once_and_sending_goes_on() -> None:
    port = free_udp_port()
    errors: list[Exception] = []

    async with Client(LOOPBACK, port, on_error=errors.append) as client:
        client.send("a: pesan ke-1")
        await eventually(lambda: client.send_errors == 1)
        await client.send_every("a", interval_s=0.005, count=5)
        assert client.sent == 6
        # However late each refusal arrives, the streak is reported once.
        await eventually(lambda: client.send_errors >= 2)
    assert len(errors) == 1
    assert isinstance(errors[0], ConnectionRefusedError)


async def test_a_refusal_is_reported_again_after_the_repeat_interval() -> None:
    errors: list[Exception] = []
    async with Client(
        LOOPBACK, free_udp_port(), on_error=errors.append, error_repeat_s=0
    ) as client:
        client.send("a: pesan ke-1")
        await eventually(lambda: client.send_errors == 1)
        client.send("a: pesan ke-2")
        await eventually(lambda: client.send_errors == 2)
    assert len(errors) == 2


async def test_send_exits_1_when_every_datagram_was_refused() -> None:
    port = free_udp_port()
    cli = await start_cli(
        "send", "--username", "ana", "--port", str(port), "--count", "3", "--interval", "0.01"
    )
    status, _, stderr = await cli.finish()
    assert status == 1
    assert f"every datagram was refused: nothing listens at {LOOPBACK} port {port}" in stderr


async def test_a_refusal_of_the_last_datagram_does_not_promise_more() -> None:
    """``send --count 1`` to nothing: the refusal is said, without 'still sending'."""
    cli = await start_cli(
        "send", "--username", "ana", "--port", str(free_udp_port()), "--count", "1"
    )
    status, _, stderr = await cli.finish()
    assert status == 1
    assert "udpchat: send failed: Connection refused\n" in stderr
    assert "still sending" not in stderr


def test_load_says_the_target_refused(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_udp_port()
    args = ["load", "--port", str(port), "--users", "1", "--rate", "0", "--count", "500"]
    args.append("--no-progress")
    assert main(args) == 1
    assert f"{LOOPBACK} port {port} refused the datagrams" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["send", "chat", "load"])
def test_port_0_makes_no_sense_for_a_client(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    username = [] if command == "load" else ["--username", "ana"]
    assert main([command, *username, "--port", "0"]) == 2
    assert f"udpchat {command}: --port: " in capsys.readouterr().err


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this host")
async def test_bracketed_ipv6_host_is_accepted() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as server:
        server.bind(("::1", 0))
        server.settimeout(EVENT_TIMEOUT_S)
        port = server.getsockname()[1]
        cli = await start_cli(
            "send", "--username", "v6", "--host", "[::1]", "--port", str(port), "--count", "1"
        )
        assert (await cli.finish())[0] == 0
        assert await asyncio.to_thread(server.recv, 1024) == b"v6: pesan ke-1"


async def test_an_invalid_name_at_the_prompt_is_asked_again() -> None:
    server = BlockingSeedServer(expected=1)
    cli = await start_cli(
        "send",
        "--port",
        str(server.address[1]),
        "--count",
        "1",
        stdin=b"ana: x\n\x1b[2J\n  Budi Santoso  \n",
    )
    status, stdout, stderr = await cli.finish()
    assert status == 0
    assert stdout.endswith("Ter kirim: Budi Santoso: pesan ke-1\n")
    assert stderr.count("try again") == 2
    assert await server.join() == [b"Budi Santoso: pesan ke-1"]


def test_ctrl_c_at_the_prompt_ends_the_line_and_exits_130() -> None:
    send = pexpect.spawn(
        sys.executable, ["-m", "udpchat", "send"], encoding="utf-8", timeout=EVENT_TIMEOUT_S
    )
    send.expect_exact("Masukkan username: ")
    wait_until_reading_stdin(send.pid)
    send.sendintr()
    send.expect(r"\r\nudpchat: interrupted\r\n")
    send.expect(pexpect.EOF)
    send.close()
    assert send.exitstatus == 130
