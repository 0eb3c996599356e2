"""Where a worker keeps state: the backend of each task it runs, and its global tables.

``state_backend="rocksdb"`` (the default) gives each stateful task a RocksDB instance under
``<state-dir>/<app-id>/<task-id>/`` and each worker one for its global tables
(``state/layout.py``); ``"memory"``, and every stateless sub-topology, a ``MemoryBackend``. A
directory another worker of this instance is still releasing is waited for
(:data:`TASK_LOCK_TIMEOUT_S`), then :class:`~.errors.TaskDirBusy` (the worker restarts).
"""
from __future__ import annotations

from ...errors import StateBusyError
from ...kafka.config import restore_consumer_config
from ...state import MemoryBackend
from ..changelog.globals import GlobalTables
from .errors import TaskDirBusy

#: Seconds a worker waits for a task directory another worker of this instance is releasing.
TASK_LOCK_TIMEOUT_S = 15.0


def task_backend(options, app_id: str, worker_id: str, st, partition: int):
    """``RocksDBBackend`` of task (st, partition) under the state dir (``state_backend="rocksdb"``),
    else a ``MemoryBackend``. Stateless sub-topologies get a MemoryBackend either way."""
    if options.state_backend == "memory" or not st.stores:
        return MemoryBackend()
    from ...state import layout
    from ...state.rocksdb import RocksDBBackend

    path = layout.task_dir(options.state_dir, app_id, layout.task_id(st.id, partition))
    try:
        return RocksDBBackend.for_task(path, st, lock_timeout=TASK_LOCK_TIMEOUT_S)
    except StateBusyError as e:                  # transient: a worker releasing it, a replay
        raise TaskDirBusy(f"worker {worker_id}: {e}") from None


def open_global_tables(options, app_id: str, worker_id: str, index: int, specs) -> GlobalTables:
    """Worker ``index``'s global tables ``specs`` (not restored yet)."""
    o = options
    if o.state_backend == "memory":
        backend = MemoryBackend()
    else:
        from ...state import layout
        from ...state.rocksdb import RocksDBBackend

        try:
            backend = RocksDBBackend(layout.global_dir(o.state_dir, app_id, index), specs,
                                     lock_timeout=TASK_LOCK_TIMEOUT_S)
        except StateBusyError as e:
            raise TaskDirBusy(f"worker {worker_id}: {e}") from None
    return GlobalTables(specs, backend, restore_consumer_config(o.bootstrap_servers, app_id, o.client("restore")),
                        stall_timeout_s=o.restore_stall_timeout_s)


def keep_when_revoked(backend) -> bool:
    """Memory backends of revoked tasks are kept (the state would be lost); anything on disk is
    closed so another worker may lock its task directory (reopening costs a few ms)."""
    return isinstance(backend, MemoryBackend)
