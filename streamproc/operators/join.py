"""THE join rules (DESIGN section 4), one operator per join kind.

Every join's result is keyed by the left (stream) side's key; ``joiner(left_value, right_value)``
builds its value (default ``{"left": ..., "right": ...}``), the missing side of a left/outer
result being ``None``. Records with a ``None`` key are dropped and counted (``dropped_none_key``).

stream-table
    Each stream record joins the table's row for its key *as of the moment it is processed*:
    the table's view reads the store through the task's write cache, and the task processes
    the records of its inputs in timestamp order (``Task.process_many``), so a table update
    that comes first is seen. inner drops a record without a row; left emits ``joiner(v, None)``.
    Result timestamp: the stream record's.

stream-global-table
    The same, with the row picked by ``key(k, v)`` (default: the stream key) in the worker's
    global store.

table-table
    Every change of either side re-computes the key's result from both sides' current rows:
    inner needs both, left the left, outer either. A key whose result stops existing flows as
    ``None``; a key that had and has no result flows nothing. Result timestamp: the larger of
    the two sides'. The join keeps no store of its own: it is a view over its sides.

stream-stream, ``JoinWindow(before, after, grace)``
    A left record at ``tl`` matches right records with ``tl - before <= tr <= tl + after``.
    The window rules (the match range, when a record's own window closes) are the
    ``JoinWindow``'s (``streamproc.windows``: ``match_range``, ``close_time``); the operator takes
    them once as offsets (``close_offset``, ``match_range(0, side)``) and adds them per record.
    Records are processed one at a time in processing order (both sides of one batch
    interleaved by position), each at its stream time ``st``:

    1. *expire*: every stored record whose own window is closed at ``st`` (left:
       ``st > tl + after + grace``, right: ``st > tr + before + grace``) leaves its store; under
       left/outer a left record that never matched emits ``joiner(v, None)`` (outer: a right one
       ``joiner(None, v)``), timestamp its own. Never earlier: only closing emits it.
    2. *late*: a record whose own window is already closed is dropped and counted (``late_records``).
    3. *match*: the record joins every stored record of the other side with its key, in range and
       with an open window: one result per match, timestamp ``max(tl, tr)``, emitted at once.
    4. *store*: it is kept in its side's store until its window closes.

    Store layout (kind ``"join"``, one store per side): key -> ``[due, [ts, value, matched], ...]``,
    ``due`` = the earliest close time among the key's records (the backend's time index orders
    keys by it, so records stored before a restart are found when they close). State is bounded
    by the window plus grace.
"""
from __future__ import annotations

import heapq
from itertools import count

import numpy as np

from ..errors import CodecError
from ..kinds import NodeKind, StoreKind
from ..state import Deferred
from ..state.codec import check_value
from .base import Operator
from .batch import Batch
from .table import TableView, view_of
from ._fold import BackendSweep

_MAXSEQ = np.iinfo(np.int64).max
_SKIP = object()        # a joiner raised and the processing-error policy dropped the result


def default_joiner(left, right):
    return {"left": left, "right": right}


def _moves_time(node) -> bool:
    """Whether the records reaching ``node`` move the task's stream time: not if any of them comes from
    a repartition topic (that input's time is its upstream tasks' watermarks)."""
    todo, seen = [node], set()
    while todo:
        n = todo.pop()
        if n.id in seen:
            continue
        seen.add(n.id)
        if n.kind == NodeKind.REPARTITION_SOURCE:
            return False
        todo.extend(n.parents)
    return True


