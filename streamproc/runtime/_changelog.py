"""Changelog record format, shared by the checkpoint (writer) and the restore loop (reader).

A changelog topic ``<app-id>-<store>-changelog`` holds, per task partition:

* one record per store key and checkpoint: key = ``_codec.encode(store_key)``,
  value = ``_codec.encode(store_value)``, or no value (a tombstone) for a deleted key;
* the task's stream time, under the reserved raw key :data:`STREAM_TIME_KEY`, value =
  ``_codec.encode(stream_time)``. Pickle output always starts with ``0x80`` (the PROTO
  opcode), so no encoded store key can collide with a key starting with ``0x00``.
  Compaction keeps the latest stream time of each partition.
"""
from __future__ import annotations

from .. import _codec

STREAM_TIME_KEY = b"\x00streamproc.stream_time"

#: Backend metadata names (TaskState writes ``stream_time``; the runtime writes both).
META_CHANGELOG_OFFSETS = "changelog_offsets"     # {store name: offset of the last changelog record applied}
META_STREAM_TIME = "stream_time"

encode = _codec.encode
decode = _codec.decode


def changelog_offsets(backend) -> dict:
    """``{store: last applied changelog offset}`` recorded in ``backend`` (empty for a fresh one)."""
    return dict(backend.get_meta(META_CHANGELOG_OFFSETS, None) or {})
