"""The seed's wire format: one UTF-8 text message per datagram, ``{username}: pesan ke-{counter}``.

Pure functions only: no sockets, no asyncio, no printing. Everything that reaches a
terminal or a log goes through :func:`sanitize` first, because the datagram is untrusted; what
lines it up there measures it with :func:`display_width`.
"""

from __future__ import annotations

import enum
import re
import unicodedata
import zlib
from typing import NamedTuple

MESSAGE_SEPARATOR = ": pesan ke-"
"""What stands between the username and the counter in the seed's format."""

MAX_USERNAME_LENGTH = 32
MAX_COUNTER = 2**63 - 1
"""Counters above this are not numbers we account for: they are counted as unparsed."""
NAME_CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
"""What a name in the seed's format is made of (the seed's own clients allow more: those names
take the slow path, :func:`parse_text`)."""
CLEAN_COUNTER_DIGITS = 18
"""Digits of a counter the fast path reads from the bytes: 18 are always below
:data:`MAX_COUNTER`, so the fast path never needs the check."""

_USERNAME_REGEX = rf"[{re.escape(NAME_CHARACTERS)}]{{1,{MAX_USERNAME_LENGTH}}}"
_SEED_REGEX = rf"({_USERNAME_REGEX}){re.escape(MESSAGE_SEPARATOR)}([1-9][0-9]{{0,18}})"
_SEED_PATTERN = re.compile(_SEED_REGEX)
"""The whole valid format in one match."""
_CLEAN_SEED_BYTES = re.compile(
    rf"({_USERNAME_REGEX}){re.escape(MESSAGE_SEPARATOR)}"
    rf"([1-9][0-9]{{0,{CLEAN_COUNTER_DIGITS - 1}}})".encode("ascii")
)
"""Seed text with an ASCII name and a counter of at most :data:`CLEAN_COUNTER_DIGITS` digits:
the per-datagram fast path, one match on the bytes before any decoding. What it matches is
printable ASCII, so it needs no escaping either. ``udpchat/_fastpath.pyx`` reads the same
constants from here when it is imported."""
match_clean_seed = _CLEAN_SEED_BYTES.fullmatch
_DIGITS_PATTERN = re.compile(r"[1-9][0-9]{0,18}\Z")
"""Plain decimal: no sign, no leading zero (so ``ke-01`` is never counter 1)."""


SeedFields = tuple[bytes, int]
"""(username as UTF-8, counter) of a message in the seed's format, as the fast path reads them
from the datagram's bytes."""


class ParsedText(NamedTuple):
    """The username and counter of a text in the seed's format."""

    username: str
    counter: int


class TextProblem(enum.Enum):
    """Why a text is not in the seed's format; each is counted under its value."""

    UNPARSED = "unparsed"
    INVALID_USERNAME = "invalid_username"
    INVALID_COUNTER = "invalid_counter"


USERNAME_SEPARATOR = ": "
"""What ends the username in every text a client sends, so no name may contain it."""
COMMAND_PREFIX = "/"
"""What starts a word to the room (``/join``) or to ``chat`` (``/who``), never a member's text:
so no name may start with it either, and the room relays no text that does."""

INVISIBLE_CHARACTERS = frozenset(
    map(
        chr,
        [
            0x034F,  # combining grapheme joiner
            0x115F, 0x1160, 0x3164, 0xFFA0,  # Hangul fillers
            0x17B4, 0x17B5,  # Khmer inherent vowels
            0x180B, 0x180C, 0x180D, 0x180F,  # Mongolian free variation selectors
            *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0),  # variation selectors
            0x2800,  # Braille pattern blank
        ],
    )
)  # fmt: skip
"""Characters that ``str.isprintable()`` accepts but that show nothing: Unicode's
default-ignorable code points other than the format characters (which are not printable), and
the Braille pattern blank, whose glyph is empty by definition. In a name they make two names
look alike (``ana`` and ``ana\u3164``), and terminals disagree on their width."""


class InvalidUsernameError(ValueError):
    """A name that cannot be sent: its message says what is wrong, for a person to fix."""


