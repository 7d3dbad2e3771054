"""The live view: its rendering from fixed snapshots, and the loop that draws it."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import unicodedata
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TextIO, cast

import pytest
from rich.console import Console

from support.waiting import EVENT_TIMEOUT_S, eventually_sync
from tests.helpers import LOOPBACK, start_cli
from udpchat.counters import BusStats, DeliveryTotals, RelayStats, SenderStats, StatsSnapshot
from udpchat.dashboard import (
    NAME_MAX_CELLS,
    NAME_MIN_CELLS,
    Dashboard,
    DashboardSettings,
    NoTerminalError,
    Sample,
    ScrollingLines,
    ViewTerminal,
    find_terminal,
    render,
    window_start,
)
from udpchat.report import SortKey

NOW_S = 1_000_000.0
SETTINGS = DashboardSettings(address=("127.0.0.1", 5002), started_at_s=NOW_S - 125)


def sender(
    username: str,
    port: int,
    *,
    received: int = 100,
    lost: int = 0,
    jitter_s: float = 0.001,
    silent_s: float = 1.0,
) -> SenderStats:
    return SenderStats(
        ip="127.0.0.1",
        port=port,
        username=username,
        received=received,
        highest_counter=received + lost,
        lost=lost,
        duplicates=0,
        reordered=0,
        late=0,
        restarts=0,
        jitter_s=jitter_s,
        last_heard_s=NOW_S - silent_s,
    )


def snapshot(*senders: SenderStats, received: int = 0, handled: int = 0) -> StatsSnapshot:
    return StatsSnapshot(
        received=received,
        handled=handled,
        handler_errors=0,
        dropped={"queue_full": 0, "oversize": 2},
        kernel_drops=0,
        delivery=DeliveryTotals(senders=len(senders)),
        senders=senders,
    )


def text_of(view: object, height: int = 40, width: int = 100) -> list[str]:
    console = Console(record=True, width=width, height=height, color_system=None)
    console.print(view)
    return [line.rstrip() for line in console.export_text().splitlines()]


def usernames(lines: list[str]) -> list[str]:
    return [
        match.group(1)
        for line in lines
        if (match := re.match(r"\s*(?:\d+ +)?\S+ +(user\w*\d) ", line))
    ]


def test_header_shows_address_uptime_rates_and_drops() -> None:
    previous = Sample((snapshot(received=100, handled=90),), NOW_S - 2)
    current = Sample((snapshot(sender("user1", 1), received=300, handled=290),), NOW_S)
    lines = text_of(render(current, previous, SETTINGS))
    assert "127.0.0.1:5002" in lines[0]
    assert "up 2m05s" in lines[0]
    assert "in 100.0/s" in lines[1]
    assert "handled 100.0/s" in lines[1]
    assert "senders 1" in lines[1]
    assert "oversize 2" in lines[2]
    assert "queue_full" not in lines[2]  # reasons that never happened stay out
    assert "kernel drops 0" in lines[2]


def test_the_header_says_the_room_and_nats_in_one_line_cut_at_a_word() -> None:
    room = dataclasses.replace(
        snapshot(),
        relay=RelayStats(members=3, joins=4, bytes_in=99, over_rate=2),
        bus=BusStats(connected=True, published=12, received=9, reconnects=1),
    )
    lines = text_of(render(Sample((room,), NOW_S), None, SETTINGS))
    (line,) = [line for line in lines if "relay:" in line or "nats:" in line]
    assert line == (
        "relay: members=3 joins=4 over_rate=2 nats: connected=true published=12 received=9"
    )  # what a person reads: bytes_in and reconnects are --verbose's
    narrow = text_of(render(Sample((room,), NOW_S), None, SETTINGS), width=40)
    (line,) = [line for line in narrow if "relay:" in line]
    assert line == "relay: members=3 joins=4 over_rate=2 \u2026"
    assert "relay" not in "".join(text_of(render(Sample((snapshot(),), NOW_S), None, SETTINGS)))


def test_rows_show_each_senders_figures() -> None:
    current = Sample(
        (snapshot(sender("user1", 40001, received=98, lost=2, jitter_s=0.0042)),), NOW_S
    )
    (row,) = [line for line in text_of(render(current, None, SETTINGS)) if "user1" in line]
    assert row.split() == [
        "127.0.0.1:40001",
        "user1",
        "98",
        "2",
        "2.00%",
        "4.200",
        "1s",
        "ago",
    ]  # fmt: skip: duplicates, reordered, late and restarts only when some sender has them
    reordered = dataclasses.replace(current.stats[0].senders[0], reordered=3)
    current = Sample((snapshot(reordered),), NOW_S)
    lines = text_of(render(current, None, SETTINGS))
    assert "reord" in next(line for line in lines if "username" in line)


def test_worst_loss_first_by_default_and_other_keys() -> None:
    current = Sample(
        (
            snapshot(
                sender("user1", 1, lost=0, jitter_s=0.009, silent_s=3),
                sender("user2", 2, lost=5, received=300, silent_s=1),
                sender("user3", 3, lost=5, received=50, silent_s=7),
            ),
        ),
        NOW_S,
    )
    assert usernames(text_of(render(current, None, SETTINGS))) == ["user3", "user2", "user1"]
    orders = {
        SortKey.JITTER: ["user1", "user2", "user3"],
        SortKey.SILENCE: ["user3", "user1", "user2"],
        SortKey.RECEIVED: ["user2", "user1", "user3"],
        SortKey.USERNAME: ["user1", "user2", "user3"],
    }
    for key, expected in orders.items():
        settings = DashboardSettings(SETTINGS.address, SETTINGS.started_at_s, sort_key=key)
        assert usernames(text_of(render(current, None, settings))) == expected, key


def test_a_sender_silent_beyond_the_idle_time_is_marked_idle() -> None:
    current = Sample(
        (snapshot(sender("userA", 1, silent_s=3), sender("userB", 2, silent_s=12)),), NOW_S
    )
    lines = text_of(render(current, None, SETTINGS))
    assert next(line for line in lines if "userA" in line).endswith("3s ago")
    assert next(line for line in lines if "userB" in line).endswith("12s idle")
    relay = DashboardSettings(SETTINGS.address, SETTINGS.started_at_s, idle_after_s=30)
    lines = text_of(render(current, None, relay))
    assert next(line for line in lines if "userB" in line).endswith("12s ago")


def test_rows_that_do_not_fit_are_counted() -> None:
    senders = [sender(f"user{index:02d}", index, lost=index) for index in range(30)]
    current = Sample((snapshot(*senders),), NOW_S)
    lines = text_of(render(current, None, SETTINGS), height=15)
    assert len(lines) == 15
    shown = usernames(lines)
    assert shown == [f"user{index:02d}" for index in range(29, 29 - len(shown), -1)]
    assert lines[-1].startswith(f"{30 - len(shown)} more senders")
    reserved = DashboardSettings(SETTINGS.address, SETTINGS.started_at_s, reserved_lines=5)
    assert len(text_of(render(current, None, reserved), height=15)) == 10
    narrow = text_of(render(current, None, SETTINGS), height=15, width=40)
    assert len(narrow) == 15  # the header wraps, and the rows make room for it
    assert narrow[-1].endswith("…")


def test_every_row_fits_when_there_is_room() -> None:
    current = Sample((snapshot(*(sender(f"user{index}", index) for index in range(3))),), NOW_S)
    lines = text_of(render(current, None, SETTINGS), height=15)
    assert len(usernames(lines)) == 3
    assert not any("more" in line for line in lines)


def test_several_processes_add_up_with_a_column_for_each_senders_process() -> None:
    previous = Sample((snapshot(), snapshot()), NOW_S - 1)
    current = Sample(
        (
            snapshot(sender("user1", 1, lost=1), received=10, handled=10),
            snapshot(sender("user2", 2, lost=3), received=20, handled=20),
        ),
        NOW_S,
    )
    lines = text_of(render(current, previous, SETTINGS))
    assert "processes 2" in lines[0]
    assert "in 30.0/s" in lines[1]
    assert "senders 2" in lines[1]
    rows = [line.split() for line in lines if re.search(r"user\d", line)]
    assert [row[:3] for row in rows] == [
        ["2", "127.0.0.1:2", "user2"],
        ["1", "127.0.0.1:1", "user1"],
    ]


def test_the_view_is_plain_text_without_a_colour_terminal() -> None:
    current = Sample((snapshot(sender("user1", 1, lost=1, silent_s=20)),), NOW_S)
    console = Console(file=io.StringIO(), width=100, height=20, color_system=None)
    console.print(render(current, None, SETTINGS))
    assert "\x1b" not in console.file.getvalue()  # type: ignore[attr-defined]


def test_lines_written_while_the_view_is_up_scroll_above_it_then_write_through() -> None:
    lines = ScrollingLines()
    lines.write("a\n")
    lines.write("b\n")
    assert lines.take() == "a\nb\n"
    assert lines.take() == ""
    lines.write("c\n")
    after = io.StringIO()
    assert lines.finish(after) == "c\n"
    lines.write("d\n")
    assert after.getvalue() == "d\n"


def test_the_dashboard_draws_and_leaves_the_last_frame_and_the_waiting_lines() -> None:
    screen = io.StringIO()
    console = Console(file=screen, width=100, height=20, force_terminal=True, color_system=None)
    lines = ScrollingLines()
    terminal = ViewTerminal(
        console, lines, cast(TextIO, lines), capture_stderr=False, reserved_lines=0
    )
    current = snapshot(sender("user1", 1))
    with Dashboard(lambda: [current], SETTINGS, terminal):
        lines.write("[127.0.0.1] user1: pesan ke-1\n")
    output = screen.getvalue()
    assert "[127.0.0.1] user1: pesan ke-1" in output
    assert output.rindex("pesan ke-1") < output.rindex("user1 ")  # the line above the view
    assert output.endswith("\x1b[?25h")  # the cursor shown again
    lines.write("[127.0.0.1] user1: pesan ke-2\n")  # after the view: straight through
    assert screen.getvalue().endswith("pesan ke-2\n")


def test_stderr_and_its_log_handlers_scroll_above_the_view_while_it_is_up() -> None:
    screen = io.StringIO()
    console = Console(file=screen, width=100, height=20, force_terminal=True, color_system=None)
    lines = ScrollingLines()
    terminal = ViewTerminal(console, lines, sys.stdout, capture_stderr=True, reserved_lines=0)
    stderr = sys.stderr
    handler = logging.StreamHandler(sys.stderr)
    logging.getLogger().addHandler(handler)
    try:
        with Dashboard(lambda: [snapshot(sender("user1", 1))], SETTINGS, terminal):
            print("udpchat: a status line", file=sys.stderr)
            logging.getLogger("udpchat.test").warning("a logged warning")
        assert sys.stderr is stderr
        assert handler.stream is stderr
    finally:
        logging.getLogger().removeHandler(handler)
    output = screen.getvalue()
    assert (
        output.index("a status line") < output.index("a logged warning") < output.rindex("user1 ")
    )


def test_a_view_that_cannot_draw_gives_the_cursor_back() -> None:
    screen = io.StringIO()
    console = Console(file=screen, width=100, height=20, force_terminal=True, color_system=None)
    lines = ScrollingLines()
    terminal = ViewTerminal(console, lines, sys.stdout, capture_stderr=False, reserved_lines=0)

    def broken() -> list[StatsSnapshot]:
        raise RuntimeError("no stats")

    with pytest.raises(RuntimeError), Dashboard(broken, SETTINGS, terminal):
        pass
    assert screen.getvalue().endswith("\x1b[?25h")


def test_without_a_terminal_there_is_no_view() -> None:
    with pytest.raises(NoTerminalError):
        find_terminal(io.StringIO(), io.StringIO(), messages=True)


PANE_ENVIRONMENT = {
    name: value for name, value in os.environ.items() if name not in {"COLUMNS", "LINES"}
}
"""The pane's size comes from the pane: readline exports COLUMNS and LINES (80 and 24 without
a terminal) into the test process's C environment, where they would pin rich's width."""


class Pane:
    """A real terminal: a tmux pane of a fixed size on a tmux server of the test's own."""

    def __init__(self, command: str, width: int = 110, height: int = 30) -> None:
        self._tmux = ["tmux", "-L", f"udpchat-test-{os.getpid()}-{id(self)}", "-f", os.devnull]
        # The shell stays after the command so that its last screen can be read.
        shell = f"{command}; echo exit=$?; read _"
        self._run("new-session", "-d", "-x", str(width), "-y", str(height), shell)

    def _run(self, *args: str) -> str:
        return subprocess.run(
            [*self._tmux, *args], check=True, capture_output=True, text=True, env=PANE_ENVIRONMENT
        ).stdout

    def screen(self) -> str:
        """What the pane shows, with the lines that scrolled off it."""
        return self._run("capture-pane", "-p", "-S", "-")

    def visible_when(
        self, condition: Callable[[list[str]], bool], timeout_s: float = EVENT_TIMEOUT_S
    ) -> list[str]:
        """The lines the pane shows (a wrapped row is two) once ``condition`` holds for them, or
        at the deadline, for the caller's asserts to say what is wrong."""
        lines: list[str] = []

        def shown() -> bool:
            nonlocal lines
            lines = self._run("capture-pane", "-p").splitlines()
            return condition(lines)

        with contextlib.suppress(TimeoutError):
            eventually_sync(shown, timeout_s)
        return lines

    def wait_for(self, pattern: str, timeout_s: float = EVENT_TIMEOUT_S) -> re.Match[str]:
        screen, match = "", None

        def found() -> bool:
            nonlocal screen, match
            screen = self.screen()
            match = re.search(pattern, screen, re.MULTILINE)
            return match is not None

        try:
            eventually_sync(found, timeout_s)
        except TimeoutError:
            raise AssertionError(f"{pattern!r} not on the screen:\n{screen}") from None
        assert match is not None
        return match

    def serving_port(self) -> int:
        """The port in the dashboard's header, once the header shows."""
        return int(self.wait_for(r"^udpchat 127\.0\.0\.1:(\d+) ").group(1))

    def interrupt(self) -> None:
        """Ctrl-C, then wait for the command to exit with status 0."""
        self._run("send-keys", "C-c")
        self.wait_for(r"^exit=0$")

    def resize(self, width: int, height: int) -> None:
        self._run("resize-window", "-x", str(width), "-y", str(height))

    def cursor_shown(self) -> bool:
        return self._run("display-message", "-p", "#{cursor_flag}").strip() == "1"

    def close(self) -> None:
        subprocess.run([*self._tmux, "kill-server"], check=False, capture_output=True)


