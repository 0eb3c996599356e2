"""Grouped aggregation: per key (a table), per key and time window (tumbling/hopping).

Both fold a whole batch at once: records are grouped by (key, window) with one numpy sort,
built-in aggregations fold each group with ``reduceat``, and each group then costs one
store read and one store write. Lateness is decided per record from the stream time it
was processed at (``Batch.stream_times``), so batching changes no result.
"""
from __future__ import annotations

import numpy as np

from .base import Operator
from .batch import Batch
from ._fold import CloseIndex, fold_groups, group_sorted, key_codes


class _AggregateBase(Operator):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        p = node.params
        self.spec = p["store"]
        self.window = p["window"]
        self.names = list(p["aggs"])
        self.aggs = list(p["aggs"].values())
        self.emit_final = p["emit"] == "final"
        self.store = ctx.state.store(self.spec.name)

    def _drop_none_keys(self, b: Batch) -> Batch:
        if None in b.keys:
            mask = [k is not None for k in b.keys]
            self.ctx.count("dropped_none_key", len(mask) - sum(mask))
            b = b.select(mask)
        return b

    def _output(self, items: list, stream_time: int) -> Batch:
        """``items``: (key, value, timestamp) results."""
        if not items:
            return Batch.empty()
        keys, values, ts = zip(*items)
        ts_arr = np.asarray(ts, dtype=np.int64)
        return Batch(list(keys), list(values), ts_arr, np.full(len(ts_arr), stream_time, dtype=np.int64))

    def _fold_into_store(self, b: Batch, rec: np.ndarray, wstart, on_new) -> list:
        """Fold records ``rec`` (windows ``wstart``, or None for tables) into the store.

        Returns the store keys changed. ``on_new(store_key)`` is called for each new window.
        """
        codes = key_codes(b.keys)[rec]
        if wstart is None:
            comp = codes
        else:
            lo = int(wstart.min())
            comp = codes * (int((wstart.max() - lo) // self.window.advance) + 1) + (wstart - lo) // self.window.advance
        order, starts = group_sorted(comp)
        rec_sorted = rec[order]
        partials = fold_groups(self.aggs, b.values, rec_sorted, starts)
        maxts = np.maximum.reduceat(b.timestamps[rec_sorted], starts).tolist() if len(starts) else []
        first = rec_sorted[starts].tolist()
        gws = wstart[order][starts].tolist() if wstart is not None else None
        keys, store, aggs = b.keys, self.store, self.aggs
        changed = []
        for g in range(len(starts)):
            k = keys[first[g]]
            skey = k if gws is None else (k, gws[g])
            old = store.get(skey)
            if old is None:
                new = [maxts[g]]
                new += [p[g] for p in partials]
                on_new(skey)
            else:
                new = [old[0] if old[0] > maxts[g] else maxts[g]]
                new += [a.combine(o, p[g]) for a, o, p in zip(aggs, old[1:], partials)]
            store.put(skey, new)
            changed.append(skey)
        return changed

    def _results(self, state) -> dict:
        return {n: a.result(s) for n, a, s in zip(self.names, self.aggs, state[1:])}

    def snapshot(self) -> dict:
        """The store's current contents, each entry as the operator would emit it."""
        return {self._snapshot_key(k, v): v for k, v in self._snapshot_items()}

    def _snapshot_key(self, k, v):
        return k

    def _snapshot_items(self):
        for k, state in self.store.items():
            yield k, self._results(state)


class TableAggregateOp(_AggregateBase):
    """``group_by(...).aggregate(...)`` without a window: the current value per key after each batch."""

    def process(self, b: Batch) -> Batch:
        b = self._drop_none_keys(b)
        if not len(b):
            return Batch.empty()
        changed = self._fold_into_store(b, np.arange(len(b)), None, lambda k: None)
        store = self.store
        items = []
        for k in changed:
            s = store.get(k)
            items.append((k, self._results(s), s[0]))
        return self._output(items, self.ctx.state.stream_time)


class TimeWindowAggregateOp(_AggregateBase):
    """Tumbling and hopping windows. Window state: ``[max_ts, *agg_states]`` under ``(key, start)``."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.index = CloseIndex()
        w = self.window
        for (k, start), _ in self.store.items():      # windows still open from an earlier run
            self.index.add(w.close_time(start + w.size), (k, start))

    def process(self, b: Batch) -> Batch:
        w = self.window
        b = self._drop_none_keys(b)
        items = []
        if len(b):
            rec, wstart = w.assign(b.timestamps)
            open_ = b.stream_times[rec] < w.close_time(wstart + w.size)
            if not open_.all():
                self.ctx.count("late_records", len(np.unique(rec[~open_])))
                rec, wstart = rec[open_], wstart[open_]
            if len(rec):
                size = w.size
                changed = self._fold_into_store(
                    b, rec, wstart, lambda sk: self.index.add(w.close_time(sk[1] + size), sk))
                if not self.emit_final:
                    items = [self._result(sk, self.store.get(sk)) for sk in changed]
        items += self._close(self.ctx.state.stream_time)
        return self._output(items, self.ctx.state.stream_time)

    def _close(self, stream_time: int) -> list:
        out = []
        store = self.store
        for sk in self.index.pop_closed(stream_time):
            if self.emit_final:
                out.append(self._result(sk, store.get(sk)))
            store.delete(sk)
        return out

    def _snapshot_items(self):
        for sk, state in self.store.items():
            yield sk, self._result(sk, state)[1]

    def _result(self, sk, state):
        k, start = sk
        value = {"window_start": start, "window_end": start + self.window.size}
        value.update(self._results(state))
        return k, value, state[0]