class _JoinBase(Operator):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        p = node.params
        self.how = p["how"]
        self.joiner = p["joiner"] or default_joiner

    def step(self, inputs: list, process):
        """Joins take their sides separately and apply the processing-error policy per joined pair."""
        if self.runs_every_batch or any(b is not None and len(b) for b in inputs):
            return self.process_sides(inputs[0], inputs[1] if len(inputs) > 1 else None)
        return None

    def _join(self, k, lv, rv, seq=None):
        """``joiner(lv, rv)``; if it raises, the processing-error policy applies to the record at ``seq``
        (``fail`` raises; otherwise this result is dropped: ``_SKIP``)."""
        try:
            return self.joiner(lv, rv)
        except Exception as e:  # noqa: BLE001 - a user function
            self.ctx.processing_error(self, e, k, seq)
            return _SKIP

    def _drop_none_keys(self, b: Batch | None) -> Batch | None:
        if b is None or not len(b):
            return None
        if None in b.keys:
            mask = [k is not None for k in b.keys]
            self._drop("none_key", b, mask)
            b = b.select(mask)
        return b if len(b) else None

    def _lookup_join(self, b: Batch, keys: list, rows: list) -> Batch:
        """``b``'s records joined with one looked-up row each (``None``: no row)."""
        joiner = self.joiner
        if self.how == "inner":
            keep = [r is not None for r in rows]
            if not all(keep):
                b = b.select(keep)
                rows = [r for r in rows if r is not None]
        try:
            values = [joiner(v, None if r is None else r[1]) for v, r in zip(b.values, rows)]
        except Exception:  # noqa: BLE001 - record by record: the policy applies to the one that raised
            values = [self._join(k, v, None if r is None else r[1], sq)
                      for k, v, r, sq in zip(b.keys, b.values, rows, b.seq.tolist())]
            keep = [v is not _SKIP for v in values]
            b = Batch(b.keys, values, b.timestamps, b.stream_times, b.seq).select(keep)
            return b
        return Batch(b.keys, values, b.timestamps, b.stream_times, b.seq)


class StreamTableJoinOp(_JoinBase):
    """``stream.join(table)``: each record joins the table's current row for its key."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.table: TableView = view_of(ctx, node.parents[1])

    def process_sides(self, left: Batch | None, right: Batch | None) -> Batch:
        b = self._drop_none_keys(left)         # the table's own changes (right) produce nothing
        if b is None:
            return Batch.empty()
        return self._lookup_join(b, b.keys, self.table.rows(b.keys))


class StreamGlobalJoinOp(_JoinBase):
    """``stream.join(global_table, key=fn)``: each record joins the global table's row ``fn(k, v)``."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.key_fn = node.params["key"]
        self.name = node.params["global"]

    def process_sides(self, left: Batch | None, right: Batch | None) -> Batch:
        b = self._drop_none_keys(left)
        if b is None:
            return Batch.empty()
        fn = self.key_fn
        if fn is None:
            keys = b.keys
        else:
            keys, keep = [], []
            for k, v, sq in zip(b.keys, b.values, b.seq.tolist()):
                try:
                    keys.append(fn(k, v))
                    keep.append(True)
                except Exception as e:  # noqa: BLE001 - a user function: the policy applies
                    self.ctx.processing_error(self, e, k, sq)
                    keep.append(False)
            if not all(keep):
                b = b.select(keep)
                if not len(b):
                    return Batch.empty()
        try:
            rows = self.ctx.globals[self.name].rows(keys)
        except TypeError as e:      # an unhashable table key from key=
            raise self._fail(e, b.keys[0]) from e
        return self._lookup_join(b, keys, rows)


