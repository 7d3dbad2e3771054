"""The room as a page sees it, and posts to it: through the front door, as UDP clients.

A browser is no side door into the room. The view's *watcher* is a member that never posts:
the lines it receives are the room's lines every page shows. A page that joins gets a
:class:`PageMember` of its own, a UDP client with its own socket on this machine, which joins
with the cookie handshake and posts ``USERNAME: line`` datagrams as the ``chat`` command does
(:func:`udpchat.chat.post`). So the server's admission applies to it unchanged (``--allow``,
``--rate-limit``, ``--max-peers``, ``--relay-rate``), it is relayed over NATS like any member,
``/who`` lists it, and the others see it as ``[ip]`` of this machine's address towards the
server (``127.0.0.1`` when the server listens on every address), one port per page.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from udpchat.chat import ESCAPE, Conversation, Deliveries, text_of
from udpchat.client import REJOIN_INTERVAL_S, Client, JoinError, RoomEvent
from udpchat.wire import USERNAME_SEPARATOR, clean_username, sanitize, sender_address

logger = logging.getLogger("udpchat.web")

MAX_ROOM_LINES = 200
"""The room's latest lines kept for a page that opens late."""
WATCH_NAME = "udpchat-web"
"""The name the view's own member joins with: what ``/who`` lists it as."""

Event = dict[str, Any]
"""A message to a page, as JSON."""


class PostRefusedError(ValueError):
    """A page's join or line that cannot go to the room; :attr:`reason` is its counter's."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RoomWatch:
    """The view's own member, which never posts: every line it receives is shown on every
    page, and the last :data:`MAX_ROOM_LINES` greet a page that opens late."""

    def __init__(self, target: tuple[str, int], show: Callable[[Event], None]) -> None:
        self._client = Client(*target)
        self._show = show
        self.lines: deque[str] = deque(maxlen=MAX_ROOM_LINES)
        self.state = "joining"

    def _line(self, text: str) -> None:
        line = sanitize(text)
        self.lines.append(line)
        self._show({"type": "line", "text": line})

    def _room(self, event: RoomEvent, detail: str) -> None:
        self.state = "in" if event is RoomEvent.BACK else "out"
        self._show({"type": "watch", "state": self.state, "detail": detail})

    async def run(self) -> None:
        """Join, trying again every :data:`~udpchat.client.REJOIN_INTERVAL_S` while the room
        refuses (full, not yet up); once in, the client keeps itself in."""
        await self._client.open()
        while True:
            try:
                await self._client.join_room(self._line, on_room=self._room, name=WATCH_NAME)
            except JoinError as error:
                if self.state != "refused":
                    logger.warning("the web view's room watch cannot join: %s", error)
                self.state = "refused"
                self._show({"type": "watch", "state": self.state, "detail": str(error)})
                await asyncio.sleep(REJOIN_INTERVAL_S)
                continue
            self.state = "in"
            self._show({"type": "watch", "state": self.state, "detail": "watching the room"})
            return

    def close(self) -> None:
        self._client.leave_room()
        self._client.close()


class PageMember:
    """One page's member of the room: its own UDP client, name and confirmations."""

    def __init__(
        self,
        target: tuple[str, int],
        username: str,
        max_text_bytes: int,
        tell: Callable[[Event], None],
    ) -> None:
        self.username = username
        self._max_text_bytes = max_text_bytes
        self._client = Client(*target)
        self._tell = tell
        self._deliveries = Deliveries(self._notice, self._delivered)
        self._conversation = Conversation(self._client, username, self._notice, self._deliveries)

    @classmethod
    async def join(
        cls,
        target: tuple[str, int],
        username: str,
        max_text_bytes: int,
        tell: Callable[[Event], None],
    ) -> PageMember:
        """A member in the room under ``username``, checked by the ``chat`` command's rules;
        :class:`PostRefusedError` says why not."""
        try:
            name = clean_username(username)
        except ValueError as error:
            raise PostRefusedError("invalid_username", str(error)) from None
        member = cls(target, name, max_text_bytes, tell)
        await member._client.open()
        try:
            await member._client.join_room(
                lambda _: None,  # the watch shows the room's lines, this member's among them
                on_room=member._room,
                on_delivered=member._deliveries.confirmed,
                name=name,
            )
        except JoinError as error:
            member._client.close()
            raise PostRefusedError("join_failed", str(error)) from None
        return member

    @property
    def address(self) -> str:
        return sender_address(*self._client.local_address)

    def post(self, line: str) -> None:
        """Send ``line`` to the room as ``USERNAME: line`` (``//`` sends one ``/`` less, as in
        ``chat``); :class:`PostRefusedError` when it is more than one line, longer than the
        server takes, or a ``/word``: the page's commands are its buttons, and a command is
        never sent to the room as a text."""
        if "\n" in line or "\r" in line:
            raise PostRefusedError("malformed", "one line at a time")
        text = text_of(line)
        if text is None:
            raise PostRefusedError(
                "command",
                f"{sanitize(line.partition(' ')[0])} is not sent: the page takes no commands; "
                f"{ESCAPE} sends a line that starts with /",
            )
        try:
            size = len(f"{self.username}{USERNAME_SEPARATOR}{text}".encode())
        except UnicodeEncodeError:  # a lone surrogate, which JSON can carry and UTF-8 cannot
            raise PostRefusedError("malformed", "not valid Unicode text") from None
        if size > self._max_text_bytes:
            raise PostRefusedError(
                "too_long", f"{size} bytes with the name; the server takes {self._max_text_bytes}"
            )
        if text.strip():
            self._conversation.say(text)

    def _delivered(self, text: str) -> None:
        self._tell({"type": "sent", "text": sanitize(text)})

    def _notice(self, text: str) -> None:
        self._tell({"type": "notice", "text": text})

    def _room(self, event: RoomEvent, detail: str) -> None:
        if event is RoomEvent.OUT:
            self._deliveries.out_of_the_room()
        self._notice(detail)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._client.leave_room()
        self._client.close()
