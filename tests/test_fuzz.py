"""Arbitrary bytes through parser and formatter: one harmless line out, never an exception."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from udpchat.wire import ParsedText, decode, format_line, format_message, parse_text, sanitize

UNSAFE = {chr(c) for c in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, 0x202E, 0x200F]}


@settings(max_examples=2000)
@given(st.binary(max_size=1100), st.ip_addresses().map(str))
def test_any_datagram_becomes_one_safe_line(data: bytes, ip: str) -> None:
    text, _ = decode(data)
    parse_text(text)
    line = format_line(ip, text)
    assert "\n" not in line
    assert "\r" not in line
    assert not UNSAFE.intersection(line)


@given(st.text(max_size=300))
def test_sanitize_is_identity_on_printable_text_and_safe_otherwise(text: str) -> None:
    cleaned = sanitize(text)
    if text.isprintable():
        assert cleaned == text
    assert not UNSAFE.intersection(cleaned)


@given(
    st.from_regex(r"[A-Za-z0-9._-]{1,32}", fullmatch=True),
    st.integers(min_value=1, max_value=2**63 - 1),
)
def test_seed_messages_round_trip(username: str, counter: int) -> None:
    text, valid = decode(format_message(username, counter).encode())
    assert valid
    assert parse_text(text) == ParsedText(username, counter)