class PaneFactory(Protocol):
    def __call__(self, command: str, width: int = ..., height: int = ...) -> Pane: ...


@pytest.fixture
def pane_factory() -> Iterator[PaneFactory]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux drives the real terminal of these tests")
    panes: list[Pane] = []

    def start(command: str, width: int = 110, height: int = 30) -> Pane:
        panes.append(Pane(command, width, height))
        return panes[-1]

    yield start
    for pane in panes:
        pane.close()


def serve_command(*args: str) -> str:
    return shlex.join(
        [sys.executable, "-m", "udpchat", "serve", "--host", LOOPBACK, "--port", "0", *args]
    )


def row(username: str, received: int, lost: int = 0) -> str:
    """A sender's row on the view, up to its loss."""
    return rf"^127\.0\.0\.1:\d+ +{username} +{received} +{lost} "


@contextlib.contextmanager
def three_senders() -> Iterator[dict[str, socket.socket]]:
    """user1, user2 and user3, each on a socket of its own (its own source port)."""
    with contextlib.ExitStack() as stack:
        yield {
            f"user{index}": stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            for index in (1, 2, 3)
        }


def send_messages(port: int, sockets: dict[str, socket.socket], counters: range) -> None:
    for username, sock in sockets.items():
        for counter in counters:
            if username == "user2" and counter == 5:
                continue  # lost on the way
            sock.sendto(f"{username}: pesan ke-{counter}".encode(), (LOOPBACK, port))


