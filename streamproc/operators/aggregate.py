"""Grouped aggregation: per key (a table), per key and time window (tumbling/hopping).

Both fold a whole batch at once: records are grouped by (key, window) with one numpy sort,
built-in aggregations fold each group with ``reduceat``, and each group then costs one
store read and one store write. Lateness is decided per record from the stream time it
was processed at (``Batch.stream_times``), so batching changes no result.

The window rules (when a window closes, is late for a record, expires from a store kept for a
retention) are the window spec's (``streamproc.windows``); this module calls them, vectorised over
each batch's windows.
"""
from __future__ import annotations

from collections import deque
from itertools import compress
from operator import itemgetter

import numpy as np

from ..agg import Aggregation
from ..errors import CodecError, StreamprocError
from ..kinds import StoreKind
from ..state.codec import check_value
from .base import Operator
from .batch import Batch
from .table import AggregateView
from ._fold import (BackendSweep, CloseIndex, GroupFoldError, KeyCodes, WindowColumns, fold_groups, group_sorted,
                    merge_states)


class _AggregateBase(Operator):
    runs_every_batch = True              # stream time may have advanced and closed windows

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        p = node.params
        self.spec = p["store"]
        self.window = p["window"]
        self.names = list(p["aggs"])
        self.aggs = list(p["aggs"].values())
        self.emit_final = p["emit"] == "final"
        self.order_sensitive = any(a.order_sensitive for a in self.aggs)
        self._check_states = any(a.holds_values for a in self.aggs)
        self._codes = KeyCodes()
        self._group_keys: list = []
        self.store = ctx.state.store(self.spec.name)

    def nothing(self) -> Batch:
        return self.process(Batch.empty())          # it runs anyway: windows may close

    def combine(self, outs: list) -> Batch:
        out = super().combine(outs)
        return out if self.emit_final else last_per_key(out)    # still one update per key (and window)

    def process(self, b: Batch) -> Batch:
        try:
            return self._process(b)
        except CodecError as e:           # a key or state the internal codec cannot store: name the operator
            where = f" (defined at {self.node.where})" if self.node.where else ""
            raise CodecError(f"aggregate {self.spec.name!r}{where}: {e.reason}") from None
        except StreamprocError:
            raise
        except GroupFoldError as e:
            sk = self._group_keys[e.index] if 0 <= e.index < len(self._group_keys) else None
            raise self._fail(e.cause, sk[0] if self.window is not None else sk) from e.cause
        except Exception as e:  # noqa: BLE001 - a user function (field, reduce) raised
            raise self._fail(e, self._culprit(b)) from e

    def _culprit(self, b: Batch):
        """Key of the first record whose value an aggregation cannot read (None if not found)."""
        for k, v in zip(b.keys, b.values):
            for a in self.aggs:
                try:
                    a.extract([v])
                except Exception:  # noqa: BLE001
                    return k
        return None

    def _drop_none_keys(self, b: Batch) -> Batch:
        if None in b.keys:
            mask = [k is not None for k in b.keys]
            self._drop("none_key", b, mask)
            b = b.select(mask)
        return b

    def _late(self, b: Batch, idx) -> None:
        """Send the late records ``b[idx]`` to the window's ``late_topic`` (if any), in the open checkpoint:
        key and value as they reached the window (the stream's serdes where known, else JSON), headers
        ``window`` (the spec), ``stream_time`` and ``operator``."""
        p = self.node.params
        topic = p.get("late_topic")
        if not topic:
            return
        idx = [int(i) for i in idx]
        keys = [b.keys[i] for i in idx]
        values = [b.values[i] for i in idx]
        try:
            kb = p["late_key_serde"].serialize_many(keys)
            vb = p["late_value_serde"].serialize_many(values)
        except Exception as e:  # noqa: BLE001 - a value the late topic's serde cannot write
            raise self._fail(e, keys[0]) from e
        window = self.window.describe().encode()
        op = self.where_label.encode()
        headers = [[("window", window), ("stream_time", str(int(b.stream_times[i])).encode()), ("operator", op)]
                   for i in idx]
        self.ctx.outputs.append((topic, kb, vb, b.timestamps[np.asarray(idx, dtype=np.int64)].tolist(), headers))

    def _output(self, keys: list, values: list, timestamps: list, stream_time: int) -> Batch:
        if not keys:
            return Batch.empty()
        ts_arr = np.asarray(timestamps, dtype=np.int64)
        n = len(keys)
        # results come after every input record of the batch in processing order
        return Batch(keys, values, ts_arr, np.full(n, stream_time, dtype=np.int64),
                     np.full(n, np.iinfo(np.int64).max, dtype=np.int64))

    def _fold_into_store(self, b: Batch, rec: np.ndarray, wstart) -> tuple[list, list, list]:
        """Fold records ``rec`` (in windows ``wstart``, or None for tables) into the store.

        Returns ``(store_keys, new_states, is_new)`` for every group the batch touched.
        """
        codes = self._codes.codes(b.keys)[rec]
        if wstart is None:
            comp = codes
        else:
            adv = self.window.advance
            lo = int(wstart.min())
            comp = codes * (int((wstart.max() - lo) // adv) + 1) + (wstart - lo) // adv
        order, starts = group_sorted(comp, stable=self.order_sensitive)
        rec_sorted = rec[order]
        partials = fold_groups(self.aggs, b.values, rec_sorted, starts)
        maxts = np.maximum.reduceat(b.timestamps[rec_sorted], starts) if len(starts) else np.empty(0, np.int64)
        gkeys = [b.keys[i] for i in rec_sorted[starts].tolist()]
        if wstart is None:
            skeys = gkeys
        else:
            self._group_starts = wstart[order][starts]
            skeys = list(zip(gkeys, self._group_starts.tolist()))
        olds = self.store.get_many(skeys)
        self._olds = olds
        self._group_keys = skeys
        new_states = merge_states(self.aggs, maxts, partials, olds)
        is_new = [o is None for o in olds]
        if self._check_states:
            self._storable(skeys, new_states)
        self.store.put_many(skeys, new_states)
        return skeys, new_states, is_new

    def _storable(self, keys: list, states: list) -> None:
        """Fail now, naming the key, if a state holds a value the internal codec cannot write (rather
        than at the checkpoint, far from the record). Only for aggregations whose state keeps record
        values: counts and sums are always numbers. (Keys are checked once each, in ``KeyCodes``.)"""
        for k, st in zip(keys, states):
            try:
                check_value(st)
            except CodecError as e:
                raise CodecError(f"cannot store the state of key {k!r}: {e.reason}") from None

    def _results(self, state) -> dict:
        return {n: a.result(s) for n, a, s in zip(self.names, self.aggs, state[1:])}


class TableAggregateOp(_AggregateBase):
    """``group_by(...).aggregate(...)`` without a window: a table, the current value per key; its changes
    (one per key the batch touched, with the value before it) flow at the end of each batch."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        ctx.views[node.id] = AggregateView(self)

    def _process(self, b: Batch) -> Batch:
        b = self._drop_none_keys(b)
        if not len(b):
            return Batch.empty()
        skeys, states, _ = self._fold_into_store(b, np.arange(len(b)), None)
        out = self._output(skeys, [self._results(s) for s in states], [s[0] for s in states],
                           self.ctx.state.stream_time)
        out.olds = [None if s is None else self._results(s) for s in self._olds]
        return out


class TimeWindowAggregateOp(_AggregateBase):
    """Tumbling and hopping windows. Window state: ``(max_ts, *agg_states)`` under ``(key, start)``.

    Closing: a window is closed once ``start <= window.last_closed_start(stream_time)``. The windows
    this operator creates go into its ``CloseIndex`` (in memory, by close time); the windows the store
    already held when the operator was built are found through the backend's time index, which
    orders them by start (``BackendSweep``): building the operator reads nothing from the store,
    and each batch closes what its stream time passed with a bounded range scan of that index,
    reading each closed window once (``get_many``) and deleting it.

    Retention (``aggregate(..., retention=R)`` longer than size + grace, see ``streamproc.windows``): a
    closed window is not deleted but kept with its final value, marked closed - ``(max_ts, *agg_states,
    True)`` - until ``start <= window.last_expired_start(stream_time, R)``, then deleted (a tombstone
    in the changelog). The mark is what says a window was closed (and, in ``emit="final"``, emitted):
    a window met again when the store is swept after a rebuild is emitted only if it is not marked. The
    windows this operator closes wait for expiry in a FIFO by start (windows close in start order, and
    expire in it); those the store held when it was built are found by a second sweep of the time
    index (bound: that last expired start).
    """

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.retention = node.params.get("retention")
        self.retains = self.window.retains(self.retention)
        self._width = 1 + len(self.aggs)          # len of an open window's state; a closed one has one more
        # final results of aggregations that keep one integer each: open windows as columns (``WindowColumns``)
        self._columns = (WindowColumns(self.aggs, self.store) if self.emit_final and not self.retains
                         and WindowColumns.supports(self.aggs) else None)
        self._start_index()

    def _start_index(self) -> None:
        if self._columns is not None:
            self._columns.reset()
        self.index = CloseIndex()
        self._generation = self.store.generation
        self._sweep = BackendSweep(self.store, StoreKind.WINDOW)
        self._expiring: deque = deque()         # (start, [group keys]) of closed windows kept, by start
        self._expire_sweep = BackendSweep(self.store, StoreKind.WINDOW) if self.retains else None
        if not self._sweep.indexed:             # a backend without a time index: read the store once
            w = self.window
            kept = []
            for (k, start), state in self.store.items():
                if self.retains and len(state) > self._width:
                    kept.append((start, k))
                else:
                    self.index.add(w.close_time(w.end_of(start)), (k, start))
            kept.sort(key=itemgetter(0))
            self._keep([(k, start) for start, k in kept])

    def _process(self, b: Batch) -> Batch:
        w = self.window
        if self.store.generation != self._generation:    # the write cache was discarded: re-index
            self._start_index()
        b = self._drop_none_keys(b)
        keys, values, ts = [], [], []
        if len(b):
            rec, wstart = w.assign(b.timestamps)
            open_ = ~w.is_closed(w.end_of(wstart), b.stream_times[rec])
            if not open_.all():
                late = np.unique(rec[~open_])
                self.ctx.drop("late", self.metric_label, len(late), int(b.seq[late[0]]))
                self._late(b, late)
                rec, wstart = rec[open_], wstart[open_]
            if len(rec):
                self._fold(b, rec, wstart, keys, values, ts)
        st = self.ctx.state.stream_time
        closed = self.index.pop_closed(st)
        stored = self._sweep.due(w.last_closed_start(st))
        if stored:
            if closed:                          # also in the CloseIndex if written after the operator was built
                seen = set(closed)
                closed += [k for k in stored if k not in seen]
                closed.sort(key=itemgetter(1))  # each key's windows in start order
            else:
                closed = stored
        if closed:
            if self.emit_final or self.retains:
                self._close(closed, self._states(closed), st, keys, values, ts)
            else:
                self.store.delete_many(closed)
        if self._columns is not None and self._columns.windows:
            self._columns.closed(w.last_closed_start(st))
        if self.retains:
            self._expire(st)
        return self._output(keys, values, ts, self.ctx.state.stream_time)

    def _states(self, wkeys: list) -> list:
        """The stored states of windows ``wkeys``: those held as columns read from them at once."""
        if self._columns is None or not self._columns.windows:
            return self.store.get_many(wkeys)
        states = self._columns.states(wkeys)
        miss = [i for i, s in enumerate(states) if s is None]
        if miss:
            for i, s in zip(miss, self.store.get_many([wkeys[i] for i in miss])):
                states[i] = s
        return states

    def _fold(self, b: Batch, rec: np.ndarray, wstart: np.ndarray, keys, values, ts) -> None:
        """Fold the records ``rec`` into their windows ``wstart``: as columns when they can be
        (``WindowColumns``), else into the store state by state."""
        w = self.window
        cols = self._columns
        if cols is not None:
            if self._codes.full:
                cols.evict()                    # the key codes start again: so do the columns
            created = cols.fold(b, self._codes.codes(b.keys), rec, wstart, w.advance)
            if created is not None:
                if created:
                    self.index.add_many(w.close_time(w.end_of(np.fromiter(
                        (s for _, s in created), dtype=np.int64, count=len(created)))), created)
                return
            cols.evict()                        # values the columns cannot hold: the plain fold from now on
            self._columns = None
        skeys, states, is_new = self._fold_into_store(b, rec, wstart)
        if any(is_new):
            new = np.fromiter(is_new, dtype=bool, count=len(is_new))
            self.index.add_many(w.close_time(w.end_of(self._group_starts[new])), list(compress(skeys, is_new)))
        if not self.emit_final:
            self._results_into(skeys, states, keys, values, ts)

    def _close(self, closed: list, states: list, st: int, keys, values, ts) -> None:
        """Close the windows ``closed`` (in start order; ``states`` their stored states): emit the ones not
        closed before (``emit="final"``), then delete them, or keep them marked closed until they expire."""
        width = self._width
        if not self.retains:
            # marked windows are only there if an earlier run of this store kept closed windows
            if any(map(width.__lt__, map(len, states))):
                fresh = [i for i, s in enumerate(states) if len(s) == width]
                closed_now, states = [closed[i] for i in fresh], [states[i] for i in fresh]
            else:
                closed_now = closed
            self._results_into(closed_now, states, keys, values, ts)        # (only called in emit="final")
            self.store.delete_many(closed)
            return
        fresh = [i for i, s in enumerate(states) if s is not None and len(s) == width]
        if self.emit_final and fresh:
            self._results_into([closed[i] for i in fresh], [states[i] for i in fresh], keys, values, ts)
        bound = self.window.last_expired_start(st, self.retention)    # a window with start <= bound has expired
        gone = [closed[i] for i in fresh if closed[i][1] <= bound]
        if gone:
            self.store.delete_many(gone)
        kept = [i for i in fresh if closed[i][1] > bound]
        if kept:
            ks = [closed[i] for i in kept]
            self.store.put_many(ks, [tuple(states[i]) + (True,) for i in kept])
            self._keep(ks)
        # windows marked before (found by the sweep after a rebuild) expire through the expiry sweep

    def _keep(self, wkeys: list) -> None:
        """Queue closed windows ``wkeys`` (``(key, start)``, normally in start order) for expiry."""
        q = self._expiring
        for k, start in wkeys:
            if not q or q[-1][0] < start:
                q.append((start, [k]))
            elif q[-1][0] == start:
                q[-1][1].append(k)
            else:                               # out of order (never after the first batch): keep q sorted
                i = len(q) - 1
                while i > 0 and q[i - 1][0] >= start:
                    i -= 1
                if q[i][0] == start:
                    q[i][1].append(k)
                else:
                    q.insert(i, (start, [k]))

    def _expire(self, st: int) -> None:
        """Delete the kept closed windows whose retention stream time ``st`` reached."""
        bound = self.window.last_expired_start(st, self.retention)
        q = self._expiring
        dead = []
        while q and q[0][0] <= bound:
            start, gks = q.popleft()
            dead += [(k, start) for k in gks]
        stored = self._expire_sweep.due(bound)
        if stored:
            dead += stored
        if dead:
            self.store.delete_many(dead)

    def _results_into(self, skeys, states, keys, values, ts) -> None:
        size, names, aggs = self.window.size, self.names, self.aggs
        simple = all(type(a).result is Aggregation.result for a in aggs)
        for (k, start), state in zip(skeys, states):
            keys.append(k)
            v = {"window_start": start, "window_end": start + size}
            if simple:
                v.update(zip(names, state[1:]))
            else:
                v.update({n: a.result(s) for n, a, s in zip(names, aggs, state[1:])})
            values.append(v)
            ts.append(state[0])


def last_per_key(b: Batch) -> Batch:
    """The last record per key (per key and window for windowed results), with the first one's old value."""
    def wkey(k, v):
        return (k, v["window_start"]) if isinstance(v, dict) and "window_start" in v else k

    last: dict = {}
    first_old: dict = {}
    for i, (k, v) in enumerate(zip(b.keys, b.values)):
        w = wkey(k, v)
        last[w] = i
        if b.olds is not None:
            first_old.setdefault(w, b.olds[i])
    if len(last) == len(b):
        return b
    out = b.take(np.asarray(sorted(last.values()), dtype=np.int64))
    if b.olds is not None:
        out.olds = [first_old[wkey(k, v)] for k, v in zip(out.keys, out.values)]
    return out
