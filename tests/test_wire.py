from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udpchat.wire import (
    JOIN,
    MAX_COUNTER,
    MAX_USERNAME_LENGTH,
    MIN_JOIN_REQUEST_BYTES,
    MIN_WHO_REQUEST_BYTES,
    WHO_REQUEST_BYTES,
    InvalidUsernameError,
    ParsedText,
    TextKind,
    TextProblem,
    clean_username,
    decode,
    display_width,
    format_line,
    format_message,
    is_valid_username,
    members_pages,
    parse_members,
    parse_text,
    relay_join_request,
    sanitize,
    split_seed,
    terminal_cells,
    text_kind,
    username_problem,
    who_request,
)


def test_format_message_is_the_seed_format() -> None:
    assert format_message("user1", 3) == "user1: pesan ke-3"


def test_parse_round_trips_the_seed_format() -> None:
    assert parse_text(format_message("user.one-2_x", 12)) == ParsedText("user.one-2_x", 12)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("hello", TextProblem.UNPARSED),
        ("", TextProblem.UNPARSED),
        ("two\twords: pesan ke-1", TextProblem.INVALID_USERNAME),
        ("right\u202eleft: pesan ke-1", TextProblem.INVALID_USERNAME),
        (" padded: pesan ke-1", TextProblem.INVALID_USERNAME),
        (": pesan ke-1", TextProblem.INVALID_USERNAME),
        ("x" * 33 + ": pesan ke-1", TextProblem.INVALID_USERNAME),
        ("alice: pesan ke-", TextProblem.INVALID_COUNTER),
        ("alice: pesan ke-abc", TextProblem.INVALID_COUNTER),
        ("alice: pesan ke-0", TextProblem.INVALID_COUNTER),
        ("alice: pesan ke--1", TextProblem.INVALID_COUNTER),
        ("alice: pesan ke-1.5", TextProblem.INVALID_COUNTER),
        ("alice: pesan ke-١٢", TextProblem.INVALID_COUNTER),
        ("alice: pesan ke-99999999999999999999", TextProblem.INVALID_COUNTER),
        ("alice: pesan ke-9223372036854775808", TextProblem.INVALID_COUNTER),
        ("ana: pesan ke-budi: pesan ke-3", TextProblem.INVALID_COUNTER),  # the first ends the name
    ],
)
def test_parse_names_the_problem(text: str, problem: TextProblem) -> None:
    assert parse_text(text) is problem


def test_largest_counter_is_accepted() -> None:
    assert parse_text("a: pesan ke-9223372036854775807") == ParsedText("a", 2**63 - 1)


def test_username_rules() -> None:
    assert is_valid_username("a")
    assert is_valid_username("A" * 32)
    assert is_valid_username("budí")
    assert is_valid_username("用户")
    assert is_valid_username("Budi Santoso")
    assert not is_valid_username("a: b")
    assert not is_valid_username("x\u2066y")
    assert not is_valid_username("a\n")


REAL_NAMES = [
    "Budi Santoso", "budí", "用户", "राम", "सुनीता", "한국인", "ㅎㅎ", "สมชาย", "សុខា",
    "ᠮᠣᠩᠭᠣᠯ", "محمد", "Ἀθηνᾶ", "ana 👍🏽", "❤", "🇮🇩", "⠓⠊",
]  # fmt: skip


@pytest.mark.parametrize("name", REAL_NAMES)
def test_real_names_in_any_script_are_valid(name: str) -> None:
    assert is_valid_username(name)


INVISIBLE = [
    "\u034f", "\u115f", "\u1160", "\u3164", "\uffa0", "\u17b4", "\u17b5", "\u180b", "\u180f",
    "\ufe00", "\ufe0e", "\ufe0f", "\U000e0100", "\U000e01ef", "\u2800",
]  # fmt: skip


@pytest.mark.parametrize("invisible", INVISIBLE)
def test_a_character_that_shows_nothing_is_refused_anywhere_in_a_name(invisible: str) -> None:
    """``ana\u3164`` would pass for ``ana``, and ``❤\ufe0f`` is one cell wide or two
    depending on the terminal."""
    for name in (f"ana{invisible}", f"{invisible}ana", f"a{invisible}na", invisible):
        assert not is_valid_username(name)
        assert parse_text(f"{name}: pesan ke-1") is TextProblem.INVALID_USERNAME
        with pytest.raises(InvalidUsernameError, match=f"U\\+{ord(invisible):04X}.*shows nothing"):
            clean_username(name)


def test_the_username_rule_agrees_with_the_reference_for_every_printable_character() -> None:
    """Every printable code point, inside a name, against the categories and names: the
    property test below rarely draws the few characters that show nothing."""
    printable = (chr(code) for code in range(0x110000) if chr(code).isprintable())
    disagree = [
        f"U+{ord(char):04X}"
        for char in printable
        if is_valid_username(f"a{char}b") != reference_is_valid_username(f"a{char}b")
    ]
    assert disagree == []