def test_three_senders_live_then_ctrl_c_restores_the_terminal(
    pane_factory: Callable[[str], Pane],
) -> None:
    pane = pane_factory(serve_command("--dashboard"))
    port = pane.serving_port()
    with three_senders() as sockets:
        send_messages(port, sockets, range(1, 4))
        for username in sockets:
            pane.wait_for(row(username, 3))
        pane.wait_for(r"^\[127\.0\.0\.1\] user3: pesan ke-3$")  # scrolled above the view
        send_messages(port, sockets, range(4, 7))
        first = pane.wait_for(row("user2", 5, lost=1))  # worst loss on top
        pane.wait_for(row("user1", 6))
        pane.wait_for(row("user3", 6))
    assert pane.screen().index(first.group(0)) < pane.screen().index("user1 ")
    pane.interrupt()
    screen = pane.screen()
    assert screen.rindex("summary: received=17 handled=17") > screen.rindex(first.group(0))
    assert pane.cursor_shown()


def test_with_stdout_redirected_the_lines_go_to_the_file_and_the_view_to_stderr(
    pane_factory: Callable[[str], Pane], tmp_path: Path
) -> None:
    log = tmp_path / "messages.log"
    pane = pane_factory(f"{serve_command('--dashboard')} > {shlex.quote(str(log))}")
    port = pane.serving_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"user1: pesan ke-1", (LOOPBACK, port))
        pane.wait_for(row("user1", 1))
    pane.interrupt()
    assert log.read_text() == "Server menunggu...\n[127.0.0.1] user1: pesan ke-1\n"
    assert "pesan ke-1" not in pane.screen()


