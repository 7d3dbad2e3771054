"""Operator errors, unreachable peers, floods and shutdown, through the real CLI."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from typer._click.exceptions import UsageError

from support.options import IMPAIRMENTS_OUT_OF_RANGE, float_options
from tests.helpers import (
    LOOPBACK,
    CliProcess,
    assert_summary_balanced,
    flood,
    free_udp_port,
    read_port,
    start_cli,
    start_server_with_unread_stdout,
)
from udpchat import cli as cli_module
from udpchat.accounting import DEFAULT_MAX_SENDERS
from udpchat.cli import app, main, usage_error_line
from udpchat.server import DEFAULT_WORKERS, ServerConfig
from udpchat.settings import host_problem


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["serve", "--port", "70000"], "udpchat serve: --port: must be 0 to 65535, not 70000"),
        (["serve", "--workers", "0"], "udpchat serve: --workers: must be 1 to 1024, not 0"),
        (["serve", "--queue-size", "0"], "udpchat serve: --queue-size: must be at least 1, not 0"),
        (["serve", "--drain-timeout", "-1"], "udpchat serve: --drain-timeout: must be at least 0, "
         "not -1.0"),
        (["serve", "--rcvbuf", "-1"], "udpchat serve: --rcvbuf: must be 0 (the OS default) or 1 "
         "to 2147483647, not -1"),
        (["serve", "--rcvbuf", "3000000000"], "udpchat serve: --rcvbuf: must be 0 (the OS "
         "default) or 1 to 2147483647, not 3000000000"),
        (["serve", "--allow", "10.0.0.300/8"], "udpchat serve: --allow: "),
        (["serve", "--format", "xml"], "udpchat serve: --format: 'xml' is not one of text, json"),
        (["serve", "--bogus"], "udpchat serve: no such option --bogus;"),
        (["serve", "--host", ""], "udpchat serve: --host: must not be empty"),
        (["serve", "--relay", "--processes", "2"], "udpchat serve: --relay: with --processes"),
        (["send", "--username", "u", "--interval", "-1"], "udpchat send: --interval: must be at "
         "least 0, not -1.0"),
        (["send", "--count", "0"], "udpchat send: --count: must be at least 1, not 0"),
        (["send", "--port", "0"], "udpchat send: --port: must be 1 to 65535, not 0"),
        (["chat", "--port", "70000"], "udpchat chat: --port: must be 1 to 65535, not 70000"),
        (["load", "--users", "0"], "udpchat load: --users: must be 1 to 10000, not 0"),
        (["load", "--rate", "-1"], "udpchat load: --rate: must be 0 to 1000000000, not -1.0"),
        (["load", "--duration", "4000"], "udpchat load: --duration: must be 0 to 3600, not 4000.0"),
        (["load", "--count", "0"], "udpchat load: --count: must be at least 1, not 0"),
        (  # refused before anything is sent, and before the progress bar draws
            ["load", "--host", "10.0.0.1", "--count", "1"],
            "udpchat load: 10.0.0.1 is not a loopback address; pass --allow-remote",
        ),
        (["impair", "--max-clients", "0"], "udpchat impair: --max-clients: must be 1 to 65536, "
         "not 0"),
        (["send", "--username", "bad: name"], "udpchat send: invalid username"),
        (["send", "--username", "/help"], "udpchat send: invalid username '/help': it starts "
         "with '/', which starts a command"),
        (["chat", "--username", "/quit"], "udpchat chat: invalid username '/quit': it starts "
         "with '/', which starts a command"),
        (["nosuch"], "udpchat: No such command 'nosuch'"),
        (["sned"], "udpchat: No such command 'sned'. Did you mean 'send'?"),
        (["serve", "--dashbord"], "udpchat serve: no such option --dashbord; did you mean "
         "--dashboard?"),
        (["serve", "--port", "abc"], "udpchat serve: --port: 'abc' is not a whole number"),
        (["serve", "--drain-timeout", "soon"], "udpchat serve: --drain-timeout: 'soon' is not a "
         "number"),
        (["serve", "--host", "127.0.0.1:5002"], "udpchat serve: --host: 127.0.0.1:5002 has a port "
         "in it: --host takes an address; put the port in --port (--host 127.0.0.1 --port 5002)"),
        (["serve", "--host", "999.1.1.1"], "udpchat serve: --host: 999.1.1.1 is not an IPv4 "
         "address (four numbers, each 0 to 255)"),
        (["serve", "--host", "http://example.org:5002"], "udpchat serve: --host: "
         "http://example.org:5002 is a URL: --host takes an address; put the port in --port"),
        (["serve", "--metrics-host", "[::1]:9100"], "udpchat serve: --metrics-host: [::1]:9100 has "
         "a port in it: --metrics-host takes an address; put the port in --metrics-port"),
        (["send", "--host", "localhost:5002"], "udpchat send: --host: localhost:5002 has a port in "
         "it: --host takes an address; put the port in --port (--host localhost --port 5002)"),
        (["chat", "--host", "[::1]:5002"], "udpchat chat: --host: [::1]:5002 has a port in it"),
        (["load", "--host", "127.0.0.1:5002"], "udpchat load: --host: 127.0.0.1:5002 has a port"),
        (["impair", "--loss", "10"], "udpchat impair: --loss: 10 is not a percentage; write 10% "
         "(or 0.1)"),
        (["impair", "--loss", "150%"], "udpchat impair: --loss: must be 0% to 100% (or 0 to 1), "
         "not '150%'"),
    ],
)  # fmt: skip
def test_a_usage_error_is_one_line_naming_the_command_and_option(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A value out of range included: in the config's words (ConfigError's), from the range
    it declares once, with the option's name."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(line), err
    assert "Usage:" not in err and "\u256d" not in err  # neither click's usage nor rich's box


COMMANDS = typer.main.get_command(app)
"""The command line, built once: typer takes 0.1-0.3 s to build it, and these tests call it
dozens of times (``main`` builds it anew for each call)."""
assert isinstance(COMMANDS, typer.core.TyperGroup)


class Accepted(Exception):  # noqa: N818 - what the test looks for, not an error
    """The command line let the value through to a config: the test's failure."""


