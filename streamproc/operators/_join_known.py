"""What the stream-stream join (``StreamStreamJoinOp``) knows of one side's store, so it reads only
what a batch needs: the due time of every key the store holds (the earliest close time of its
records, the first element of the key's stored value), those keys by due time, and which keys hold
more than one record or one that never matched.

Known keys are the ones the operator wrote or read since it was built; the keys stored before are
found through the backend's time index (``BackendSweep``), and once that sweep is done every key the
store holds is known: a key that is not known is not looked up.
"""
from __future__ import annotations

import heapq
from collections import deque
from itertools import compress, filterfalse, repeat

import numpy as np

from ..state.backend import due_of

_NONE = np.iinfo(np.int64).min        # "no due time" in a column of due times


class DueIndex:
    """Keys by due time, for ``pop(bound)``: the keys due by ``bound``. Keys come in chunks (one per
    ``add``, sorted by time); a heap orders the chunks by their first time not yet popped, so a pop
    touches only the chunks it takes keys from. A key added again under another time stays under the
    old one too: the caller skips it there (its due time says it is not due)."""

    __slots__ = ("_heap", "_n")

    def __init__(self):
        self._heap: list = []           # (first time left, chunk number, [times, keys, next])
        self._n = 0

    def add(self, times: np.ndarray, keys: list) -> None:
        if not keys:
            return
        if len(keys) > 1:
            order = np.argsort(times, kind="stable")
            times = times[order]
            keys = [keys[i] for i in order.tolist()]
        self._n += 1
        heapq.heappush(self._heap, (int(times[0]), self._n, [times, keys, 0]))

    def pop(self, bound: int) -> list:
        out: list = []
        heap = self._heap
        while heap and heap[0][0] <= bound:
            _, n, chunk = heapq.heappop(heap)
            times, keys, start = chunk
            end = int(np.searchsorted(times, bound, "right"))
            out += keys[start:end]
            if end < len(keys):
                chunk[2] = end
                heapq.heappush(heap, (int(times[end]), n, chunk))
        return out


class Known:
    """What the operator knows of one side's store (module doc): ``due`` (key -> due time), ``index``
    (``DueIndex``), ``multi`` (keys holding several records), ``unmatched`` (kept only for a side whose
    unmatched records emit: keys holding one that never matched). A due key in neither holds one
    record that closes and emits nothing: it is deleted without being read.

    ``new``: the keys first put since the store's last checkpoint that its backend does not hold (the
    write cache had nothing for them and no stored record was read); one deleted before the next
    checkpoint is dropped from the write cache (``Store.drop_new``): nothing reaches the changelog or
    the backend for a key that came and went between two checkpoints."""

    __slots__ = ("due", "index", "multi", "unmatched", "emits", "new", "_checkpoint")

    def __init__(self, emits: bool):
        self.due: dict = {}
        self.index = DueIndex()
        self.multi: set = set()
        self.unmatched: set = set()
        self.emits = emits
        self.new: set = set()
        self._checkpoint = None

    def sync(self, store) -> None:
        """Forget ``new`` once a checkpoint took the write cache (the backend holds those keys now)."""
        if store.checkpoints != self._checkpoint:
            self.new.clear()
            self._checkpoint = store.checkpoints

    def created(self, store, keys: list) -> None:
        """``keys`` are about to be put, none of them holding a stored record: those the write cache has
        nothing for are new."""
        if keys:
            self.new.update(store.untouched(keys))

    def delete(self, store, keys: list) -> None:
        """Delete ``keys`` from ``store``: drop the new ones, a tombstone for the others."""
        new = self.new
        if new:
            dropped = [k for k in keys if k in new]
            if dropped:
                new.difference_update(dropped)
                store.drop_new(dropped)
                if len(dropped) == len(keys):
                    return
                keys = list(filterfalse(set(dropped).__contains__, keys))
        store.delete_many(keys)

    def read(self, items) -> None:
        """Know every key of a store read whole (a backend without a time index); each is read again
        when due (what it holds is not looked at here)."""
        keys, times = [], []
        for k, value in items:
            if value:
                keys.append(k)
                times.append(due_of(value))
        self.due.update(zip(keys, times))
        self.index.add(np.asarray(times, dtype=np.int64), keys)
        self.multi.update(keys)

    def closing(self, bound: int, batch_keys: dict) -> tuple[list, list]:
        """The keys due by ``bound`` (taken from the index): ``(to read, to delete unread)``; those to
        delete are forgotten. A key of the batch (``batch_keys``) is always read."""
        due = self.due
        popped = list(dict.fromkeys(self.index.pop(bound)))
        if not popped:
            return [], []
        times = np.fromiter(map(due.get, popped, repeat(bound + 1)), dtype=np.int64, count=len(popped))
        keys = list(compress(popped, (times <= bound).tolist()))
        multi, unmatched = self.multi, self.unmatched
        if multi or unmatched:
            gone = [k for k in keys if k not in multi and k not in unmatched and k not in batch_keys]
        else:
            gone = list(filterfalse(batch_keys.__contains__, keys))
        if not gone:
            return keys, []
        deque(map(due.__delitem__, gone), maxlen=0)
        if len(gone) == len(keys):
            return [], gone
        return list(filter(due.__contains__, keys)), gone

    def learn(self, keys: list, due: np.ndarray, multi: np.ndarray, unmatched: np.ndarray) -> None:
        """Keys the store holds now, with their due times, and whether each holds several records and
        one that never matched."""
        if not keys:
            return
        d = self.due
        old = np.fromiter(map(d.get, keys, repeat(_NONE)), dtype=np.int64, count=len(keys))
        moved = old != due
        if moved.all():
            d.update(zip(keys, due.tolist()))
            self.index.add(due, keys)
        elif moved.any():
            idx = np.flatnonzero(moved)
            ks = [keys[i] for i in idx.tolist()]
            d.update(zip(ks, due[idx].tolist()))
            self.index.add(due[idx], ks)
        _flags(self.multi, keys, multi)
        if self.emits:
            _flags(self.unmatched, keys, unmatched)

    def forget(self, keys: list) -> None:
        """Keys the store no longer holds."""
        deque(map(self.due.pop, keys, repeat(None)), maxlen=0)
        if self.multi:
            self.multi.difference_update(keys)
        if self.unmatched:
            self.unmatched.difference_update(keys)


def _flags(members: set, keys: list, flag: np.ndarray) -> None:
    """``members`` holds the ``keys`` whose ``flag`` is set, and none of the others."""
    if flag.any():
        members.update(compress(keys, flag.tolist()))
    if members:
        members.difference_update(compress(keys, (~flag).tolist()))