def test_with_processes_the_view_adds_them_up_with_a_column_for_each(
    pane_factory: Callable[[str], Pane],
) -> None:
    pane = pane_factory(serve_command("--dashboard", "--processes", "2"))
    port = int(pane.wait_for(r"^udpchat 127\.0\.0\.1:(\d+) +up \S+ +processes 2$").group(1))
    with three_senders() as sockets:
        send_messages(port, sockets, range(1, 4))
        for username in sockets:
            pane.wait_for(rf"^ +[12] +{row(username, 3)[1:]}")
    pane.wait_for(r"senders 3$")
    pane.interrupt()
    assert "summary: received=9 handled=9" in pane.screen()


WIDTHS = {
    120: ("address", "jitter_ms", "heard"),
    80: ("address", "jitter_ms", "heard"),
    60: ("jitter_ms", "heard"),
    40: ("heard",),
}
"""The optional columns three senders get at each terminal width (username, recv, lost and loss
at every width): the address gives way first."""


def frame(lines: list[str], port: int) -> list[str]:
    """The newest frame of the view: from its last header down."""
    starts = [n for n, line in enumerate(lines) if line.startswith(f"udpchat 127.0.0.1:{port}")]
    return lines[starts[-1] :] if starts else []


def test_the_view_narrows_by_columns_never_by_names_at_40_60_80_and_120_columns(
    pane_factory: PaneFactory,
) -> None:
    pane = pane_factory(serve_command("--dashboard", "--quiet", "--relay"), width=120, height=20)
    port = pane.serving_port()
    with three_senders() as sockets:
        send_messages(port, sockets, range(1, 7))
        for width, optional in WIDTHS.items():
            pane.resize(width, 20)
            header = [
                *(["address"] if "address" in optional else []),
                "username", "recv", "lost", "loss",
                *(name for name in ("jitter_ms", "heard") if name in optional),
            ]  # fmt: skip
            row = (
                r"^(127\.0\.0\.1:\d+ +)?(user[123]) +(6|5) +(0|1) +\d+\.\d\d%"
                r"( +\d+\.\d{3})?( +\d+s (ago|idle))?$"
            )

            def settled(lines: list[str], header: list[str] = header, row: str = row) -> bool:
                """The frame drawn at this width: the rows of one before the resize wrap."""
                shown = frame(lines, port)
                names = sorted(m.group(2) for line in shown if (m := re.match(row, line)))
                tables = [line.split() for line in shown if " recv " in line]
                return names == ["user1", "user2", "user3"] and tables == [header]

            lines = frame(pane.visible_when(settled), port)
            screen = "\n".join(lines)
            assert settled(lines), f"{width} columns:\n{screen}"
            table = lines[next(n for n, line in enumerate(lines) if " recv " in line) :]
            assert "\u2026" not in "".join(table), screen  # names and figures whole
            assert len([line for line in lines if line.startswith("relay:")]) == 1, screen
    pane.interrupt()