def username_problem(username: str) -> str | None:
    """Why ``username`` cannot stand before ``: `` in a text, or None when it can.

    Any printable Unicode of 1 to :data:`MAX_USERNAME_LENGTH` characters, spaces inside: the
    seed prints whatever name it gets. Control and format characters (bidi overrides) are
    refused because they change how a line displays, invisible ones
    (:data:`INVISIBLE_CHARACTERS`) because they make one name pass for another, ``: ``
    because it ends the name, and a leading ``/`` because every text would start like a
    command (:func:`is_command`).
    """
    if not username:
        return "it is empty"
    if len(username) > MAX_USERNAME_LENGTH:
        return f"it has {len(username)} characters, more than {MAX_USERNAME_LENGTH}"
    return _edge_problem(username) or _character_problem(username)


def _edge_problem(username: str) -> str | None:
    """What is wrong with how a non-empty name starts or ends, if anything."""
    if username != username.strip():
        return "it starts or ends with a space"
    if is_command(username):
        return f"it starts with '{COMMAND_PREFIX}', which starts a command"
    return None


def _character_problem(username: str) -> str | None:
    """The first character, or pair of them, that a name may not contain, if any."""
    hidden = next(
        (char for char in username if char in INVISIBLE_CHARACTERS or not char.isprintable()),
        None,
    )
    if hidden is not None:
        kind = (
            "a character that shows nothing"
            if hidden in INVISIBLE_CHARACTERS
            else "a control, format or separator character"
        )
        return f"it contains U+{ord(hidden):04X}, {kind}"
    if USERNAME_SEPARATOR in username:
        return f"it contains '{USERNAME_SEPARATOR}', which ends a name in the seed's format"
    return None


def is_command(text: str) -> bool:
    """Whether ``text`` is a command (``/word``), to a client or to the room, not a text for
    the other members."""
    return text.startswith(COMMAND_PREFIX)


def is_valid_username(username: str) -> bool:
    """1-32 printable, visible characters, no ``: ``, no space at either end, no ``/``
    first: :func:`username_problem`."""
    return username_problem(username) is None


def clean_username(text: str) -> str:
    """The name as typed at the prompt or given with ``--username``, stripped of the spaces
    around it; raises :class:`InvalidUsernameError` saying what is wrong."""
    username = text.strip()
    problem = username_problem(username)
    if problem is not None:
        raise InvalidUsernameError(f"invalid username '{sanitize(username)}': {problem}")
    return username


def format_message(username: str, counter: int) -> str:
    """The text the seed's client sends: ``alice: pesan ke-3``."""
    return f"{username}{MESSAGE_SEPARATOR}{counter}"


def split_seed(text: str) -> tuple[str, int] | None:
    """(username, counter) of a well-formed seed text, else None."""
    match = _SEED_PATTERN.fullmatch(text)
    if match is None:
        return None
    username, digits = match.groups()
    counter = int(digits)
    return (username, counter) if counter <= MAX_COUNTER else None


def parse_text(text: str) -> ParsedText | TextProblem:
    """Split ``user: pesan ke-N`` into its parts, or say why the text is not in that format.

    A valid username and a counter of 1 to :data:`MAX_COUNTER` in plain decimal are required,
    so that a hostile text never becomes a sender identity we account for.
    """
    fields = split_seed(text)
    if fields is not None:
        return ParsedText(*fields)
    username, separator, digits = text.partition(MESSAGE_SEPARATOR)
    if not separator:
        return TextProblem.UNPARSED
    if not is_valid_username(username):
        return TextProblem.INVALID_USERNAME
    if not _DIGITS_PATTERN.match(digits):
        return TextProblem.INVALID_COUNTER
    counter = int(digits)
    if counter < 1 or counter > MAX_COUNTER:
        return TextProblem.INVALID_COUNTER
    return ParsedText(username, counter)


