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
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from udpchat.client import Client, RoomEvent
from udpchat.wire import (
    RESENT_MARK,
    USERNAME_SEPARATOR,
    is_command,
    sanitize,
    text_digest,
    username_problem,
)

CONFIRM_TIMEOUT_S = 2.0
"""How long a line waits for the room's ``/ok`` before it is said not delivered."""
MAX_UNCONFIRMED = 256
"""Lines awaiting their ``/ok``, at most; a person types far fewer in two seconds."""
MAX_UNDELIVERED = 32
"""Lines not delivered kept to offer again, at most (the last ones); older ones are counted."""
MAX_SEEN = 256
"""Other members' lines remembered, so that one sent again after a rejoin is not shown twice."""
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


async def typed_lines(conversation: Conversation) -> AsyncIterator[str]:
    """Lines from the line editor until Ctrl-D or Ctrl-C, the prompt the current username
    (``/nick`` changes it); each accepted line is erased from the input area, so that the
    transcript shows it once, as sent."""
    from prompt_toolkit import PromptSession  # noqa: PLC0415 - only with a person at a terminal

    session: PromptSession[str] = PromptSession(erase_when_done=True)
    while True:
        try:
            yield await session.prompt_async(f"{conversation.username}{PROMPT_SUFFIX}")
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
    :data:`CONFIRM_TIMEOUT_S`, or when the client finds itself out of the room. What was not
    delivered is kept (the last :data:`MAX_UNDELIVERED`) to be offered again after a rejoin."""

    def __init__(self, report: Report, delivered: Callable[[str], None] = print_sent) -> None:
        self._report = report
        self._delivered = delivered
        """Shows a confirmed line: printed as sent here, given to the page in a browser."""
        self._waiting: dict[str, list[tuple[str, asyncio.TimerHandle]]] = {}
        self.confirmed_lines = 0
        self.not_delivered_lines = 0
        """Lines not confirmed in time, sent to a room that lost us, or typed while out."""
        self.undelivered: deque[tuple[str, bool]] = deque(maxlen=MAX_UNDELIVERED)
        """(text, whether it went out) of each line not delivered, to offer again."""
        self.forgotten = 0
        """Lines not delivered that the bound on :attr:`undelivered` pushed out."""
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

    def not_sent(self, text: str) -> None:
        """``text`` was typed while out of the room: kept, never sent."""
        self.not_delivered_lines += 1
        self._keep(text, went_out=False)

    def confirmed(self, digest: str) -> None:
        """The room's ``/ok DIGEST``: the oldest line of that digest is delivered."""
        text = self._take(digest)
        if text is not None:
            self.confirmed_lines += 1
            self._delivered(text)

    def out_of_the_room(self) -> None:
        """What still waits was sent to a room that no longer has us: not delivered."""
        for digest in list(self._waiting):
            while digest in self._waiting:
                self._not_delivered(digest, "out of the room")

    def take_undelivered(self) -> list[tuple[str, bool]]:
        """The lines kept to offer again, oldest first; kept no longer."""
        taken = list(self.undelivered)
        self.undelivered.clear()
        return taken

    def _not_delivered(self, digest: str, why: str) -> None:
        text = self._take(digest)
        if text is not None:
            self.not_delivered_lines += 1
            self._keep(text, went_out=True)
            self._report(f"not delivered ({why}): {sanitize(text)}")

    def _keep(self, text: str, *, went_out: bool) -> None:
        if len(self.undelivered) == self.undelivered.maxlen:
            self.forgotten += 1
        self.undelivered.append((text, went_out))

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


class Transcript:
    """The other members' lines as they arrive, escaped. A line marked as sent again after a
    rejoin (:data:`~udpchat.wire.RESENT_MARK`) that was shown already, unmarked, among the
    last :data:`MAX_SEEN` lines, is not shown twice."""

    def __init__(self) -> None:
        self._seen: dict[str, None] = {}
        """The last lines shown, unmarked, oldest first: a bounded ordered set."""
        self.hidden = 0
        """Lines sent again that had been shown already."""

    def __call__(self, text: str) -> None:
        original = text.removesuffix(RESENT_MARK)
        if original != text and original in self._seen:
            self.hidden += 1
            return
        self._seen[original] = None
        if len(self._seen) > MAX_SEEN:
            del self._seen[next(iter(self._seen))]
        print_received(text)


@dataclass(frozen=True, slots=True)
class ChatCommand:
    """A word typed after ``/``, handled here, never sent to the room."""

    usage: str
    help: str


CHAT_COMMANDS = {
    "/help": ChatCommand("/help", "the commands"),
    "/who": ChatCommand("/who", "who is in the room (on this server)"),
    "/nick": ChatCommand("/nick NAME", "rejoin the room as NAME"),
    "/resend": ChatCommand(
        "/resend", "send the lines that were not delivered again (so does an empty line)"
    ),
    "/quit": ChatCommand("/quit", "leave the room (so do Ctrl-D and Ctrl-C)"),
}
"""What a line that starts with ``/`` may say; any other ``/word`` is refused, not sent."""
ESCAPE = "//"
"""A line that starts with ``//`` is sent with one ``/`` less: ``//shrug`` says ``/shrug``."""


def text_of(line: str) -> str | None:
    """What a typed line says to the room: the line itself, or with :data:`ESCAPE` one ``/``
    less; None when it is a command (``/word``), which is never sent as a text."""
    if line.startswith(ESCAPE):
        return line[1:]
    return None if is_command(line) else line


