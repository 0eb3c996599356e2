"""Storage behind the write cache. One backend instance holds every store of one task.

Time indexes
------------
Windowed operators close windows as stream time passes them. To find what closes without
reading whole stores, a backend keeps a *time index* of each windowed store, maintained by
every write (``write``, and RocksDB's ``restore_batch``) from the records themselves - the
changelog carries only the store's records, so a restore rebuilds the index as it goes:

* kind ``"window"`` (tumbling/hopping, key ``(group_key, start)``): the time of a key is its
  window start, taken from the key;
* kinds ``"session"``, ``"sliding"`` and ``"join"`` (key = the group key, value = the key's windows,
  or the key's records waiting in a stream-stream join window): the
  time of a key is its *due time*, the first element of its value (``[due, ...]``): the
  smallest stream time at which the operator has something to do for the key (close a
  window, drop expired records). A value that does not start with an int (written by an
  older streamproc) gets due time ``MIN_TIME``, so the operator visits it at once.

``index_range(store, after, upto)`` lists the keys whose time ``t`` has ``after < t <= upto``
(``after`` None: no lower bound), in time order; ``index_max(store)`` is the largest time. The operator merges it with what its own
write cache created or deleted since the last checkpoint (see ``Store.index_range``).

A backend that keeps no time index (``declare_index`` returns False) still works: the
operators then index the store by reading it whole when they are built.
"""
from __future__ import annotations

from bisect import bisect_right, insort
from itertools import groupby
from operator import itemgetter

from ..kinds import StoreKind

DELETED = object()     # write-cache marker for a deleted key

INDEXED_KINDS = frozenset({StoreKind.WINDOW, StoreKind.SESSION, StoreKind.SLIDING, StoreKind.JOIN,
                           StoreKind.DEDUPE})
DUE_KINDS = frozenset({StoreKind.SESSION, StoreKind.SLIDING, StoreKind.JOIN, StoreKind.DEDUPE})   # by due time
MIN_TIME = -(1 << 63)
_start = itemgetter(1)          # a window store key is (group_key, start)


def due_of(value) -> int:
    """The due time of a session/sliding store value: its first element (``MIN_TIME`` if it has none)."""
    if type(value) is list and value and type(value[0]) is int:
        return value[0]
    return MIN_TIME


class Backend:
    """What a task's storage must do. RocksDB and memory implement it."""

    def get(self, store: str, key):
        raise NotImplementedError

    def get_many(self, store: str, keys: list) -> list:
        return [self.get(store, k) for k in keys]

    def items(self, store: str):
        """Every (key, value) of ``store``."""
        raise NotImplementedError

    def get_meta(self, name: str, default=None):
        raise NotImplementedError

    def write(self, changes: dict[str, dict], meta: dict) -> None:
        """Apply all stores' changes and the metadata atomically (one write batch).

        ``changes``: ``{store: {key: value}}`` where ``value is DELETED`` deletes the key.
        """
        raise NotImplementedError

    def declare_index(self, store: str, kind: str) -> bool:
        """Keep (from now on) the time index of ``store``, a store of ``kind`` (see the module doc).

        True if ``index_range`` answers for ``store``; False if this backend keeps no time index
        (the operator then indexes the store itself, by reading it whole once).
        """
        return False

    def index_range(self, store: str, after: int | None, upto: int) -> list:
        """Keys of ``store`` whose time ``t`` has ``after < t <= upto``, in time order (see the module doc)."""
        raise NotImplementedError

    def index_max(self, store: str) -> int | None:
        """The largest time in the time index of ``store`` (None if it is empty)."""
        raise NotImplementedError

    def live_keys(self, store: str) -> int | None:
        """How many keys ``store`` holds now, exactly: live keys only (never a time index, metadata or a
        deleted key). The ``streamproc_store_keys`` metric. None: not known (yet)."""
        return None

    def estimate_keys(self, store: str) -> int | None:
        """Former name of :meth:`live_keys` (which is exact)."""
        return self.live_keys(store)

    def close(self) -> None:
        pass


