"""Interactive queries: read a store's committed state on this instance, and say which task owns a key.

Read path. A worker applies a checkpoint's changes to its RocksDB only after the checkpoint
committed (``checkpoint.py``), so what its database holds is committed state. The HTTP server
(in the supervisor, ``http.py``) never touches a worker's write path: it opens each local task
database as a RocksDB *secondary* instance (``RocksDBBackend(secondary=...)``). Catching up
with the worker costs about 1.5 ms of CPU whatever changed, so it is kept off the request
path: a background thread catches up every :data:`CATCH_UP_S` the views queried in the last
:data:`KEEP_FRESH_S`, and only when the worker's write-ahead log or manifest changed since.
A read therefore sees the committed state of at most ``CATCH_UP_S`` (0.5 s) ago. With
``--state-backend memory`` there is nothing on disk to follow: stores answer 503 and say so.

Routing. A key lives in the task whose input partition it was placed in: every input of a
store's sub-topology places a key alike, by the rule of ``plan.placement`` (a source topic's key
serde and declared partitioner; a repartition topic's, that of the source topic it meets, or
murmur2 of the internal codec). :meth:`Stores.task_of` gives that task; the instance directory (``directory.py``) gives the instance running it.

Keys in URLs: a string key as it is; any other key as JSON (``/stores/counts/42`` finds the
string ``"42"`` first, then the int ``42``). Values are shown as the operators emit them, by the
one presentation of store entries (``present.py``). A windowed store's key shows its windows by
start, open ones and the closed ones kept for the store's retention
(``aggregate(..., retention=)``), the latter marked ``"closed": true``.
"""
from __future__ import annotations

import heapq
import logging
import os
import threading
import time

import orjson

from ...errors import SerdeError, StreamprocError
from ...kinds import StoreKind
from ...state import codec, layout
from ...operators.present import WINDOWED, presenter, to_json_key

log = logging.getLogger("streamproc.queries")

#: Seconds between two catch-ups of a secondary instance with its worker's database.
CATCH_UP_S = 0.5
#: A view not queried for this long is not caught up any more (until it is queried again).
KEEP_FRESH_S = 30.0