class TableTableJoinOp(_JoinBase, TableView):
    """``table.join(table)``: a view over both sides; each changed key's result re-computed."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.left: TableView = view_of(ctx, node.parents[0])
        self.right: TableView = view_of(ctx, node.parents[1])
        ctx.views[node.id] = self

    def _exists(self, l, r) -> bool:
        how = self.how
        return (l is not None and r is not None) if how == "inner" else (
            l is not None if how == "left" else (l is not None or r is not None))

    def rows(self, keys):
        out = []
        for k, l, r in zip(keys, self.left.rows(keys), self.right.rows(keys)):
            if not self._exists(l, r):
                out.append(None)
                continue
            ts = max(x[0] for x in (l, r) if x is not None)
            v = self._join(k, None if l is None else l[1], None if r is None else r[1])
            out.append(None if v is _SKIP else [ts, v])
        return out

    def process_sides(self, left: Batch | None, right: Batch | None) -> Batch:
        changed = _changes(left, right)
        if not changed:
            return Batch.empty()
        keys = list(changed)
        out = []
        for k, l, r in zip(keys, self.left.rows(keys), self.right.rows(keys)):
            res = self._result(k, l, r, *changed[k])
            if res is not None:
                out.append(res)
        if not out:
            return Batch.empty()
        out_k, out_v, out_old, out_ts, out_st, out_seq = (list(c) for c in zip(*out))
        order = np.argsort(np.asarray(out_seq, dtype=np.int64), kind="stable")
        b = Batch(out_k, out_v, np.asarray(out_ts, dtype=np.int64), np.asarray(out_st, dtype=np.int64),
                  np.asarray(out_seq, dtype=np.int64), out_old)
        return b if (order == np.arange(len(order))).all() else b.take(order)

    def _result(self, k, l, r, lc, rc):
        """The change of key ``k``'s result, ``(k, new, old, ts, st, seq)``, from its rows ``l``/``r`` now
        and its sides' changes ``lc``/``rc`` (``(old value, ts, st, seq)`` or None); None: no change
        flows (it had and has no result, or the joiner failed and the policy dropped it)."""
        lv, rv = (None if l is None else l[1]), (None if r is None else r[1])
        lold = lv if lc is None else lc[0]
        rold = rv if rc is None else rc[0]
        had, has = self._exists(lold, rold), self._exists(lv, rv)
        if not had and not has:
            return None
        ts = max([c[1] for c in (lc, rc) if c is not None]
                 + [row[0] for row, c in ((l, lc), (r, rc)) if c is None and row is not None])
        last = max((c for c in (lc, rc) if c is not None), key=lambda c: c[3])
        new = self._join(k, lv, rv, last[3]) if has else None
        old = self._join(k, lold, rold, last[3]) if had else None
        if new is _SKIP:
            return None
        return k, new, None if old is _SKIP else old, ts, last[2], last[3]


def _changes(left: Batch | None, right: Batch | None) -> dict:
    """Per key the batch changed, ``[left change or None, right change or None]``; a change is
    ``(old value before the batch, ts, st, seq)`` of the side's last record for the key."""
    changed: dict = {}
    for side, b in ((0, left), (1, right)):
        if b is None or not len(b):
            continue
        olds = b.olds if b.olds is not None else [None] * len(b)
        for k, old, t, st, sq in zip(b.keys, olds, b.timestamps.tolist(), b.stream_times.tolist(),
                                     b.seq.tolist()):
            if k is None:
                continue
            c = changed.setdefault(k, [None, None])
            prev = c[side]
            c[side] = (old if prev is None else prev[0], t, st, sq)
    return changed