class _TimeIndex:
    """Keys by an int time, for range queries: a sorted list of the distinct times, a bucket per time.

    ``due``: the time of a key comes from its value and changes (session/sliding): kept exact,
    with ``time_of``. Else the time is the key's window start, which never changes: entries are
    added for what is written and not removed one by one for what is deleted (most deleted windows
    were created and closed between two writes, so were never indexed, and looking each one up
    would cost more than the rest of the write); queries skip entries whose key is gone, and the
    oldest buckets are dropped once all their keys are gone (windows close in start order).
    """

    __slots__ = ("due", "times", "buckets", "time_of")

    def __init__(self, due: bool):
        self.due = due
        self.times: list[int] = []
        self.buckets: dict[int, dict] = {}
        self.time_of: dict = {}           # due indexes only: key -> its time

    def _add(self, key, t) -> None:
        b = self.buckets.get(t)
        if b is None:
            b = self.buckets[t] = {}
            insort(self.times, t)
        b[key] = None

    def apply(self, data: dict, kv: dict, dead: list) -> None:
        """Index the changes ``kv`` about to be applied to ``data`` (the store's dict before them);
        ``dead``: the keys ``kv`` deletes."""
        if self.due:
            # a bucket emptied here leaves its time in ``times`` (skipped by queries: removing it at
            # once would shift the list for every key whose due time moved); compacted when stale
            time_of, buckets, times = self.time_of, self.buckets, self.times
            for k, v in kv.items():
                old = time_of.get(k)
                if v is DELETED:
                    if old is None:
                        continue
                    del time_of[k]
                else:
                    t = v[0] if type(v) is list and v and type(v[0]) is int else MIN_TIME
                    if old == t:
                        continue
                    time_of[k] = t
                    b = buckets.get(t)
                    if b is None:
                        b = buckets[t] = {}
                        if not times or t > times[-1]:
                            times.append(t)
                        else:
                            i = bisect_right(times, t)
                            if not i or times[i - 1] != t:       # not a stale time already listed
                                times.insert(i, t)
                    b[k] = None
                if old is not None:
                    b = buckets[old]
                    del b[k]
                    if not b:
                        del buckets[old]
            if len(times) > 2 * len(buckets) + 64:
                self.times = [t for t in times if t in buckets]
        else:
            # A window's time (its start) never changes: what is put is (re)added; what is deleted
            # is not looked up (most deleted windows were created and closed between two writes and
            # never indexed): entries whose key is gone are dropped when met, and the oldest buckets
            # (windows close in start order) are purged once all their keys are gone.
            puts = [k for k, v in kv.items() if v is not DELETED] if len(dead) < len(kv) else ()
            buckets = self.buckets
            if puts:
                puts.sort(key=_start)
                for t, grp in groupby(puts, _start):
                    b = buckets.get(t)
                    if b is None:
                        b = buckets[t] = {}
                        insort(self.times, t)
                    b.update(dict.fromkeys(grp))

    def purge(self, data: dict) -> None:
        """Drop the oldest buckets whose keys are all gone from ``data`` (after a write)."""
        times, buckets = self.times, self.buckets
        n = 0
        for t in times:
            if any(k in data for k in buckets[t]):
                break
            del buckets[t]
            n += 1
        if n:
            del times[:n]

    def build(self, data: dict) -> None:
        if self.due:
            for k, v in data.items():
                t = self.time_of[k] = due_of(v)
                self._add(k, t)
        else:
            for k in data:
                self._add(k, k[1])

    def range(self, after, upto, data: dict) -> list:
        times, buckets = self.times, self.buckets
        i = 0 if after is None else bisect_right(times, after)
        j = bisect_right(times, upto)
        out = []
        for t in times[i:j]:
            b = buckets.get(t)
            if b:
                out += b
        if not self.due:                     # window entries of deleted keys are dropped lazily
            out = [k for k in out if k in data]
        return out

    def max(self, data: dict):
        times, buckets = self.times, self.buckets
        for t in reversed(times):
            b = buckets.get(t)
            if b and (self.due or any(k in data for k in b)):
                return t
        return None


class MemoryBackend(Backend):
    """Dicts in memory: the test driver's backend, and ``--state-backend memory``.

    Time indexes are kept for the stores an operator declared (``declare_index``); a store
    that already holds data when it is declared (restored before its task was built) is
    indexed then, in one pass over the dict - the restore that filled it cost more.
    """

    def __init__(self):
        self._data: dict[str, dict] = {}
        self._meta: dict = {}
        self._index: dict[str, _TimeIndex] = {}

    def get(self, store, key):
        d = self._data.get(store)
        return None if d is None else d.get(key)

    def get_many(self, store, keys):
        d = self._data.get(store)
        if d is None:
            return [None] * len(keys)
        return list(map(d.get, keys))

    def items(self, store):
        return list(self._data.get(store, {}).items())

    def get_meta(self, name, default=None):
        return self._meta.get(name, default)

    def write(self, changes, meta):
        for store, kv in changes.items():
            d = self._data.setdefault(store, {})
            dead = [k for k, v in kv.items() if v is DELETED]
            ix = self._index.get(store)
            if ix is not None:
                ix.apply(d, kv, dead)
            d.update(kv)
            for k in dead:
                del d[k]
            if dead and ix is not None and not ix.due:
                ix.purge(d)
        self._meta.update(meta)

    def live_keys(self, store):
        return len(self._data.get(store, ()))

    def declare_index(self, store, kind):
        if kind not in INDEXED_KINDS:
            return False
        ix = self._index.get(store)
        if ix is None:
            ix = self._index[store] = _TimeIndex(kind in DUE_KINDS)
            d = self._data.get(store)
            if d:
                ix.build(d)
        return True

    def _ix(self, store) -> _TimeIndex:
        ix = self._index.get(store)
        if ix is None:
            raise KeyError(f"store {store!r} has no time index (declare_index first)")
        return ix

    def index_range(self, store, after, upto):
        return self._ix(store).range(after, upto, self._data.get(store, {}))

    def index_max(self, store):
        return self._ix(store).max(self._data.get(store, {}))
