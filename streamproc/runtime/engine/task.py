"""``Task``: one sub-topology instance for one partition number.

A task owns its operators and its state. It knows nothing about where records come from:
the test driver and the Kafka worker both hand it ``RawBatch``es and take back what it
produced, then run the checkpoint (``state.changes()`` ... ``state.apply()``).

Processing order: a task that reads several input partitions (a join of a stream and a table,
a merge) and is handed records of more than one of them at once (:meth:`Task.process_many`)
processes them in event-time order, as Kafka Streams does: the next record is always the
head of the partition whose head has the smallest timestamp (ties: the smaller offset), and
records of one partition never change order. So an older table update is applied before a
newer stream record looks the table up. Consecutive records of one partition form a *run*;
each run goes through the sub-topology as one batch.
"""
from __future__ import annotations

import numpy as np

from ...operators import Batch, ProcessingError, RawBatch, TaskContext, make_operator
from ...kinds import SOURCE_KINDS, NodeKind
from ...operators.base import counts_by_name
from ...operators.present import entries
from ...state import Backend, TaskState, layout
from .watermarks import InputClock
from .watermarks import decode as watermark_decode

class Task:
    def __init__(self, subtopology, partition: int, backend: Backend, globals: dict | None = None,
                 partition_count=None):
        """``partition_count(topic)``: how many partitions an output topic has (a repartition topic placed
        like a source topic needs it, see ``plan.placement``)."""
        self.subtopology = subtopology
        self.partition = partition
        self.id = layout.task_id(subtopology.id, partition)
        self.state = TaskState(backend, [s.name for s in subtopology.stores])
        self.ctx = TaskContext(self.id, partition, self.state, globals=globals if globals is not None else {},
                               on_processing_error=getattr(subtopology, "on_processing_error", "fail"),
                               partition_count=partition_count)
        self._nodes = subtopology.nodes
        self._ops = {n.id: make_operator(n, self.ctx) for n in self._nodes}
        self._source_of = {n.params["topic"]: n.id for n in self._nodes if n.kind in SOURCE_KINDS}
        self._clocks: dict = {}              # repartition input topic -> InputClock (its watermarks)
        self._held: dict = {}                # (topic, partition) -> decoded records waiting (process_many)
        self.newest = -1                     # the newest event time of a record this task has read
        self.progress = 0                    # records run through the graph by process_many (a liveness count)

    @property
    def input_topics(self) -> list[str]:
        return list(self._source_of)

    def process(self, raw: RawBatch) -> list[tuple]:
        """Run one input batch through the sub-topology.

        Returns the produced records as ``(topic, keys, values, timestamps[, headers[, partitions]])``
        column groups (keys/values serialized; ``partitions`` where the plan places records itself). Dead-letter records collect in ``ctx.dead_letters``.
        """
        src = self._source_of[raw.topic]
        op = self._ops[src]
        b, kept = op.decode(raw)
        if len(b):
            self.newest = max(self.newest, int(b.timestamps.max()))
        self.ctx.source = (raw, kept)
        self._run(src, op.ingest(b))
        self.ctx.source = None
        produced, self.ctx.outputs = self.ctx.outputs, []
        return produced

    def process_many(self, raws: list[RawBatch], ready: set | None = None) -> list[tuple]:
        """Run the batches of several input partitions, their records in event-time order (module doc).

        Consecutive runs of *stream* inputs go through the sub-topology together, as one batch whose
        records keep the merged order (``seq``) and the stream time of their place in it: operators
        with several inputs (a stream-stream join, a merge) interleave them by ``seq``, so the result
        is that of processing the runs one by one, without a pass of the whole graph per run. A run of
        a *table* input goes alone: its updates must be applied before the records that follow it.

        ``ready`` (KIP-695, DESIGN section 4): the input ``(topic, partition)``s known to be caught up.
        Given, records are processed only while every input partition of the task has buffered records
        or is ready; the others wait in the task (:meth:`held_from`) for a later call. None: all now.
        """
        if len(raws) == 1 and ready is None and not self._held:
            return self.process(raws[0])
        decoded = []
        for raw in raws:
            src = self._source_of[raw.topic]
            b, kept = self._ops[src].decode(raw)
            if len(b):
                self.newest = max(self.newest, int(b.timestamps.max()))
                offs = raw.offsets if raw.offsets is not None else list(range(len(raw.keys)))
                decoded.append((src, b, raw, kept, offs if kept is None else [offs[i] for i in kept]))
        if self._held:
            decoded = _with_held(self._held, decoded)
            self._held = {}
        runs = _runs([(b.timestamps.tolist(), offs) for _, b, _, _, offs in decoded])
        if ready is not None:
            runs = self._ready_runs(decoded, runs, ready)
        segment: list = []
        for run in runs:
            table = self._ops[decoded[run[0]][0]].node.kind == NodeKind.TABLE_SOURCE
            if table or (segment and self._ops[decoded[segment[-1][0]][0]].node.kind == NodeKind.TABLE_SOURCE):
                self._run_segment(decoded, segment)
                segment = []
            segment.append(run)
        self._run_segment(decoded, segment)
        self.ctx.source = None
        produced, self.ctx.outputs = self.ctx.outputs, []
        return produced

    @property
    def input_partitions(self) -> list[tuple]:
        return [(t, self.partition) for t in self._source_of]

    def _ready_runs(self, decoded: list, runs: list, ready: set) -> list:
        """The runs that may go now: until an input partition that is not ready runs out of buffered
        records (the next record may be one of its unfetched ones). What follows is held."""
        have = {(d[2].topic, d[2].partition) for d in decoded}
        if any(tp not in have and tp not in ready for tp in self.input_partitions):
            cut = 0
        else:
            left = [len(d[1]) for d in decoded]
            cut = len(runs)
            for j, (i, start, end) in enumerate(runs):
                left[i] -= end - start
                raw = decoded[i][2]
                if not left[i] and (raw.topic, raw.partition) not in ready:
                    cut = j + 1
                    break
        taken = [0] * len(decoded)
        for i, start, end in runs[:cut]:
            taken[i] = end
        for i, (src, b, raw, kept, offs) in enumerate(decoded):
            if taken[i] < len(b):
                rest = b.take(np.arange(taken[i], len(b), dtype=np.int64))
                rest.seq = np.arange(len(rest), dtype=np.int64)
                rkept = (list(range(taken[i], len(b))) if kept is None else kept[taken[i]:])
                self._held[(raw.topic, raw.partition)] = (src, rest, raw, rkept, offs[taken[i]:])
        return runs[:cut]

    @property
    def holding(self) -> bool:
        """Whether records of some input wait in the task (:meth:`process_many`)."""
        return bool(self._held)

    def can_go(self, ready: set) -> bool:
        """Whether :meth:`process_many` would process any held record now: every input has records
        waiting or is ready."""
        return all(tp in self._held or tp in ready for tp in self.input_partitions)

    def held_from(self, tp: tuple) -> int | None:
        """The offset of the first record of input ``tp`` waiting in the task (None: none waits)."""
        h = self._held.get(tp)
        return None if h is None else h[4][0]

    def held_until(self, tp: tuple) -> int | None:
        """The offset after the last record of input ``tp`` waiting in the task (None: none waits)."""
        h = self._held.get(tp)
        return None if h is None else h[4][-1] + 1

    def held_count(self, tp: tuple) -> int:
        h = self._held.get(tp)
        return 0 if h is None else len(h[1])

    def forget_held(self, tps) -> None:
        """Drop what waits of inputs ``tps`` (they are read again from an earlier offset)."""
        for tp in tps:
            self._held.pop(tp, None)

    def _run_segment(self, decoded: list, runs: list) -> None:
        if not runs:
            return
        self.progress += sum(end - start for _, start, end in runs)
        if len(runs) == 1:
            i, start, end = runs[0]
            src, b, raw, kept, _ = decoded[i]
            part = b if (start == 0 and end == len(b)) else b.take(np.arange(start, end, dtype=np.int64))
            self.ctx.source = (raw, kept)          # part.seq still indexes the whole decoded batch
            self._run(src, self._ops[src].ingest(part))
            return
        # several runs of stream inputs: one pass, records numbered in the merged order
        n = sum(end - start for _, start, end in runs)
        moves = np.empty(n, dtype=np.int64)       # what moves the task's time: a source record's timestamp
        floor = np.empty(n, dtype=np.int64)       # what a record is judged at, at least (see SourceOp.stamp)
        origin = _Origins(n)
        picks: dict[int, list] = {}               # decoded index -> [(start, end, first merged position)]
        pos = 0
        for i, start, end in runs:
            src, b, raw, kept, _ = decoded[i]
            moves[pos:pos + end - start] = b.timestamps[start:end] if self._ops[src].moves_time else -1
            floor[pos:pos + end - start] = b.stream_times[start:end]
            origin.add(pos, raw, kept, start, end)
            picks.setdefault(i, []).append((start, end, pos))
            pos += end - start
        task_time = np.maximum.accumulate(moves)
        np.maximum(task_time, self.state.stream_time, out=task_time)
        self.state.stream_time = int(task_time[-1])
        st = np.maximum(task_time, floor)
        starts: dict[int, Batch] = {}
        for i, spans in picks.items():
            src, b, _, _, _ = decoded[i]
            idx = np.concatenate([np.arange(a, e, dtype=np.int64) for a, e, _ in spans])
            seq = np.concatenate([np.arange(p, p + e - a, dtype=np.int64) for a, e, p in spans])
            part = b.take(idx)
            part.seq = seq
            part.stream_times = st[seq]
            starts[src] = part
        self.ctx.source = origin
        self._run_all(starts)

    def _run(self, src: int, batch: Batch) -> None:
        self._run_all({src: batch})

    # -- time through repartition topics (runtime/watermarks.py) ----------------------------
    def watermarks(self, topic: str, values: list, upstreams: int) -> None:
        """Take the watermark records ``values`` read from repartition input ``topic``, written by the
        ``upstreams`` tasks of the sub-topology that feeds it. :meth:`advance` then applies them."""
        clock = self._clocks.get(topic)
        if clock is None:
            saved = self.state.watermarks.get(topic) or {}
            clock = self._clocks[topic] = InputClock(upstreams, saved.get("marks"), saved.get("time", -1))
        clock.upstreams = upstreams
        for v in values:
            mark = watermark_decode(v)
            if mark is not None:
                clock.update(*mark)

    def advance(self, to: int = -1) -> list[tuple]:
        """Move the task's stream time to its inputs' times (the largest of them; at least ``to``: the
        ``idle_close`` clock) and let every operator close what that time closed. Returns what the task
        produced (like :meth:`process`)."""
        t = max(self.state.stream_time, to)
        for topic, clock in self._clocks.items():
            it = clock.advance()
            self.state.watermarks[topic] = {"marks": clock.dump(), "time": it}
            t = max(t, it)
        if t > self.state.stream_time:
            self.state.stream_time = t
            self._run_all({})
        produced, self.ctx.outputs = self.ctx.outputs, []
        return produced

    def held_back_by(self) -> tuple | None:
        """``(input topic, (upstream sub-topology, partition))`` of the watermark that holds this task's
        time back the most, or None."""
        worst = None
        for topic, clock in self._clocks.items():
            up = clock.held_back_by()
            if up is not None and (worst is None or clock.time < worst[0]):
                worst = (clock.time, topic, up)
        return None if worst is None else worst[1:]

    def _run_all(self, starts: dict) -> None:
        out: dict[int, object] = dict(starts)
        ops, process = self._ops, self._process
        for n in self._nodes:
            if n.id in out or n.kind in SOURCE_KINDS:
                continue
            res = ops[n.id].step([out.get(p.id) for p in n.parents], process)
            if res is not None:
                out[n.id] = res

    def _process(self, op, batch: Batch):
        """``op.process(batch)`` with the processing-error policy (``TaskContext.processing_error``).

        When a user function raised, the batch is processed again record by record: under ``skip`` /
        ``dead-letter`` each failing record gets the policy and the others go on (operators change no
        state before their user functions ran for the whole batch, so the failed call left none); under
        ``fail`` the first failing record is found so the error names it, and the task stops.
        """
        try:
            return op.process(batch)
        except ProcessingError as e:
            if len(batch) == 0:
                raise
            if self.ctx.on_processing_error == "fail":
                i, e = (0, e) if len(batch) == 1 else _first_failing(op, batch, e)
                if i is None:
                    raise
                self.ctx.processing_error(op, e, batch.keys[i], batch.seq[i])      # raises
            if len(batch) == 1:
                self.ctx.processing_error(op, e, batch.keys[0], batch.seq[0])
                return op.nothing()
        outs = []
        for i in range(len(batch)):
            try:
                outs.append(op.process(batch.take(np.asarray([i], dtype=np.int64))))
            except ProcessingError as e:
                self.ctx.processing_error(op, e, batch.keys[i], batch.seq[i])
        return op.combine(outs)

    def operator(self, store_name: str):
        for n in self._nodes:
            if any(s.name == store_name for s in n.params.get("stores", ())):
                return self._ops[n.id]
        raise KeyError(store_name)

    def snapshot(self, store_name: str) -> dict:
        """A store's contents as ``{entry key: shown}`` (``operators/present.py``: what the test driver's
        ``state()`` and ``streamproc state`` show)."""
        spec = {s.name: s for s in self.subtopology.stores}[store_name]      # KeyError: not in this task
        return entries(self.subtopology, spec, self.state.store(store_name).items())

    @property
    def metrics(self) -> dict:
        """Drop counters by name (``late_records``...), committed and pending, for inspection."""
        return counts_by_name(self.ctx.metrics, self.ctx.pending, zeros=False)


