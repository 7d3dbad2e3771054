from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_embedding_example_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "embed.py")],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sorted(line.split(" in ")[0] for line in lines[:3]) == [
        f"handled embedded #{n}" for n in (1, 2, 3)
    ]
    assert all("udpchat-worker" in line for line in lines[:3])
    assert lines[3] == "received=3 handled=3"


def test_room_example_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "room.py")],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "ana got: [127.0.0.1] budi: halo",
        "udpchat_relay_members 2.0",
        "drained=True joins=2 relayed_datagrams=1",
    ]
