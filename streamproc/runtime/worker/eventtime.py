"""Event time in a worker (DESIGN section 4): which inputs are caught up, and what follows from it.

* :class:`EventTime` knows since when each input partition is caught up (the consumer reported
  its end and nothing came since). From that it decides, per task reading several partitions,
  which inputs are *ready* (KIP-695: records of the others go only while they have buffered
  records; ``max_task_idle`` waits that long for a caught-up one), *paces* an input whose task
  holds too many of its records, and, with ``Topology(idle_close=...)``, how far the stream time
  of an all-idle task advances with the wall clock. The tasks themselves order and hold records
  (``engine/task.py``, ``Task.process_many``); input clocks are ``engine/watermarks.py``.
* :class:`WatermarkPublisher` writes the watermark of every running task feeding repartition
  topics, at each checkpoint (its step 1b, ``checkpoint.py``), when it changed or is due again;
  reading them is ``fetch.py`` (``split_watermarks``) and ``engine/task.py``.
"""
from __future__ import annotations

import logging
import time

from confluent_kafka import TopicPartition

from ..engine.watermarks import WATERMARK_KEY
from ..engine.watermarks import encode as watermark_encode

log = logging.getLogger("streamproc.worker")

#: A task's watermark is written again after this many seconds even when unchanged (a downstream task
#: that restarted without it learns it again; engine/watermarks.py).
REPUBLISH_S = 5.0
#: A task holding records back (KIP-695) for this long without progress processes them anyway, with a warning.
ENFORCE_S = 10.0
#: An input partition whose task holds more of its records than this is paused until it has taken half.
HOLD_LIMIT = 20_000


class EventTime:
    """The caught-up inputs of one worker and the event-time decisions made from them.

    ``plan``: the compiled topology (``max_task_idle``, ``idle_close``, who writes which repartition
    topic); ``interval_s``: how often idle tasks are looked at (the commit interval);
    ``partition_count(topic)``: the worker's view of output partition counts."""

    def __init__(self, plan, worker_id: str, interval_s: float, partition_count):
        self._plan = plan
        self._worker_id = worker_id
        self._interval_s = interval_s
        self._partition_count = partition_count
        self.gated = any(len(st.input_topics) > 1 for st in plan.subtopologies)    # some task reads several inputs
        self.caught_up: dict = {}            # input (topic, partition) at its end -> since (EOF seen)
        self.paused: set = set()             # input partitions paused: their task holds enough
        self._blocked_since: dict = {}       # task key -> (since, task.progress): held without progress
        self._idle_base: dict = {}           # task key -> (stream time, since) when all inputs idle
        self._idle_checked_at = 0.0
        self._upstream_counts: dict[str, int] = {}

    # ------------------------------------------------------------------ caught-up inputs
    def fetched(self, tps) -> None:
        """Records of ``tps`` arrived: not at their end any more (per partition, not per record)."""
        if self.caught_up:
            for tp in tps:
                self.caught_up.pop(tp, None)

    def ended(self, tps) -> None:
        """End-of-partition events (each comes after its partition's last record): caught up since now."""
        now = time.monotonic()
        for tp in tps:
            self.caught_up.setdefault(tp, now)

    def rewound(self, tp) -> None:
        """``tp`` is read again from its committed offset."""
        self.caught_up.pop(tp, None)

    def revoked(self, tps) -> None:
        for tp in tps:
            self.caught_up.pop(tp, None)
        self.paused.difference_update(tps)

    def all_caught_up(self, tps) -> bool:
        return bool(tps) and all(tp in self.caught_up for tp in tps)

    # ------------------------------------------------------------------ KIP-695
    def ready(self, key, task) -> set:
        """The input partitions of ``task`` caught up for at least ``max_task_idle``: records of the others
        go only while they have buffered records. A task that has held records back for ENFORCE_S without
        processing anything processes them anyway (a broker that never reports an end), saying so."""
        now = time.monotonic()
        idle_s = self._plan.max_task_idle / 1000.0
        ready = {tp for tp in task.input_partitions if now - self.caught_up.get(tp, now + 1) >= idle_s}
        if not task.holding:
            self._blocked_since.pop(key, None)
            return ready
        since, progress = self._blocked_since.get(key, (now, task.progress))
        if progress != task.progress:               # it processed something since: not stuck
            since = now
        self._blocked_since[key] = (since, task.progress)
        if now - since >= ENFORCE_S:
            waiting = [f"{t}[{p}]" for t, p in task.input_partitions if (t, p) not in ready]
            log.warning("worker %s: task %s waited %.0f s for %s to be fetched or caught up; processing what it "
                        "holds in event-time order without them", self._worker_id, task.id, now - since,
                        ", ".join(waiting))
            self._blocked_since[key] = (now, task.progress)
            return set(task.input_partitions)
        return ready

    def pace(self, task, consumer) -> None:
        """Pause an input whose task holds more than HOLD_LIMIT of its records (it is ahead of the others);
        resume it once the task has taken most of them."""
        for tp in task.input_partitions:
            n = task.held_count(tp)
            if n > HOLD_LIMIT and tp not in self.paused:
                self.paused.add(tp)
                consumer.pause([TopicPartition(*tp)])
            elif n <= HOLD_LIMIT // 2 and tp in self.paused:
                self.paused.discard(tp)
                consumer.resume([TopicPartition(*tp)])
        if not task.holding:
            self._blocked_since.pop((task.subtopology.id, task.partition), None)

    def upstreams(self, topic: str) -> int:
        """How many tasks write repartition topic ``topic``: the task count of the sub-topology feeding it."""
        n = self._upstream_counts.get(topic)
        if n is None:
            writer = next(st for st in self._plan.subtopologies if topic in st.repartition_sinks)
            n = self._upstream_counts[topic] = max(self._partition_count(t) for t in writer.input_topics)
        return n

    # ------------------------------------------------------------------ idle_close
    def idle_close(self, tasks: dict) -> list:
        """``Topology(idle_close=...)``: ``[(key, task, stream time)]`` of the running ``tasks`` (by key) whose
        inputs have all been caught up for that long: their stream time advances with the wall clock - from
        the largest event time it had seen, by the idle time elapsed - so the last windows of a stream that
        stopped close and emit (DESIGN section 4). Looked at once per interval."""
        now = time.monotonic()
        if self._plan.idle_close is None or now < self._idle_checked_at:
            return []
        self._idle_checked_at = now + self._interval_s
        limit_s = self._plan.idle_close / 1000.0
        out = []
        for key, task in tasks.items():
            since = [self.caught_up.get(tp) for tp in task.input_partitions]
            if not task.subtopology.stores or None in since or task.holding:
                self._idle_base.pop(key, None)
                continue
            start = max(since)
            base = self._idle_base.get(key)
            if base is None or base[1] != start:
                base = self._idle_base[key] = (task.state.stream_time, start)
            idle_s = now - start
            if idle_s < limit_s or base[0] < 0:
                continue
            target = base[0] + int(idle_s * 1000)
            if target > task.state.stream_time:
                out.append((key, task, target))
        return out

    # ------------------------------------------------------------------ gauges
    def gauges(self, tasks: dict, stats) -> None:
        """Watermark lag per sub-topology, paused partitions, and which upstream task holds windows back."""
        lag: dict = {}
        held: dict = {}
        for task in tasks.values():
            sub = task.subtopology.id
            if task.newest >= 0:
                behind = max(0, task.newest - max(task.state.stream_time, 0)) / 1000.0
                lag[sub] = max(lag.get(sub, 0.0), behind)
            who = task.held_back_by()
            if who is not None:
                held[sub] = f"{who[0]} from sub-topology {who[1][0]} partition {who[1][1]}"
        stats.watermark_lag, stats.held_back, stats.paused = lag, held, len(self.paused)


