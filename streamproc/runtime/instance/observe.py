"""What an operator sees of a running instance: Prometheus metrics and the live status.

Design: workers are processes; the supervisor is the one place that talks to the operator.
Each worker sends, through one queue shared with its log records (``instance/logs.py``), a
snapshot of its ``WorkerStats`` (``worker/stats.py``) about once a second and after its last checkpoint.
The :class:`Observer` in the supervisor keeps the latest snapshot per worker and

* serves them on ``--metrics-port`` (prometheus-client, text format; :func:`metrics_registry`, which
  the HTTP server's ``GET /metrics`` serves too) as one endpoint for the instance, every series
  labelled ``worker``. A restarted worker starts counting from zero: the
  observer adds the last snapshot of its predecessor, so counters never go down;
* shows a status: on a terminal, a live line redrawn every second (rich); otherwise one INFO
  line every :data:`STATUS_INTERVAL_S` - input rate, lag, tasks running/restoring, the last
  checkpoint's duration and drops.

Figures that tell the truth:

* input and internal records apart: ``streamproc_records_consumed_total`` counts the topology's
  input topics only (the status line's "consumed" and rate too), repartition topics have
  ``streamproc_internal_records_consumed_total``; likewise ``..._produced_total`` (sinks, dead
  letters, late records) and ``streamproc_internal_records_produced_total`` (repartition topics,
  changelogs);
* every assigned partition has its consumed counter and lag series from its assignment on, at 0;
* tasks are counted as the task manager counts them - a task is (sub-topology, partition) - over
  the instance: a task that two workers report during a rebalance (the one that lost it has not
  reported since) counts once, in the phase of the newer report;
* a worker's gauges (tasks, lag, assignment, store keys, restore remaining) count only while it
  runs: its last report (``final``, sent as it stops) and :meth:`Observer.worker_exited` drop
  them; a report of a predecessor arriving after its successor started (both share the worker
  index) is told apart by its ``started`` time and only adds to the counters.

Counter values are those of committed checkpoints (see ``worker/stats.py``). A worker killed between a
commit and its next snapshot (under a second) takes the counts of that last second with it.
"""
from __future__ import annotations

import logging
import queue as _queue
import threading
import time

from ...errors import StreamprocError
from ..worker.stats import CHECKPOINT_BUCKETS
from ..serve.fanout import LiveStats
from .edgeview import EdgeView

log = logging.getLogger("streamproc.status")

#: Seconds between two status lines when stderr is not a terminal.
STATUS_INTERVAL_S = 30.0

_COUNTERS = ("consumed", "produced", "internal_consumed", "internal_produced", "drops", "misplaced")
_SCALARS = ("checkpoints", "rollbacks", "duration_sum")


