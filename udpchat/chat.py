"""The ``chat`` command's conversation: lines typed are sent as ``USERNAME: line``, the other
members' lines are printed as they arrive.

On a terminal the input line is prompt_toolkit's (``PromptSession`` under ``patch_stdout``, as
ipython and pgcli use it), so arriving messages are printed above the line being typed and never
split it, and history and editing work. When stdin is not a terminal, lines are read one by
one, for scripts and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import AsyncIterator, Callable

from udpchat.client import Client
from udpchat.wire import USERNAME_SEPARATOR, sanitize

SENT_PREFIX = "Ter kirim: "
RECEIVED_PREFIX = "Diterima: "
"""Before another member's message relayed to this client ("received")."""
PROMPT_SUFFIX = "> "

Report = Callable[[str], None]
"""Where status lines go (stderr): joined, out of the room, back, left."""


def print_sent(text: str) -> None:
    """A sent text as the seed's client shows it, escaped because it may hold what was typed."""
    print(f"{SENT_PREFIX}{sanitize(text)}", flush=True)


def print_received(text: str) -> None:
    """Another member's message from the relay, escaped like the server's lines."""
    print(f"{RECEIVED_PREFIX}{sanitize(text)}", flush=True)


def is_terminal() -> bool:
    """The line editor needs a terminal on both sides; anything else is read line by line."""
    return sys.stdin.isatty() and sys.stdout.isatty()


async def typed_lines(username: str) -> AsyncIterator[str]:
    """Lines from the line editor until Ctrl-D or Ctrl-C; each accepted line is erased from the
    input area, so that the transcript shows it once, as sent."""
    from prompt_toolkit import PromptSession  # noqa: PLC0415 - only with a person at a terminal

    session: PromptSession[str] = PromptSession(erase_when_done=True)
    while True:
        try:
            yield await session.prompt_async(f"{username}{PROMPT_SUFFIX}")
        except (EOFError, KeyboardInterrupt):
            return


async def piped_lines() -> AsyncIterator[str]:
    """Lines from stdin that is not a terminal, until its end."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read_stdin() -> None:  # a thread: a pipe cannot be read by every loop without blocking
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line.rstrip("\r\n"))
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read_stdin, name="udpchat-stdin", daemon=True).start()
    while (line := await lines.get()) is not None:
        yield line


async def send_typed_lines(
    client: Client, username: str, lines: AsyncIterator[str], report: Report
) -> None:
    """Send each non-blank line as ``USERNAME: line`` and show it as sent; while the client is
    out of the room, say that the line was not sent rather than send it into the void."""
    async for line in lines:
        if not line.strip():
            continue
        text = f"{username}{USERNAME_SEPARATOR}{line}"
        if client.in_room:
            client.send(text)
            print_sent(text)
        else:
            report(f"not sent, out of the room while rejoining: {sanitize(line)}")


async def converse(client: Client, username: str, report: Report) -> None:
    """Join, chat until the person leaves (end of input, Ctrl-D or Ctrl-C at the line editor),
    then leave the room. Everything printed meanwhile goes above the input line."""

    interactive = is_terminal()
    if interactive:
        from prompt_toolkit.patch_stdout import patch_stdout  # noqa: PLC0415

    with patch_stdout() if interactive else contextlib.nullcontext():
        await client.join_room(print_received, on_room=lambda _, detail: report(detail))
        report(
            f"joined the room at {client.host} port {client.port} as {username}; "
            "Ctrl-D or Ctrl-C leaves"
        )
        lines = typed_lines(username) if interactive else piped_lines()
        try:
            await send_typed_lines(client, username, lines, report)
        finally:
            client.leave_room()
