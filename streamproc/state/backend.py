"""Storage behind the write cache. One backend instance holds every store of one task."""
from __future__ import annotations

DELETED = object()     # write-cache marker for a deleted key


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

    def close(self) -> None:
        pass


class MemoryBackend(Backend):
    """Dicts in memory: the test driver's backend, and ``--state-backend memory``."""

    def __init__(self):
        self._data: dict[str, dict] = {}
        self._meta: dict = {}

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
            d.update(kv)
            dead = [k for k, v in kv.items() if v is DELETED]
            for k in dead:
                del d[k]
        self._meta.update(meta)
