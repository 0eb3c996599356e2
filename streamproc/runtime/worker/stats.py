"""What a worker counts, and when a count becomes true: ``WorkerStats``.

Counters are exact for what was committed. Records consumed and produced, and records dropped
(by reason and operator, counted by the operators in their task context), are *pending* while
the checkpoint that processed them is open; :meth:`WorkerStats.committed` (called by the
checkpoint once its transaction committed) makes them count, :meth:`WorkerStats.rolled_back`
forgets them: input processed again after a rollback is never counted twice.

Input and internal records are counted apart: ``internal_topics`` (repartition topics and
changelogs) are the runtime's own traffic, so a snapshot reports ``consumed`` / ``produced`` for
the topology's inputs and outputs (sources; sinks, dead letters, late records) and
``internal_consumed`` / ``internal_produced`` for the rest. :meth:`WorkerStats.track` makes the
counters of the partitions assigned and topics written exist at 0 from the start (a series that
appears only with its first record looks like a missing instance).

Gauges (lag, assigned partitions, tasks, restore progress, store sizes) are set as the worker
sees them. :meth:`WorkerStats.snapshot` is a plain picklable dict: the worker sends it to its
supervisor, which serves every worker's series on one Prometheus endpoint
(``runtime/observe.py``). A snapshot carries the worker process's ``pid`` and ``started`` time
(so the supervisor tells a late report of a predecessor from its successor's) and ``final``
(the worker's last report: it holds nothing any more).

Dropped records are also *summarised in the log*: at most once per :data:`SUMMARY_INTERVAL_S`
per reason and operator, at INFO, with an example record's topic, partition and offset.
"""
from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("streamproc.drops")

#: Seconds between two log summaries of the drops of one reason and operator.
SUMMARY_INTERVAL_S = 30.0

