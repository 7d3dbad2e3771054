"""``chat`` as a person meets it: in a real terminal (tmux renders the screen, so a test sees
what a person sees), idle for longer than the server's peer timeout, and across a restart."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable

import pexpect
import pytest

from support.waiting import EVENT_TIMEOUT_S, eventually
from tests.helpers import (
    LOOPBACK,
    CliProcess,
    Collector,
    Inbox,
    read_port,
    start_cli,
    start_cli_server,
)
from udpchat import Client, RelayStats, Server, ServerConfig
from udpchat import chat as chat_module
from udpchat.wire import text_digest

_sessions = itertools.count()


class Terminal:
    """A command in its own tmux server (private socket), 100x20, that shows its exit status
    on the screen and stays there."""

    def __init__(self, command: list[str]) -> None:
        self.socket_name = f"udpchat-test-{os.getpid()}-{next(_sessions)}"
        shell = f'{shlex.join(command)}; echo "exit status $?"; exec sleep 600'
        self.tmux("new-session", "-d", "-x", "100", "-y", "20", "-s", "chat", shell)

    def tmux(self, *args: str) -> str:
        environment = dict(os.environ, TERM="xterm-256color", PYTHONUNBUFFERED="1")
        result = subprocess.run(
            ["tmux", "-L", self.socket_name, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            check=True,
            env=environment,
        )
        return result.stdout

    def screen(self) -> list[str]:
        return [
            line.rstrip() for line in self.tmux("capture-pane", "-p", "-t", "chat").splitlines()
        ]

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "chat", "-l", text)

    def press(self, key: str) -> None:
        self.tmux("send-keys", "-t", "chat", key)

    async def wait_for(
        self, predicate: Callable[[list[str]], bool], timeout_s: float = EVENT_TIMEOUT_S
    ) -> list[str]:
        """The screen, once ``predicate`` holds for it; a TimeoutError shows the last one."""
        screen: list[str] = []

        def shown() -> bool:
            nonlocal screen
            screen = self.screen()
            return predicate(screen)

        try:
            await eventually(shown, timeout_s)
        except TimeoutError:
            raise AssertionError("\n".join(screen)) from None
        return screen

    async def exit_status(self) -> int:
        def exited(screen: list[str]) -> bool:
            return any(line.startswith("exit status ") for line in screen)

        screen = await self.wait_for(exited)
        (line,) = [line for line in screen if line.startswith("exit status ")]
        return int(line.removeprefix("exit status "))

    def close(self) -> None:
        subprocess.run(
            ["tmux", "-L", self.socket_name, "kill-server"], capture_output=True, check=False
        )


def has_line(expected: str) -> Callable[[list[str]], bool]:
    return lambda screen: expected in screen


def chat_command(port: int, username: str) -> list[str]:
    return [sys.executable, "-m", "udpchat", "chat", "--username", username, "--port", str(port)]


@contextlib.asynccontextmanager
async def relay_server(*args: str) -> AsyncIterator[tuple[CliProcess, int]]:
    cli, port = await start_cli_server("--relay", *args)
    try:
        yield cli, port
    finally:
        cli.signal(signal.SIGINT)
        await cli.finish()


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
async def test_a_message_arriving_mid_line_leaves_the_typed_half_intact() -> None:
    async with relay_server() as (_, port):
        terminal = Terminal(chat_command(port, "Citra Dewi"))
        budi, inbox = Client(LOOPBACK, port), Inbox()
        try:
            await terminal.wait_for(has_line("Citra Dewi>"))
            terminal.type("sedang menge")
            await terminal.wait_for(has_line("Citra Dewi> sedang menge"))
            await budi.open()
            await budi.join_room(inbox)
            budi.send("budi: pesan ke-1")
            message, half_line = (
                f"Diterima: [{LOOPBACK}] budi: pesan ke-1",
                "Citra Dewi> sedang menge",
            )

            def message_above_the_half_line(screen: list[str]) -> bool:
                # Both whole, in that order, once the line editor has redrawn its line (a split
                # line, as in "sedang mengeDiterima: …", never gets there).
                rows = {line: row for row, line in enumerate(screen)}
                return message in rows and half_line in rows and rows[message] < rows[half_line]

            screen = await terminal.wait_for(message_above_the_half_line)
            assert not any("menge" in line and "Diterima" in line for line in screen)
            terminal.type("tik")
            terminal.press("Enter")
            assert await inbox.wait_for(1) == [f"[{LOOPBACK}] Citra Dewi: sedang mengetik"]
            screen = await terminal.wait_for(has_line("Ter kirim: Citra Dewi: sedang mengetik"))
            assert "Citra Dewi> sedang mengetik" not in screen  # shown once, as sent
            await terminal.wait_for(has_line("Citra Dewi>"))  # the next prompt is up
            terminal.press("Up")  # history
            await terminal.wait_for(has_line("Citra Dewi> sedang mengetik"))
            terminal.press("C-u")
            await terminal.wait_for(has_line("Citra Dewi>"))
            terminal.press("C-d")
            assert await terminal.exit_status() == 0
            assert "udpchat: left the room" in terminal.screen()
        finally:
            budi.close()
            terminal.close()


def spawn_chat(port: int, username: str) -> pexpect.spawn:
    command = chat_command(port, username)
    return pexpect.spawn(command[0], command[1:], encoding="utf-8", timeout=EVENT_TIMEOUT_S)


async def expect(chat: pexpect.spawn, text: str, timeout_s: float = EVENT_TIMEOUT_S) -> str:
    """Everything ``chat`` printed before ``text``, once it has printed ``text``."""
    await asyncio.to_thread(chat.expect_exact, text, timeout=timeout_s)
    return str(chat.before)


async def joined_member(port: int) -> tuple[Client, Inbox]:
    member, inbox = Client(LOOPBACK, port), Inbox()
    await member.open()
    await member.join_room(inbox)
    return member, inbox


async def leave(chat: pexpect.spawn) -> None:
    """Ctrl-C: a key to the line editor, or SIGINT from the tty between two prompts; both leave
    the room cleanly. (Ctrl-D between two prompts would be the tty's, not the editor's.)"""
    chat.sendintr()
    await expect(chat, "left the room")
    await asyncio.to_thread(chat.expect, pexpect.EOF)
    chat.close()
    assert chat.exitstatus == 0


IDLE_PEER_TIMEOUT_S = 0.5
"""Short, so that the idle test takes little time, yet three keepalive intervals long: a busy
machine may hold the chat process back a third of it without its member expiring."""
SILENT_MEMBERS = 3


async def test_an_idle_member_stays_in_the_room_past_the_peer_timeout(
    collector: Collector,
) -> None:
    """Silent members who joined after dewi leave by silence one after the other, three peer
    timeouts at least, while dewi, idle all along, stays a member (it never had to rejoin) and
    then sees a text."""
    config = ServerConfig(host=LOOPBACK, port=0, relay=True, peer_timeout_s=IDLE_PEER_TIMEOUT_S)
    async with Server(config, collector) as server:
        port = server.address[1]

        def relay() -> RelayStats:
            stats = server.stats(include_senders=False).relay
            assert stats is not None
            return stats

        async def a_silent_member_expires() -> None:
            expired = relay().expired
            silent, _ = await joined_member(port)
            silent.close()  # no keepalive from here on
            await eventually(lambda: relay().expired == expired + 1)

        chat = spawn_chat(port, "dewi")
        try:
            await expect(chat, "joined the room")
            for _ in range(SILENT_MEMBERS):
                await a_silent_member_expires()
            assert (relay().members, relay().joins) == (1, 1 + SILENT_MEMBERS)
            budi, _ = await joined_member(port)
            budi.send("budi: masih di sini?")
            before = await expect(chat, f"Diterima: [{LOOPBACK}] budi: masih di sini?")
            assert "out of the room" not in before
            budi.close()
            await leave(chat)
        finally:
            chat.terminate(force=True)


async def test_a_member_rejoins_by_itself_after_a_server_restart() -> None:
    server, port = await start_cli_server("--relay", "--peer-timeout", "2")
    chat = spawn_chat(port, "eka")
    try:
        await expect(chat, "joined the room")
        server.signal(signal.SIGINT)
        await server.finish()
        server = await start_cli(
            "serve", "--host", LOOPBACK, "--port", str(port), "--relay", "--peer-timeout", "2"
        )
        await read_port(server)
        before = await expect(chat, "back in the room", timeout_s=10)
        assert before.count("out of the room") == 1
        budi, inbox = await joined_member(port)
        budi.send("budi: selamat datang kembali")
        await expect(chat, f"Diterima: [{LOOPBACK}] budi: selamat datang kembali")
        chat.sendline("terima kasih")
        assert await inbox.wait_for(1) == [f"[{LOOPBACK}] eka: terima kasih"]
        await expect(chat, "Ter kirim: eka: terima kasih")
        budi.close()
        await leave(chat)
    finally:
        chat.terminate(force=True)
        server.signal(signal.SIGINT)
        await server.finish()


async def test_chat_with_a_server_without_relay_says_to_start_it_with_relay() -> None:
    server, port = await start_cli_server()
    try:
        chat = await start_cli("chat", "--username", "ana", "--port", str(port), stdin=b"")
        status, _, stderr = await chat.finish()
        assert status == 1
        assert f"no answer to /join from {LOOPBACK} port {port}" in stderr
        assert "'udpchat serve --relay'" in stderr
    finally:
        server.signal(signal.SIGINT)
        await server.finish()


async def test_a_line_is_shown_as_sent_only_once_the_room_has_it() -> None:
    """A line typed after the server went is said not delivered, never 'Ter kirim'; the member
    is back within seconds of the server, and its lines are confirmed again."""
    server, port = await start_cli_server("--relay")
    chat = spawn_chat(port, "ana")
    try:
        await expect(chat, "joined the room")
        chat.sendline("satu")
        await expect(chat, "Ter kirim: ana: satu")  # the room's /ok came back
        server.signal(signal.SIGINT)
        await server.finish()
        chat.sendline("ada orang?")
        before = await expect(chat, "not delivered (out of the room): ana: ada orang?")
        assert "Ter kirim: ana: ada orang?" not in before
        server = await start_cli("serve", "--host", LOOPBACK, "--port", str(port), "--relay")
        await read_port(server)
        await expect(chat, "back in the room", timeout_s=5)  # rejoins every second when out
        await expect(chat, "1 line not delivered: an empty line (Enter) sends them again")
        budi, inbox = await joined_member(port)
        chat.sendline("")  # one keypress
        await expect(chat, "Ter kirim: ana: ada orang? (resent)")
        assert await inbox.wait_for(1) == [f"[{LOOPBACK}] ana: ada orang? (resent)"]
        chat.sendline("halo lagi")
        await expect(chat, "Ter kirim: ana: halo lagi")
        budi.close()
        await leave(chat)
    finally:
        chat.terminate(force=True)
        server.signal(signal.SIGINT)
        await server.finish()


async def test_an_unconfirmed_line_is_said_not_delivered(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(chat_module, "CONFIRM_TIMEOUT_S", 0.01)
    said: list[str] = []
    deliveries = chat_module.Deliveries(said.append)
    deliveries.sent("ana: satu")
    deliveries.sent("ana: dua")
    deliveries.confirmed(text_digest(b"ana: dua"))
    await asyncio.wait_for(deliveries.idle.wait(), EVENT_TIMEOUT_S)
    assert capsys.readouterr().out == "Ter kirim: ana: dua\n"
    assert said == ["not delivered (the room did not confirm it): ana: satu"]
    deliveries.confirmed(text_digest(b"ana: satu"))  # too late: already said
    assert capsys.readouterr().out == ""


async def test_commands_stay_local_and_only_lines_for_the_room_reach_it() -> None:
    """``/help``, ``/who``, ``/nick`` and ``/quit`` are done here (``/who`` asks the room); an
    unknown ``/word`` is refused with a hint; ``//`` sends one slash; nothing after ``/quit``
    is read."""
    typed = (
        "halo\n/help\n/who\n/zap x\n//shrug\n/nick ana\n/nick bad: name\n/nick /quit\n/who\n"
        "lagi\n/quit\nsesudah\n"
    )
    async with relay_server() as (_, port):
        budi, inbox = await joined_member(port)
        chat = await start_cli(
            "chat", "--username", "citra", "--port", str(port), stdin=typed.encode()
        )
        status, stdout, stderr = await chat.finish()
        budi.close()
    assert status == 0, stderr
    assert inbox.texts == [
        f"[{LOOPBACK}] citra: halo", f"[{LOOPBACK}] citra: /shrug", f"[{LOOPBACK}] ana: lagi"
    ]  # fmt: skip
    assert stdout.splitlines() == ["Ter kirim: citra: halo", "Ter kirim: citra: /shrug",
                                   "Ter kirim: ana: lagi"]  # fmt: skip
    said = stderr.splitlines()
    for command in chat_module.CHAT_COMMANDS.values():
        assert any(line.startswith(f"udpchat: {command.usage} ") for line in said), command
    assert (
        "udpchat: unknown command /zap, not sent; /help lists the commands, // sends a line "
        "that starts with /" in said
    )
    assert any(line.startswith("udpchat: joined the room") and "as ana;" in line for line in said)
    assert any(line.startswith("udpchat: /nick: 'bad: name' cannot be a name") for line in said)
    assert (
        "udpchat: /nick: '/quit' cannot be a name: it starts with '/', which starts a command"
        in said
    )
    members = [line for line in said if line.startswith("udpchat: in the room")]
    assert members == [  # budi joined without a name, as an older client does
        f"udpchat: in the room (2): [{LOOPBACK}], citra [{LOOPBACK}]",
        f"udpchat: in the room (2): [{LOOPBACK}], ana [{LOOPBACK}]",
    ]
    assert said[-2:] == ["udpchat: left the room", "udpchat: summary: typed=3 delivered=3"]


async def test_stopped_during_a_join_that_fails_says_it_never_joined() -> None:
    server, port = await start_cli_server()  # no --relay: the join is printed, not answered
    try:
        chat = await start_cli("chat", "--username", "ana", "--port", str(port), stdin=b"")
        assert (await server.read_stdout_line()).startswith(f"[{LOOPBACK}] /join ")
        chat.signal(signal.SIGINT)
        status, _, stderr = await chat.finish()
    finally:
        server.signal(signal.SIGINT)
        await server.finish()
    assert status == 0
    assert stderr.splitlines() == [
        f"udpchat: stopped before joining the room at {LOOPBACK} port {port}: never joined",
        "udpchat: summary: nothing sent",
    ]


def test_a_line_sent_again_is_not_shown_twice(capsys: pytest.CaptureFixture[str]) -> None:
    transcript = chat_module.Transcript()
    transcript("[10.0.0.1] budi: halo")
    transcript("[10.0.0.1] budi: halo (resent)")  # its /ok was lost: budi sent it again
    transcript("[10.0.0.1] budi: apa kabar (resent)")  # lost the first time: shown, marked
    transcript("[10.0.0.1] budi: halo")  # typed twice: shown twice
    assert capsys.readouterr().out.splitlines() == [
        "Diterima: [10.0.0.1] budi: halo",
        "Diterima: [10.0.0.1] budi: apa kabar (resent)",
        "Diterima: [10.0.0.1] budi: halo",
    ]
    assert transcript.hidden == 1


def test_a_transcript_remembers_a_bounded_number_of_lines(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(chat_module, "MAX_SEEN", 2)
    transcript = chat_module.Transcript()
    for line in ("a: 1", "a: 2", "a: 3", "a: 1 (resent)", "a: 3 (resent)"):
        transcript(line)
    assert capsys.readouterr().out.count("\n") == 4  # 1 forgotten, so shown again; 3 not
    assert transcript.hidden == 1


async def test_lines_not_delivered_are_kept_to_send_again_within_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(chat_module, "MAX_UNDELIVERED", 2)
    deliveries = chat_module.Deliveries(lambda line: None)
    for text in ("ana: 1", "ana: 2", "ana: 3"):
        deliveries.not_sent(text)
    assert deliveries.take_undelivered() == [("ana: 2", False), ("ana: 3", False)]
    assert (deliveries.forgotten, deliveries.not_delivered_lines) == (1, 3)
    assert deliveries.take_undelivered() == []
