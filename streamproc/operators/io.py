"""Where records enter a task (deserialize, event time, stream time) and leave it (serialize)."""
from __future__ import annotations

import logging
import struct
from itertools import compress, repeat
from operator import is_not

import numpy as np

from ..errors import CodecError, SerdeError
from ..kinds import NodeKind
from ..state import codec
from .base import DeadLetter, Operator
from .batch import Batch

log = logging.getLogger("streamproc.source")

#: Header of a repartition record whose upstream stream time was ahead of its timestamp (where it can matter
#: downstream, ``_carried_headers``): that time (8 bytes, big-endian signed). See ``runtime/engine/watermarks.py``.
STREAM_TIME_HEADER = "streamproc.st"
_TIME = struct.Struct(">q")


def carried_times(headers_list: list) -> list | None:
    """Per record, the upstream stream time a repartition record carries (None: its own timestamp)."""
    if not any(headers_list):               # the usual in-order batch: one C-level pass, no per-record loop
        return None
    out = None
    present = np.flatnonzero(np.fromiter(map(bool, headers_list), dtype=bool, count=len(headers_list)))
    for i in present.tolist():              # only the records with headers (C-level passes for the others)
        for name, value in headers_list[i]:
            if name == STREAM_TIME_HEADER and value is not None and len(value) == 8:
                if out is None:
                    out = [None] * len(headers_list)
                out[i] = _TIME.unpack(value)[0]
    return out


def _floor(carried: list) -> np.ndarray:
    """``carried`` (times, None: none) as an int64 array, -1 for None."""
    has = np.fromiter(map(is_not, carried, repeat(None)), dtype=bool, count=len(carried))
    floor = np.full(len(carried), -1, dtype=np.int64)
    floor[has] = list(compress(carried, has.tolist()))
    return floor


def _carried_headers(b: Batch, windows: tuple | None = None) -> list | None:
    """The headers of a repartition batch (None: no record carries one): the upstream stream time of each
    record it is ahead of, where it can matter downstream. ``windows`` (``Placement.lateness_windows``): the
    readers use that time only to judge lateness for these windows, so a record carries it only when it
    closes one of the record's windows; records judged at ``max(task time, timestamp)`` instead get the
    same decisions (a window is closed at ``t`` iff ``t >= close``, and ``timestamp < close``)."""
    if not len(b):
        return None
    st = b.stream_times
    ahead = st > b.timestamps
    if windows is not None:
        ahead &= st >= _lateness_bound(b.timestamps, windows)
    idx = np.flatnonzero(ahead)
    if not len(idx):
        return None
    headers: list = [None] * len(b)
    blob = st[idx].astype(">i8").tobytes()          # 8 bytes big-endian signed per record
    name = STREAM_TIME_HEADER
    for j, i in enumerate(idx.tolist()):
        headers[i] = [(name, blob[8 * j:8 * j + 8])]
    return headers


def _lateness_bound(ts: np.ndarray, windows: tuple) -> np.ndarray:
    """Per record (timestamps ``ts``), the smallest stream time at which one of its windows in ``windows``
    is closed (the earliest window containing it closes first): below it, no window of the record is."""
    bound = np.full(len(ts), np.iinfo(np.int64).max, dtype=np.int64)
    for w in windows:
        idx, starts = w.assign(ts)
        first = starts if len(idx) == len(ts) else np.full(len(ts), np.iinfo(np.int64).max, dtype=np.int64)
        if first is not starts:
            np.minimum.at(first, idx, starts)
        np.minimum(bound, w.close_time(w.end_of(first)), out=bound)
    return bound


