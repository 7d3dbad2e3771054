from collections.abc import Callable
from typing import Any

def clean_seeds(
    datagrams: list[tuple[bytes, Any]],
) -> tuple[list[tuple[bytes, int] | None], list[int]]: ...
def text_lines(
    datagrams: list[tuple[bytes, Any]],
    senders: list[tuple[str, int]],
    texts: dict[int, str],
    prefixes: dict[str, bytes],
    format_other: Callable[[str, str], bytes],
) -> bytes: ...