class Conversation:
    """What each typed line does: a command (``/help``), a line for the room, or (empty) the
    lines not delivered sent again. Counts what the person did, for the summary."""

    def __init__(
        self, client: Client, username: str, report: Report, deliveries: Deliveries
    ) -> None:
        self.client = client
        self.username = username
        self._report = report
        self.deliveries = deliveries
        self.typed = 0
        self.resent = 0
        self.on_room: Callable[[RoomEvent, str], None] = self._room_changed
        self.transcript = Transcript()

    def counts(self) -> dict[str, int]:
        """What the person did, by :class:`~udpchat.counters.ClientStats` field."""
        return {
            "typed": self.typed,
            "confirmed": self.deliveries.confirmed_lines,
            "not_delivered": self.deliveries.not_delivered_lines,
            "resent": self.resent,
            "forgotten": self.deliveries.forgotten,
            "hidden_repeats": self.transcript.hidden,
        }

    async def take(self, line: str) -> bool:
        """Do what ``line`` says; False when it says to leave."""
        text = text_of(line)
        if text is None:
            return await self.command(*line.partition(" ")[::2])
        if text.strip():
            self.say(text)
        else:
            self.resend()
        return True

    def say(self, line: str) -> None:
        """Send ``line`` as ``USERNAME: line``, or keep it when out of the room."""
        self.typed += 1
        self._send(f"{self.username}{USERNAME_SEPARATOR}{line}", went_out=False)

    def _send(self, text: str, *, went_out: bool) -> None:
        if not self.client.in_room:
            self.deliveries.not_sent(text)
            self._report(f"not sent, out of the room while rejoining: {sanitize(text)}")
            return
        text = f"{text}{RESENT_MARK}" if went_out else text
        self.client.send(text)
        self.deliveries.sent(text)

    def resend(self) -> None:
        """The lines not delivered, again; those that went out marked as sent again, so that
        members who had them do not see them twice."""
        for text, went_out in self.deliveries.take_undelivered():
            self.resent += 1
            self._send(text.removesuffix(RESENT_MARK), went_out=went_out)

    async def command(self, word: str, argument: str) -> bool:
        """A ``/word``: done here, never sent; False for ``/quit``."""
        if word == "/quit":
            return False
        if word == "/help":
            for each in CHAT_COMMANDS.values():
                self._report(f"{each.usage:<12} {each.help}")
            self._report(f"{ESCAPE}text       send '/text' (a line that starts with /)")
        elif word == "/resend":
            self.resend()
        elif word == "/nick":
            await self.rename(argument.strip())
        elif word == "/who":
            await self.who()
        else:
            self._report(
                f"unknown command {sanitize(word)}, not sent; /help lists the commands, "
                f"{ESCAPE} sends a line that starts with /"
            )
        return True

    async def who(self) -> None:
        """``/who``: the members, as the room says them (names escaped: they are untrusted)."""
        if not self.client.in_room:
            self._report("/who: out of the room while rejoining; ask again once back")
            return
        try:
            entries = await self.client.who()
        except TimeoutError:
            self._report("/who: no answer from the room (lost on the way?); ask again")
            return
        shown = []
        for entry in entries:
            ip, _, name = entry.partition(" ")
            shown.append(f"{name} [{ip}]" if name else f"[{ip}]")
        self._report(f"in the room ({len(shown)}): {sanitize(', '.join(shown))}")

    async def rename(self, name: str) -> None:
        """``/nick NAME``: leave the room and join it again as ``name``."""
        problem = username_problem(name)
        if problem is not None:
            self._report(f"/nick: '{sanitize(name)}' cannot be a name: {problem}")
            return
        self.client.leave_room()
        self.username = name
        await self.join()

    async def join(self) -> None:
        await self.client.join_room(
            self.transcript,
            on_room=self.on_room,
            on_delivered=self.deliveries.confirmed,
            name=self.username,
        )
        hint = "/help lists the commands, " if is_terminal() else ""
        self._report(
            f"joined the room at {self.client.host} port {self.client.port} as "
            f"{self.username}; {hint}Ctrl-D or Ctrl-C leaves"
        )

    def _room_changed(self, event: RoomEvent, detail: str) -> None:
        self._report(detail)
        if event is RoomEvent.OUT:
            self.deliveries.out_of_the_room()
        elif self.deliveries.undelivered:
            count = len(self.deliveries.undelivered)
            self._report(
                f"{count} line{'s' if count > 1 else ''} not delivered: an empty line (Enter) "
                "sends them again"
            )


async def converse(conversation: Conversation) -> None:
    """Join, chat until the person leaves (``/quit``, end of input, Ctrl-D or Ctrl-C at the
    line editor), then leave the room. Everything printed meanwhile goes above the input line;
    at the end, wait for what is still unconfirmed."""

    interactive = is_terminal()
    if interactive:
        from prompt_toolkit.patch_stdout import patch_stdout  # noqa: PLC0415

    with patch_stdout() if interactive else contextlib.nullcontext():
        await conversation.join()
        lines = typed_lines(conversation) if interactive else piped_lines()
        try:
            async for line in lines:
                if not await conversation.take(line):
                    break
            await conversation.deliveries.idle.wait()
        finally:
            conversation.client.leave_room()
