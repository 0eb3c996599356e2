"""``Store`` (one named store of one task, seen through its write cache) and ``TaskState``."""
from __future__ import annotations

from .backend import DELETED, Backend
_MISSING = object()


class Store:
    __slots__ = ("name", "_backend", "_cache")

    def __init__(self, name: str, backend: Backend):
        self.name = name
        self._backend = backend
        self._cache: dict = {}

    def get(self, key, default=None):
        v = self._cache.get(key, _MISSING)
        if v is _MISSING:
            v = self._backend.get(self.name, key)
            return default if v is None else v
        return default if v is DELETED else v

    def get_many(self, keys: list) -> list:
        """Values for ``keys`` (None where absent), write cache first, then one backend lookup."""
        cache = self._cache
        out = [cache.get(k, _MISSING) for k in keys]
        miss = [i for i, v in enumerate(out) if v is _MISSING]
        if miss:
            found = self._backend.get_many(self.name, [keys[i] for i in miss])
            for i, v in zip(miss, found):
                out[i] = v
        if len(miss) != len(out):
            out = [None if v is DELETED else v for v in out]
        return out

    def put(self, key, value) -> None:
        self._cache[key] = value

    def put_many(self, keys: list, values: list) -> None:
        self._cache.update(zip(keys, values))

    def delete_many(self, keys: list) -> None:
        self._cache.update(dict.fromkeys(keys, DELETED))

    def delete(self, key) -> None:
        self._cache[key] = DELETED

    def items(self) -> list:
        """Current contents: backend overlaid with the write cache."""
        merged = dict(self._backend.items(self.name))
        for k, v in self._cache.items():
            if v is DELETED:
                merged.pop(k, None)
            else:
                merged[k] = v
        return list(merged.items())

    def _drain(self) -> dict:
        cache, self._cache = self._cache, {}
        return cache


class TaskState:
    """The stores and metadata of one task, checkpointed together."""

    def __init__(self, backend: Backend, store_names: list[str]):
        self.backend = backend
        self.stores = {n: Store(n, backend) for n in store_names}
        self.stream_time: int = backend.get_meta("stream_time", -1)
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
        if changelog_offsets:
            meta["changelog_offsets"] = {**self.backend.get_meta("changelog_offsets", {}), **changelog_offsets}
        self.backend.write(pending, meta)

    def discard(self) -> None:
        """Drop uncommitted changes (the transaction was aborted): state goes back to the last checkpoint."""
        self._pending = None
        for s in self.stores.values():
            s._drain()
        self.stream_time = self.backend.get_meta("stream_time", -1)