async def test_without_a_terminal_the_dashboard_is_refused() -> None:
    cli = await start_cli("serve", "--host", LOOPBACK, "--port", "0", "--dashboard")
    status, stdout, stderr = await cli.finish()
    assert status == 2
    assert stdout == ""
    assert "--dashboard needs a terminal on stdout or stderr" in stderr


def test_quiet_hides_the_message_lines_under_the_view(pane_factory: Callable[[str], Pane]) -> None:
    pane = pane_factory(serve_command("--dashboard", "--quiet"))
    port = pane.serving_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"user1: pesan ke-1", (LOOPBACK, port))
        pane.wait_for(row("user1", 1))
    assert "pesan ke-1" not in pane.screen()
    pane.interrupt()


def test_names_and_addresses_are_shown_as_they_are_never_as_markup() -> None:
    """A username is untrusted: rich markup in it must neither style nor link nor crash."""
    hostile = ["[/bold]x", "[link=http://x.io]bank[/link]", "[reverse]boss"]
    senders = [sender(name, 40001 + index) for index, name in enumerate(hostile)]
    senders.append(dataclasses.replace(sender("v6", 5000), ip="fd00::1"))
    console = Console(record=True, width=120, height=40, force_terminal=True)
    console.print(render(Sample((snapshot(*senders),), NOW_S), None, SETTINGS))
    text = console.export_text()
    for name in hostile:
        assert name in text
    assert "[fd00::1]:5000" in text
    assert "\x1b]8;" not in console.export_text(styles=True)  # no hyperlink escape


