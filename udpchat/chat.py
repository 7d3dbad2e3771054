"""The ``chat`` command's conversation: lines typed are sent as ``USERNAME: line`` and shown as
sent once the room confirms them, the other members' lines are printed as they arrive.

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

from udpchat.client import Client, RoomEvent
from udpchat.wire import USERNAME_SEPARATOR, sanitize, text_digest

CONFIRM_TIMEOUT_S = 2.0
"""How long a line waits for the room's ``/ok`` before it is said not delivered."""
MAX_UNCONFIRMED = 256
"""Lines awaiting their ``/ok``, at most; a person types far fewer in two seconds."""
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


class Deliveries:
    """Lines sent and not yet confirmed: each is shown as sent (``Ter kirim:``) when the room's
    ``/ok`` for it arrives, and said plainly not delivered when it does not come within
    :data:`CONFIRM_TIMEOUT_S`, or when the client finds itself out of the room."""

    def __init__(self, report: Report) -> None:
        self._report = report
        self._waiting: dict[str, list[tuple[str, asyncio.TimerHandle]]] = {}
        self.confirmed_lines = 0
        self.not_delivered_lines = 0
        """Lines not confirmed in time, sent to a room that lost us, or typed while out."""
        self.idle = asyncio.Event()
        self.idle.set()

    def sent(self, text: str) -> None:
        """``text`` went out; wait for its confirmation."""
        if sum(len(texts) for texts in self._waiting.values()) >= MAX_UNCONFIRMED:
            self._report(f"sent, not followed (too many unconfirmed): {sanitize(text)}")
            return
        digest = text_digest(text.encode())
        timer = asyncio.get_running_loop().call_later(
            CONFIRM_TIMEOUT_S, self._not_delivered, digest, "the room did not confirm it"
        )
        self._waiting.setdefault(digest, []).append((text, timer))
        self.idle.clear()

    def confirmed(self, digest: str) -> None:
        """The room's ``/ok DIGEST``: the oldest line of that digest is delivered."""
        text = self._take(digest)
        if text is not None:
            self.confirmed_lines += 1
            print_sent(text)

    def out_of_the_room(self) -> None:
        """What still waits was sent to a room that no longer has us: not delivered."""
        for digest in list(self._waiting):
            while digest in self._waiting:
                self._not_delivered(digest, "out of the room")

    def _not_delivered(self, digest: str, why: str) -> None:
        text = self._take(digest)
        if text is not None:
            self.not_delivered_lines += 1
            self._report(f"not delivered ({why}): {sanitize(text)}")

    def _take(self, digest: str) -> str | None:
        waiting = self._waiting.get(digest)
        if not waiting:
            return None
        text, timer = waiting.pop(0)
        timer.cancel()
        if not waiting:
            del self._waiting[digest]
        if not self._waiting:
            self.idle.set()
        return text


async def send_typed_lines(
    client: Client,
    username: str,
    lines: AsyncIterator[str],
    report: Report,
    deliveries: Deliveries,
) -> None:
    """Send each non-blank line as ``USERNAME: line``, shown as sent once the room confirms
    it; while the client is out of the room, say that the line was not sent rather than send
    it into the void. At the end, wait for what is still unconfirmed."""
    async for line in lines:
        if not line.strip():
            continue
        text = f"{username}{USERNAME_SEPARATOR}{line}"
        if client.in_room:
            client.send(text)
            deliveries.sent(text)
        else:
            deliveries.not_delivered_lines += 1
            report(f"not sent, out of the room while rejoining: {sanitize(line)}")
    await deliveries.idle.wait()


async def converse(
    client: Client, username: str, report: Report, deliveries: Deliveries | None = None
) -> None:
    """Join, chat until the person leaves (end of input, Ctrl-D or Ctrl-C at the line editor),
    then leave the room. Everything printed meanwhile goes above the input line; what became
    of each line is counted in ``deliveries``."""

    interactive = is_terminal()
    if interactive:
        from prompt_toolkit.patch_stdout import patch_stdout  # noqa: PLC0415

    deliveries = deliveries or Deliveries(report)

    def on_room(event: RoomEvent, detail: str) -> None:
        report(detail)
        if event is RoomEvent.OUT:
            deliveries.out_of_the_room()

    with patch_stdout() if interactive else contextlib.nullcontext():
        await client.join_room(print_received, on_room=on_room, on_delivered=deliveries.confirmed)
        report(
            f"joined the room at {client.host} port {client.port} as {username}; "
            "Ctrl-D or Ctrl-C leaves"
        )
        lines = typed_lines(username) if interactive else piped_lines()
        try:
            await send_typed_lines(client, username, lines, report, deliveries)
        finally:
            client.leave_room()
