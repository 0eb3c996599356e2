"""What the operator sees of the edge process (connectors, DESIGN section 9): counters per connector that
survive edge restarts, its gauges (buffered, available), their Prometheus families and a status fragment.
The observer (``observe.py``) feeds it the edge's reports and shows it."""
from __future__ import annotations

import threading

from ..edge.stats import COUNTERS


class EdgeView:
    def __init__(self):
        self._lock = threading.Lock()
        self._latest: dict[str, dict] = {}       # connector name -> the edge's latest snapshot of it
        self._base: dict[str, dict] = {}         # connector name -> counts of earlier edge processes

    def report(self, snapshots: list[dict]) -> None:
        with self._lock:
            self._latest = {s["name"]: s for s in snapshots}

    def restarted(self) -> None:
        """A new edge process starts from zero: its predecessor's counts become the base."""
        with self._lock:
            for name, s in self._latest.items():
                base = self._base.setdefault(name, dict.fromkeys(COUNTERS, 0))
                for k, n in s["counts"].items():
                    base[k] = base.get(k, 0) + n
            self._latest = {name: dict(s, counts=dict.fromkeys(COUNTERS, 0), buffered=0)
                            for name, s in self._latest.items()}

    def connectors(self) -> list[dict]:
        """Each connector's snapshot with the counts of earlier edge processes added."""
        with self._lock:
            out = []
            for name, s in sorted(self._latest.items()):
                base = self._base.get(name, {})
                out.append(dict(s, counts={k: n + base.get(k, 0) for k, n in s["counts"].items()}))
            return out

    def status(self) -> str:
        """``; connectors: orders (rabbitmq source) 1,200 in, 0 buffered, DOWN: ...`` or ""."""
        parts = []
        for c in self.connectors():
            n = c["counts"]["in"] if c["role"] == "source" else c["counts"]["confirmed"]
            word = "in" if c["role"] == "source" else "delivered"
            state = "" if c["available"] else f", DOWN: {c['error'][:80]}"
            parts.append(f"{c['name']} ({c['kind']} {c['role']}) {n:,} {word}, {c['buffered']:,} buffered{state}")
        return "; connectors: " + ", ".join(parts) if parts else ""

    def families(self) -> list:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        msgs = CounterMetricFamily(
            "streamproc_connector_messages",
            "Messages through a connector, by what happened: in (read from the source), forwarded (confirmed by "
            "Kafka), acked, redelivered, rejected (to the system's dead-letter route), key_errors, out (read "
            "from the egress topic), confirmed (by the sink), committed.", labels=["connector", "kind", "role",
                                                                                  "what"])
        buffered = GaugeMetricFamily("streamproc_connector_buffered",
                                     "Messages read and not yet confirmed where they go.", labels=["connector"])
        up = GaugeMetricFamily("streamproc_connector_available",
                               "1 while the connector's system works, 0 while it is retried.", labels=["connector"])
        for c in self.connectors():
            for what, n in c["counts"].items():
                msgs.add_metric([c["name"], c["kind"], c["role"], what], n)
            buffered.add_metric([c["name"]], c["buffered"])
            up.add_metric([c["name"]], 1 if c["available"] else 0)
        return [msgs, buffered, up]