def terminal_cells(text: str) -> int:
    """The cells a terminal gives ``text``, as the C library's ``wcwidth()`` counts them (and
    tmux with it): none for a combining mark, a format character or a Hangul medial vowel or
    final consonant, two for an East Asian wide character or a circled number on a black
    square (U+3248-U+324F), one for any other."""
    cells = 0
    for char in text:
        if unicodedata.category(char) in {"Mn", "Me", "Cf"} or "\u1160" <= char <= "\u11ff":
            continue
        wide = unicodedata.east_asian_width(char) in {"W", "F"} or "\u3248" <= char <= "\u324f"
        cells += 2 if wide else 1
    return cells


HOSTILE_NAMES = {
    "ana\u3164": "ana\\u3164",  # a Hangul filler: no cell for rich, two for a terminal
    "👍🏽" * 10: "👍\\U0001f3fd" * 2,  # a skin tone: no cell for rich, two for a terminal
    "用" * 32: "用" * 15,  # 64 cells
    "राम" * 10: "र\\u093eम" * 3,  # a spacing vowel sign: no cell for rich, one for a terminal
    "❤\ufe0f" * 16: "❤\\ufe0f" * 3,  # an emoji's presentation: one cell or two
    "☰" * 32: "\\u2630" * 3,  # a trigram: two cells for rich, one for a terminal
    "㉈" * 32: "\\u3248" * 3,  # a circled ten: one cell for rich, two for the C library
    "[bold]x\\y": "[bold]x\\y",  # shown as it is
}
"""Names whose width rich and terminals disagree on, with the start of what the view shows."""