def decode(data: bytes) -> tuple[str, bool]:
    """Decode a datagram as UTF-8; returns (text, was_valid).

    A datagram that is not valid UTF-8 comes back whole in Python's bytes notation (``\\xNN``
    for every byte outside printable ASCII, ``\\\\`` for a backslash): escaping it costs a
    few nanoseconds a byte in C, whatever the bytes, where a per-error decode handler costs
    hundreds. One trailing newline (``\\n`` or ``\\r\\n``) is dropped, because ``nc -u`` and
    ``socat`` send a typed line with its newline and the seed's format has none.
    """
    if data.endswith(b"\n"):
        data = data[:-2] if data.endswith(b"\r\n") else data[:-1]
    try:
        return data.decode("utf-8"), True
    except UnicodeDecodeError:
        return repr(data)[2:-1], False


def sanitize(text: str) -> str:
    """Escape what is not printable so that one message is always one harmless output line.

    Printable text, the seed's messages included, comes back unchanged. Anything else comes back
    in Python's string notation, computed in C: control characters, line and paragraph
    separators, bidirectional overrides and other invisible format characters become
    ``\\n``, ``\\xNN`` or ``\\uNNNN``, and backslashes are doubled so that no escape is
    ambiguous. The cost is linear in the text and never more than a few nanoseconds a character.
    """
    if text.isprintable():
        return text
    return repr(text)[1:-1]


def terminal_cells(char: str) -> int:
    """The cells a terminal gives one printable ``char``, as the C library's ``wcwidth()``
    counts them from the Unicode database (and tmux with it): none for a combining mark or a
    Hangul medial vowel or final consonant (which join the syllable before), two for an East
    Asian wide character and for the circled numbers on black squares (U+3248-U+324F, ambiguous
    in Unicode but wide in the C library, like the CJK block around them), one for any other."""
    if unicodedata.category(char) in {"Mn", "Me"} or "\u1160" <= char <= "\u11ff":
        return 0
    if "\ud7b0" <= char <= "\ud7ff":
        return 0
    wide = unicodedata.east_asian_width(char) in {"W", "F"} or "\u3248" <= char <= "\u324f"
    return 2 if wide else 1


def display_width(text: str) -> int:
    """The cells ``text`` takes on a terminal, so that a table lines up after wide names."""
    return sum(map(terminal_cells, text))


def format_line(ip: str, text: str) -> str:
    """The server's console line, as the seed prints it: ``[127.0.0.1] alice: pesan ke-1``."""
    return f"[{ip}] {sanitize(text)}"


# The relay room's control words (``serve --relay``), shared by the server and the client.

JOIN = "/join"
COOKIE = "/cookie"
JOINED = "/joined"
LEAVE = "/leave"
"""``/leave COOKIE``: a member leaves; the cookie it joined with proves the address, so that a
forged ``/leave`` cannot put a member out of the room."""
COOKIE_MAC_HEX_DIGITS = 32
MIN_JOIN_REQUEST_BYTES = len(f"{COOKIE} {2**40}.{'0' * COOKIE_MAC_HEX_DIGITS}")
"""A cookie request must be at least as large as any cookie answer: no amplification."""
MAX_HEADER_BYTES = len("[") + 39 + len("%") + 15 + len("] ")
"""What a relayed datagram adds to the member's text, ``[ip] ``: the longest IPv6 address with
a scope (interface names are at most 15 bytes on Linux)."""


def relay_join_request() -> str:
    """A cookie request padded to :data:`MIN_JOIN_REQUEST_BYTES`, as a client must send it."""
    return f"{JOIN} ".ljust(MIN_JOIN_REQUEST_BYTES, "-")


# Membership after the join: the answers are never larger than what they answer, so that a
# forged source cannot use them to amplify.

KEEPALIVE = "/keepalive"
"""``/keepalive COOKIE``: a member is still here; the cookie it joined with proves the address."""
EXPIRED = "/expired"
"""The answer to a keepalive or text from an address that is not (or no longer) a member."""
ROOM_FULL = "/full"
"""The answer to a valid join cookie when the room has ``max_peers`` members already."""
DELIVERED = "/ok"
"""``/ok DIGEST``: the answer to a member's text the room took and relayed, so that a chat
client shows a line as sent only once it is (:func:`text_digest` names the text)."""


