"""``TopologyTestDriver``: run a topology in-process, deterministically, with no broker.

It compiles the topology exactly as ``streamproc run`` does and runs the same tasks and
operators; only the feeder differs. Each ``pipe`` is one batch for one task; records a task
writes to a repartition topic are handed to the downstream task at once (one batch per
destination partition), so one ``pipe`` can ripple through every sub-topology. Each batch ends
as a committed checkpoint (a failed one as a rolled-back one) through the path the worker's
checkpoint takes too (``runtime/engine/checkpointing.py``).
"""
from __future__ import annotations

from typing import Any, NamedTuple

from ..errors import StreamprocError
from ..kinds import USER_SOURCE_KINDS, NodeKind
from ..operators import RawBatch
from ..operators.base import counts_by_name
from ..operators.global_table import GlobalStore
from ..operators.io import carried_times
from ..partitioner import partition_for
from ..plan import compile_topology
from ..plan.partitions import partition_counts
from ..runtime.engine.checkpointing import apply_committed, discard, rebuilt
from ..runtime.engine.task import Task
from ..runtime.engine.watermarks import encode as watermark_encode
from ..state import MemoryBackend


class Record(NamedTuple):
    key: Any
    value: Any
    timestamp: int


class TopologyTestDriver:
    def __init__(self, topology, partitions: dict[str, int] | None = None):
        self.plan = compile_topology(topology)
        self._partitions = self._partition_counts(dict(partitions or {}))
        self._tasks: dict[tuple[int, int], Task] = {}
        self._offsets: dict[tuple[str, int], int] = {}
        self._outputs: dict[str, list[tuple]] = {}
        self._sink_serdes = {}
        for st in self.plan.subtopologies:
            for n in st.nodes:
                if n.kind == NodeKind.SINK:
                    self._sink_serdes.setdefault(n.params["topic"], (n.params["key_serde"], n.params["value_serde"]))
                elif n.kind == NodeKind.AGGREGATE and n.params.get("late_topic"):
                    self._sink_serdes.setdefault(n.params["late_topic"],
                                                 (n.params["late_key_serde"], n.params["late_value_serde"]))
        self._source_serdes = {}
        for st in self.plan.subtopologies:
            for n in st.nodes:
                if n.kind in USER_SOURCE_KINDS:
                    self._source_serdes[n.params["topic"]] = (n.params["key_serde"], n.params["value_serde"])
        # one global store per global table, shared by every task (as by a worker's tasks)
        self._globals = {g.name: GlobalStore(g, MemoryBackend()) for g in self.plan.global_tables}
        self._global_of_topic = {g.source.topic: self._globals[g.name] for g in self.plan.global_tables}
        for g in self.plan.global_tables:
            self._source_serdes[g.source.topic] = (g.source.key_serde, g.source.value_serde)
        self._dead: list = []                       # DeadLetter records, headers included
        self._committed: dict = {}                  # committed drops of finished tasks' contexts
        self._consumed = self._produced = 0
        self._null_key_rr = 0
        self._marks: dict = {}                      # (sub-topology, partition) -> watermark last written
        self._last_ts = 0
        self._closed = False

    # -- setup ------------------------------------------------------------------------
    def _partition_counts(self, given: dict) -> dict:
        counts = partition_counts(self.plan, {t: given.get(t, 1) for t in self.plan.source_topics},
                                  {t: n for t, n in given.items() if t in self.plan.repartition_topics})
        for t in self.plan.sink_topics:
            counts.setdefault(t, given.get(t, 1))
        for g in self.plan.global_tables:
            counts.setdefault(g.source.topic, given.get(g.source.topic, 1))
        return counts

    def _task(self, st, partition: int) -> Task:
        key = (st.id, partition)
        t = self._tasks.get(key)
        if t is None:
            t = self._tasks[key] = Task(st, partition, MemoryBackend(), globals=self._globals,
                                        partition_count=self._partitions.__getitem__)
        return t

    # -- input --------------------------------------------------------------------------
    def pipe(self, topic: str, key, value, timestamp: int | None = None, headers: list | None = None) -> None:
        """Serialize with the topic's serdes and process one record (one batch); ``headers``: the record's
        Kafka headers, ``[(name, bytes)]`` (e.g. an ingest record's message id)."""
        self.pipe_many(topic, [(key, value, timestamp)] if headers is None else [(key, value, timestamp, headers)])

    def pipe_many(self, topic: str, records) -> None:
        """Process ``[(key, value, timestamp[, headers]), ...]`` as one batch per partition they land on."""
        self._check_open()
        if topic not in self._source_serdes:
            raise StreamprocError(
                f"topic {topic!r} is not an input of topology {self.plan.app_id!r} "
                f"(inputs: {', '.join(self._source_serdes)})")
        kser, vser = self._source_serdes[topic]
        n = self._partitions[topic]
        per_partition: dict[int, list] = {}
        for key, value, ts, *headers in records:
            if ts is None:
                ts = self._last_ts
            if ts < 0:
                raise StreamprocError(f"negative timestamp {ts}: timestamps are epoch milliseconds >= 0")
            self._last_ts = ts
            kb, vb = kser.serialize(key), vser.serialize(value)
            per_partition.setdefault(self._partition(topic, kb, n), []).append(
                (kb, vb, ts, None, headers[0] if headers else None))
        for p, recs in per_partition.items():
            self._deliver(topic, p, recs)
        self._publish_watermarks()

    def _partition(self, topic: str, key_bytes, n: int, given: int = -1) -> int:
        """Where a producer puts a record of ``topic``: ``given`` (chosen by a repartition sink, see
        ``plan.placement``), else the topic's partitioner over the record's key bytes; a null key
        goes round robin."""
        if given >= 0:
            return given
        if key_bytes is None:
            self._null_key_rr += 1
            return (self._null_key_rr - 1) % n
        placement = self.plan.placements.get(topic)
        return partition_for(key_bytes, n, placement.partitioner if placement is not None else "murmur2")

    def _deliver(self, topic: str, partition: int, recs: list) -> None:
        """Process ``[(key bytes, value bytes, ts[, carried stream time])]`` of one partition as one batch."""
        off = self._offsets.get((topic, partition), 0)
        self._offsets[(topic, partition)] = off + len(recs)
        carried = [r[3] for r in recs] if any(len(r) > 3 and r[3] is not None for r in recs) else None
        headers = [r[4] for r in recs] if any(len(r) > 4 and r[4] for r in recs) else None
        raw = RawBatch(topic, partition, [r[0] for r in recs], [r[1] for r in recs], [r[2] for r in recs],
                       list(range(off, off + len(recs))), carried, headers=headers)
        if topic in self._global_of_topic:          # applied between batches, seen by every task
            self._global_of_topic[topic].apply([raw])
            return
        task = self._task(self.plan.subtopology_of(topic), partition)
        self._run(task, task.process, raw,
                  counted=0 if topic in self.plan.repartition_topics else len(recs))

    def _run(self, task: Task, step, *args, counted: int = 0) -> None:
        """``step(*args)`` of ``task`` as one committed checkpoint: its outputs are routed (repartition
        records delivered at once), its state applied, its counts (``counted`` input records) committed;
        a failure rolls it back."""
        try:
            produced = step(*args)
        except Exception:
            self._roll_back(task)              # as a worker would: nothing of the failed batch remains
            raise
        self._consumed += counted
        task.state.changes()                        # what a checkpoint takes for the changelogs (none here)
        apply_committed([task])                     # each pipe is one committed checkpoint
        for dl in task.ctx.dead_letters:
            self._outputs.setdefault(f"{self.plan.app_id}-dlq", []).append((dl.key, dl.value, dl.timestamp))
            self._dead.append(dl)
        self._produced += len(task.ctx.dead_letters)
        task.ctx.dead_letters.clear()
        for out in produced:
            out_topic, kb, vb, ts = out[:4]
            if out_topic not in self.plan.repartition_topics:
                self._produced += len(kb)
                self._outputs.setdefault(out_topic, []).extend(zip(kb, vb, ts))
                continue
            n = self._partitions[out_topic]
            headers = out[4] if len(out) > 4 and out[4] is not None else [None] * len(kb)
            parts = out[5] if len(out) > 5 and out[5] is not None else [-1] * len(kb)
            by_p: dict[int, list] = {}
            for k, v, t, h, given in zip(kb, vb, ts, headers, parts):
                c = carried_times([h]) if h else None
                by_p.setdefault(self._partition(out_topic, k, n, given), []).append((k, v, t, c and c[0]))
            for p, rs in by_p.items():
                self._deliver(out_topic, p, rs)

    def _publish_watermarks(self) -> None:
        """The end of a pipe is a checkpoint: every task feeding a repartition topic writes its stream time
        as a watermark to every partition of it (``runtime/watermarks.py``), idle - under the driver
        every input is caught up after a pipe. A task that never ran publishes -1. Downstream tasks
        advance and close what that closes; repeated until no watermark changes (chains of repartitions)."""
        changed = True
        while changed:
            changed = False
            for st in self.plan.subtopologies:
                if not st.repartition_sinks:
                    continue
                upstreams = self._partitions[("task", st.id)]
                for p in range(upstreams):
                    t = self._tasks.get((st.id, p))
                    mark = (t.state.stream_time if t is not None else -1, True)
                    if self._marks.get((st.id, p)) == mark:
                        continue
                    self._marks[(st.id, p)] = mark
                    changed = True
                    value = watermark_encode(st.id, p, *mark)
                    for topic in st.repartition_sinks:
                        reader = self.plan.subtopology_of(topic)
                        for q in range(self._partitions[topic]):
                            task = self._task(reader, q)
                            task.watermarks(topic, [value], upstreams)
                            self._run(task, task.advance)

    def _roll_back(self, task: Task) -> None:
        """Discard what a failed batch did to ``task`` (state, stream time, pending counts), as a rolled-back
        checkpoint does, and rebuild it over its backend."""
        discard([task])
        self._tasks[(task.subtopology.id, task.partition)] = rebuilt(task, self._globals, self._partitions.__getitem__)

    # -- output -------------------------------------------------------------------------
    def read_output(self, topic: str) -> list[Record]:
        """Every record written to ``topic`` since the last read, deserialized with the sink's serdes."""
        dlq = f"{self.plan.app_id}-dlq"
        if topic not in self._sink_serdes and topic != dlq:
            raise StreamprocError(
                f"topic {topic!r} is not an output of topology {self.plan.app_id!r} "
                f"(outputs: {', '.join(self._sink_serdes) or 'none'})")
        raw = self._outputs.pop(topic, [])
        if topic == dlq:
            return [Record(k, v, t) for k, v, t in raw]
        kser, vser = self._sink_serdes[topic]
        return [Record(kser.deserialize(k), vser.deserialize(v), t) for k, v, t in raw]

    def state(self, store_name: str) -> dict:
        """Contents of a store across all tasks, as results: ``{key: value}`` for tables,
        ``{(key, window_start): value}`` for windowed stores (value as the operator would emit it;
        ``{(key, window_start, window_end): value}`` for a session store with a ``retention``, whose
        kept closed sessions may share a start with a later one)."""
        try:
            self.plan.store(store_name)
        except KeyError:
            raise StreamprocError(
                f"no store named {store_name!r} (stores: {', '.join(s.name for s in self.plan.stores) or 'none'})"
            ) from None
        if store_name in self._globals:
            return self._globals[store_name].snapshot()
        out = {}
        for task in self._tasks.values():
            try:
                out.update(task.snapshot(store_name))
            except KeyError:
                continue
        return out

    def read_dead_letters(self) -> list[dict]:
        """Every dead letter so far (and drains them): the raw ``key``/``value`` and the headers
        ``error``, ``operator``, ``topic``, ``partition``, ``offset`` as ``streamproc run`` writes them."""
        out = [{"key": d.key, "value": d.value, "timestamp": d.timestamp, "error": d.error, "operator": d.operator,
                "topic": d.topic, "partition": d.partition, "offset": d.offset} for d in self._dead]
        self._dead = []
        self._outputs.pop(f"{self.plan.app_id}-dlq", None)
        return out

    def drops(self) -> dict:
        """Dropped records by ``(reason, operator)`` (reasons: late, none_key, skipped, dead_letter,
        processing_error), as the ``streamproc_records_dropped_total`` metric counts them."""
        total: dict = {}
        for m in [t.ctx.metrics for t in self._tasks.values()] + [g.metrics for g in self._globals.values()]:
            for k, v in m.items():
                total[k] = total.get(k, 0) + v
        return total

    def metrics(self) -> dict:
        """Every counter, zeros included: ``records_consumed``, ``records_produced`` and one per drop
        reason (``late_records``, ``dropped_none_key``, ``skipped_records``, ``dead_lettered_records``,
        ``processing_errors``), summed over operators (per operator: :meth:`drops`)."""
        return {"records_consumed": self._consumed, "records_produced": self._produced,
                **counts_by_name(self.drops())}

    # -- lifecycle ------------------------------------------------------------------------
    def _check_open(self):
        if self._closed:
            raise StreamprocError("the TopologyTestDriver is closed")

    def close(self) -> None:
        self._closed = True
        for t in self._tasks.values():
            t.state.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