class RawBatch:
    """Records as Kafka hands them over: bytes plus record timestamp and offset.

    ``carried``: repartition records: the upstream stream time each carries (None: its timestamp).
    ``messages``: the consumer's messages the columns were read from, in order: given, ``offsets`` is read
    from them when first asked for (most batches only need their last offset, :attr:`next_offset`).
    """

    __slots__ = ("topic", "partition", "keys", "values", "timestamps", "_offsets", "carried", "_messages", "headers")

    def __init__(self, topic: str, partition: int, keys: list, values: list, timestamps: list,
                 offsets: list | None = None, carried: list | None = None, messages: list | None = None,
                 headers: list | None = None):
        self.topic = topic
        self.partition = partition
        self.keys = keys
        self.values = values
        self.timestamps = timestamps
        self._offsets = offsets
        self.carried = carried
        self._messages = messages
        self.headers = headers        # per record (None: none), when there are no messages (the test driver)

    def headers_at(self, indices: list | None) -> list:
        """The headers of the records at ``indices`` (None: all), from the consumer's messages or the
        ``headers`` given (the test driver); ``None`` for a record without any."""
        if self._messages is not None:
            msgs = self._messages
            return [m.headers() for m in msgs] if indices is None else [msgs[i].headers() for i in indices]
        hs = self.headers if self.headers is not None else [None] * len(self.keys)
        return list(hs) if indices is None else [hs[i] for i in indices]

    @property
    def offsets(self) -> list | None:
        if self._offsets is None and self._messages is not None:
            self._offsets = [m.offset() for m in self._messages]
        return self._offsets

    @offsets.setter
    def offsets(self, offsets: list | None) -> None:
        self._offsets, self._messages = offsets, None

    @property
    def next_offset(self) -> int:
        """The offset after the batch's last record (it has at least one)."""
        if self._offsets is None and self._messages is not None:
            return self._messages[-1].offset() + 1
        return self._offsets[-1] + 1

    def __repr__(self) -> str:
        return (f"RawBatch({self.topic!r}, {self.partition}, {len(self.keys)} records"
                + ("" if self.offsets is None else f", offsets {self.offsets[0]}..{self.offsets[-1]}"
                   if self.offsets else "") + ")")


class _BadRecord(Exception):
    pass


