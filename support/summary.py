"""The summary a ``udpchat serve`` process prints at exit, read back: its counts, and whether
they balance (every datagram read is handled, dropped or queued; every one sent was read or
dropped by the kernel)."""

from __future__ import annotations

import re


def summary_counts(stderr: str) -> dict[str, int]:
    """The numbers of the summary's own counts, by key (a reason's count under its own name,
    the total under the counter's), from the ``udpchat: summary:`` line and the lines that
    continue it up to the next group's label; a count the short summary leaves out at zero
    (``dropped``, ``queued``) is 0. :class:`ValueError` when there is no one summary."""
    lines = stderr.splitlines()
    (start,) = [index for index, line in enumerate(lines) if line.startswith("udpchat: summary:")]
    text = " ".join(
        line.removeprefix("udpchat: ") for line in lines[start:] if line.startswith("udpchat: ")
    )
    own = re.split(r" [a-z]+: ", text.removeprefix("summary: "))[0]
    counts = {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", own)}
    return {"dropped": 0, "queued": 0, **counts}


def balanced(counts: dict[str, int], sent: int | None = None) -> bool:
    """``received == handled + dropped + queued``, and where ``sent`` is known, ``sent ==
    received + kernel_drops``."""
    read = counts["received"]
    if read != counts["handled"] + counts["dropped"] + counts["queued"]:
        return False
    return sent is None or sent == read + counts.get("kernel_drops", 0)