class _Origins:
    """Where each record of a merged segment came from: ``locate(seq) -> (raw, index in raw)``."""

    def __init__(self, n: int):
        self.raws: list = []
        self.which = np.empty(n, dtype=np.int64)      # merged position -> index in raws
        self.index = np.empty(n, dtype=np.int64)      # merged position -> record index in that raw

    def add(self, pos: int, raw, kept, start: int, end: int) -> None:
        self.raws.append(raw)
        self.which[pos:pos + end - start] = len(self.raws) - 1
        self.index[pos:pos + end - start] = (np.arange(start, end) if kept is None
                                             else np.asarray(kept[start:end], dtype=np.int64))

    def locate(self, seq: int):
        if not 0 <= seq < len(self.which):
            return None
        return self.raws[int(self.which[seq])], int(self.index[seq])


def _with_held(held: dict, decoded: list) -> list:
    """``decoded`` with the held records of each input in front of its new ones (one entry per input)."""
    out, seen = [], set()
    for entry in decoded:
        tp = (entry[2].topic, entry[2].partition)
        h = held.get(tp)
        out.append(entry if h is None else _concat_decoded(h, entry))
        seen.add(tp)
    out[:0] = [h for tp, h in held.items() if tp not in seen]
    return out


def _concat_decoded(a: tuple, b: tuple) -> tuple:
    """Two decoded parts of one input partition as one: records, raw records and their index mapping."""
    src, ba, ra, ka, oa = a
    _, bb, rb, kb, ob = b
    raw = RawBatch(ra.topic, ra.partition, ra.keys + rb.keys, ra.values + rb.values, ra.timestamps + rb.timestamps,
                   (ra.offsets or []) + (rb.offsets or []),
                   None if ra.carried is None and rb.carried is None else
                   (ra.carried or [None] * len(ra.keys)) + (rb.carried or [None] * len(rb.keys)))
    ka = list(range(len(ba))) if ka is None else ka
    kb = list(range(len(bb))) if kb is None else kb
    n = len(ra.keys)
    batch = Batch(ba.keys + bb.keys, ba.values + bb.values, np.concatenate([ba.timestamps, bb.timestamps]),
                  np.concatenate([ba.stream_times, bb.stream_times]))
    return src, batch, raw, ka + [n + i for i in kb], oa + ob



