"""Logging that a flood cannot turn into a flood of log lines."""

from __future__ import annotations

import logging
import threading
import time

DEFAULT_LOG_INTERVAL_S = 10.0


class RateLimitedLog:
    """Logs a failure's first occurrence, then at most one line per interval with a count of
    those left out, so that something failing on every message of a flood cannot flood the log
    too. Thread-safe."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = DEFAULT_LOG_INTERVAL_S,
        level: int = logging.ERROR,
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._level = level
        self._lock = threading.Lock()
        self._last_logged = -interval_s
        self._suppressed = 0

    def record(self, what: str, error: BaseException | None = None) -> None:
        """Log ``what`` (and ``error``), unless a line went out less than an interval ago."""
        suppressed = self.due()
        if suppressed is not None:
            self.log(what, error, suppressed)

    def due(self) -> int | None:
        """Whether a line may go out now: how many were left out since the last, or None (and
        this one is counted as left out). For callers whose line is costly to make."""
        with self._lock:
            now = time.monotonic()
            if now - self._last_logged < self._interval_s:
                self._suppressed += 1
                return None
            suppressed, self._suppressed, self._last_logged = self._suppressed, 0, now
        return suppressed

    def log(self, what: str, error: BaseException | None = None, suppressed: int = 0) -> None:
        """The line, when :meth:`due` said so."""
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        detail = "" if error is None else f": {error!r}"
        self._logger.log(self._level, "%s%s%s", what, detail, more)