class Observer:
    def __init__(self, app_id: str, mp_context, *, metrics_port: int | None = None, live: bool = False,
                 status_interval_s: float = STATUS_INTERVAL_S):
        self.app_id = app_id
        self.queue = mp_context.Queue()
        self.metrics_port = metrics_port
        self.live = live
        self.status_interval_s = status_interval_s
        self._lock = threading.Lock()
        self._latest: dict[int, dict] = {}       # worker index -> its latest snapshot
        self._base: dict[int, dict] = {}         # worker index -> counters of its finished predecessors
        self._prev: dict[int, dict] = {}         # worker index -> last snapshot of its previous process
        self._started_at: dict[int, float] = {}  # worker index -> when its current process was started
        self.restarts: dict[int, int] = {}
        self.edge = EdgeView()                   # the connectors of the edge process, if any
        self.live_streams = LiveStats()          # the SSE change streams of the HTTP server, if any
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._server = None
        self._live = None
        self._last_status = time.monotonic()
        self._rate_mark: tuple[float, int] | None = None
        self.rate = 0.0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Observer":
        self._thread = threading.Thread(target=self._listen, name="streamproc-observer", daemon=True)
        self._thread.start()
        if self.metrics_port is not None:
            self._serve(self.metrics_port)
        if self.live:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self.status_line(), console=Console(stderr=True), refresh_per_second=2,
                              transient=True, redirect_stderr=True)
            self._live.start()
        return self

    def _serve(self, port: int) -> None:
        from prometheus_client.exposition import start_http_server

        try:
            self._server = start_http_server(port, registry=metrics_registry(self))
        except OSError as e:
            raise StreamprocError(f"cannot serve metrics on port {port}: {e.strerror or e} (is another "
                                  f"instance on this machine using it? pick another --metrics-port)") from None
        server = self._server[0] if isinstance(self._server, tuple) else self._server
        log.info("metrics at http://0.0.0.0:%d/metrics", getattr(server, "server_port", port))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self._drain()
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self._server is not None:
            server = self._server[0] if isinstance(self._server, tuple) else self._server
            try:
                server.shutdown()
                server.server_close()
            except Exception:  # noqa: BLE001
                pass
            self._server = None

    # ------------------------------------------------------------------ workers
    def worker_started(self, index: int, restart: bool) -> None:
        """The supervisor starts a process for worker ``index`` (called before the process starts)."""
        with self._lock:
            if restart:
                self.restarts[index] = self.restarts.get(index, 0) + 1
            self._started_at[index] = time.time()
            prev = self._prev.pop(index, None)
            if prev is not None:
                _add_counters(self._base.setdefault(index, _zero_base()), prev)
            last = self._latest.pop(index, None)
            if last is not None:     # counters continue from it; it may still send a later (final) report
                self._prev[index] = last

    def worker_exited(self, index: int) -> None:
        """Worker ``index``'s process ended (however): its gauges no longer count (its counters do)."""
        with self._lock:
            last = self._latest.get(index)
            if last is not None and not last.get("final"):
                self._latest[index] = dict(last, final=True)

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                item = self.queue.get(timeout=0.2)
            except _queue.Empty:
                continue
            except (EOFError, OSError):
                return
            self._handle(item)

    def _drain(self) -> None:
        while True:
            try:
                self._handle(self.queue.get_nowait())
            except (_queue.Empty, EOFError, OSError, ValueError):
                return

    def _handle(self, item) -> None:
        kind, index, payload = item
        if kind == "log":
            logging.getLogger(payload.name).handle(payload)
        elif kind == "edge":
            self.edge.report(payload)
        elif kind == "stats":
            with self._lock:
                started_at = self._started_at.get(index)
                if started_at is not None and payload.get("started", started_at) < started_at:
                    # a report of the process this index had before the current one (queued behind its exit)
                    prev = self._prev.get(index)
                    if prev is None or (prev.get("pid") == payload.get("pid")
                                        and payload.get("time", 0) >= prev.get("time", 0)):
                        self._prev[index] = payload
                    return
                self._latest[index] = payload

    # ------------------------------------------------------------------ views
    def snapshots(self) -> dict[int, dict]:
        """``{worker index: snapshot}`` with the counters of restarted workers' predecessors added; a worker
        that stopped (its final report) or exited has no gauges (see the module doc)."""
        with self._lock:
            out = {}
            for i in set(self._latest) | set(self._base) | set(self._prev):
                snap = {**_empty(), **(self._latest.get(i) or {})}
                if snap.get("final"):             # the worker stopped: it holds nothing any more
                    snap.update(lag={}, assigned=0, tasks={"running": 0, "restoring": 0}, task_keys=[],
                                restoring_keys=[], store_keys={}, watermark_lag={}, paused=0, held_back={}, egress_paused=0,
                                restore={k: [v[0], 0] for k, v in snap["restore"].items()})
                earlier = self._base.get(i)
                if i in self._prev:
                    earlier = _add_counters(_copy_base(earlier) if earlier else _zero_base(), self._prev[i])
                if earlier:
                    for k in _COUNTERS:
                        merged = dict(earlier[k])
                        for lk, n in snap[k].items():
                            merged[lk] = merged.get(lk, 0) + n
                        snap[k] = merged
                    for k in _SCALARS:
                        snap[k] = snap[k] + earlier[k]
                    snap["buckets"] = [a + b for a, b in zip(snap["buckets"], earlier["buckets"])]
                    restore = {k: list(v) for k, v in snap.get("restore", {}).items()}
                    for store, done in earlier.get("restored", {}).items():
                        restore.setdefault(store, [0, 0])[0] += done
                    snap["restore"] = restore
                out[i] = snap
            return out

    def figures(self) -> dict:
        snaps = self.snapshots()
        consumed = sum(n for s in snaps.values() for n in s["consumed"].values())
        internal = sum(n for s in snaps.values() for n in s["internal_consumed"].values())
        now = time.monotonic()
        if self._rate_mark is not None and now - self._rate_mark[0] >= 1.0:
            self.rate = max(0.0, (consumed - self._rate_mark[1]) / (now - self._rate_mark[0]))
            self._rate_mark = (now, consumed)
        elif self._rate_mark is None:
            self._rate_mark = (now, consumed)
        last = [s["last_checkpoint_ms"] for s in snaps.values() if s.get("last_checkpoint_ms") is not None]
        drops: dict = {}
        for s in snaps.values():
            for (reason, _), n in s["drops"].items():
                drops[reason] = drops.get(reason, 0) + n
        running, restoring = _task_counts(snaps.values())
        return {
            "workers": len(snaps), "consumed": consumed, "internal_consumed": internal, "rate": self.rate,
            "lag": sum(n for s in snaps.values() for n in s["lag"].values()),
            "running": running, "restoring": restoring,
            "last_checkpoint_ms": max(last) if last else None,
            "drops": drops, "restarts": sum(self.restarts.values()),
            "held_back": {k: v for s in snaps.values() for k, v in s.get("held_back", {}).items()},
            "egress_paused": sum(s.get("egress_paused", 0) for s in snaps.values()),
            "live": {"clients": self.live_streams.clients, "sent": self.live_streams.sent,
                     "conflated": self.live_streams.conflated, "resets": self.live_streams.resets},
        }

    def running_tasks(self) -> set:
        """``(sub-topology id, partition)`` of every task this instance's workers run now."""
        with self._lock:
            return {tuple(k) for s in self._latest.values() if not s.get("final") for k in s.get("task_keys", ())}

    def status_line(self) -> str:
        f = self.figures()
        ck = f"{f['last_checkpoint_ms']:.0f} ms" if f["last_checkpoint_ms"] is not None else "-"
        drops = ", ".join(f"{n} {r}" for r, n in sorted(f["drops"].items()) if n) or "none"
        internal = f" (+{f['internal_consumed']:,} internal)" if f["internal_consumed"] else ""
        return (f"{self.app_id}: {f['rate']:,.0f} records/s, {f['consumed']:,} consumed{internal}, lag {f['lag']:,}, "
                f"tasks {f['running']} running / {f['restoring']} restoring, last checkpoint {ck}, "
                f"dropped {drops}" + (f", {f['restarts']} worker restart(s)" if f["restarts"] else "")
                + "".join(f"; windows of sub-topology {sub} held back by {who}"
                          for sub, who in sorted(f["held_back"].items()))
                + (f"; {f['egress_paused']} task(s) paused by a connector's backlog" if f["egress_paused"] else "")
                + self.edge.status() + self.live_streams.status())

    def tick(self) -> None:
        """Called by the supervisor's loop: redraw the live line, or log the status line when due."""
        if self._live is not None:
            self._live.update(self.status_line())
            return
        now = time.monotonic()
        if now - self._last_status >= self.status_interval_s:
            self._last_status = now
            log.info("%s", self.status_line())