#: Upper bounds (seconds) of the checkpoint duration histogram buckets.
CHECKPOINT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class WorkerStats:
    def __init__(self, worker: str, internal_topics=()):
        self.worker = worker
        self.internal = frozenset(internal_topics)   # repartition topics and changelogs: counted apart
        self.pid = os.getpid()
        self.started = time.time()
        self.consumed: dict = {}          # (topic, partition) -> committed records
        self.produced: dict = {}          # topic -> committed records
        self.drops: dict = {}             # (reason, operator) -> committed records
        self.watermark_lag: dict = {}     # sub-topology id -> seconds its stream time is behind its newest record
        self.paused = 0                   # input partitions paused: their task holds enough of them (KIP-695)
        self.egress_paused = 0            # tasks paused: a sink connector's backlog passed its buffer=
        self.held_back: dict = {}         # sub-topology id -> "upstream sub-topology S partition P" holding it back
        self.misplaced: dict = {}         # topic -> records found in the wrong partition (runtime/misplaced.py)
        self._consumed: dict = {}         # pending (open checkpoint)
        self._produced: dict = {}
        self.checkpoints = 0
        self.rollbacks = 0
        self.buckets = [0] * (len(CHECKPOINT_BUCKETS) + 1)      # last: +Inf
        self.duration_sum = 0.0
        self.last_checkpoint_ms: float | None = None
        # gauges
        self.lag: dict = {}               # (topic, partition) -> records behind the end
        self.assigned = 0
        self.tasks = {"running": 0, "restoring": 0}
        self.restoring_keys: list = []    # (sub-topology id, partition) of the tasks restoring
        self.restore: dict = {}           # store -> [records restored, records remaining]
        self.store_keys: dict = {}        # store -> live keys (exact: Backend.live_keys)
        self.task_keys: list = []         # (sub-topology id, partition) of the running tasks
        # drop summaries
        self._unlogged: dict = {}         # (reason, operator) -> count not yet in a summary
        self._examples: dict = {}         # (reason, operator) -> "topic[p]@offset"
        self._logged_at: dict = {}        # (reason, operator) -> monotonic time of the last summary

    # ------------------------------------------------------------------ pending -> committed
    def consume(self, tp: tuple, n: int) -> None:
        self._consumed[tp] = self._consumed.get(tp, 0) + n

    def produce(self, topic: str, n: int = 1) -> None:
        self._produced[topic] = self._produced.get(topic, 0) + n

    def committed(self, duration_s: float, drops: list[tuple[dict, dict]]) -> None:
        """The open checkpoint committed in ``duration_s``; ``drops``: each task's ``(pending drops,
        examples)`` it committed."""
        for src, dst in ((self._consumed, self.consumed), (self._produced, self.produced)):
            for k, n in src.items():
                dst[k] = dst.get(k, 0) + n
            src.clear()
        for pending, examples in drops:
            for k, n in pending.items():
                self.drops[k] = self.drops.get(k, 0) + n
                self._unlogged[k] = self._unlogged.get(k, 0) + n
                if k in examples:
                    self._examples.setdefault(k, examples[k])
        self.checkpoints += 1
        self.duration_sum += duration_s
        self.last_checkpoint_ms = duration_s * 1000.0
        for i, bound in enumerate(CHECKPOINT_BUCKETS):
            if duration_s <= bound:
                self.buckets[i] += 1
                break
        else:
            self.buckets[-1] += 1
        if self._unlogged:
            self.log_drops()

    def rolled_back(self) -> None:
        """The open checkpoint was aborted: what it consumed and produced does not count."""
        self._consumed.clear()
        self._produced.clear()
        self.rollbacks += 1

    def log_drops(self, force: bool = False) -> None:
        """Summarise drops at INFO, at most every ``SUMMARY_INTERVAL_S`` per reason and operator."""
        now = time.monotonic()
        for k in list(self._unlogged):
            if not force and now - self._logged_at.get(k, -SUMMARY_INTERVAL_S) < SUMMARY_INTERVAL_S:
                continue
            n = self._unlogged.pop(k)
            example = self._examples.pop(k, None)
            self._logged_at[k] = now
            reason, operator = k
            log.info("worker %s dropped %d record(s) at %s: %s%s (total %d)", self.worker, n, operator,
                     _REASON_TEXT.get(reason, reason), f"; e.g. {example}" if example else "", self.drops[k])

    def track(self, partitions=(), topics=()) -> None:
        """Counters that exist from now on, at 0 until counted: records consumed from each input
        ``(topic, partition)`` and produced to each topic."""
        for tp in partitions:
            if tp not in self.consumed:
                self.consumed[tp] = 0
        for t in topics:
            if t not in self.produced:
                self.produced[t] = 0

    # ------------------------------------------------------------------ export
    def snapshot(self, final: bool = False) -> dict:
        """The counters and gauges as a plain dict. ``final``: the worker's last snapshot (it is stopping)."""
        internal = self.internal
        consumed, internal_consumed, produced, internal_produced = {}, {}, {}, {}
        for tp, n in self.consumed.items():
            (internal_consumed if tp[0] in internal else consumed)[tp] = n
        for t, n in self.produced.items():
            (internal_produced if t in internal else produced)[t] = n
        return {
            "worker": self.worker, "pid": self.pid, "started": self.started, "final": final,
            "consumed": consumed, "produced": produced, "drops": dict(self.drops),
            "internal_consumed": internal_consumed, "internal_produced": internal_produced,
            "misplaced": dict(self.misplaced),
            "checkpoints": self.checkpoints, "rollbacks": self.rollbacks,
            "buckets": list(self.buckets), "duration_sum": self.duration_sum,
            "last_checkpoint_ms": self.last_checkpoint_ms,
            "lag": dict(self.lag), "assigned": self.assigned, "tasks": dict(self.tasks),
            "restore": {k: list(v) for k, v in self.restore.items()}, "store_keys": dict(self.store_keys),
            "task_keys": list(self.task_keys), "restoring_keys": list(self.restoring_keys),
            "watermark_lag": dict(self.watermark_lag), "paused": self.paused, "held_back": dict(self.held_back),
            "egress_paused": self.egress_paused,
            "time": time.time(),
        }


_REASON_TEXT = {
    "late": "late for a closed window",
    "none_key": "None key",
    "skipped": "undecodable, skipped (on_error='skip')",
    "dead_letter": "sent to the dead-letter topic",
    "processing_error": "a user function raised, skipped (on_processing_error='skip')",
}