class SourceOp(Operator):
    """Deserializes, extracts event time, and advances the task's stream time record by record.

    Two steps, so a task reading several partitions can order their records by event time
    before any of them moves the stream time (``Task.process_many``): :meth:`decode` (bytes ->
    records) and :meth:`stamp` (the stream time each record is processed at).
    """

    def process(self, raw: RawBatch) -> Batch:
        return self.ingest(self.decode(raw)[0])

    def ingest(self, b: Batch) -> Batch:
        """What the source emits for decoded records: the records, stamped with their stream time."""
        return self.stamp(b)

    def decode(self, raw: RawBatch) -> tuple[Batch, list | None]:
        """The records of ``raw`` that decode (bad ones follow ``on_error``), and the indices in ``raw``
        of those kept (None: all of them). The batch's ``stream_times`` are not set yet (:meth:`stamp`)."""
        p = self.node.params
        if self.node.kind == NodeKind.REPARTITION_SOURCE:
            keys, values, ts, kept = self._decode_internal(raw)
            ts_arr = np.asarray(ts, dtype=np.int64) if len(ts) else np.empty(0, dtype=np.int64)
            carried = raw.carried
            if carried is None:
                return Batch(keys, values, ts_arr, ts_arr), kept
            if kept is not None:
                carried = [carried[i] for i in kept]
            return Batch(keys, values, ts_arr, np.maximum(ts_arr, _floor(carried))), kept
        keys, values, ts, kept = self._decode(raw, p["key_serde"], p["value_serde"], p["timestamp"])
        ts_arr = np.asarray(ts, dtype=np.int64) if len(ts) else np.empty(0, dtype=np.int64)
        b = Batch(keys, values, ts_arr, ts_arr)
        if "dedupe_store" in p and len(b):
            return self._dedupe(raw, b, kept)
        return b, kept

    def _dedupe(self, raw: RawBatch, b: Batch, kept: list | None) -> tuple[Batch, list | None]:
        """A source connector's ``dedupe=`` (``operators/dedupe.py``): drop the records whose message id was
        seen within the window, judged by record time."""
        from ..connectors import INGEST_ID_HEADER
        from .dedupe import Dedupe

        if getattr(self, "_dedupe_state", None) is None:
            p = self.node.params
            self._dedupe_state = Dedupe(self.ctx.state.store(p["dedupe_store"].name), p["connector"].dedupe)
        name = INGEST_ID_HEADER
        ids = []
        for h in raw.headers_at(kept):
            ids.append(next((v.decode("utf-8", "replace") for k, v in h if k == name and v), "")
                       if h else "")
        keep = self._dedupe_state.keep(ids, b.timestamps)
        if all(keep):
            return b, kept
        self.ctx.drop("duplicate", self.metric_label, len(keep) - sum(keep))
        idx = list(range(len(raw.keys))) if kept is None else kept
        return b.select(keep), [i for i, k in zip(idx, keep) if k]

    @property
    def moves_time(self) -> bool:
        """Whether this input's records move the task's stream time: a source's do; a repartition
        topic's time comes from its upstream tasks' watermarks (``runtime/watermarks.py``)."""
        return self.node.kind != NodeKind.REPARTITION_SOURCE

    def stamp(self, b: Batch) -> Batch:
        """Set each record's stream time: the running max of event time, updated before the record. A
        repartition record does not move the task's time; it is judged at the larger of the task's time
        and the upstream stream time it carries (``b.stream_times`` from :meth:`decode`)."""
        state = self.ctx.state
        ts_arr = b.timestamps
        if not self.moves_time:
            b.stream_times = np.maximum(b.stream_times, state.stream_time) if len(ts_arr) else ts_arr
            return b
        if len(ts_arr):
            st = np.maximum.accumulate(ts_arr)
            np.maximum(st, state.stream_time, out=st)
            state.stream_time = int(st[-1])
        else:
            st = ts_arr
        b.stream_times = st
        return b

    def _decode_internal(self, raw):
        """A repartition topic's records (the internal codec). Its bytes are untrusted like any
        input: a record that does not decode follows the ``on_error`` policy of the sources upstream."""
        try:
            return codec.decode_keys(raw.keys), codec.decode_values(raw.values), _timestamps_array(raw.timestamps), None
        except (CodecError, _BadRecord):
            pass
        keys, values, ts, offs = [], [], [], []
        for i in range(len(raw.keys)):
            try:
                k = codec.decode_key(raw.keys[i]) if raw.keys[i] is not None else None
                v = codec.decode_value(raw.values[i])
                _check_timestamps([raw.timestamps[i]])
            except (CodecError, _BadRecord) as e:
                self._bad_record(raw, i, e)
                continue
            keys.append(k)
            values.append(v)
            ts.append(raw.timestamps[i])
            offs.append(i)
        return keys, values, ts, offs

    def _decode(self, raw, kser, vser, ts_fn):
        try:
            keys = kser.deserialize_many(raw.keys)
            values = vser.deserialize_many(raw.values)
            ts = raw.timestamps if ts_fn is None else list(map(ts_fn, keys, values, raw.timestamps))
            return keys, values, _timestamps_array(ts), None
        except Exception:  # noqa: BLE001 - sorted out record by record below
            pass
        keys, values, ts, offs = [], [], [], []
        for i in range(len(raw.keys)):
            try:
                k = _one(kser, raw.keys[i], "key")
                v = _one(vser, raw.values[i], "value")
                t = raw.timestamps[i] if ts_fn is None else _extract(ts_fn, k, v, raw.timestamps[i])
                _check_timestamps([t])
            except (SerdeError, _BadRecord) as e:
                self._bad_record(raw, i, e)
                continue
            keys.append(k)
            values.append(v)
            ts.append(raw.timestamps[i] if ts_fn is None else t)
            offs.append(i)
        return keys, values, ts, offs

    def _bad_record(self, raw: RawBatch, i: int, e: Exception) -> None:
        offset = raw.offsets[i] if raw.offsets is not None else None
        if isinstance(e, SerdeError):       # CodecError included (repartition topics)
            err = e.located(topic=raw.topic, partition=raw.partition, offset=offset)
        else:
            err = SerdeError(str(e), serde="timestamp extractor",
                             topic=raw.topic, partition=raw.partition, offset=offset)
        policy = self.node.params["on_error"]
        if policy == "fail":
            raise err
        key = ("skipped" if policy == "skip" else "dead_letter", self.metric_label)
        self.ctx.pending[key] = self.ctx.pending.get(key, 0) + 1
        self.ctx.examples.setdefault(key, f"{raw.topic}[{raw.partition}]@{offset}")
        log.debug("bad record on %s[%s]@%s: %s", raw.topic, raw.partition, offset, err)
        if policy == "dead-letter":
            self.ctx.dead_letters.append(DeadLetter(raw.topic, raw.partition, offset, raw.keys[i],
                                                    raw.values[i], raw.timestamps[i], str(err)))


