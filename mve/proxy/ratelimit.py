"""Warnings that repeat at most once per interval, for failures that can happen on every request."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimitedLog:
    """Logs a warning per `kind` at most once every `interval_s`, saying how many were held back."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args) -> None:
        """``event=<kind> <message % args> suppressed=N``, unless one of this kind went out recently."""
        now = self._clock()
        if now < self._next.get(kind, 0.0):
            self._held[kind] = self._held.get(kind, 0) + 1
            return
        self._next[kind] = now + self._interval_s
        held = self._held.pop(kind, 0)
        self._logger.warning("event=%s " + message + " suppressed=%d", kind, *args, held)
