"""Storage behind the write cache. One backend instance holds every store of one task."""
from __future__ import annotations


class Backend:
    """What a task's storage must do. RocksDB and memory implement it."""

    def get(self, store: str, key):
        raise NotImplementedError

    def items(self, store: str):
        """Every (key, value) of ``store``."""
        raise NotImplementedError

    def get_meta(self, name: str, default=None):
        raise NotImplementedError

    def write(self, puts: dict[str, dict], deletes: dict[str, set], meta: dict) -> None:
        """Apply all stores' changes and the metadata atomically (one write batch)."""
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

    def items(self, store):
        return list(self._data.get(store, {}).items())

    def get_meta(self, name, default=None):
        return self._meta.get(name, default)

    def write(self, puts, deletes, meta):
        for store, kv in puts.items():
            self._data.setdefault(store, {}).update(kv)
        for store, keys in deletes.items():
            d = self._data.get(store)
            if d:
                for k in keys:
                    d.pop(k, None)
        self._meta.update(meta)
