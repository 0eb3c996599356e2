"""Changelog record format, shared by the checkpoint (writer) and the restore loop (reader).

A changelog topic ``<app-id>-<store>-changelog`` holds, per task partition:

* one record per store key and checkpoint: key = ``keys.encode_key(store_kind, store_key)``
  (the canonical, order-preserving RocksDB key encoding: equal keys give equal bytes, so
  compaction keeps exactly the latest value of a key, and a RocksDB restore copies key and
  value bytes as they are), value = ``_codec.encode(store_value)``, or no value (a
  tombstone) for a deleted key;
* the task's stream time, under the reserved raw key :data:`STREAM_TIME_KEY`, value =
  ``_codec.encode(stream_time)``. Encoded store keys start with a type tag in
  ``0x01..0x7F``, so no store key can collide with a key starting with ``0x00``.
  Compaction keeps the latest stream time of each partition.
"""
from __future__ import annotations

from .. import _codec
from ..state.keys import decode_key, encode_key

STREAM_TIME_KEY = b"\x00streamproc.stream_time"

#: Backend metadata names (TaskState writes ``stream_time``; the runtime writes both).
META_CHANGELOG_OFFSETS = "changelog_offsets"     # {store name: offset of the last changelog record applied}
META_STREAM_TIME = "stream_time"

encode = _codec.encode
decode = _codec.decode
key_bytes = encode_key          # (store kind, store key) -> changelog key bytes
key_of = decode_key             # (store kind, changelog key bytes) -> store key


def changelog_offsets(backend) -> dict:
    """``{store: last applied changelog offset}`` recorded in ``backend`` (empty for a fresh one)."""
    return dict(backend.get_meta(META_CHANGELOG_OFFSETS, None) or {})
