"""What a ``consume()`` returned, as the columns and batches tasks take.

:func:`columns` groups a fetch per ``(topic, partition)`` into columns (keys, values, timestamps,
offsets, and for repartition topics headers), in offset order, and separates the error events
(end-of-partition events say an input is caught up); :func:`split_watermarks` takes a repartition
partition's watermark records out of its columns and makes the rest a ``RawBatch``.
"""
from __future__ import annotations

from confluent_kafka import KafkaError

from ...operators import RawBatch
from ...operators.io import carried_times
from ..engine.watermarks import WATERMARK_KEY

_EOF = KafkaError._PARTITION_EOF


def columns(msgs, internal, on_error) -> tuple[dict, list]:
    """``({(topic, partition): (keys, values, timestamps, offsets[, headers])}, [(topic, partition) at its end])``
    of the messages of one consume(), ``headers`` for the ``internal`` (repartition) topics.

    Column by column with comprehensions (one C-level loop per field); messages are only
    regrouped when a batch spans several partitions. ``on_error(message)`` is called with every error
    event (an end-of-partition event included)."""
    ends: list = []
    if any(m.error() is not None for m in msgs):
        for m in msgs:
            if m.error() is not None:
                if m.error().code() == _EOF:
                    ends.append((m.topic(), m.partition()))
                on_error(m)
        msgs = [m for m in msgs if m.error() is None]
        if not msgs:
            return {}, ends
    by_tp = _by_partition(msgs)
    return ({tp: ([m.key() for m in g], [m.value() for m in g], [m.timestamp()[1] for m in g],
                  [m.offset() for m in g]) + ((_headers(g),) if tp[0] in internal else ())
             for tp, g in by_tp.items()}, ends)


def _by_partition(msgs) -> dict:
    """``{(topic, partition): [message]}`` in fetch order."""
    topics = [m.topic() for m in msgs]
    parts = [m.partition() for m in msgs]
    t0, p0 = topics[0], parts[0]
    if topics.count(t0) == len(topics) and parts.count(p0) == len(parts):
        return {(t0, p0): msgs}
    by_tp: dict = {}
    for tp, m in zip(zip(topics, parts), msgs):
        g = by_tp.get(tp)
        if g is None:
            by_tp[tp] = [m]
        else:
            g.append(m)
    return by_tp


def _headers(msgs) -> list:
    return [m.headers() for m in msgs]


def split_watermarks(tp, cols) -> tuple:
    """``(RawBatch or None, watermark values)`` of one fetched partition's columns: a repartition topic's
    watermark records (``engine/watermarks.py``) are taken out, its records' carried stream times read."""
    keys, values, tss, offs = cols[:4]
    wms: list = []
    if len(cols) > 4:
        headers = cols[4]
        if WATERMARK_KEY in keys:
            keep = [i for i, k in enumerate(keys) if k != WATERMARK_KEY]
            wms = [values[i] for i, k in enumerate(keys) if k == WATERMARK_KEY]
            keys, values = [keys[i] for i in keep], [values[i] for i in keep]
            tss, offs, headers = [tss[i] for i in keep], [offs[i] for i in keep], [headers[i] for i in keep]
        if not keys:
            return None, wms
        return RawBatch(tp[0], tp[1], keys, values, tss, offs, carried_times(headers)), wms
    return RawBatch(tp[0], tp[1], keys, values, tss, offs), wms


def positions(raws) -> str:
    """Where the batches ``raws`` are, for an error message."""
    return ", ".join(f"{r.topic}[{r.partition}] offsets {r.offsets[0]}..{r.offsets[-1]}" for r in raws)