class WatermarkPublisher:
    """Writes the watermarks of the running tasks feeding repartition topics (``engine/watermarks.py``).

    The checkpoint calls :meth:`publish` in its step 1b (in the open transaction) and then :meth:`settled`
    (committed or not: a watermark of an aborted transaction is written again). ``tasks``: the
    ``TaskManager``; ``event_time``: which inputs are caught up (a task whose inputs all are is idle);
    ``send(topic, value, key, partition)``: produces in the open checkpoint."""

    def __init__(self, tasks, event_time: EventTime, partition_count, send):
        self._tasks = tasks
        self._event_time = event_time
        self._partition_count = partition_count
        self._send = send
        self._published: dict = {}          # task key -> ((stream time, idle), monotonic) committed
        self._publishing: dict = {}         # the same, written in the open checkpoint

    def due(self) -> list:
        """``[(task, (stream time, idle))]`` of the running tasks feeding repartition topics whose watermark
        changed since it was last written (or was written more than REPUBLISH_S ago)."""
        now = time.monotonic()
        out = []
        for key, task in self._tasks.running_tasks().items():
            if not task.subtopology.repartition_sinks or key in self._publishing:
                continue
            mt = self._tasks.get(key)
            idle = self._event_time.all_caught_up(mt.inputs) and not task.holding
            mark = (task.state.stream_time, idle)
            last = self._published.get(key)
            if last is None or last[0] != mark or now - last[1] >= REPUBLISH_S:
                out.append((task, mark))
        return out

    def publish(self) -> None:
        """Checkpoint step 1b: write each due watermark to every partition of the repartition topics its task
        feeds, in the open transaction."""
        now = time.monotonic()
        for task, mark in self.due():
            value = watermark_encode(task.subtopology.id, task.partition, *mark)
            for topic in task.subtopology.repartition_sinks:
                for p in range(self._partition_count(topic)):
                    self._send(topic, value, WATERMARK_KEY, partition=p)
            self._publishing[(task.subtopology.id, task.partition)] = (mark, now)

    def settled(self, committed: bool) -> None:
        """The checkpoint that wrote the watermarks committed (they count as written) or was aborted."""
        if committed:
            self._published.update(self._publishing)
        self._publishing.clear()
