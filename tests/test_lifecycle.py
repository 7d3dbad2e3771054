"""The library owns the lifecycle: a validated config, serve() until stopped, the relay and the
metrics endpoint from the config alone, and signals that always end in a drain and a summary."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from support.procfs import holds_sighup
from support.waiting import EVENT_TIMEOUT_S, eventually
from tests.helpers import (
    LOOPBACK,
    Collector,
    assert_balanced,
    assert_summary_balanced,
    raw_send,
    read_port,
    start_cli,
    start_cli_server,
)
from udpchat import Client, Message, OutputFormat, Server, ServerConfig
from udpchat.cli import main


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("port", 70000),
        ("workers", 0),
        ("queue_size", 0),
        ("max_datagram_size", 0),
        ("max_datagram_size", 70000),
        ("drain_timeout_s", -1.0),
        ("rcvbuf", 0),
        ("rate_limit_per_s", 0.0),
        ("max_peers", 0),
        ("peer_timeout_s", 0.0),
        ("metrics_port", -1),
        ("stats_interval_s", 0.0),
        ("host", ""),
    ],
)
def test_config_names_the_wrong_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: "):
        ServerConfig(**{field: value})  # type: ignore[arg-type]


def scrape(address: tuple[str, int]) -> str:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{address[1]}/metrics", timeout=10) as answer:
        text: str = answer.read().decode()
    return text


async def test_relay_and_metrics_from_the_config_alone() -> None:
    config = ServerConfig(host=LOOPBACK, port=0, relay=True, metrics_port=0)
    async with Server(config) as server:
        assert server.metrics_address is not None
        texts: list[str] = []
        async with Client(*server.address) as ana, Client(*server.address) as budi:
            await ana.join_room(texts.append)
            await budi.join_room(lambda text: None)
            budi.send("budi: pesan ke-1")
            await eventually(lambda: len(texts) == 1)
        assert texts == [f"[{LOOPBACK}] budi: pesan ke-1"]

        def joins_and_relayed() -> tuple[int, int]:
            relay = server.stats().relay
            assert relay is not None
            return relay.joins, relay.relayed_datagrams

        # The relay counts a text once it has sent every copy: just after ana's may have come.
        await eventually(lambda: joins_and_relayed() == (2, 1))
        metrics = await asyncio.to_thread(scrape, server.metrics_address)
    assert "udpchat_relay_members 2.0" in metrics
    assert "udpchat_relay_relayed_datagrams_total 1.0" in metrics
    assert server.metrics_address is None  # closed with the server


async def test_serve_runs_until_asked_to_stop(collector: Collector) -> None:
    server = Server(ServerConfig(host=LOOPBACK, port=0), collector)
    serving = asyncio.create_task(server.serve())
    await eventually(lambda: server.started)
    raw_send(server.address, b"a: pesan ke-1")
    await collector.wait_for(1)
    server.request_stop()
    assert await serving is True
    assert await server.wait_closed() is True
    assert server.stats().handled == 1


async def test_cancelling_serve_still_drains(collector: Collector) -> None:
    server = Server(ServerConfig(host=LOOPBACK, port=0), collector)
    serving = asyncio.create_task(server.serve())
    drained = asyncio.create_task(server.wait_closed())
    await eventually(lambda: server.started)
    raw_send(server.address, b"a: pesan ke-1", b"a: pesan ke-2")
    await eventually(lambda: server.stats().received == 2)
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving
    assert await drained is True
    assert server.stats().handled == 2
    assert_balanced(server.stats(), sent=2)


async def test_a_fatal_error_ends_serve_after_the_drain(collector: Collector) -> None:
    server = Server(ServerConfig(host=LOOPBACK, port=0), collector)
    serving = asyncio.create_task(server.serve())
    await eventually(lambda: server.started)
    raw_send(server.address, b"a: pesan ke-1")
    await collector.wait_for(1)
    server.fail(BrokenPipeError("stdout closed"))
    with pytest.raises(BrokenPipeError):
        await serving
    assert await server.wait_closed() is True
    assert_balanced(server.stats(), sent=1)


async def test_an_incomplete_drain_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stuck(message: Message) -> None:
        loop.call_soon_threadsafe(started.set)
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(EVENT_TIMEOUT_S)

    config = ServerConfig(host=LOOPBACK, port=0, workers=1, drain_timeout_s=0.01)
    with caplog.at_level(logging.WARNING, logger="udpchat.server"):
        async with Server(config, stuck) as server:
            raw_send(server.address, b"a: pesan ke-1")
            await asyncio.wait_for(started.wait(), EVENT_TIMEOUT_S)
    assert await server.wait_closed() is False
    stats = server.stats()
    assert (stats.handled, stats.queue_depth) == (0, 1)  # the stuck one stays counted as queued
    assert_balanced(stats, sent=1)
    release.set()
    assert any("still stuck" in record.getMessage() for record in caplog.records)


async def test_abandon_ends_serve_without_waiting_for_the_drain() -> None:
    release = threading.Event()
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stuck(message: Message) -> None:
        loop.call_soon_threadsafe(started.set)
        release.wait(EVENT_TIMEOUT_S)

    config = ServerConfig(host=LOOPBACK, port=0, workers=1, drain_timeout_s=3600)
    server = Server(config, stuck)
    await server.start()
    serving = asyncio.create_task(server.serve())
    raw_send(server.address, b"a: pesan ke-1")
    await asyncio.wait_for(started.wait(), EVENT_TIMEOUT_S)
    server.request_stop()
    server.abandon()  # at once, as two quick Ctrl-C do
    assert await asyncio.wait_for(serving, EVENT_TIMEOUT_S) is False
    stats = server.stats()
    assert (stats.handled, stats.queue_depth) == (0, 1)
    assert_balanced(stats, sent=1)
    release.set()


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version  # noqa: PLC0415

    import udpchat  # noqa: PLC0415

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"udpchat {version('udpchat')}\n"
    assert udpchat.__version__ == version("udpchat")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
async def test_every_stop_signal_drains_and_summarises(signum: int) -> None:
    cli, port = await start_cli_server()
    raw_send((LOOPBACK, port), b"a: pesan ke-1")
    assert await cli.read_stdout_line() == f"[{LOOPBACK}] a: pesan ke-1"
    cli.signal(signum)
    status, _, stderr = await cli.finish()
    assert status == 0, stderr
    assert f"{signal.Signals(signum).name}: stopping" in stderr
    counts = assert_summary_balanced(stderr, sent=1)
    assert (counts["received"], counts["handled"]) == (1, 1)
    assert "Traceback" not in stderr


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP])
async def test_a_signal_during_start_up_is_a_clean_stop(signum: int) -> None:
    cli = await start_cli("serve", "--host", LOOPBACK, "--port", "0")
    await eventually(lambda: holds_sighup(cli.process.pid))
    cli.signal(signum)  # while the CLI still imports, binds and starts
    status, _, stderr = await cli.finish()
    assert status == 0, stderr
    assert "Traceback" not in stderr
    counts = assert_summary_balanced(stderr, sent=0)
    assert counts["received"] == 0


async def test_json_mode_keeps_stdout_for_json() -> None:
    cli = await start_cli("serve", "--host", LOOPBACK, "--port", "0", "--format", "json")
    port = await read_port(cli)
    await cli.read_stderr_until("Server menunggu...")
    raw_send((LOOPBACK, port), b"a: pesan ke-1")
    first = await cli.read_stdout_line()
    cli.signal()
    status, rest, _ = await cli.finish()
    assert status == 0
    assert first.startswith("{") and rest == ""


def test_a_handler_and_an_output_format_are_one_too_many() -> None:
    config = ServerConfig(output_format=OutputFormat.TEXT)
    with pytest.raises(ValueError, match=r"handler or config\.output_format"):
        Server(config, lambda message: None)


@pytest.mark.parametrize("entry", ["-m udpchat", "the udpchat script"])
def test_stop_signals_are_held_before_anything_slow_is_imported(entry: str) -> None:
    """The window in which a stop signal is not yet a clean stop is the interpreter's own
    start-up: ``udpchat.signals`` is the first of ours, before asyncio, typing or typer."""
    script = Path(sys.executable).with_name("udpchat")
    command = ["-m", "udpchat"] if entry == "-m udpchat" else [str(script)]
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *command, "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    imported = [line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()]
    before = imported[: imported.index("udpchat.signals")]
    slow = {"asyncio", "typing", "typer", "udpchat.cli", "udpchat.eventloop"}
    assert slow.isdisjoint(before), sorted(slow & set(before))
