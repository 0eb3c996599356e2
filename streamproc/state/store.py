"""``Store`` (one named store of one task, seen through its write cache) and ``TaskState``."""
from __future__ import annotations

from collections import deque
from itertools import filterfalse, repeat

from .backend import DELETED, Backend, MemoryBackend

_MISSING = object()


class Deferred:
    """A store value an operator keeps in its own working form (e.g. numpy columns) and turns into
    the stored value only when it is read through the store or checkpointed: ``Store.put_deferred``.

    ``state()`` must return a value the internal codec can write, built fresh (sharing nothing
    mutable with the operator's working form): it is what the changelog and the backend receive.
    """

    __slots__ = ()

    def state(self):
        raise NotImplementedError


class Store:
    """One store of a task: its backend seen through the write cache (what was written since the last
    checkpoint), and optionally a *read cache* (:meth:`keep_reads`): values read from the backend kept
    decoded, for a store read far more often than written (a table joined by a stream)."""

    __slots__ = ("name", "_backend", "_cache", "_deferred", "generation", "checkpoints", "_reads", "_reads_max")

    def __init__(self, name: str, backend: Backend):
        self.name = name
        self._backend = backend
        self._cache: dict = {}
        self._deferred: set = set()    # keys put with put_deferred since the last drain
        self.generation = 0            # +1 at every discard: operators drop what they cached of the store
        self.checkpoints = 0           # +1 each time a checkpoint takes the write cache (``TaskState.changes``)
        self._reads: dict | None = None     # read cache: key -> backend value (None: no such key)
        self._reads_max = 0

    def keep_reads(self, limit: int) -> None:
        """Keep up to ``limit`` values read from the backend (decoded), for the next reads of their keys.
        A backend that hands out the objects it holds (``MemoryBackend``) gains nothing: not kept there.

        The kept values are what the backend holds: each checkpoint (``TaskState.changes``) puts the
        values it takes from the write cache in (the backend receives the same), a discard empties it,
        and the backend is written through no other way while a task runs (restores come before).
        The values are shared between reads, as the memory backend's are: a reader must not change them."""
        if not isinstance(self._backend, MemoryBackend):
            self._reads, self._reads_max = {}, limit

    def get(self, key, default=None):
        v = self._cache.get(key, _MISSING)
        if v is _MISSING:
            reads = self._reads
            if reads is not None:
                v = reads.get(key, _MISSING)
                if v is _MISSING:
                    v = self._backend.get(self.name, key)
                    self._remember([key], [v])
            else:
                v = self._backend.get(self.name, key)
            return default if v is None else v
        if v is DELETED:
            return default
        return v.state() if isinstance(v, Deferred) else v

    def get_many(self, keys: list) -> list:
        """Values for ``keys`` (None where absent): write cache first, then the read cache, then one
        backend lookup."""
        cache = self._cache
        if not cache:
            if self._reads is None:
                return self._backend.get_many(self.name, keys)
            return self._read_many(keys, list(map(self._reads.get, keys, repeat(_MISSING))), False)
        out = self._read_many(keys, list(map(cache.get, keys, repeat(_MISSING))), True)
        out = [None if v is DELETED else v for v in out]
        if self._deferred:
            out = [v.state() if isinstance(v, Deferred) else v for v in out]
        return out

    def _read_many(self, keys: list, out: list, cached: bool) -> list:
        """``out`` with its ``_MISSING`` places read from the read cache (if ``cached``: not looked up in it
        yet), else from the backend (and kept in the read cache)."""
        miss = [i for i, v in enumerate(out) if v is _MISSING]
        reads = self._reads
        if miss and reads is not None and cached:
            for i in miss:
                out[i] = reads.get(keys[i], _MISSING)
            miss = [i for i in miss if out[i] is _MISSING]
        if miss:
            miss_keys = [keys[i] for i in miss]
            found = self._backend.get_many(self.name, miss_keys)
            for i, v in zip(miss, found):
                out[i] = v
            if self._reads is not None:
                self._remember(miss_keys, found)
        return out

    def _remember(self, keys: list, values: list) -> None:
        """Keep backend values in the read cache (emptied first when it would grow past its limit)."""
        reads = self._reads
        if len(reads) + len(keys) > self._reads_max:
            reads.clear()
            if len(keys) > self._reads_max:
                return
        reads.update(zip(keys, values))

    def put(self, key, value) -> None:
        self._cache[key] = value
        if self._deferred:
            self._deferred.discard(key)

    def put_deferred(self, key, value: Deferred) -> None:
        """Put ``value``, whose ``state()`` is taken only when the value is read or checkpointed."""
        self._cache[key] = value
        self._deferred.add(key)

    def holds(self, keys: list) -> list:
        """Per key, whether the write cache holds a value for it (put since the last checkpoint, not
        deleted): that value is the writer's until the checkpoint takes it, so the writer may change it
        in place rather than put it again (the checkpoint takes it as it is then)."""
        return [v is not _MISSING and v is not DELETED for v in map(self._cache.get, keys, repeat(_MISSING))]

    def untouched(self, keys: list) -> list:
        """The ``keys`` the write cache has nothing for (neither put nor deleted since the last checkpoint)."""
        return list(filterfalse(self._cache.__contains__, keys))

    def drop_new(self, keys: list) -> None:
        """Delete keys put since the last checkpoint that the backend does not hold (the caller knows it:
        they were untouched when first put, and the backend did not hold them then): their writes are
        dropped, so the checkpoint writes nothing for them, not even a tombstone."""
        deque(map(self._cache.pop, keys, repeat(None)), maxlen=0)
        if self._deferred:
            self._deferred.difference_update(keys)

    def holds_deferred(self, key) -> bool:
        """True if ``key``'s value in the write cache is a ``Deferred`` put since the last checkpoint (its
        ``state()`` will be taken then: an operator that mutates the working form need not put it again)."""
        return key in self._deferred

    def put_many(self, keys: list, values: list) -> None:
        self._cache.update(zip(keys, values))
        if self._deferred:
            self._deferred.difference_update(keys)

    def delete_many(self, keys: list) -> None:
        self._cache.update(dict.fromkeys(keys, DELETED))
        if self._deferred:
            self._deferred.difference_update(keys)

    def delete(self, key) -> None:
        self._cache[key] = DELETED
        if self._deferred:
            self._deferred.discard(key)

    def items(self) -> list:
        """Current contents: backend overlaid with the write cache."""
        merged = dict(self._backend.items(self.name))
        for k, v in self._cache.items():
            if v is DELETED:
                merged.pop(k, None)
            else:
                merged[k] = v.state() if isinstance(v, Deferred) else v
        return list(merged.items())

    # ------------------------------------------------------------------ time index
    def declare_index(self, kind: str) -> bool:
        """Ask the backend to keep this store's time index (``Backend.declare_index``); True if it does."""
        declare = getattr(self._backend, "declare_index", None)
        return bool(declare(self.name, kind)) if declare is not None else False

    def index_range(self, after: int | None, upto: int) -> list:
        """Keys of the backend's time index with ``after < time <= upto`` that this write cache has not
        deleted. Keys the cache created since the last checkpoint are not in it (nor are new times of
        changed keys): the operator that wrote them knows them."""
        keys = self._backend.index_range(self.name, after, upto)
        cache = self._cache
        if keys and cache:
            keys = [k for k in keys if cache.get(k) is not DELETED]
        return keys

    def index_max(self) -> int | None:
        """The largest time in the backend's time index (None if empty): what was stored when asked."""
        return self._backend.index_max(self.name)

    def _drain(self) -> dict:
        cache, self._cache = self._cache, {}
        self.checkpoints += 1
        if self._deferred:
            for k in self._deferred:
                v = cache.get(k)
                if isinstance(v, Deferred):
                    cache[k] = v.state()
            self._deferred = set()
        if self._reads is not None and cache:            # what the backend holds once this is applied
            self._remember(list(cache), [None if v is DELETED else v for v in cache.values()])
        return cache

    def _forget_reads(self) -> None:
        if self._reads is not None:
            self._reads.clear()