class StreamStreamJoinOp(_JoinBase):
    runs_every_batch = True              # stream time may have closed join windows (left/outer results)

    """``stream.join(stream, window=JoinWindow(...))`` (see the module doc for the rules).

    Working form: each side's records of a key live in a list the operator keeps across batches
    (``_live``; bounded like the stores, by window + grace). The store gets them as a
    ``Deferred`` (:class:`_Records`): encoded once per checkpoint, not once per batch.
    """

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        w = node.params["window"]
        self.window = w
        left, right = node.params["stores"]
        self.stores = (ctx.state.store(left.name), ctx.state.store(right.name))
        # per side (0 left, 1 right), the window rules as offsets from a record's timestamp t: its window
        # closes at t + close_after[side]; it matches the other side's records in t + match[side]
        self.close_after = (w.close_offset("left"), w.close_offset("right"))
        self.match = (w.match_range(0, "left"), w.match_range(0, "right"))
        self.emit_unmatched = (self.how in ("left", "outer"), self.how == "outer")
        # a side read from a repartition topic does not move the task's time (its watermarks do): its
        # records are judged at their own stream time but expire nothing (runtime/watermarks.py)
        self._moves = tuple(_moves_time(p) for p in node.parents)
        self._tick = count()
        self._start_index()

    def _start_index(self) -> None:
        """Expiry index: a heap of (close time, n, side, key) for the records this operator stored, and
        each store's backend time index for what was stored before it was built (``BackendSweep``).
        Also forgets the working copies (the write caches they mirrored may have been discarded)."""
        self._heap: list = []
        self._live: tuple[dict, dict] = ({}, {})       # side -> key -> [[ts, value, matched], ...]
        self._expired_to: int | None = None
        self._generation = tuple(s.generation for s in self.stores)
        self._sweeps = [BackendSweep(s, StoreKind.JOIN) for s in self.stores]
        for side, (store, sweep) in enumerate(zip(self.stores, self._sweeps)):
            if not sweep.indexed:                 # a backend without a time index: read the store once
                for k, value in store.items():
                    if value:
                        heapq.heappush(self._heap, (value[0], next(self._tick), side, k))

    # ------------------------------------------------------------------ batch
    def process_sides(self, left: Batch | None, right: Batch | None) -> Batch:
        if tuple(s.generation for s in self.stores) != self._generation:   # write caches discarded
            self._start_index()
        left, right = self._drop_none_keys(left), self._drop_none_keys(right)
        st_now = self.ctx.state.stream_time          # the batch's last stream time (its sources stamped it)
        out = _Out()
        dirty: tuple[set, set] = (set(), set())
        self._prefetch(left, right)
        live = self._live
        close_after, match = self.close_after, self.match
        cols = [None if b is None else (b.keys, b.values, b.timestamps.tolist(), b.stream_times.tolist(),
                                        b.seq.tolist()) for b in (left, right)]
        for side, i in _in_order(left, right):
            keys, values, ts_l, st_l, seq_l = cols[side]
            k = keys[i]
            t = ts_l[i]
            st = st_l[i]
            sq = seq_l[i]
            if self._moves[side] and (self._expired_to is None or st > self._expired_to):
                self._expire(st, dirty, out, st, sq)
            if st >= t + close_after[side]:          # late: its own window is closed (JoinWindow.is_closed)
                self.ctx.drop("late", self.metric_label, 1, sq)
                continue
            other = 1 - side
            v = values[i]
            matched = 0
            entries = live[other].get(k)
            if entries is None:
                entries = self._load(other, k)
            if entries:
                m_lo, m_hi = match[side]
                lo, hi = t + m_lo, t + m_hi               # JoinWindow.match_range(t, side)
                o_close = close_after[other]
                for e in entries:
                    et = e[0]
                    if lo <= et <= hi and st < et + o_close:
                        res = self._join(k, v, e[1], sq) if side == 0 else self._join(k, e[1], v, sq)
                        if res is not _SKIP:
                            out.add(k, res, t if t > et else et, st, sq)
                        matched = 1
                        if not e[2]:
                            e[2] = 1
                            dirty[other].add(k)
            if type(v) not in _PLAIN:
                self._storable(k, v)
            mine = live[side].get(k)
            if mine is None:
                mine = self._load(side, k)
            mine.append([t, v, matched])
            dirty[side].add(k)
            heapq.heappush(self._heap, (t + close_after[side], next(self._tick), side, k))
        if self._expired_to is None or st_now > self._expired_to:
            self._expire(st_now, dirty, out, st_now, _MAXSEQ)
        self._write_back(dirty)
        return out.batch()

    def _prefetch(self, left, right) -> None:
        """Load both sides' stored records of the batch's keys not in the working copies (one ``get_many`` each)."""
        keys = list(dict.fromkeys((left.keys if left is not None else []) + (right.keys if right is not None else [])))
        for side in (0, 1):
            live = self._live[side]
            missing = [k for k in keys if k not in live]
            if missing:
                for k, value in zip(missing, self.stores[side].get_many(missing)):
                    live[k] = [] if value is None else [list(e) for e in value[1:]]

    def _load(self, side: int, k) -> list:
        value = self.stores[side].get(k)
        entries = self._live[side][k] = [] if value is None else [list(e) for e in value[1:]]
        return entries

    def _storable(self, k, v) -> None:
        try:
            check_value(v)
        except CodecError as e:
            where = f" (defined at {self.node.where})" if self.node.where else ""
            raise CodecError(f"join {self.node.label!r}{where} cannot store the record of key {k!r}: "
                             f"{e.reason}") from None

    def _expire(self, st: int, dirty, out: "_Out", out_st: int, out_seq: int) -> None:
        """Remove every stored record whose window is closed at stream time ``st``; emit the unmatched
        ones under left/outer (timestamp: their own)."""
        self._expired_to = st
        heap = self._heap
        due: list = []
        while heap and heap[0][0] <= st:
            _, _, side, k = heapq.heappop(heap)
            due.append((side, k))
        for side, sweep in enumerate(self._sweeps):
            if sweep.upto is not None:
                for k in sweep.due(st):
                    due.append((side, k))
        if not due:
            return
        seen = set()
        for side, k in due:
            if (side, k) in seen:
                continue
            seen.add((side, k))
            entries = self._live[side].get(k)
            if entries is None:
                entries = self._load(side, k)
            close_after = self.close_after[side]
            if all(e[0] + close_after > st for e in entries):     # nothing of it closes yet (a stale heap entry)
                self._push_entries(side, k, entries)
                continue
            keep = []
            for e in entries:
                if e[0] + close_after <= st:
                    if not e[2] and self.emit_unmatched[side]:
                        res = self._join(k, e[1], None) if side == 0 else self._join(k, None, e[1])
                        if res is not _SKIP:
                            out.add(k, res, e[0], out_st, out_seq)
                else:
                    keep.append(e)
            entries[:] = keep
            dirty[side].add(k)
            self._push_entries(side, k, keep)

    def _push_entries(self, side: int, k, entries: list) -> None:
        """Make sure the heap holds the key's earliest remaining close time (records found through the
        backend sweep are in the heap only from now on)."""
        if entries:
            heapq.heappush(self._heap, (min(e[0] for e in entries) + self.close_after[side], next(self._tick),
                                        side, k))

    def _write_back(self, dirty) -> None:
        for side in (0, 1):
            if not dirty[side]:
                continue
            store, live, close_after = self.stores[side], self._live[side], self.close_after[side]
            dels = []
            for k in dirty[side]:
                entries = live[k]
                if entries:
                    if not store.holds_deferred(k):      # else the one put already reads this list
                        store.put_deferred(k, _Records(entries, close_after))
                else:
                    dels.append(k)
                    del live[k]
            if dels:
                store.delete_many(dels)


