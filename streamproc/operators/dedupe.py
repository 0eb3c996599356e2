"""``dedupe=`` of a source connector (DESIGN section 9): drop re-deliveries by external message id.

The bridge forwards each external message with its id in a header; a message the external system
delivered twice (a crash before its ack) reaches the ingest topic twice with the same id. The source
operator of the ingest topic asks :class:`Dedupe` which records to keep: a record whose id was seen
within the window (by stream time) before it, in this batch or an earlier one, is dropped and counted
(``duplicate``). Records without an id (the system gave none) always pass.

State: one key per id in the source's store (``StoreKind.DEDUPE``, changelogged like any store), value
``[expires_at]``: the stream time at which the id is forgotten (first seen + window). The backend's time
index on that due time finds what expires without reading the store (``_fold.BackendSweep``), plus an
in-memory ``CloseIndex`` of what this operator wrote since it was built.
"""
from __future__ import annotations

import numpy as np

from ..kinds import StoreKind
from ._fold import BackendSweep, CloseIndex


class Dedupe:
    def __init__(self, store, window_ms: int):
        self.store = store
        self.window = window_ms
        self._start()

    def _start(self) -> None:
        self._generation = self.store.generation
        self._index = CloseIndex()
        self._sweep = BackendSweep(self.store, StoreKind.DEDUPE)
        if not self._sweep.indexed:            # a backend without a time index: index what it holds once
            for k, v in self.store.items():
                self._index.add(v[0], k)

    def keep(self, ids: list, stream_times: np.ndarray) -> list[bool]:
        """Which records to keep: ``ids`` their message ids ("" or None: none), ``stream_times`` the stream
        time each is processed at. Records the ids of the kept ones, then forgets the expired ones."""
        if self.store.generation != self._generation:     # the write cache was discarded: index again
            self._start()
        present = sorted({i for i in ids if i})
        known = dict(zip(present, self.store.get_many(present))) if present else {}
        keep: list[bool] = []
        new_keys: list = []
        new_values: list = []
        sts = stream_times.tolist()
        for i, st in zip(ids, sts):
            if not i:
                keep.append(True)
                continue
            v = known.get(i)
            if v is not None and v[0] > st:
                keep.append(False)
                continue
            keep.append(True)
            expires = st + self.window
            known[i] = [expires]
            new_keys.append(i)
            new_values.append([expires])
        if new_keys:
            self.store.put_many(new_keys, new_values)
            self._index.add_many(np.asarray([v[0] for v in new_values], dtype=np.int64), new_keys)
        if sts:
            self._expire(max(sts))
        return keep

    def _expire(self, stream_time: int) -> None:
        due = self._index.pop_closed(stream_time) + self._sweep.due(stream_time)
        if not due:
            return
        due = list(dict.fromkeys(due))
        values = self.store.get_many(due)
        gone = [k for k, v in zip(due, values) if v is not None and v[0] <= stream_time]
        if gone:
            self.store.delete_many(gone)
