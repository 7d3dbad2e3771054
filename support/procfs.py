"""What ``/proc`` says about a process (Linux)."""

from __future__ import annotations

import re
import signal
from pathlib import Path


def holds_sighup(pid: int) -> bool:
    """Whether the process catches SIGHUP: true once ``python -m udpchat`` holds stop signals
    (Python itself leaves SIGHUP alone)."""
    status = Path(f"/proc/{pid}/status").read_text()
    (caught,) = re.findall(r"SigCgt:\s+([0-9a-f]+)", status)
    return bool(int(caught, 16) & (1 << (signal.SIGHUP - 1)))