WORK = ("run", "run_client", "run_load", "run_proxy", "ask_username")
"""What each command calls once its options are taken (serve, send and chat, load, impair; and
the username prompt before the clients' work): the test stops there."""


def usage_line(monkeypatch: pytest.MonkeyPatch, *argv: str) -> str:
    """The one line ``main`` would print for ``argv``, a usage error; a command that takes
    every option and goes to work raises :class:`Accepted` instead of serving or sending."""

    def accepted(*args: Any, **kwargs: Any) -> Any:
        raise Accepted(argv)

    for name in WORK:
        monkeypatch.setattr(cli_module, name, accepted)
    with pytest.raises(UsageError) as refused:
        COMMANDS.main(list(argv), prog_name="udpchat", standalone_mode=False)
    return usage_error_line(refused.value)


@pytest.mark.parametrize(("command", "option"), float_options(COMMANDS))
def test_no_option_takes_nan_or_infinity(
    command: str, option: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One line, exit 2 (``main`` says a usage error so: tested above), in the bound's words."""
    for value in ("nan", "inf", "-inf"):
        line = usage_line(monkeypatch, command, option, value)
        assert line.startswith(f"udpchat {command}: {option}: must be "), line
        assert line.endswith(f", not {value}") and "\n" not in line, line


@pytest.mark.parametrize(("option", "value"), IMPAIRMENTS_OUT_OF_RANGE)
def test_impairments_that_overflow_or_underflow_are_refused(
    option: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    line = usage_line(monkeypatch, "impair", option, value)
    assert line.startswith(f"udpchat impair: {option}: ") and "\n" not in line, line


def test_unknown_host_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Resolution is faked: a real lookup would send a DNS query off this machine."""

    def no_such_host(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    assert main(["send", "--username", "u", "--host", "nowhere.invalid", "--count", "1"]) == 1
    assert main(["serve", "--host", "nowhere.invalid"]) == 3
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "udpchat: cannot send to nowhere.invalid port 5002: [Errno -2] Name or service not known",
        "udpchat: cannot listen on nowhere.invalid port 5002: [Errno -2] Name or service not known",
    ]


async def test_address_not_on_this_host_is_one_line() -> None:
    server = await start_cli("serve", "--host", "192.0.2.1", "--port", "0")
    status, _, stderr = await server.finish()
    assert status == 3
    assert stderr == (
        "udpchat: cannot listen on 192.0.2.1 port 0: Cannot assign requested address; no "
        "interface has that address; --host 0.0.0.0 listens on all\n"
    )


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["serve", "--host", LOOPBACK, "--port", "{udp}"], "udpchat: cannot listen on 127.0.0.1 "
         "port {udp}: Address already in use; is another server on it? --port 0 picks a free port"),
        (["serve", "--host", LOOPBACK, "--port", "{udp}", "--processes", "2"], "udpchat: cannot "
         "listen on 127.0.0.1 port {udp}: Address already in use; is another server on it? "
         "--port 0 picks a free port"),
        (["serve", "--host", LOOPBACK, "--port", "0", "--metrics-port", "{tcp}"], "udpchat: cannot "
         "serve metrics on 127.0.0.1 port {tcp}: Address already in use; is another server on "
         "it? --metrics-port 0 picks a free port"),
    ],
)  # fmt: skip
async def test_a_port_in_use_is_one_line_naming_the_fix_and_exit_3(
    argv: list[str], line: str
) -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
    ):
        udp.bind((LOOPBACK, 0))
        tcp.bind((LOOPBACK, 0))
        tcp.listen()
        ports = {"udp": udp.getsockname()[1], "tcp": tcp.getsockname()[1]}
        cli = await start_cli(*(arg.format(**ports) for arg in argv))
        status, stdout, stderr = await cli.finish()
    assert (status, stdout) == (3, "")
    assert stderr == line.format(**ports) + "\n"


async def test_client_reports_refusal_once_and_reaches_a_late_server() -> None:
    port = free_udp_port()
    client = await start_cli(
        "send", "--username", "early", "--port", str(port), "--interval", "0.02"
    )
    await client.read_stderr_until("send failed: Connection refused; still sending")
    server = await start_cli("serve", "--host", LOOPBACK, "--port", str(port))
    await read_port(server)
    assert await server.read_stdout_line() == "Server menunggu..."
    line = await server.read_stdout_line()
    assert re.fullmatch(rf"\[{LOOPBACK}\] early: pesan ke-\d+", line)
    client.signal(signal.SIGINT)
    status, _, client_stderr = await client.finish()
    assert status == 0
    assert "send failed" not in client_stderr  # the first report was the only one
    server.signal(signal.SIGINT)
    assert (await server.finish())[0] == 0


def peak_rss_bytes(cli: CliProcess) -> int:
    status = Path(f"/proc/{cli.process.pid}/status").read_text()
    (kilobytes,) = re.findall(r"VmHWM:\s+(\d+) kB", status)
    return int(kilobytes) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
async def test_flood_memory_is_bounded_and_every_datagram_is_accounted(tmp_path: Path) -> None:
    queue_size, max_size = 4096, 1024
    with (tmp_path / "messages.log").open("w") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "udpchat", "serve", "--host", LOOPBACK, "--port", "0",
            "--queue-size", str(queue_size), "--max-size", str(max_size),
            stdout=log, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        server = CliProcess(process)
        port = await read_port(server)
        sent = await flood(port, size=1000, count=3_000_000, seconds=3.0)
        peak = peak_rss_bytes(server)
        server.signal(signal.SIGINT)
        status, _, stderr = await server.finish(timeout_s=30)
    assert status == 0, stderr
    counts = assert_summary_balanced(stderr, sent=sent)
    assert counts["queued"] == 0
    bound = ServerConfig(
        queue_size=queue_size,
        max_datagram_size=max_size,
        max_senders=DEFAULT_MAX_SENDERS,
        workers=DEFAULT_WORKERS,
    ).memory_bound_bytes()
    assert peak < bound
    logged = (tmp_path / "messages.log").read_text().count("\n")
    assert logged == counts["handled"] + 1  # and the banner


async def test_stuck_output_drains_within_the_timeout_then_exits_0() -> None:
    server, port, unread = await start_server_with_unread_stdout(
        "--drain-timeout", "0.5", "--queue-size", "1000"
    )
    sent = await flood(port, size=1000, count=5000, seconds=5.0)
    server.signal(signal.SIGTERM)
    status, _, stderr = await server.finish(timeout_s=30)
    os.close(unread)
    assert status == 0
    counts = assert_summary_balanced(stderr, sent=sent)
    assert counts["shutdown"] > 0  # the batches no worker started were dropped at the timeout
    assert counts["queued"] > 0  # what the stuck worker holds
    assert "a worker was still stuck in its handler or output" in stderr
    assert "forced" not in stderr  # one signal: a drain cut short by its timeout, not forced
    assert "Traceback" not in stderr


@pytest.mark.parametrize("output_format", ["text", "json"])
async def test_ctrl_c_on_a_pipe_whose_reader_stops_too_ends_cleanly(output_format: str) -> None:
    """Ctrl-C on ``serve --format json | jq`` stops both: the lines ``jq`` no longer reads are
    counted as output_failed, and the stop is no error (exit 0, no 'stopped by an error'). The
    pipe is full when the signal comes, so that the write that breaks comes after it."""
    server, port, unread = await start_server_with_unread_stdout(
        "--format", output_format, "--drain-timeout", "60", "--queue-size", "1000"
    )
    sent = await flood(port, size=1000, count=5000, seconds=5.0)
    server.signal(signal.SIGINT)
    await server.read_stderr_until("stopping")
    os.close(unread)  # the reader stops with the same Ctrl-C
    status, _, stderr = await server.finish(timeout_s=30)
    assert status == 0, stderr
    assert "stopped by an error" not in stderr and "Traceback" not in stderr
    counts = (
        json.loads(stderr.splitlines()[-1])["summary"]["dropped"]
        if output_format == "json"
        else assert_summary_balanced(stderr, sent=sent)
    )
    assert counts["output_failed"] > 0


async def test_second_signal_forces_exit() -> None:
    server, port, unread = await start_server_with_unread_stdout(
        "--drain-timeout", "60", "--queue-size", "1000"
    )
    sent = await flood(port, size=1000, count=5000, seconds=5.0)
    server.signal(signal.SIGINT)
    await server.read_stderr_until("stopping")
    server.signal(signal.SIGINT)
    status, _, stderr = await server.finish(timeout_s=30)
    os.close(unread)
    assert status == 130
    assert "forced stop" in stderr
    assert "after the drain timeout" not in stderr  # it was forced long before the 60 s
    assert "Traceback" not in stderr
    counts = assert_summary_balanced(stderr, sent=sent)  # what was abandoned is queued
    assert counts["queued"] > 0


@settings(deadline=None)  # a busy machine: the first example imports ipaddress's tables
@given(st.ip_addresses())
def test_every_address_is_a_host(address: object) -> None:
    assert host_problem(str(address)) is None


@settings(deadline=None)
@given(st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}", fullmatch=True))
def test_every_name_is_a_host(name: str) -> None:
    assert host_problem(name) is None
