"""``make bench-web``'s feed reader: the page's feed read by a client that draws nothing, counted
by the server as a page (nothing here is timed)."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

from benchmarks import harness, web

DEADLINE_S = 10.0


def web_clients(server: harness.RunningServer) -> float:
    """The server's ``udpchat_web_clients`` gauge, from its metrics endpoint."""
    found = re.search(r"metrics on (http://\S+)", server.stderr_so_far())
    assert found, server.stderr_so_far()
    with urllib.request.urlopen(found[1], timeout=DEADLINE_S) as response:
        text = response.read().decode()
    gauge = re.search(r"^udpchat_web_clients (\S+)$", text, re.MULTILINE)
    assert gauge, text
    return float(gauge[1])


def test_the_feed_reader_is_a_page_to_the_server_while_attached(tmp_path: Path) -> None:
    with harness.serving(harness.WEB_FEED, tmp_path, ["--metrics-port", "0"]) as server:
        with web.feed_read(server):
            assert web_clients(server) == 1
        deadline = time.monotonic() + DEADLINE_S
        while web_clients(server) != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert web_clients(server) == 0
