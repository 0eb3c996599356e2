"""``Batch``: the unit every operator consumes and produces.

Columns, not record objects: ``keys`` and ``values`` are lists, ``timestamps`` (event time),
``stream_times`` (the task's stream time when each record was processed, i.e. the running
max of event time, updated before the record) and ``seq`` (the position of the input record
each one came from, so ``merge`` can restore processing order) are int64 numpy arrays.

A table's changes are a ``Batch`` too, one record per changed key, value ``None`` for a deleted
key, with ``olds``: each key's value before the change (``None``: it had no row). Table
operators (filter, map_values, joins) need the old value; stream operators ignore it.
"""
from __future__ import annotations

from itertools import compress

import numpy as np

_EMPTY_I64 = np.empty(0, dtype=np.int64)


class Batch:
    __slots__ = ("keys", "values", "timestamps", "stream_times", "seq", "olds")

    def __init__(self, keys: list, values: list, timestamps: np.ndarray, stream_times: np.ndarray,
                 seq: np.ndarray | None = None, olds: list | None = None):
        self.keys = keys
        self.values = values
        self.timestamps = timestamps
        self.stream_times = stream_times
        self.seq = np.arange(len(keys), dtype=np.int64) if seq is None else seq
        self.olds = olds

    @classmethod
    def empty(cls) -> "Batch":
        return cls([], [], _EMPTY_I64, _EMPTY_I64, _EMPTY_I64)

    def __len__(self) -> int:
        return len(self.keys)

    def select(self, mask: list) -> "Batch":
        """The records whose ``mask`` entry is true (order kept)."""
        m = np.fromiter(mask, dtype=bool, count=len(mask))
        if m.all():
            return self
        return Batch(list(compress(self.keys, mask)), list(compress(self.values, mask)),
                     self.timestamps[m], self.stream_times[m], self.seq[m],
                     None if self.olds is None else list(compress(self.olds, mask)))

    def take(self, idx: np.ndarray) -> "Batch":
        """The records at positions ``idx`` (may repeat)."""
        il = idx.tolist()
        return Batch([self.keys[i] for i in il], [self.values[i] for i in il],
                     self.timestamps[idx], self.stream_times[idx], self.seq[idx],
                     None if self.olds is None else [self.olds[i] for i in il])

    def with_columns(self, keys: list, values: list) -> "Batch":
        return Batch(keys, values, self.timestamps, self.stream_times, self.seq)

    @staticmethod
    def concat(batches: list["Batch"]) -> "Batch":
        """The records of all batches in processing order (by ``seq``; ties keep batch order)."""
        batches = [b for b in batches if len(b)]
        if not batches:
            return Batch.empty()
        if len(batches) == 1:
            return batches[0]
        keys, values = [], []
        olds = [] if all(b.olds is not None for b in batches) else None
        for b in batches:
            keys += b.keys
            values += b.values
            if olds is not None:
                olds += b.olds
        out = Batch(keys, values, np.concatenate([b.timestamps for b in batches]),
                    np.concatenate([b.stream_times for b in batches]), np.concatenate([b.seq for b in batches]), olds)
        order = np.argsort(out.seq, kind="stable")
        return out.take(order)

    def records(self):
        """(key, value, timestamp) tuples, for tests and debugging."""
        return list(zip(self.keys, self.values, self.timestamps.tolist()))