def _empty() -> dict:
    return {"consumed": {}, "produced": {}, "internal_consumed": {}, "internal_produced": {}, "drops": {},
            "misplaced": {}, "checkpoints": 0, "rollbacks": 0, "duration_sum": 0.0,
            "buckets": [0] * (len(CHECKPOINT_BUCKETS) + 1), "last_checkpoint_ms": None, "lag": {}, "assigned": 0,
            "tasks": {}, "restore": {}, "store_keys": {}, "task_keys": [], "restoring_keys": [],
            "watermark_lag": {}, "paused": 0, "held_back": {}, "egress_paused": 0}


def _zero_base() -> dict:
    return {k: {} for k in _COUNTERS} | dict.fromkeys(_SCALARS, 0) | {
        "buckets": [0] * (len(CHECKPOINT_BUCKETS) + 1), "restored": {}}


def _copy_base(base: dict) -> dict:
    return {k: dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v for k, v in base.items()}


def _add_counters(base: dict, snap: dict) -> dict:
    """Add the counters of a finished process's last snapshot to ``base`` (returned)."""
    for k in _COUNTERS:
        acc = base.setdefault(k, {})
        for lk, n in snap.get(k, {}).items():
            acc[lk] = acc.get(lk, 0) + n
    for k in _SCALARS:
        base[k] = base.get(k, 0) + snap.get(k, 0)
    base["buckets"] = [a + b for a, b in zip(base.get("buckets") or [0] * (len(CHECKPOINT_BUCKETS) + 1),
                                             snap.get("buckets") or [0] * (len(CHECKPOINT_BUCKETS) + 1))]
    restored = base.setdefault("restored", {})
    for store, (done, _) in snap.get("restore", {}).items():
        restored[store] = restored.get(store, 0) + done
    return base


