"""``GlobalStore``: a global table's rows, all partitions, in one store shared by a worker's tasks.

Whoever feeds it (the worker's global-table reader, the test driver) hands it the topic's
records as ``RawBatch``es between batches of the tasks (:meth:`GlobalStore.apply`), so a batch
sees one consistent table. Rows are ``[timestamp, value]`` like a table's; a ``None`` value
deletes; records with a ``None`` key are dropped and counted. The offsets applied are written
with the rows (one backend write), so a reader restarting on a persistent backend resumes
after them. A record that does not deserialize stops the reader (global tables have no
skip policy: every task would see a different table otherwise).
"""
from __future__ import annotations

from ..errors import CodecError, SerdeError
from ..state import DELETED
from ..state.codec import check_value
from .io import RawBatch

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

    def rows(self, keys: list) -> list:
        return self.backend.get_many(self.name, keys)

    def offsets(self) -> dict:
        """``{partition: next offset to read}`` for what the backend already holds."""
        meta = self.backend.get_meta(META_GLOBAL_OFFSETS, None) or {}
        return {int(p): int(o) + 1 for p, o in meta.items()}

    def apply(self, raws: list[RawBatch]) -> int:
        """Apply records of the global topic (in order per partition); returns how many were applied."""
        src = self.spec.source
        changes: dict = {}
        offsets = {str(p): o - 1 for p, o in self.offsets().items()}
        n = 0
        for raw in raws:
            for i, (kb, vb, ts) in enumerate(zip(raw.keys, raw.values, raw.timestamps)):
                off = raw.offsets[i] if raw.offsets is not None else None
                try:
                    k = src.key_serde.deserialize(kb)
                    v = None if vb is None else src.value_serde.deserialize(vb)
                    if v is not None:
                        check_value(v)
                except SerdeError as e:       # CodecError included
                    if isinstance(e, CodecError):
                        raise CodecError(f"global table {self.name!r} cannot store the record of {raw.topic}"
                                         f"[{raw.partition}] at offset {off}: {e.reason}") from None
                    raise e.located(topic=raw.topic, partition=raw.partition, offset=off) from None
                if k is None:
                    key = ("none_key", f"global table {self.name}")
                    self.metrics[key] = self.metrics.get(key, 0) + 1
                else:
                    changes[k] = DELETED if v is None else [int(ts), v]
                if off is not None:
                    offsets[str(raw.partition)] = off
                n += 1
        if n:
            self.backend.write({self.name: changes}, {META_GLOBAL_OFFSETS: offsets})
        return n

    def snapshot(self, store_name: str | None = None) -> dict:
        return {k: row[1] for k, row in self.backend.items(self.name)}