def test_every_row_is_one_terminal_line_with_its_figures_whole_whatever_the_names() -> None:
    """Where rich counts fewer cells than the terminal, a row wraps and pushes the header off
    the screen; where the name column takes the width, the figures are cut to '…'."""
    names = [f"{name[:30]}{index:02d}" for index, name in enumerate(HOSTILE_NAMES)] * 3
    senders = [
        sender(name, 40001 + index, received=98, lost=2, jitter_s=0.0042)
        for index, name in enumerate(names)
    ]
    height = 30
    lines = text_of(render(Sample((snapshot(*senders),), NOW_S), None, SETTINGS), height)
    assert [line for line in lines if terminal_cells(line) > 100] == []
    assert sum(max(1, -(-terminal_cells(line) // 100)) for line in lines) <= height
    assert lines[0].startswith("udpchat 127.0.0.1:5002  up 2m05s")
    rows = [line for line in lines if line.startswith("127.0.0.1:")]
    assert len(rows) == len(senders)
    for row in rows:
        assert re.search(r" 98 +2 +2\.00% +4\.200 +1s ago$", row), row


@pytest.mark.parametrize("width", [26, 32, 40])
def test_a_narrow_view_cuts_names_to_their_stated_minimum_and_keeps_the_figures_whole(
    width: int,
) -> None:
    names = [f"{prefix}-{'x' * 30}" for prefix in ("user1", "user2", "user3")]
    senders = [sender(name, 40001 + n, received=98, lost=2) for n, name in enumerate(names)]
    lines = text_of(render(Sample((snapshot(*senders),), NOW_S), None, SETTINGS), width=width)
    rows = [line for line in lines if line.startswith("user") and " 98 " in line]
    assert len(rows) == 3, lines
    for name, row in zip(names, rows, strict=True):
        cell, figures = re.fullmatch(r"(\S+) +(98 .*)", row).groups()  # type: ignore[union-attr]
        assert terminal_cells(cell) >= NAME_MIN_CELLS
        assert cell.removesuffix("\u2026") == name[: terminal_cells(cell) - 1]
        assert re.fullmatch(r"98 +(2 +)?2\.00%.*", figures), row  # lost gives way first


def test_names_a_terminal_measures_differently_are_escaped_and_long_ones_cut() -> None:
    senders = [sender(name, 40001 + index) for index, name in enumerate(HOSTILE_NAMES)]
    lines = text_of(render(Sample((snapshot(*senders),), NOW_S), None, SETTINGS))
    for index, (name, shown) in enumerate(HOSTILE_NAMES.items()):
        (row,) = [line for line in lines if line.startswith(f"127.0.0.1:{40001 + index} ")]
        cell = row.removeprefix(f"127.0.0.1:{40001 + index}").lstrip()
        assert cell.startswith(shown), (name, row)
        name_cells = terminal_cells(cell[: cell.index(" 100 ")].rstrip())
        assert name_cells <= NAME_MAX_CELLS
        if terminal_cells(name) > NAME_MAX_CELLS:
            assert cell[: cell.index(" 100 ")].rstrip().endswith("…")


LIVE_HOSTILE_NAMES = ["👍🏽" * 10, "用" * 30, "राम" * 10, "☰" * 30, "㉈" * 30]
"""Valid names (the others are refused: ``tests/test_wire.py``) that rich and the terminal
measure differently, or that are wider than the name column."""


def test_hostile_names_in_a_real_terminal_keep_each_row_on_one_line(
    pane_factory: PaneFactory,
) -> None:
    """A pane of 100 by 30 full of rows, three captures: a row that wraps pushes the header off."""
    pane = pane_factory(serve_command("--dashboard", "--quiet"), width=100, height=30)
    port = pane.serving_port()
    names = [f"{name}{index:02d}" for index in range(4) for name in LIVE_HOSTILE_NAMES]
    with contextlib.ExitStack() as stack:
        sockets = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) for _ in names
        ]
        for counter in (1, 2, 3):
            for name, sock in zip(names, sockets, strict=True):
                sock.sendto(f"{name}: pesan ke-{counter}".encode(), (LOOPBACK, port))
            whole_row = rf"^127\.0\.0\.1:\d+ +\S.* +{counter} +0 +0\.00% +[\d.]+ +\d+s ago$"

            def rows(lines: list[str], pattern: str = whole_row) -> list[str]:
                return [line for line in lines if re.match(pattern, line)]

            lines = pane.visible_when(lambda lines: len(rows(lines)) == len(names))
            screen = "\n".join(lines)
            assert len(rows(lines)) == len(names), screen
            headers = [line for line in lines if line.startswith(f"udpchat 127.0.0.1:{port}  up")]
            assert len(headers) == 1, screen
            assert f"senders {len(names)}" in lines[lines.index(headers[0]) + 1], screen
    pane.interrupt()


def test_rates_are_taken_over_the_last_two_seconds() -> None:
    samples = deque(Sample((snapshot(),), NOW_S + 0.25 * tick) for tick in range(12))
    assert window_start(samples, NOW_S + 2.75 - 2.0) is samples[3]
    assert window_start(samples, NOW_S - 5) is samples[0]
    assert window_start(deque(), NOW_S) is None
