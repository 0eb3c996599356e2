"""``Batch``: the unit every operator consumes and produces.

Columns, not record objects: ``keys`` and ``values`` are lists, ``timestamps`` (event time)
and ``stream_times`` (the task's stream time when each record was processed, i.e. the running
max of event time, updated before the record) are int64 numpy arrays.
"""
from __future__ import annotations

from itertools import compress

import numpy as np

_EMPTY_I64 = np.empty(0, dtype=np.int64)


class Batch:
    __slots__ = ("keys", "values", "timestamps", "stream_times")

    def __init__(self, keys: list, values: list, timestamps: np.ndarray, stream_times: np.ndarray):
        self.keys = keys
        self.values = values
        self.timestamps = timestamps
        self.stream_times = stream_times

    @classmethod
    def empty(cls) -> "Batch":
        return cls([], [], _EMPTY_I64, _EMPTY_I64)

    def __len__(self) -> int:
        return len(self.keys)

    def select(self, mask: list) -> "Batch":
        """The records whose ``mask`` entry is true (order kept)."""
        m = np.fromiter(mask, dtype=bool, count=len(mask))
        if m.all():
            return self
        return Batch(list(compress(self.keys, mask)), list(compress(self.values, mask)),
                     self.timestamps[m], self.stream_times[m])

    def with_columns(self, keys: list, values: list) -> "Batch":
        return Batch(keys, values, self.timestamps, self.stream_times)

    @staticmethod
    def concat(batches: list["Batch"]) -> "Batch":
        batches = [b for b in batches if len(b)]
        if not batches:
            return Batch.empty()
        if len(batches) == 1:
            return batches[0]
        keys, values = [], []
        for b in batches:
            keys += b.keys
            values += b.values
        return Batch(keys, values, np.concatenate([b.timestamps for b in batches]),
                     np.concatenate([b.stream_times for b in batches]))

    def records(self):
        """(key, value, timestamp) tuples, for tests and debugging."""
        return list(zip(self.keys, self.values, self.timestamps.tolist()))