def _first_failing(op, batch: Batch, error: ProcessingError):
    """``(index, error)`` of the first record of ``batch`` that ``op`` fails on alone; ``(None, error)``
    if none does (the failure needs several records together)."""
    for i in range(len(batch)):
        try:
            op.process(batch.take(np.asarray([i], dtype=np.int64)))
        except ProcessingError as e:
            return i, e
    return None, error



def _runs(heads: list[tuple[list, list]]) -> list[tuple[int, int, int]]:
    """Runs ``(input index, start, end)`` of inputs ``[(timestamps, offsets)]`` merged in (timestamp,
    offset, input index) order without reordering any input."""
    n = len(heads)
    if n == 1:
        return [(0, 0, len(heads[0][0]))]
    keys = [list(zip(ts, offs)) for ts, offs in heads]
    pos = [0] * n
    runs = []
    while True:
        live = [i for i in range(n) if pos[i] < len(keys[i])]
        if not live:
            return runs
        if len(live) == 1:
            i = live[0]
            runs.append((i, pos[i], len(keys[i])))
            return runs
        best = min(live, key=lambda i: (keys[i][pos[i]], i))
        bound = min((keys[i][pos[i]], i) for i in live if i != best)
        ks = keys[best]
        j = pos[best] + 1
        while j < len(ks) and (ks[j], best) <= bound:
            j += 1
        runs.append((best, pos[best], j))
        pos[best] = j