def _task_counts(snaps) -> tuple[int, int]:
    """``(running, restoring)`` tasks of the instance, each task once, as the task manager counts them (a task is
    (sub-topology, partition)). During a rebalance two workers may report one task - the one that lost it has
    not reported since -: the most recent report says its phase. A snapshot without task keys (an older
    worker) adds its counts."""
    phase: dict = {}
    unkeyed_running = unkeyed_restoring = 0
    for s in sorted(snaps, key=lambda s: s.get("time", 0)):
        run_keys = [tuple(k) for k in s.get("task_keys", ())]
        rest_keys = [tuple(k) for k in s.get("restoring_keys", ())]
        phase.update(dict.fromkeys(run_keys, "running"))
        phase.update(dict.fromkeys(rest_keys, "restoring"))
        tasks = s.get("tasks", {})
        unkeyed_running += max(0, tasks.get("running", 0) - len(run_keys))
        unkeyed_restoring += max(0, tasks.get("restoring", 0) - len(rest_keys))
    running = sum(1 for p in phase.values() if p == "running")
    return running + unkeyed_running, len(phase) - running + unkeyed_restoring


def metrics_registry(observer: Observer):
    """A prometheus-client registry that collects ``observer``'s metrics whenever it is read: the one
    source of the metrics endpoint, on ``--metrics-port`` and on the HTTP server's ``GET /metrics``."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(observer))
    return registry


class _Collector:
    """The Prometheus view of the observer's snapshots (one family per metric, label ``worker``)."""

    def __init__(self, observer: Observer):
        self.observer = observer

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        snaps = self.observer.snapshots()
        restarts = dict(self.observer.restarts)

        def counter(name, doc, labels):
            return CounterMetricFamily(name, doc, labels=["worker"] + labels)

        def gauge(name, doc, labels):
            return GaugeMetricFamily(name, doc, labels=["worker"] + labels)

        consumed = counter("streamproc_records_consumed",
                           "Records of the topology's input topics processed and committed (internal topics: "
                           "streamproc_internal_records_consumed_total); 0 from the partition's assignment on.",
                           ["topic", "partition"])
        internal_consumed = counter("streamproc_internal_records_consumed",
                                    "Records of internal (repartition) topics processed and committed.",
                                    ["topic", "partition"])
        produced = counter("streamproc_records_produced",
                           "Records produced to the topology's outputs (sinks, dead letters, late records) and "
                           "committed (internal topics: streamproc_internal_records_produced_total).", ["topic"])
        internal_produced = counter("streamproc_internal_records_produced",
                                    "Records produced to internal topics (repartition topics, changelogs) and "
                                    "committed.", ["topic"])
        dropped = counter("streamproc_records_dropped", "Records dropped, by reason and operator.",
                          ["reason", "operator"])
        misplaced = counter("streamproc_records_misplaced",
                            "Source records found in another partition than their key's under the declared "
                            "partitioner (sampled check: a lower bound).", ["topic"])
        ckpts = counter("streamproc_checkpoints", "Checkpoints committed.", [])
        rollbacks = counter("streamproc_checkpoint_rollbacks", "Checkpoints rolled back.", [])
        restarts_f = counter("streamproc_worker_restarts", "Times the worker process was restarted.", [])
        restored = counter("streamproc_restore_records", "Changelog records restored.", ["store"])
        duration = HistogramMetricFamily("streamproc_checkpoint_duration_seconds",
                                         "Time to commit a checkpoint.", labels=["worker"])
        lag = gauge("streamproc_consumer_lag", "Records between the consumed position and the end, for every "
                    "assigned partition (0 until the partition is first fetched).", ["topic", "partition"])
        remaining = gauge("streamproc_restore_remaining_records", "Changelog records left to restore.", ["store"])
        keys = gauge("streamproc_store_keys", "Live keys in a store (exact, as of the last checkpoint; "
                     "a windowed store: one per window).", ["store"])
        assigned = gauge("streamproc_assigned_partitions", "Input partitions assigned to the worker.", [])
        tasks = gauge("streamproc_tasks", "Tasks of the worker by phase.", ["phase"])
        wm_lag = gauge("streamproc_watermark_lag_seconds",
                       "How far a sub-topology's stream time is behind the newest record time its tasks saw "
                       "(the largest over the worker's tasks).", ["subtopology"])
        paused = gauge("streamproc_paused_partitions",
                       "Input partitions paused because their task holds enough of their records (event-time "
                       "order, KIP-695).", [])
        egress_paused = gauge("streamproc_egress_paused_tasks",
                              "Tasks paused because the egress backlog of a sink connector they write passed its "
                              "buffer= (the target is slow or down).", [])
        for i, s in sorted(snaps.items()):
            w = str(i)
            for (t, p), n in s["consumed"].items():
                consumed.add_metric([w, t, str(p)], n)
            for (t, p), n in s["internal_consumed"].items():
                internal_consumed.add_metric([w, t, str(p)], n)
            for t, n in s["produced"].items():
                produced.add_metric([w, t], n)
            for t, n in s["internal_produced"].items():
                internal_produced.add_metric([w, t], n)
            for (reason, op), n in s["drops"].items():
                dropped.add_metric([w, reason, op], n)
            for t, n in s.get("misplaced", {}).items():
                misplaced.add_metric([w, t], n)
            ckpts.add_metric([w], s["checkpoints"])
            rollbacks.add_metric([w], s["rollbacks"])
            restarts_f.add_metric([w], restarts.get(i, 0))
            cum, buckets = 0, []
            for bound, n in zip(list(CHECKPOINT_BUCKETS) + [float("inf")], s["buckets"]):
                cum += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cum))
            duration.add_metric([w], buckets, s["duration_sum"])
            for (t, p), n in s["lag"].items():
                lag.add_metric([w, t, str(p)], n)
            for store, (done, left) in s["restore"].items():
                restored.add_metric([w, store], done)
                remaining.add_metric([w, store], left)
            for store, n in s["store_keys"].items():
                keys.add_metric([w, store], n)
            assigned.add_metric([w], s["assigned"])
            for phase, n in s["tasks"].items():
                tasks.add_metric([w, phase], n)
            for sub, sec in s.get("watermark_lag", {}).items():
                wm_lag.add_metric([w, str(sub)], sec)
            paused.add_metric([w], s.get("paused", 0))
            egress_paused.add_metric([w], s.get("egress_paused", 0))
        return [consumed, internal_consumed, produced, internal_produced, dropped, misplaced, ckpts, rollbacks,
                restarts_f, restored, duration, lag, remaining, keys, assigned, tasks, wm_lag, paused,
                egress_paused] + self.observer.edge.families() + self.observer.live_streams.families()