def test_decode_drops_one_trailing_newline_as_nc_sends_it() -> None:
    assert decode(b"alice: pesan ke-1\n") == ("alice: pesan ke-1", True)
    assert decode(b"alice: pesan ke-1\r\n") == ("alice: pesan ke-1", True)
    assert decode(b"a\n\n") == ("a\n", True)


def test_decode_escapes_invalid_utf8() -> None:
    assert decode(b"bad \xff\xfe") == ("bad \\xff\\xfe", False)
    assert decode(b"\xc3\xa9 \\ \xff") == ("\\xc3\\xa9 \\\\ \\xff", False)


def test_sanitize_keeps_printable_text() -> None:
    assert sanitize("héllo wörld 你好 [x]") == "héllo wörld 你好 [x]"


def test_sanitize_escapes_terminal_controls() -> None:
    assert sanitize("a\x1b[2Jb\rc\nd\x07e\x00f\tg") == "a\\x1b[2Jb\\rc\\nd\\x07e\\x00f\\tg"
    assert sanitize("x\u202ey\u2028z\x9b") == "x\\u202ey\\u2028z\\x9b"
    assert sanitize("a\\b\x01") == "a\\\\b\\x01", "backslashes doubled once anything is escaped"


def test_format_line_is_the_seed_console_line() -> None:
    assert format_line("192.168.1.100", "user1: pesan ke-1") == "[192.168.1.100] user1: pesan ke-1"


def shows_nothing(char: str) -> bool:
    """The printable characters that show nothing, by their Unicode names: the variation
    selectors, the Hangul fillers, the combining grapheme joiner, the Khmer inherent vowels
    (with the format characters, Unicode's default-ignorable code points) and the blank Braille
    pattern."""
    name = unicodedata.name(char, "")
    return (
        "VARIATION SELECTOR" in name
        or (name.startswith(("HANGUL", "HALFWIDTH HANGUL")) and name.endswith("FILLER"))
        or name in {"COMBINING GRAPHEME JOINER", "BRAILLE PATTERN BLANK"}
        or name.startswith("KHMER VOWEL INHERENT")
    )


def reference_is_valid_username(name: str) -> bool:
    """The rule from the character categories and names: no control, format, surrogate,
    private-use, unassigned or separator character except the ASCII space, which may not end
    the name, nothing that shows nothing, and no slash first (it would read as a command)."""
    printable = all(char == " " or unicodedata.category(char)[0] not in "CZ" for char in name)
    return (
        0 < len(name) <= MAX_USERNAME_LENGTH
        and printable
        and not any(shows_nothing(char) for char in name)
        and not name.startswith(" ")
        and not name.endswith(" ")
        and ": " not in name
        and not name.startswith("/")
    )


names = st.text(max_size=MAX_USERNAME_LENGTH + 2)
printable_names = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")),
    min_size=1,
    max_size=MAX_USERNAME_LENGTH,
)


@given(names)
def test_username_rule_agrees_with_the_unicode_categories(name: str) -> None:
    assert is_valid_username(name) == reference_is_valid_username(name)


@given(printable_names, st.integers(1, 2**63 - 1))
def test_every_valid_name_round_trips_through_the_seed_format(name: str, counter: int) -> None:
    if is_valid_username(name):
        assert parse_text(format_message(name, counter)) == ParsedText(name, counter)
        assert format_line("::1", format_message(name, counter)).startswith(f"[::1] {name}: ")
    else:
        assert parse_text(format_message(name, counter)) is TextProblem.INVALID_USERNAME


@given(printable_names, st.sampled_from(["", " ", "  "]), st.sampled_from(["", " ", "\t"]))
def test_prompt_and_option_strip_the_same_spaces(name: str, before: str, after: str) -> None:
    typed = f"{before}{name}{after}"
    if reference_is_valid_username(name.strip()):
        assert clean_username(typed) == name.strip()
    else:
        with pytest.raises(InvalidUsernameError, match="invalid username"):
            clean_username(typed)


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("x" * 33, "more than 32"),
        ("ana\u202e", "U+202E"),
        ("ana\x1b[2J", "U+001B"),
        ("ana: budi", "': '"),
    ],
)
def test_clean_username_says_what_is_wrong(typed: str, reason: str) -> None:
    with pytest.raises(InvalidUsernameError, match=re.escape(reason)):
        clean_username(typed)
    assert clean_username("  Budi Santoso ") == "Budi Santoso"


def test_a_counter_with_a_leading_zero_is_not_plain_decimal() -> None:
    assert parse_text("alice: pesan ke-01") is TextProblem.INVALID_COUNTER
    assert parse_text("Budi Santoso: pesan ke-007") is TextProblem.INVALID_COUNTER
    assert parse_text("Budi Santoso: pesan ke-7") == ParsedText("Budi Santoso", 7)


