from __future__ import annotations

import pytest

from udpchat.wire import (
    ParsedText,
    TextProblem,
    decode,
    format_line,
    format_message,
    is_valid_username,
    parse_text,
    sanitize,
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
        ("two words: pesan ke-1", TextProblem.INVALID_USERNAME),
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
    ],
)
def test_parse_names_the_problem(text: str, problem: TextProblem) -> None:
    assert parse_text(text) is problem


def test_largest_counter_is_accepted() -> None:
    assert parse_text("a: pesan ke-9223372036854775807") == ParsedText("a", 2**63 - 1)


def test_username_rules() -> None:
    assert is_valid_username("a")
    assert is_valid_username("A" * 32)
    assert not is_valid_username("é")
    assert not is_valid_username("a\n")


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