def _one(serde, data, what):
    try:
        return serde.deserialize(data)
    except SerdeError:
        raise
    except Exception as e:  # noqa: BLE001 - a serde must only raise SerdeError; be safe anyway
        raise SerdeError(f"{what}: {type(e).__name__}: {e}", serde=getattr(serde, "name", None)) from e


def _extract(fn, k, v, t):
    try:
        return fn(k, v, t)
    except Exception as e:  # noqa: BLE001
        raise _BadRecord(f"the timestamp function raised {type(e).__name__}: {e}") from e


def _timestamps_array(ts) -> np.ndarray:
    """Validated int64 event times: one numpy check for the usual all-int case."""
    try:
        arr = np.asarray(ts)
    except (OverflowError, ValueError, TypeError):
        arr = None
    if arr is not None and arr.ndim == 1 and arr.dtype.kind in "iu" and len(arr):
        if arr.min() < 0:
            _check_timestamps(ts)       # names the offending value
        return arr.astype(np.int64, copy=False)
    _check_timestamps(ts)
    return np.asarray([int(t) for t in ts], dtype=np.int64)


def _check_timestamps(ts) -> None:
    for t in ts:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
            if isinstance(t, float) and t.is_integer():
                continue
            raise _BadRecord(f"event timestamp must be int epoch milliseconds, got {t!r}")
        if t < 0:
            raise _BadRecord(f"negative event timestamp {t} (timestamps are epoch milliseconds >= 0)")


class SinkOp(Operator):
    """Serializes a batch for its topic; the task's driver produces it."""

    def process(self, b: Batch) -> None:
        if not len(b):
            return None
        p = self.node.params
        topic = p["topic"]
        if self.node.kind == NodeKind.REPARTITION_SINK:
            where = f" (defined at {self.node.where})" if self.node.where else ""
            try:
                kb, vb = codec.encode_keys(b.keys), codec.encode_values(b.values)
            except CodecError as e:
                raise CodecError(f"the record cannot be written to repartition topic {topic!r}{where}: "
                                 f"{e.reason}") from None
            placement = p["placement"]
            parts = None
            if not placement.by_producer:           # placed like the source topic it meets (plan.placement)
                parts = placement.partitions(b.keys, self.ctx.partition_count(topic), where=where)
            headers = _carried_headers(b, placement.lateness_windows)
            if parts is not None or headers is not None:
                self.ctx.outputs.append((topic, kb, vb, b.timestamps.tolist(), headers, parts))
                return None
        else:
            try:
                kb = p["key_serde"].serialize_many(b.keys)
                vb = p["value_serde"].serialize_many(b.values)
            except SerdeError as e:
                raise e.located(topic=topic) from None
            if "connector" in p:
                self.ctx.outputs.append(self._egress(b, topic, kb, vb))
                return None
        self.ctx.outputs.append((topic, kb, vb, b.timestamps.tolist()))
        return None

    def _egress(self, b: Batch, topic: str, kb: list, vb: list) -> tuple:
        """The output of a sink connector (DESIGN section 9): to partition N of its egress topic for task N
        (so a backlog pauses only the task that made it), each record with its resolved target."""
        from ..connectors import TARGET_HEADER

        conn = self.node.params["connector"]
        if isinstance(conn.target, str):              # one target for every record: one header, shared
            headers = [[(TARGET_HEADER, conn.target.encode())]] * len(kb)
        else:
            try:
                targets = [conn.resolve(k, v) for k, v in zip(b.keys, b.values)]
            except Exception as e:  # noqa: BLE001 - the user's target function: the processing error policy
                from .stateless import _first_failure

                raise (_first_failure(self, conn.resolve, b, lambda f, k, v: f(k, v))
                       or self._fail(e, None)) from e
            headers = [[(TARGET_HEADER, t.encode())] for t in targets]
        return (topic, kb, vb, b.timestamps.tolist(), headers, [self.ctx.partition] * len(kb))