class TaskState:
    """The stores and metadata of one task, checkpointed together."""

    def __init__(self, backend: Backend, store_names: list[str]):
        self.backend = backend
        self.stores = {n: Store(n, backend) for n in store_names}
        self.stream_time: int = backend.get_meta("stream_time", -1)
        self.watermarks: dict = dict(backend.get_meta("watermarks", None) or {})   # runtime/watermarks.py
        self._pending: dict | None = None

    def store(self, name: str) -> Store:
        return self.stores[name]

    def changes(self) -> dict[str, list[tuple]]:
        """Take every store's write cache: ``{store: [(key, value_or_None), ...]}`` for the changelogs.

        The caches are emptied; the taken changes wait in the task state until ``apply``.
        """
        if self._pending is not None:
            raise RuntimeError("changes() called twice without apply(): a checkpoint is already open")
        self._pending = {n: s._drain() for n, s in self.stores.items()}
        return {n: [(k, None if v is DELETED else v) for k, v in c.items()] for n, c in self._pending.items()}

    def apply(self, changelog_offsets: dict | None = None) -> None:
        """Write the taken changes plus metadata to the backend in one batch (after they are durable)."""
        pending = self._pending or {}
        self._pending = None
        meta = {"stream_time": self.stream_time}
        if self.watermarks:
            meta["watermarks"] = dict(self.watermarks)
        if changelog_offsets:
            meta["changelog_offsets"] = {**self.backend.get_meta("changelog_offsets", {}), **changelog_offsets}
        self.backend.write(pending, meta)

    def discard(self) -> None:
        """Drop uncommitted changes (the transaction was aborted): state goes back to the last checkpoint."""
        self._pending = None
        for s in self.stores.values():
            s._cache, s._deferred = {}, set()
            s._forget_reads()                  # it may hold values taken for the checkpoint undone
            s.generation += 1
        self.stream_time = self.backend.get_meta("stream_time", -1)
        self.watermarks = dict(self.backend.get_meta("watermarks", None) or {})
