"""A topic record as a table row: the one conversion for every table read from a topic.

A table read from a topic (``Topology.table``, ``Topology.global_table``) holds, per key, the row
``[timestamp, value]`` of the key's latest record, its key and value deserialized with the
table's serdes (``TableSource``). A record whose value is None (a tombstone) deletes its key. A
record whose key is None is no row: the table operator and a global table count it as dropped,
a restore and a change feed pass over it (it was counted when it was processed). A value the
internal codec cannot store is an error of its record, like one that does not deserialize.

Who converts, and with which failure policy for a record that cannot be read:

* the table operator (``operators/table.py``): its source decodes the records first (with the
  table's ``on_error``, DESIGN section 7, in ``operators/io.py``); it makes rows with
  :func:`row_of`, and a value the store cannot hold stops it;
* global tables (``operators/global_table.py``): :func:`read_rows`; their source has no
  ``on_error``, so always ``"fail"`` (every task would see a different table otherwise);
* the restore of a table from its topic (``runtime/changelog/restore.py``): :func:`read_rows`
  with the table's ``on_error``: ``"fail"`` stops the restore, ``"skip"`` and ``"dead-letter"``
  pass over the record (it was skipped or dead-lettered when it was processed);
* a table's change feed (``runtime/serve/changes.py``): :func:`read_row`; a feed only shows
  changes, so it passes over (and logs) any record it cannot read.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import SerdeError
from ..kinds import StoreKind
from .codec import check_value, encode_store_key, encode_value


def row_of(value, timestamp) -> list | None:
    """The row ``[timestamp, value]`` of a record's value, None for a tombstone (its key is deleted).
    ``CodecError`` if the store cannot hold ``value``."""
    if value is None:
        return None
    check_value(value)
    return [int(timestamp), value]


def read_row(source, key_bytes: bytes | None, value_bytes: bytes | None, timestamp) -> tuple:
    """``(key, row or None)`` of one record of ``source``'s topic (``TableSource``): its key and value
    deserialized with the table's serdes. ``SerdeError`` if it cannot be read (``CodecError``: the
    store cannot hold its value). A None key is returned as is, with no row: it is no row."""
    key = source.key_serde.deserialize(key_bytes)
    value = None if value_bytes is None else source.value_serde.deserialize(value_bytes)
    return key, (None if key is None else row_of(value, timestamp))


@dataclass
class Rows:
    """The rows of a run of records (:func:`read_rows`), in record order."""

    keys: list = field(default_factory=list)
    rows: list = field(default_factory=list)          # [timestamp, value], or None: delete the key
    timestamps: list = field(default_factory=list)
    offsets: list = field(default_factory=list)
    encoded: list = field(default_factory=list)       # (key bytes, row bytes or None), if asked for
    none_keys: int = 0                                # records with a None key (no row)


def read_rows(source, keys: list, values: list, timestamps: list, offsets: list, *, fail, skipped=None,
              encode: bool = False) -> Rows:
    """The rows of records of ``source``'s topic (bytes as Kafka hands them over), in order.

    A record that cannot be read (``SerdeError``; ``CodecError``: the store cannot hold it) follows
    ``source.on_error``: under ``"fail"``, ``fail(offset, error)`` gives the exception raised;
    otherwise the record is passed over, and ``skipped(offset, error)`` (if given) told.
    ``encode``: also give each row's store bytes (key in the table store's encoding, value in the
    internal codec), which are then its check."""
    out = Rows()
    for kb, vb, ts, off in zip(keys, values, timestamps, offsets):
        try:
            if encode:
                key, row = _read_encoded(source, kb, vb, ts, out.encoded)
            else:
                key, row = read_row(source, kb, vb, ts)
        except SerdeError as e:                  # CodecError included: a value the store cannot hold
            if source.on_error == "fail":
                raise fail(off, e) from None
            if skipped is not None:
                skipped(off, e)
            continue
        if key is None:
            out.none_keys += 1
            continue
        out.keys.append(key)
        out.rows.append(row)
        out.timestamps.append(ts)
        out.offsets.append(off)
    return out


def _read_encoded(source, kb, vb, ts, encoded: list) -> tuple:
    """:func:`read_row`, encoding the row for the store instead of checking it (one encoding, not two)."""
    key = source.key_serde.deserialize(kb)
    value = None if vb is None else source.value_serde.deserialize(vb)
    if key is None:
        return None, None
    row = None if value is None else [int(ts), value]
    encoded.append((encode_store_key(StoreKind.TABLE, key), encode_value(row)))
    return key, row