WHO = "/who"
"""``/who COOKIE PAGE``, padded with ``-`` to :data:`WHO_REQUEST_BYTES`: a member asks for the
room's member list, a page at a time; the cookie it joined with proves its address."""
MEMBERS = "/members"
"""``/members PAGE/PAGES`` then a line per member (``ip`` and its name): the answer to a
``/who``, never larger than the request it answers."""
WHO_REQUEST_BYTES = 1000
"""What a client pads ``/who`` to: the answer may be as large, so that a room of a few dozen
fits one page, and it stays under the server's default ``--max-size`` of 1024."""
MIN_WHO_REQUEST_BYTES = 256
"""A ``/who`` smaller than this is not answered: a page must hold at least one member (an
address and a name of 32 characters take at most 175 bytes) within the request's size."""
_MEMBERS_HEADER = re.compile(rf"{MEMBERS} ([1-9][0-9]{{0,5}})/([1-9][0-9]{{0,5}})")


def who_request(cookie: str, page: int) -> str:
    """The ``/who`` for ``page`` (from 1), padded to :data:`WHO_REQUEST_BYTES`."""
    return f"{WHO} {cookie} {page} ".ljust(WHO_REQUEST_BYTES, "-")


def members_pages(entries: list[str], size: int) -> list[str]:
    """``entries`` (one member each: an address and a name, at most 175 bytes) as ``/members``
    answers of at most ``size`` bytes each (at least :data:`MIN_WHO_REQUEST_BYTES`), as many
    as they take."""
    room = size - len(f"{MEMBERS} 999999/999999\n".encode())
    pages: list[list[str]] = [[]]
    used = 0
    for entry in entries:
        cost = len(entry.encode()) + 1
        if used + cost > room and pages[-1]:
            pages.append([])
            used = 0
        pages[-1].append(entry)
        used += cost
    return [
        "\n".join([f"{MEMBERS} {number}/{len(pages)}", *page])
        for number, page in enumerate(pages, start=1)
    ]


def parse_members(text: str) -> tuple[int, int, list[str]] | None:
    """(page, pages, entries) of a ``/members`` answer; None when it is not one."""
    header, *entries = text.split("\n")
    found = _MEMBERS_HEADER.fullmatch(header)
    if found is None or int(found[1]) > int(found[2]):
        return None
    return int(found[1]), int(found[2]), entries


RESENT_MARK = " (resent)"
"""What ends a chat line sent again after a rejoin: a member that had it already (its ``/ok``
was what got lost) does not show it twice, and others see why it came late."""


def text_digest(data: bytes) -> str:
    """Eight hex digits naming a text in a ``/ok``: its CRC-32, enough to match a line typed
    with its confirmation among the few a person has in flight."""
    return f"{zlib.crc32(data):08x}"


class TextKind(enum.Enum):
    """A text outside the seed's format that is no problem either; counted under its value."""

    CHAT = "texts"
    """``name: anything``: a line typed in ``chat``."""
    ROOM_WORD = "commands"
    """A word a client says to the room (``/join``, ``/keepalive``, ``/leave``, ``/who``)."""


ROOM_WORDS = frozenset({JOIN, LEAVE, KEEPALIVE, WHO})
"""What a client sends to the room besides its texts."""


def text_kind(text: str) -> TextKind | None:
    """What ``text``, which is not in the seed's format, is when it is no problem: a chat line
    (a valid name before ``: ``) or a room word; else None."""
    if text.partition(" ")[0] in ROOM_WORDS:
        return TextKind.ROOM_WORD
    username, separator, _ = text.partition(USERNAME_SEPARATOR)
    return TextKind.CHAT if separator and is_valid_username(username) else None


def sender_address(ip: str, port: int) -> str:
    """``1.2.3.4:5`` or ``[::1]:5``."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


ANSWERS = frozenset((COOKIE, JOINED, EXPIRED, ROOM_FULL, DELIVERED, MEMBERS))
"""The relay's answers. A relay never answers a datagram that starts with one: an answer to an
answer is how two relays (or a relay and itself, given one forged datagram) would bounce
``/expired`` between them for ever, as UDP's echo and chargen services once did. The first word
of a datagram decides."""
