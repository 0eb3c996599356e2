"""``GlobalStore``: a global table's rows, all partitions, in one store shared by a worker's tasks.

Whoever feeds it (the worker's global-table reader, the test driver) hands it the topic's
records as ``RawBatch``es between batches of the tasks (:meth:`GlobalStore.apply`), so a batch
sees one consistent table. Records become rows as a table's do (``state.table_rows``):
``[timestamp, value]``; a ``None`` value deletes; records with a ``None`` key are dropped and
counted. The offsets applied are written with the rows (one backend write), so a reader
restarting on a persistent backend resumes after them. A record that does not deserialize stops
the reader (global tables have no skip policy: every task would see a different table otherwise).
"""
from __future__ import annotations

from itertools import repeat

from ..errors import CodecError, SerdeError
from ..state import DELETED, MemoryBackend
from ..state.table_rows import read_rows
from .io import RawBatch
from .table import READ_CACHE_ROWS

_MISSING = object()

#: Backend metadata: ``{partition: offset of the last record applied}`` of the global topic.
META_GLOBAL_OFFSETS = "global_offsets"


class GlobalStore:
    """The rows of one global table (``spec``: its ``StoreSpec``, kind ``table``) in ``backend``."""

    def __init__(self, spec, backend):
        self.spec = spec
        self.name = spec.name
        self.topic = spec.source.topic
        self.backend = backend
        self.metrics: dict = {}          # (reason, operator) -> dropped records (None keys)
        # rows read kept decoded (key -> row, None: no row), up to READ_CACHE_ROWS; every write goes
        # through ``apply``, which puts the new rows in. Not kept on a backend that hands out its own
        # objects (memory). Rows are shared between lookups, as the memory backend's are.
        self._reads: dict | None = None if isinstance(backend, MemoryBackend) else {}

    def rows(self, keys: list) -> list:
        reads = self._reads
        if reads is None:
            return self.backend.get_many(self.name, keys)
        out = list(map(reads.get, keys, repeat(_MISSING)))
        miss = [i for i, r in enumerate(out) if r is _MISSING]
        if miss:
            miss_keys = [keys[i] for i in miss]
            found = self.backend.get_many(self.name, miss_keys)
            for i, r in zip(miss, found):
                out[i] = r
            self._remember(miss_keys, found)
        return out

    def _remember(self, keys: list, rows: list) -> None:
        reads = self._reads
        if len(reads) + len(keys) > READ_CACHE_ROWS:
            reads.clear()
            if len(keys) > READ_CACHE_ROWS:
                return
        reads.update(zip(keys, rows))

    def offsets(self) -> dict:
        """``{partition: next offset to read}`` for what the backend already holds."""
        meta = self.backend.get_meta(META_GLOBAL_OFFSETS, None) or {}
        return {int(p): int(o) + 1 for p, o in meta.items()}

    def apply(self, raws: list[RawBatch]) -> int:
        """Apply records of the global topic (in order per partition); returns how many were applied."""
        changes: dict = {}
        offsets = {str(p): o - 1 for p, o in self.offsets().items()}
        n = 0
        for raw in raws:
            rows = read_rows(self.spec.source, raw.keys, raw.values, raw.timestamps,
                             raw.offsets if raw.offsets is not None else [None] * len(raw.keys),
                             fail=lambda off, e, raw=raw: self._unreadable(raw, off, e))
            for k, row in zip(rows.keys, rows.rows):
                changes[k] = DELETED if row is None else row
            if rows.none_keys:
                key = ("none_key", f"global table {self.name}")
                self.metrics[key] = self.metrics.get(key, 0) + rows.none_keys
            if raw.offsets:
                offsets[str(raw.partition)] = raw.offsets[-1]
            n += len(raw.keys)
        if n:
            self.backend.write({self.name: changes}, {META_GLOBAL_OFFSETS: offsets})
            if self._reads is not None:
                self._remember(list(changes), [None if r is DELETED else r for r in changes.values()])
        return n

    def _unreadable(self, raw: RawBatch, offset, e: SerdeError) -> SerdeError:
        """The error that stops the table at a record it cannot read (global tables always fail)."""
        if isinstance(e, CodecError):
            return CodecError(f"global table {self.name!r} cannot store the record of {raw.topic}"
                              f"[{raw.partition}] at offset {offset}: {e.reason}")
        return e.located(topic=raw.topic, partition=raw.partition, offset=offset)

    def snapshot(self, store_name: str | None = None) -> dict:
        return {k: row[1] for k, row in self.backend.items(self.name)}