class QueryError(StreamprocError):
    """A query that cannot be answered: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def key_candidates(text: str) -> list:
    """The keys a URL segment may mean: the string itself, then its JSON reading if that differs."""
    out = [text]
    try:
        v = orjson.loads(text)
    except orjson.JSONDecodeError:
        return out
    if isinstance(v, list):
        v = tuple(v)
    if v != text and _hashable(v):
        out.append(v)
    return out


def _hashable(v) -> bool:
    try:
        hash(v)
        return True
    except TypeError:
        return False


class Stores:
    """The stores of ``plan`` as this instance can read them (see the module doc)."""

    def __init__(self, plan, state_dir: str, counts: dict, *, state_backend: str = "rocksdb"):
        self.plan = plan
        self.state_dir = state_dir
        self.counts = counts
        self.memory = state_backend == "memory"
        self._specs = {s.name: s for s in plan.stores}
        self._st_of = {s.name: st for st in plan.subtopologies for s in st.stores}
        self._views: dict = {}              # (sub-topology id, partition) -> _View
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._refresher = threading.Thread(target=self._refresh, name="streamproc-query-views", daemon=True)
        self._refresher.start()

    def _refresh(self) -> None:
        """Keep the recently queried views caught up with their workers (see the module doc)."""
        while not self._stop.wait(CATCH_UP_S):
            now = time.monotonic()
            with self._lock:
                views = [v for v in self._views.values() if now - v.used < KEEP_FRESH_S]
            for v in views:
                try:
                    v.catch_up()
                except Exception as e:  # noqa: BLE001 - a view that cannot catch up answers what it has
                    log.debug("query view catch-up: %s", e)

    # ------------------------------------------------------------------ catalogue
    def names(self) -> list[dict]:
        out = []
        for s in self.plan.stores:
            st = self._st_of[s.name]
            out.append({"name": s.name, "kind": s.kind, "windowed": s.kind in WINDOWED,
                        "window": s.window.describe() if s.window is not None else None,
                        "partitions": self.counts.get(("task", st.id)), "changelog": s.changelog})
        return out

    def spec(self, store: str):
        spec = self._specs.get(store)
        if spec is None:
            raise QueryError(404, f"no store named {store!r} (stores: {', '.join(self._specs) or 'none'})")
        return spec

    # ------------------------------------------------------------------ routing
    def task_of(self, store: str, key) -> tuple:
        """``(sub-topology id, partition)`` of the task that holds ``key`` of ``store``."""
        st = self._st_of[self.spec(store).name]
        n = self.counts.get(("task", st.id))
        if not n:
            raise QueryError(503, f"the partition count of store {store!r} is not known yet")
        try:
            partition = self.plan.placement(st.input_topics[0]).partition_of(key, n)
        except SerdeError:      # not a key this store can hold (its input's serde refuses it)
            raise QueryError(404, f"{to_json_key(key)!r} cannot be a key of store {store!r}") from None
        if partition is None:
            raise QueryError(404, f"store {store!r} holds no None key")
        return st.id, partition

    # ------------------------------------------------------------------ reads
    def _view(self, task: tuple) -> "_View":
        if self.memory:
            raise QueryError(503, "this instance runs with --state-backend memory: its stores live in the "
                                  "workers' memory and cannot be queried; use the rocksdb backend")
        with self._lock:
            v = self._views.get(task)
            if v is None:
                st = next(s for s in self.plan.subtopologies if s.id == task[0])
                v = self._views[task] = _View(self.plan, st, task[1], self.state_dir)
            return v

    def get(self, store: str, key) -> object:
        """The presented value of ``key`` (windowed stores: the list of its windows); ``QueryError(404)``."""
        spec = self.spec(store)
        view = self._view(self.task_of(store, key))
        found = view.get(spec, key)
        if found is _NOTHING:
            raise QueryError(404, f"key {to_json_key(key)!r} is not in store {store!r}")
        return found

    def range(self, store: str, tasks, lo=None, hi=None, after: bytes | None = None, limit: int = 100) -> list:
        """Entries of ``store`` in ``tasks`` (local tasks) in key order: ``[(sort_bytes, item)]`` with
        ``lo <= key <= hi`` (keys; None: unbounded) and ``sort_bytes > after``."""
        spec = self.spec(store)
        st = self._st_of[store]
        streams = [self._view(t).iter_range(spec, lo, hi, after) for t in sorted(tasks) if t[0] == st.id]
        out = []
        for entry in heapq.merge(*streams, key=lambda e: e[0]):
            out.append(entry)
            if len(out) >= limit:
                break
        return out

    def close(self) -> None:
        self._stop.set()
        self._refresher.join(2)
        with self._lock:
            for v in self._views.values():
                v.close()
            self._views.clear()


_NOTHING = object()


class _View:
    """One local task's database, followed as a RocksDB secondary instance."""

    def __init__(self, plan, st, partition: int, state_dir: str):
        from ...state.rocksdb import DB_DIR, RocksDBBackend

        self.st = st
        task = layout.task_id(st.id, partition)
        path = layout.task_dir(state_dir, plan.app_id, task)
        if not os.path.exists(os.path.join(path, DB_DIR, "CURRENT")):
            raise QueryError(503, f"task {task} has no local state yet (restoring?)")
        secondary = layout.query_dir(state_dir, plan.app_id, task, os.getpid())
        self.backend = RocksDBBackend(path, list(st.stores), secondary=secondary)
        self._db_dir = os.path.join(path, DB_DIR)
        self._seen = self._signature()
        self.used = time.monotonic()
        self._lock = threading.Lock()
        self._present = {s.name: presenter(st, s) for s in st.stores}

    def _signature(self) -> tuple:
        """Sizes and times of the worker's write-ahead logs and manifest: unchanged means nothing to catch up."""
        sig = []
        with os.scandir(self._db_dir) as it:
            for e in it:
                if e.name.endswith(".log") or e.name.startswith("MANIFEST") or e.name == "CURRENT":
                    st = e.stat()
                    sig.append((e.name, st.st_size, st.st_mtime_ns))
        return tuple(sorted(sig))

    def catch_up(self) -> None:
        sig = self._signature()
        if sig != self._seen:
            with self._lock:
                self.backend.catch_up()
            self._seen = sig

    def _fresh(self) -> None:
        self.used = time.monotonic()

    def get(self, spec, key):
        with self._lock:
            self._fresh()
            present = self._present[spec.name]
            if spec.kind == StoreKind.WINDOW:          # one stored value per window: the key's windows
                wins = self.backend.windows(spec.name, key)
                return [present(k, v) for k, v in wins] if wins else _NOTHING
            value = self.backend.get(spec.name, key)
            if value is None:
                return _NOTHING
            return present(key, value)

    def iter_range(self, spec, lo, hi, after):
        """``(sort bytes, item)`` of the entries with ``lo <= group key <= hi``, after ``after``."""
        with self._lock:
            self._fresh()
            present = self._present[spec.name]
            windowed = spec.kind == StoreKind.WINDOW
            lower = (codec.key_prefix(lo) if windowed else codec.encode_key(lo)) if lo is not None else None
            if after is not None and (lower is None or after >= lower):
                lower = after + b"\x00"
            upper = None
            if hi is not None:
                upper = codec.prefix_end(codec.key_prefix(hi)) if windowed else codec.encode_key(hi) + b"\x00"
            items = list(self.backend.iter_raw_items(spec.name, lower, upper))
        for kb, k, v in items:
            gk = k[0] if windowed else k
            item = {"key": to_json_key(gk), "value": present(k, v)}
            yield kb, item

    def close(self) -> None:
        self.backend.close()
