"""What a ``consume()`` returned, as the columns and batches tasks take.

:func:`columns` groups a fetch per ``(topic, partition)`` into columns (keys, values, timestamps,
offsets, and for repartition topics headers), in offset order, and separates the error events
(end-of-partition events say an input is caught up); :func:`split_watermarks` takes a repartition
partition's watermark records out of its columns and makes the rest a ``RawBatch``.
"""
from __future__ import annotations

from itertools import repeat
from operator import is_, itemgetter

from confluent_kafka import KafkaError, Message

from ...operators import RawBatch
from ...operators.io import carried_times
from ..engine.watermarks import WATERMARK_KEY

_EOF = KafkaError._PARTITION_EOF


def columns(msgs, internal, on_error, only_topic: str | None = None) -> tuple[dict, list]:
    """``({(topic, partition): (keys, values, timestamps, messages[, headers])}, [(topic, partition) at its
    end])`` of the messages of one consume(), ``headers`` for the ``internal`` (repartition) topics;
    ``only_topic``: the one topic subscribed, if there is only one.

    Column by column with comprehensions (one C-level loop per field); messages are only
    regrouped when a batch spans several partitions. The messages themselves stand for their offsets
    (read when needed: ``RawBatch.offsets``). ``on_error(message)`` is called with every error
    event (an end-of-partition event included)."""
    ends: list = []
    if not all(map(is_, _call_each(msgs, "error"), repeat(None))):     # by identity: KafkaError == None raises
        for m in msgs:
            if m.error() is not None:
                if m.error().code() == _EOF:
                    ends.append((m.topic(), m.partition()))
                on_error(m)
        msgs = [m for m in msgs if m.error() is None]
        if not msgs:
            return {}, ends
    by_tp = _by_partition(msgs, only_topic)
    return ({tp: ([m.key() for m in g], [m.value() for m in g], _timestamps(g),
                  g) + ((_headers(g),) if tp[0] in internal else ())
             for tp, g in by_tp.items()}, ends)


def _call_each(msgs, method):
    """``[m.<method>() for m in msgs]``; the unbound C method is mapped over librdkafka's messages."""
    if type(msgs[0]) is Message:
        return list(map(getattr(Message, method), msgs))
    return [getattr(m, method)() for m in msgs]


def _timestamps(msgs) -> list:
    if type(msgs[0]) is Message:
        return list(map(_second, map(_TIMESTAMP, msgs)))
    return [m.timestamp()[1] for m in msgs]


_TIMESTAMP = Message.timestamp          # (timestamp type, timestamp)
_second = itemgetter(1)


def _by_partition(msgs, only_topic: str | None = None) -> dict:
    """``{(topic, partition): [message]}`` in fetch order (``only_topic``: every message is of that topic)."""
    parts = _call_each(msgs, "partition")
    p0 = parts[0]
    if only_topic is not None:
        if parts.count(p0) == len(parts):
            return {(only_topic, p0): msgs}
        topics: list = [only_topic] * len(msgs)
    else:
        topics = [m.topic() for m in msgs]
        if topics.count(topics[0]) == len(topics) and parts.count(p0) == len(parts):
            return {(topics[0], p0): msgs}
    by_tp: dict = {}
    for tp, m in zip(zip(topics, parts), msgs):
        g = by_tp.get(tp)
        if g is None:
            by_tp[tp] = [m]
        else:
            g.append(m)
    return by_tp


def _headers(msgs) -> list:
    return _call_each(msgs, "headers")


def split_watermarks(tp, cols) -> tuple:
    """``(RawBatch or None, watermark values)`` of one fetched partition's columns: a repartition topic's
    watermark records (``engine/watermarks.py``) are taken out, its records' carried stream times read."""
    keys, values, tss, msgs = cols[:4]
    wms: list = []
    if len(cols) > 4:
        headers = cols[4]
        if WATERMARK_KEY in keys:
            keep = [i for i, k in enumerate(keys) if k != WATERMARK_KEY]
            wms = [values[i] for i, k in enumerate(keys) if k == WATERMARK_KEY]
            keys, values = [keys[i] for i in keep], [values[i] for i in keep]
            tss, msgs, headers = [tss[i] for i in keep], [msgs[i] for i in keep], [headers[i] for i in keep]
        if not keys:
            return None, wms
        return RawBatch(tp[0], tp[1], keys, values, tss, None, carried_times(headers), msgs), wms
    return RawBatch(tp[0], tp[1], keys, values, tss, None, None, msgs), wms


def next_offset(cols) -> int:
    """The offset after the last message of one fetched partition's columns."""
    return cols[3][-1].offset() + 1


def positions(raws) -> str:
    """Where the batches ``raws`` are, for an error message."""
    return ", ".join(f"{r.topic}[{r.partition}] offsets {r.offsets[0]}..{r.offsets[-1]}" for r in raws)
