"""Changelog record format, shared by the checkpoint (writer), the restore loop and the start-up
definition check (readers).

A changelog topic ``<app-id>-<store>-changelog`` holds, per task partition:

* one record per store key and checkpoint: key = ``codec.encode_store_key(kind, store_key)``
  (canonical and order-preserving: equal keys give equal bytes, so compaction keeps exactly
  the latest value of a key, and a RocksDB restore copies key and value bytes as they are),
  value = ``codec.encode_value(store_value)``, or no value (a tombstone) for a deleted key;
* the partition's metadata record under the reserved key :data:`META_KEY` (encoded store keys
  never start with ``0x00``): ``codec.encode_value({"format", "store", "fingerprint",
  "definition", "stream_time"})``. Every checkpoint that writes to the partition ends with it,
  so it is the newest record of the partition (compaction keeps the latest, and a windowed
  changelog's time retention never deletes it before the data it describes). A restore checks
  its fingerprint against the running definition - whatever the backend, on whatever host - and
  takes the task's stream time from it.

Bytes of a changelog are untrusted: a record that does not decode is a :class:`StateError`
naming the topic, partition and offset; nothing in it can run code.
"""
from __future__ import annotations

from ...errors import CodecError, StateError
from ...state.codec import decode_store_key, decode_value, encode_value
from ...state.definition import check_definition

META_KEY = b"\x00streamproc.meta"
META_FORMAT = 1

#: Backend metadata names (TaskState writes ``stream_time``; the runtime writes both).
META_CHANGELOG_OFFSETS = "changelog_offsets"     # {store name: offset of the last changelog record applied}
META_STREAM_TIME = "stream_time"


def changelog_offsets(backend) -> dict:
    """``{store: last applied changelog offset}`` recorded in ``backend`` (empty for a fresh one)."""
    return dict(backend.get_meta(META_CHANGELOG_OFFSETS, None) or {})


def meta_value(spec, stream_time: int, watermarks: dict | None = None) -> bytes:
    """The metadata record's value for store ``spec`` (a ``StoreSpec``) at ``stream_time``; ``watermarks``: the
    task's upstream watermarks (``runtime/engine/watermarks.py``), so a task restored on another host has them too."""
    meta = {"format": META_FORMAT, "store": spec.name, "fingerprint": spec.fingerprint,
            "definition": spec.description, "stream_time": int(stream_time)}
    if watermarks:
        meta["watermarks"] = watermarks
    return encode_value(meta)


def merge_watermarks(into: dict, found) -> dict:
    """``into`` (``{input topic: {"marks": [[sub, partition, time, idle]], "time": t}}``) with the watermarks of a
    metadata record merged in: per upstream task the larger time (its latest idle flag), per input the larger
    time. Untrusted bytes: entries of another shape are ignored, never fatal."""
    if not isinstance(found, dict):
        return into
    for topic, clock in found.items():
        if not isinstance(topic, str) or not isinstance(clock, dict):
            continue
        marks = clock.get("marks")
        t = clock.get("time")
        if type(t) is not int or not isinstance(marks, list):
            continue
        mine = into.setdefault(topic, {"marks": [], "time": -1})
        by = {(m[0], m[1]): list(m) for m in mine["marks"]}
        for m in marks:
            if (isinstance(m, list) and len(m) == 4 and all(type(x) is int for x in m[:3])
                    and type(m[3]) is bool):
                old = by.get((m[0], m[1]))
                if old is None or m[2] >= old[2]:
                    by[(m[0], m[1])] = list(m)
        mine["marks"] = [by[k] for k in sorted(by)]
        mine["time"] = max(mine["time"], t)
    return into


def _where(topic: str, partition: int, offset: int | None) -> str:
    return f"changelog {topic}[{partition}]" + (f" at offset {offset}" if offset is not None else "")


def read_meta(value: bytes | None, topic: str, partition: int, offset: int | None) -> dict:
    """The decoded metadata record, or a ``StateError`` naming where it is."""
    try:
        meta = decode_value(value) if value is not None else None
    except CodecError as e:
        raise StateError(f"{_where(topic, partition, offset)}: the metadata record cannot be read: "
                         f"{e.reason}") from None
    if (not isinstance(meta, dict) or meta.get("format") != META_FORMAT
            or not isinstance(meta.get("fingerprint"), str) or not isinstance(meta.get("stream_time"), int)):
        raise StateError(f"{_where(topic, partition, offset)}: the metadata record is not one this streamproc "
                         f"writes (format {meta.get('format') if isinstance(meta, dict) else '?'}); "
                         f"it was written by another version or by something else")
    return meta


def check_meta(meta: dict, spec, topic: str, partition: int) -> None:
    """Refuse a changelog partition whose metadata names another definition of the store."""
    check_definition(spec.name, f"changelog {topic}[{partition}]", meta.get("fingerprint"),
                     meta.get("definition") if isinstance(meta.get("definition"), str) else None, spec)


def decode_record(kind: str, key: bytes, value: bytes | None, topic: str, partition: int, offset: int):
    """``(store key, store value or None)`` of a data record; a ``StateError`` if it does not decode."""
    try:
        return decode_store_key(kind, key), (None if value is None else decode_value(value))
    except CodecError as e:
        raise StateError(f"{_where(topic, partition, offset)}: a record cannot be read: {e.reason}. "
                         f"Changelogs are written only by streamproc; if it came from an older version "
                         f"or another writer, run `streamproc reset <topology>` to start over") from None