def test_split_seed_takes_ascii_names_and_counters_up_to_the_largest() -> None:
    """The common case's shortcut; everything else is for :func:`parse_text`'s general path."""
    assert split_seed("alice: pesan ke-3") == ("alice", 3)
    assert split_seed(f"a: pesan ke-{MAX_COUNTER}") == ("a", MAX_COUNTER)
    assert split_seed(f"a: pesan ke-{MAX_COUNTER + 1}") is None
    assert split_seed("Budi Santoso: pesan ke-3") is None


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "it is empty"),
        ("x" * 33, "it has 33 characters, more than 32"),
        (" ana", "it starts or ends with a space"),
        ("ana\x1b", "it contains U+001B, a control, format or separator character"),
        ("ana\u3164", "it contains U+3164, a character that shows nothing"),
        ("ana: budi", "it contains ': ', which ends a name in the seed's format"),
        ("/quit", "it starts with '/', which starts a command"),
        ("Budi/Santoso", None),
        ("Budi Santoso", None),
    ],
)
def test_username_problem_says_what_is_wrong_for_a_person_to_fix(
    name: str, problem: str | None
) -> None:
    assert username_problem(name) == problem


def test_the_join_request_is_join_padded_with_dashes_as_the_readme_shows() -> None:
    """README.md: ``/join`` padded to at least 54 bytes (``/join ---…``), as large as the
    largest cookie answer."""
    request = relay_join_request()
    assert request == f"{JOIN} " + "-" * (MIN_JOIN_REQUEST_BYTES - len(JOIN) - 1)
    assert len(request.encode()) == MIN_JOIN_REQUEST_BYTES == 54


@pytest.mark.parametrize(
    ("char", "cells"),
    [
        ("a", 1),
        ("é", 1),  # precomposed: one cell
        ("\u0301", 0),  # a combining accent (Mn) joins the letter before
        ("\u20dd", 0),  # an enclosing circle (Me)
        ("\u1160", 0),  # Hangul medial vowels and final consonants join the syllable before
        ("\u11ff", 0),
        ("\u115f", 2),  # the initial consonant just below them is wide
        ("\u1200", 1),  # and the next block narrow
        ("\ud7b0", 0),  # Hangul Jamo Extended-B
        ("\ud7ff", 0),
        ("\ud7a3", 2),  # the last Hangul syllable, below them: wide
        ("用", 2),  # East Asian wide
        ("\uff21", 2),  # fullwidth A
        ("\u3248", 2),  # circled numbers on black squares: ambiguous in Unicode, wide in libc
        ("\u324f", 2),
        ("\u2460", 1),  # ambiguous elsewhere: narrow
    ],
)
def test_a_character_takes_the_cells_a_terminal_gives_it(char: str, cells: int) -> None:
    assert terminal_cells(char) == cells


def test_a_texts_width_adds_its_characters_cells() -> None:
    assert display_width("") == 0
    assert display_width("用户 ab") == 7
    assert display_width("e\u0301") == 1


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("ana: hello", TextKind.CHAT),
        ("Budi Santoso: apa kabar: baik", TextKind.CHAT),
        ("ana:hello", None),
        (": hello", None),
        ("a\tb: hello", None),
        ("hello there", None),
        ("/join ---", TextKind.ROOM_WORD),
        ("/keepalive 1.abc", TextKind.ROOM_WORD),
        ("/leave", TextKind.ROOM_WORD),
        ("/leaves", None),
        ("/quit", None),
    ],
)
def test_a_text_outside_the_seed_format_is_a_chat_line_a_room_word_or_neither(
    text: str, kind: TextKind | None
) -> None:
    assert text_kind(text) is kind


member_entries = st.lists(
    st.builds(
        lambda ip, name: f"{ip} {name}".rstrip(),
        st.ip_addresses().map(str),
        st.text(st.characters(codec="utf-8", categories=("L", "N")), min_size=0, max_size=32),
    ),
    max_size=200,
)


@given(entries=member_entries, size=st.integers(min_value=MIN_WHO_REQUEST_BYTES, max_value=65507))
def test_member_pages_hold_every_entry_in_order_within_the_size(
    entries: list[str], size: int
) -> None:
    pages = members_pages(entries, size)
    assert all(len(page.encode()) <= size for page in pages)
    parsed = [parse_members(page) for page in pages]
    assert [(p[0], p[1]) for p in parsed if p] == [
        (n, len(pages)) for n in range(1, len(pages) + 1)
    ]
    assert [entry for p in parsed if p for entry in p[2]] == entries


def test_a_who_request_is_padded_and_an_answer_that_is_not_one_is_refused() -> None:
    assert len(who_request(f"{2**40}.{'0' * 32}", 184)) == WHO_REQUEST_BYTES
    assert parse_members("/members 1/1") == (1, 1, [])
    for text in ("/members 2/1", "/members 0/1", "/members 1", "/members x/y", "/member 1/1"):
        assert parse_members(text) is None, text