_PLAIN = frozenset({str, int, float, bool, type(None), bytes})


class _Records(Deferred):
    """A key's records of one join side as the store holds them: ``[due, [ts, value, matched], ...]``,
    built from the operator's working list when the store is read or checkpointed."""

    __slots__ = ("entries", "close_after")

    def __init__(self, entries: list, close_after: int):
        self.entries = entries
        self.close_after = close_after        # a record at t closes at t + close_after (JoinWindow.close_offset)

    def state(self):
        entries = self.entries
        return [min(e[0] for e in entries) + self.close_after] + [[e[0], e[1], e[2]] for e in entries]


def _in_order(left: Batch | None, right: Batch | None):
    """``(side, index)`` of both sides' records in processing order (by ``seq``; a record that reaches
    both sides - a self-join - is processed as left first)."""
    if right is None:
        return [] if left is None else [(0, i) for i in range(len(left))]
    if left is None:
        return [(1, i) for i in range(len(right))]
    ls, rs = left.seq.tolist(), right.seq.tolist()
    order = sorted([(q, 0, i) for i, q in enumerate(ls)] + [(q, 1, i) for i, q in enumerate(rs)])
    return [(side, i) for _, side, i in order]


class _Out:
    """Join results as they are produced (columns)."""

    __slots__ = ("keys", "values", "ts", "st", "seq")

    def __init__(self):
        self.keys, self.values, self.ts, self.st, self.seq = [], [], [], [], []

    def add(self, k, v, ts: int, st: int, seq: int) -> None:
        self.keys.append(k)
        self.values.append(v)
        self.ts.append(ts)
        self.st.append(st)
        self.seq.append(seq)

    def batch(self) -> Batch:
        if not self.keys:
            return Batch.empty()
        return Batch(self.keys, self.values, np.asarray(self.ts, dtype=np.int64),
                     np.asarray(self.st, dtype=np.int64), np.asarray(self.seq, dtype=np.int64))
