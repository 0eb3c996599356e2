"""Tables: the operators that keep and transform them, and the *views* joins read them through.

A table is a materialized store (a topic read with ``Topology.table``, or a non-windowed
aggregation) plus a chain of value transforms (``Table.filter``, ``Table.map_values``,
``Table.join``). Only the store holds data: a derived table is computed when it is read.

* **Changes** flow downstream once per batch, one per changed key (``Batch`` with ``olds``):
  value ``None`` for a deleted key; a key that had no row and still has none flows nothing.
* **Views** answer lookups: ``view.rows(keys)`` gives, per key, the row ``[timestamp, value]``
  or ``None``, reading the store through the task's write cache (so a lookup sees every update
  processed before it) and applying the chain's transforms. A stream-table join reads its table
  through the table's view; a table-table join is itself a view over its two sides.

Store values of a table read from a topic are ``[timestamp, value]`` (the record's timestamp:
the table-table join's result timestamp is the larger of its sides'), made by
``state.table_rows``: the one conversion of a topic record into a row, shared with global
tables and the restore of a table from its topic.
"""
from __future__ import annotations

import logging

import numpy as np

from ..errors import CodecError
from ..state.table_rows import row_of
from .base import Operator
from .batch import Batch
from .io import SourceOp

log = logging.getLogger("streamproc.table")

#: Rows of a table (and of a global table) kept decoded between lookups (``Store.keep_reads``): a stream
#: joined with a table reads the same rows again and again. About 0.5 KB each for small JSON rows.
READ_CACHE_ROWS = 1 << 17


class TableView:
    """Rows of a table by key: ``rows(keys) -> [[timestamp, value] | None, ...]``."""

    def rows(self, keys: list) -> list:
        raise NotImplementedError


class StoreView(TableView):
    """A table read from a topic: its store holds ``[timestamp, value]`` per key."""

    def __init__(self, store):
        self.store = store

    def rows(self, keys):
        return self.store.get_many(keys)


class AggregateView(TableView):
    """A non-windowed aggregation's results: ``[max timestamp, {<agg>: ...}]`` per key."""

    def __init__(self, op):
        self.op = op

    def rows(self, keys):
        op = self.op
        return [None if s is None else [s[0], op._results(s)] for s in op.store.get_many(keys)]


class _Derived(TableView):
    def __init__(self, op, parent: TableView):
        self.op = op
        self.parent = parent

    def rows(self, keys):
        return [None if r is None else self.op._row(k, r) for k, r in zip(keys, self.parent.rows(keys))]


def view_of(ctx, node) -> TableView:
    """The view of table node ``node`` (its operator registered it when the task was built)."""
    return ctx.views[node.id]


class TableSourceOp(SourceOp):
    """``Topology.table(topic)``: applies the topic's records to the table's store in order (a ``None``
    value deletes) and emits one change per changed key. Records with a ``None`` key are dropped and
    counted (a table row needs a key)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.spec = node.params["store"]
        self.store = ctx.state.store(self.spec.name)
        self.store.keep_reads(READ_CACHE_ROWS)     # a table is read per stream record: rows kept decoded
        ctx.views[node.id] = StoreView(self.store)

    def ingest(self, b: Batch) -> Batch:
        return self.apply(self.stamp(b))

    def apply(self, b: Batch) -> Batch:
        if None in b.keys:
            mask = [k is not None for k in b.keys]
            self._drop("none_key", b, mask)
            b = b.select(mask)
        if not len(b):
            return Batch.empty()
        last: dict = {}                       # key -> index of its last record in the batch
        for i, k in enumerate(b.keys):
            last[k] = i
        idx = sorted(last.values())           # changes in the order of each key's last update
        ix = np.asarray(idx, dtype=np.int64)
        keys = [b.keys[i] for i in idx]
        olds = [None if r is None else r[1] for r in self.store.get_many(keys)]
        news = [b.values[i] for i in idx]
        self._write(keys, news, b.timestamps[ix].tolist(), olds)
        keep = [not (o is None and v is None) for o, v in zip(olds, news)]
        out = Batch(keys, news, b.timestamps[ix], b.stream_times[ix], b.seq[ix], olds)
        return out if all(keep) else out.select(keep)

    def _write(self, keys: list, news: list, timestamps: list, olds: list) -> None:
        """Each key's row (``state.table_rows``): put, or deleted by a tombstone if the table held it."""
        puts_k, puts_v, dels = [], [], []
        for k, v, t, old in zip(keys, news, timestamps, olds):
            try:
                row = row_of(v, t)
            except CodecError as e:
                where = f" (defined at {self.node.where})" if self.node.where else ""
                raise CodecError(f"table {self.spec.name!r}{where} cannot store the value of key {k!r}: "
                                 f"{e.reason}") from None
            if row is not None:
                puts_k.append(k)
                puts_v.append(row)
            elif old is not None:
                dels.append(k)
        self.store.put_many(puts_k, puts_v)
        if dels:
            self.store.delete_many(dels)


class TableFilterOp(Operator):
    """``Table.filter(pred)``: a row that stops passing flows as ``None``; a key that never passed
    (before nor after the change) flows nothing."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.pred = node.params["fn"]
        ctx.views[node.id] = _Derived(self, view_of(ctx, node.parents[0]))

    def _passes(self, k, v) -> bool:
        if v is None:
            return False
        try:
            return bool(self.pred(k, v))
        except Exception as e:  # noqa: BLE001 - a user function
            raise self._fail(e, k) from e

    def _row(self, k, row):
        return row if self._passes(k, row[1]) else None

    def process(self, b: Batch) -> Batch:
        olds = b.olds if b.olds is not None else [None] * len(b)
        keep, values, new_olds = [], [], []
        for k, new, old in zip(b.keys, b.values, olds):
            now, before = self._passes(k, new), self._passes(k, old)
            keep.append(now or before)
            values.append(new if now else None)
            new_olds.append(old if before else None)
        out = Batch(b.keys, values, b.timestamps, b.stream_times, b.seq, new_olds)
        return out if all(keep) else out.select(keep)


class TableMapValuesOp(Operator):
    """``Table.map_values(fn)``: ``fn`` applied to every row value (a deleted row stays deleted)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.fn = node.params["fn"]
        ctx.views[node.id] = _Derived(self, view_of(ctx, node.parents[0]))

    def _map(self, k, v):
        if v is None:
            return None
        try:
            return self.fn(v)
        except Exception as e:  # noqa: BLE001 - a user function
            raise self._fail(e, k) from e

    def _row(self, k, row):
        return [row[0], self._map(k, row[1])]

    def process(self, b: Batch) -> Batch:
        olds = b.olds if b.olds is not None else [None] * len(b)
        return Batch(b.keys, [self._map(k, v) for k, v in zip(b.keys, b.values)], b.timestamps,
                     b.stream_times, b.seq, [self._map(k, v) for k, v in zip(b.keys, olds)])


class ToStreamOp(Operator):
    """``Table.to_stream()``: the changes as plain records (old values dropped)."""

    def process(self, b: Batch) -> Batch:
        return Batch(b.keys, b.values, b.timestamps, b.stream_times, b.seq)
