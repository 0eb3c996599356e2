"""State of one task: stores with a per-checkpoint write cache, and task metadata.

Operators see ``Store`` (get / put / delete / items; ``put_deferred`` for a value kept in the
operator's own working form and encoded only when read or checkpointed, see ``Deferred``;
``declare_index`` / ``index_range`` / ``index_max`` for the backend's time index of windowed
stores, see ``state.backend``). Writes land in the store's write cache; nothing reaches the
backend until the task's checkpoint applies them, all stores at once, together with the
metadata (stream time, changelog offsets) they reflect. So a
checkpoint yields at most one changelog record per key, and a backend never holds state
that a committed changelog does not.

The checkpoint itself is two calls, made by whoever drives the task (test driver or
Kafka runtime): ``changes()`` -> records to write to the changelogs, then, once those are
durable, ``apply(changelog_offsets)``.

Backends: ``MemoryBackend`` (dicts) and ``RocksDBBackend`` (one RocksDB database per task
directory, ``streamproc.state.rocksdb``; keys and values in the internal codec ``streamproc.state.codec``;
``TaskDirLock`` keeps two processes out of one task directory).
"""
from __future__ import annotations

from .backend import Backend, MemoryBackend
from .lock import TaskDirLock
from .store import DELETED, Deferred, Store, TaskState

__all__ = ["Backend", "MemoryBackend", "RocksDBBackend", "Store", "TaskState", "TaskDirLock", "DELETED",
           "Deferred"]


def __getattr__(name):
    # rocksdict is imported only when RocksDB is used: the memory backend and the test driver do without it
    if name == "RocksDBBackend":
        from .rocksdb import RocksDBBackend
        return RocksDBBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
