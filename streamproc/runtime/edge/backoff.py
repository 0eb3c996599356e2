"""Retry pacing for an external system that is down: exponential, capped, reset by a success."""
from __future__ import annotations

import logging
import time


class Backoff:
    """``wait(stop)`` sleeps 0.2 s, 0.4 s, ... up to ``cap_s`` (or until ``stop`` is set); ``ok()`` starts
    again. The first failure of a run is logged at WARNING, then one line per ``every_s`` while it lasts,
    and the recovery once."""

    def __init__(self, what: str, log: logging.Logger, *, cap_s: float = 10.0, every_s: float = 30.0):
        self.what = what
        self.log = log
        self.cap_s = cap_s
        self.every_s = every_s
        self._delay = 0.0
        self._since: float | None = None
        self._logged = 0.0

    @property
    def failing(self) -> bool:
        return self._since is not None

    def failed(self, reason: str) -> None:
        now = time.monotonic()
        if self._since is None:
            self._since = now
            self._logged = now
            self.log.warning("%s: %s; retrying", self.what, reason)
        elif now - self._logged >= self.every_s:
            self._logged = now
            self.log.warning("%s: still failing after %.0f s: %s", self.what, now - self._since, reason)
        self._delay = min(self.cap_s, max(0.2, self._delay * 2))

    def wait(self, stop) -> None:
        stop.wait(self._delay)

    def ok(self) -> None:
        if self._since is not None:
            self.log.warning("%s: working again after %.0f s", self.what, time.monotonic() - self._since)
        self._since = None
        self._delay = 0.0
