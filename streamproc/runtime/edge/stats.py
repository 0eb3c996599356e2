"""Per-connector counters of the edge process, reported to the supervisor about once a second."""
from __future__ import annotations

import threading
import time

#: what a connector counts (``streamproc_connector_messages_total{what=...}``)
#: in: read from the source; forwarded: confirmed by Kafka; acked: acked to the source; redelivered:
#: the source said it had delivered them before; rejected: handed to the source's dead-letter route;
#: key_errors: forwarded without a key because key= raised; out: read from the egress topic;
#: confirmed: confirmed by the sink; committed: egress offsets committed past them.
COUNTERS = ("in", "forwarded", "acked", "redelivered", "rejected", "key_errors", "out", "confirmed",
            "committed")


class ConnectorStats:
    """The counters and state of one connector (one thread writes them; snapshots read them)."""

    def __init__(self, name: str, kind: str, role: str):
        self.name = name
        self.kind = kind
        self.role = role                    # "source" or "sink"
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.buffered = 0                   # read, not yet confirmed where it goes
        self.available = True               # False while its system (or Kafka) fails
        self.error = ""

    def add(self, what: str, n: int = 1) -> None:
        self.counts[what] += n

    def snapshot(self) -> dict:
        return {"name": self.name, "kind": self.kind, "role": self.role, "counts": dict(self.counts),
                "buffered": self.buffered, "available": self.available, "error": self.error}


class EdgeStats:
    def __init__(self, report=None, interval_s: float = 1.0):
        self.connectors: list[ConnectorStats] = []
        self._report = report
        self._interval_s = interval_s
        self._last = 0.0
        self._lock = threading.Lock()

    def connector(self, name: str, kind: str, role: str) -> ConnectorStats:
        s = ConnectorStats(name, kind, role)
        self.connectors.append(s)
        return s

    def snapshot(self) -> list[dict]:
        return [c.snapshot() for c in self.connectors]

    def maybe_report(self, force: bool = False) -> None:
        if self._report is None:
            return
        with self._lock:
            now = time.monotonic()
            if not force and now - self._last < self._interval_s:
                return
            self._last = now
            try:
                self._report(self.snapshot())
            except Exception:  # noqa: BLE001 - reporting never stops the edge
                pass
