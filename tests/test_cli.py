"""The CLI through real subprocesses: what a student or an operator sees."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys

import pytest
import typer
import typer.core
import typer.main

from tests.helpers import (
    LOOPBACK,
    BlockingSeedServer,
    raw_send,
    read_port,
    start_cli,
    start_cli_server,
)
from udpchat.cli import Panel, app, main


async def test_seed_session_with_two_clients() -> None:
    server, port = await start_cli_server()
    clients = [
        await start_cli(
            "send", "--username", name, "--port", str(port), "--count", "3", "--interval", "0.05"
        )
        for name in ("user1", "user2")
    ]
    outputs = [await client.finish() for client in clients]
    for (status, stdout, stderr), name in zip(outputs, ("user1", "user2"), strict=True):
        assert status == 0, stderr
        assert stdout.splitlines() == [f"Ter kirim: {name}: pesan ke-{n}" for n in (1, 2, 3)]
    lines = [await server.read_stdout_line() for _ in range(6)]
    for name in ("user1", "user2"):
        assert [line for line in lines if f"] {name}:" in line] == [
            f"[{LOOPBACK}] {name}: pesan ke-{n}" for n in (1, 2, 3)
        ]
    server.signal(signal.SIGINT)
    status, rest, stderr = await server.finish()
    assert status == 0
    assert rest == ""
    assert "Traceback" not in stderr


async def test_raw_socket_client_to_cli_server() -> None:
    server, port = await start_cli_server()
    raw_send((LOOPBACK, port), b"alice: pesan ke-1", b"hello from nc\n")
    assert await server.read_stdout_line() == f"[{LOOPBACK}] alice: pesan ke-1"
    assert await server.read_stdout_line() == f"[{LOOPBACK}] hello from nc"
    server.signal(signal.SIGTERM)
    status, _, stderr = await server.finish()
    assert status == 0
    assert "Traceback" not in stderr


async def test_cli_client_to_blocking_seed_server() -> None:
    seed = BlockingSeedServer(expected=2)
    host, port = seed.address
    client = await start_cli(
        "send",
        "--username",
        "carol",
        "--host",
        host,
        "--port",
        str(port),
        "--count",
        "2",
        "--interval",
        "0",
    )
    status, stdout, stderr = await client.finish()
    assert status == 0
    assert await seed.join() == [b"carol: pesan ke-1", b"carol: pesan ke-2"]
    assert stdout.splitlines() == ["Ter kirim: carol: pesan ke-1", "Ter kirim: carol: pesan ke-2"]
    assert stderr.splitlines() == ["udpchat: summary: messages=2"]


async def test_username_prompt_like_the_seed() -> None:
    seed = BlockingSeedServer(expected=1)
    client = await start_cli(
        "send", "--port", str(seed.address[1]), "--count", "1", stdin=b"user1\n"
    )
    status, stdout, _ = await client.finish()
    assert status == 0
    assert stdout == "Masukkan username: Ter kirim: user1: pesan ke-1\n"
    assert await seed.join() == [b"user1: pesan ke-1"]


async def test_prompt_without_input_fails_cleanly() -> None:
    client = await start_cli("send", "--count", "1", stdin=b"")
    status, stdout, stderr = await client.finish()
    assert status == 2
    assert stdout == "Masukkan username: \n"  # the prompt's line ends before the error
    assert stderr.strip() == "udpchat send: no username given"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_client_stops_cleanly_on_signal(signum: int) -> None:
    seed = BlockingSeedServer(expected=1)
    client = await start_cli(
        "send", "--username", "dave", "--port", str(seed.address[1]), "--interval", "0.05"
    )
    assert await client.read_stdout_line() == "Ter kirim: dave: pesan ke-1"
    client.signal(signum)
    status, _, stderr = await client.finish()
    assert status == 0
    assert "Traceback" not in stderr
    await seed.join()


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this host")
async def test_ipv6_loopback_end_to_end() -> None:
    server = await start_cli("serve", "--host", "::1", "--port", "0")
    port = await read_port(server)
    assert await server.read_stdout_line() == "Server menunggu..."
    client = await start_cli(
        "send", "--username", "v6", "--host", "::1", "--port", str(port), "--count", "1"
    )
    assert (await client.finish())[0] == 0
    assert await server.read_stdout_line() == "[::1] v6: pesan ke-1"
    server.signal(signal.SIGINT)
    assert (await server.finish())[0] == 0


def test_main_returns_exit_codes_without_a_subprocess(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "serve" in capsys.readouterr().out
    assert main(["serve", "--workers", "0"]) == 2
    assert main(["serve", "--processes", "2", "--relay"]) == 2
    assert main(["serve", "--format", "xml"]) == 2
    assert main(["send", "--username", "bad: name", "--count", "1"]) == 2
    assert "invalid username" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["", "serve", "send", "chat", "load", "impair"])
def test_help_reads_whole_at_80_columns(command: str) -> None:
    """No option or description cut short, no type placeholders, at a terminal's 80 columns."""
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    if command and command not in group.commands:
        pytest.skip(f"no {command} command here")
    result = subprocess.run(
        [sys.executable, "-m", "udpchat", *([command] if command else []), "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "80"},
        check=True,
    )
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    for unwanted in ("\u2026", "<str>", "<bool>", "list[", "range>", "\u2502"):
        assert unwanted not in result.stdout, (unwanted, result.stdout)
    cut = [line for line in lines if line.endswith("...") and not line.startswith("Usage:")]
    assert cut == []


@pytest.mark.parametrize(
    ("command", "described"),
    [
        ("serve", "--queue-size N Messages waiting for a worker, at most; more are dropped. "
         "Must be at least 1."),
        ("serve", "--port PORT UDP port. Must be 0 to 65535."),
        ("serve", "--rcvbuf BYTES Socket receive buffer to ask for, in bytes. Must be 0 (the OS "
         "default) or 1 to 2147483647."),
        ("send", "--port PORT Server's UDP port. Must be 1 to 65535."),
        ("load", "--users N Simulated users, each with its own socket. Must be 1 to 10000."),
        ("impair", "--queue-bytes BYTES Bytes each direction holds at most (delayed, "
         "rate-limited). Must be 65791 to 4294967296."),
        ("impair", "--idle-timeout SECONDS Seconds of silence after which a client is dropped. "
         "Must be 0.01 to 86400."),
    ],
)  # fmt: skip
def test_help_says_the_range_the_config_declares(
    command: str, described: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--help"]) == 0
    assert described in " ".join(capsys.readouterr().out.split())


def help_sections(command: str) -> dict[str, str]:
    """``udpchat COMMAND --help`` at 80 columns by heading (``Options``, ``Limits ...``), in
    order; in this process, from the command line built once."""
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    with group.commands[command].make_context(command, [], resilient_parsing=True) as context:
        context.terminal_width = context.max_content_width = 80
        text = context.get_help()
    parts = re.split(r"(?m)^(\S[^\n]*):\n", text)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_serve_help_groups_its_options() -> None:
    sections = help_sections("serve")
    assert list(sections) == [*(panel.value for panel in Panel), "Examples"]
    placed = {
        "--port": Panel.BASIC,
        "--workers": Panel.BASIC,
        "--help": Panel.BASIC,
        "--queue-size": Panel.LIMITS,
        "--rate-limit": Panel.LIMITS,
        "--quiet": Panel.OUTPUT,
        "--dashboard": Panel.OUTPUT,
        "--relay": Panel.ROOM,
        "--max-peers": Panel.ROOM,
        "--nats": Panel.NATS,
        "--nats-creds": Panel.NATS,
        "--metrics-port": Panel.METRICS,
    }
    for option, panel in placed.items():
        holding = [
            name
            for name, text in sections.items()
            if re.search(rf"^  (-\w, )?{option}[ \n]", text, re.M)
        ]
        assert holding == [panel.value], option


@pytest.mark.parametrize("command", ["serve", "send", "chat", "load", "impair"])
def test_every_commands_help_ends_with_examples_that_parse(command: str) -> None:
    """2 or 3 examples, each a command line the parser takes: an option renamed since would
    fail here, not in a reader's shell."""
    examples = re.findall(r"^  \$ (.*)$", help_sections(command)["Examples"], re.M)
    assert 2 <= len(examples) <= 3
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    for example in examples:
        program, name, *args = shlex.split(example)
        assert (program, name) == ("udpchat", command)
        with group.commands[name].make_context(name, args) as context:
            assert context.params


def test_every_option_is_described() -> None:
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    for name, command in group.commands.items():
        for param in command.params:
            if param.name != "help":
                assert getattr(param, "help", None), f"{name} --{param.name} has no help"


def test_a_python_without_udpchats_packages_says_what_to_run() -> None:
    """``python3 -m udpchat`` outside the venv: one line naming the missing package and the way
    to the venv, not a ModuleNotFoundError traceback."""
    program = (
        "import sys; sys.modules['typer'] = None; sys.argv = ['udpchat', 'serve']; "
        "from udpchat.__main__ import main; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "lacks the package 'typer'" in result.stderr and "make serve" in result.stderr
