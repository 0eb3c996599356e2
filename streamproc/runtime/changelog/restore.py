"""THE restore loop: rebuild a task's stores from their changelog partitions before it runs.

On assignment the worker pauses a stateful task's input partitions and hands the task's
backend to a :class:`Restorer`. For each store the restorer reads
``<app-id>-<store>-changelog``, partition = the task's partition, with its own group-less
``read_committed`` consumer (``assign``, never ``subscribe``):

* from the offset after the last one the backend already holds
  (backend metadata ``changelog_offsets[store] + 1``; a fresh backend - always the case for
  the memory backend - starts at the beginning),
* to the end: the end offset measured when the restore starts (``get_watermark_offsets`` on a
  read_committed consumer gives the last stable offset). The restore of a partition ends when
  its position reaches that end (a partition-EOF event moves the position to the offset it
  reports), never earlier. A finished partition leaves the consumer's assignment exactly once,
  and a cancelled (revoked) restore unassigns what it still had, so the same task can be
  restored again in the same worker.
  A partition that yields nothing is fetched again from its position every ``retry_after_s``;
  after ``stall_timeout_s`` without progress the restore fails with an error naming the
  partition and offsets. A partial restore never counts as restored.

A table read from a topic (``Topology.table``) has that topic as its changelog: its restore
reads it up to the task's *committed offset* of it (``ends``, :func:`table_ends`), not to its
end, because processing resumes from that offset; its records become rows as when they were
processed (``state.table_rows``, with the table's ``on_error``), and the stream time restored is
their largest timestamp.

Records are applied to the backend in batches with ``backend.write(changes, meta)`` (RocksDB:
``restore_columns``, the checked bytes as they are): a tombstone deletes its key, and the
partition's metadata record (``records.META_KEY``) is checked against the store's definition (a
changelog written by another definition is refused, whatever the backend) and restores the
task's stream time. Every record is decoded before it is applied: bytes that do not decode stop
the restore with an error naming topic, partition and offset (changelogs are untrusted input
too). For RocksDB the keys of the common form (a str group key) are checked in bulk
(``codec.canonical_str_keys``), the others decoded and encoded again, and every value is decoded
(``codec.check_values``). Every write also records the changelog offset it reflects, so an
interrupted restore resumes where it stopped.

One step handles what one ``consume()`` returned a partition at a time (its run of messages),
column by column, not message by message (a table's source records excepted), with the cycle
collector off: per-record Python is the cost of a restore. At the tail of a restore a step waits
at most ``tail_wait_s`` for its batch (see :meth:`Restorer._wait`).

When every store of a task is restored the
worker builds the task (its operators index the restored state), seeks its input partitions
to the committed offsets and resumes them. The main consumer keeps polling all along.

``step()`` does one bounded slice of work so the worker can interleave restoring with
processing its ready tasks; ``run()`` steps to the end (``streamproc replay``,
:func:`restore_blocking`), and ``progress()`` says how far restores got.
"""
from __future__ import annotations

import gc
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import groupby, repeat
from operator import is_not

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from ...errors import BrokerError, StateError
from ...kafka.retry import retrying
from ...state import DELETED
from ...state.codec import canonical_str_keys, check_values, decode_values, key_decoder, key_encoder
from ...state.table_rows import read_rows
from .records import (META_CHANGELOG_OFFSETS, META_KEY, META_STREAM_TIME, changelog_offsets, check_meta,
                      decode_record, merge_watermarks, read_meta)

log = logging.getLogger("streamproc.restore")

_PARTITION_EOF = KafkaError._PARTITION_EOF


@dataclass(eq=False)
class RestorePart:
    """One changelog partition being restored into one store of one task (:meth:`Restorer.parts`)."""

    key: object                  # the task key, e.g. (subtopology id, partition)
    spec: object                 # the store's StoreSpec (name, kind, fingerprint, definition)
    topic: str
    partition: int
    backend: object
    position: int                # next offset to read
    end: int                     # restore target (exclusive)
    done: bool = False
    last_progress: float = field(default_factory=time.monotonic)
    restored: int = 0            # changelog records applied
    first: int = 0               # first offset this restore reads
    retries: int = 0             # fetches started again after no progress
    counted: int = 0             # of ``restored``, how many are in ``Restorer.restored_by_store``

    @property
    def store(self) -> str:
        return self.spec.name

    @property
    def offsets_total(self) -> int:
        """Changelog offsets this restore reads: records, and offsets that hold none (transaction
        markers, records compacted away)."""
        return max(0, self.end - self.first)

    @property
    def offsets_read(self) -> int:
        return max(0, min(self.position, self.end) - self.first)


@dataclass(frozen=True)
class RestoreProgress:
    """How far restores got (:meth:`Restorer.progress`): changelog offsets read of those to read, and
    the changelog records applied among them (metadata records included)."""

    offsets_read: int
    offsets_total: int
    records: int


def table_partitions(stores: list, partition: int) -> list[tuple[str, int]]:
    """``(topic, partition)`` of the tables among ``stores`` read from a topic: where their restore ends is
    the consumer group's committed offset of these (see :func:`table_ends`)."""
    return [(s.changelog, partition) for s in stores if s.source is not None]


def table_ends(stores: list, partition: int, committed: dict) -> dict:
    """``ends`` for :meth:`Restorer.start`: a table read from a topic restores up to where its task's
    processing resumes, the group's committed offset of its topic's partition (``committed``:
    ``{(topic, partition): offset}``); a table with nothing committed is left out (nothing to restore)."""
    ends = {}
    for s in stores:
        offset = committed.get((s.changelog, partition))
        if s.source is not None and offset is not None and offset >= 0:
            ends[s.name] = offset
    return ends


class Restorer:
    """Restores tasks' stores from changelogs; one per worker, one consumer for all restores."""

    def __init__(self, consumer_config: dict, *, batch_size: int = 10_000, stall_timeout_s: float = 60.0,
                 retry_after_s: float = 5.0, metadata_timeout_s: float = 5.0):
        conf = dict(consumer_config)
        conf["enable.partition.eof"] = True
        conf.setdefault("isolation.level", "read_committed")
        # a catch-up reader: an empty fetch should come back fast (the end is found by EOF events)
        conf.setdefault("fetch.wait.max.ms", 50)
        self._conf = conf
        self._consumer: Consumer | None = None
        self.batch_size = batch_size
        self.stall_timeout_s = stall_timeout_s          # no progress for this long: an error
        self.retry_after_s = retry_after_s              # no progress for this long: fetch again from the position
        self.metadata_timeout_s = metadata_timeout_s
        self.tail_wait_s = 0.01                         # see _wait()
        self._tasks: dict[object, list[RestorePart]] = {}
        self._by_tp: dict[tuple[str, int], RestorePart] = {}
        self._all: dict[object, list[RestorePart]] = {}        # every part started (kept for reporting)
        self._ready: list = []            # task keys restored with nothing to read
        self._last_step = time.monotonic()
        self.records_restored = 0         # changelog records applied (metadata records included)
        self.restored_by_store: dict = {}  # store -> changelog records read for it, every restore of this worker

    # ------------------------------------------------------------------------------ API
    @property
    def pending(self) -> bool:
        return bool(self._tasks) or bool(self._ready)

    def restoring(self, key) -> bool:
        return key in self._tasks

    def start(self, key, backend, stores: list, partition: int, ends: dict | None = None) -> None:
        """Begin restoring task ``key``: the changelog partition ``partition`` of each ``StoreSpec`` in ``stores``.

        ``ends``: ``{store name: end offset}`` for tables read from a topic (their changelog is that
        topic): the task's committed offset of it (None: nothing committed, nothing to restore), see
        :func:`table_ends`. Returns nothing; the parts (with their offset ranges) are in :meth:`parts`."""
        if key in self._tasks:
            return
        offsets = changelog_offsets(backend)
        parts, to_assign = [], []
        for spec in stores:
            topic = spec.changelog
            low, high = self._watermarks(topic, partition)
            if spec.source is not None:          # restore a table up to where its task's input resumes
                # the committed offset, not the end: processing resumes there. Never less (a broker whose
                # end offset lags would cut the table short); records that never come are a stall error
                committed = (ends or {}).get(spec.name)
                high = low if committed is None or committed < 0 else committed
            stored = offsets.get(spec.name)
            start = low if stored is None else stored + 1
            if start < low:
                log.warning("changelog %s[%d]: the records after offset %d are gone (log starts at %d); "
                            "restoring what is left", topic, partition, stored, low)
                start = low
            part = RestorePart(key, spec, topic, partition, backend, start, high, first=start)
            if start >= high:
                part.done = True
            else:
                if (topic, partition) in self._by_tp:      # one task per changelog partition: a caller bug
                    raise RuntimeError(f"changelog {topic}[{partition}] is already being restored "
                                       f"(task {self._by_tp[(topic, partition)].key})")
                to_assign.append(TopicPartition(topic, partition, start if stored is not None else OFFSET_BEGINNING))
                self._by_tp[(topic, partition)] = part
            parts.append(part)
            log.debug("restore %s store %s from %s[%d] offsets %d..%d", key, spec.name, topic, partition, start, high)
        self._all[key] = parts
        if not to_assign:
            self._ready.append(key)
            return
        self._tasks[key] = parts
        self._assign_more(to_assign)

    def cancel(self, keys) -> None:
        """Stop restoring these tasks (revoked). What was applied stays applied, offsets included."""
        drop = []
        for key in keys:
            self._all.pop(key, None)
            for part in self._tasks.pop(key, []):
                if self._by_tp.pop((part.topic, part.partition), None) is not None:
                    drop.append(TopicPartition(part.topic, part.partition))
            if key in self._ready:
                self._ready.remove(key)
        if drop and self._consumer is not None:
            self._consumer.incremental_unassign(drop)

    def step(self, timeout: float = 0.05) -> list:
        """Read and apply one batch of changelog records; return the keys of tasks now fully restored."""
        finished, self._ready = self._ready, []
        if not self._tasks:
            return finished
        self._forgive_pause(time.monotonic())
        with _no_cycle_collection():
            full = self._read_batch(timeout)
        now = self._last_step
        for parts in list(self._tasks.values()):
            for part in parts:
                if not part.done and part.position >= part.end:
                    self._finish(part)
        self._check_progress(now, full=full)
        return finished + self._completed()

    def _read_batch(self, timeout: float) -> bool:
        """Consume one batch and apply it (one write per backend); whether the batch was full. What it
        read is gone when it returns."""
        msgs = self._consumer.consume(self.batch_size, self._wait(timeout))
        now = self._last_step = time.monotonic()
        batch = _Batch()
        self._take_all(msgs, batch, now)
        self._count_by_store()
        batch.write()
        return len(msgs) >= self.batch_size

    def run(self, timeout: float = 0.2, on_step=None) -> None:
        """:meth:`step` until every restore started has finished (``streamproc replay``,
        :func:`restore_blocking`); ``on_step()`` is called after each step (e.g. to show :meth:`progress`)."""
        while self.pending:
            self.step(timeout)
            if on_step is not None:
                on_step()

    def progress(self, keys) -> RestoreProgress:
        """How far the restores of tasks ``keys`` got (the records: every restore of this restorer)."""
        parts = [part for key in keys for part in self._all.get(key, ())]
        return RestoreProgress(sum(p.offsets_read for p in parts), sum(p.offsets_total for p in parts),
                               self.records_restored)

    def topics(self, timeout_s: float = 30.0) -> dict:
        """The cluster's topic metadata (``{name: TopicMetadata}``), read with the restore consumer."""
        return self._ensure_consumer().list_topics(timeout=timeout_s).topics

    def remaining(self) -> dict:
        """``{store: changelog records left to read}`` over the restores in progress."""
        out: dict = {}
        for parts in self._tasks.values():
            for part in parts:
                if not part.done:
                    out[part.store] = out.get(part.store, 0) + max(0, part.end - part.position)
        return out

    def parts(self, key) -> list[RestorePart]:
        """The parts of task ``key`` (:class:`RestorePart`: store, topic, partition, first offset read,
        end, position, restored count)."""
        return list(self._all.get(key, ()))

    def close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()
            finally:
                self._consumer = None
        self._tasks.clear()
        self._by_tp.clear()
        self._ready.clear()

    # ------------------------------------------------------------------------------ one step
    def _forgive_pause(self, now: float) -> None:
        """The caller was busy elsewhere for a while since the last step: that is not a stall."""
        if now - self._last_step > 1.0:
            for part in self._by_tp.values():
                part.last_progress += now - self._last_step

    def _wait(self, timeout: float) -> float:
        """How long one step waits for its batch: ``timeout``, or at most ``tail_wait_s`` once fewer offsets than
        a batch are left to read (consume() returns early only with a full batch: at the tail of every
        restore it would wait out its whole timeout)."""
        if timeout <= self.tail_wait_s:
            return timeout
        left = sum(max(0, part.end - part.position) for part in self._by_tp.values() if not part.done)
        return timeout if left >= self.batch_size else self.tail_wait_s

    def _take_all(self, msgs: list, batch: "_Batch", now: float) -> None:
        """The consumed messages into ``batch``: one pass per run of messages of one partition (a fetch
        delivers each partition's messages together), one record at a time only for a table's source topic."""
        if not msgs:
            return
        by_tp = self._by_tp
        i = 0
        for tp, run in groupby(zip([m.topic() for m in msgs], [m.partition() for m in msgs])):
            n = len(list(run))
            part = by_tp.get(tp)
            if part is None:
                pass
            elif part.spec.source is not None:            # a table's source topic: user records
                for m in msgs[i:i + n]:
                    self._take(part, m, batch, now)
            else:
                self._take_run(part, msgs[i:i + n], batch, now)
            i += n

    def _take_run(self, part: RestorePart, run: list, batch: "_Batch", now: float) -> None:
        """Messages of ``part``'s changelog, in offset order, into ``batch``: end-of-partition events move
        its position, metadata records are checked (:func:`_take_meta`), store records are collected."""
        errors = [m.error() for m in run]
        if any(map(is_not, errors, repeat(None))):      # (a KafkaError cannot be compared with None)
            for m, err in zip(run, errors):
                if err is not None:
                    self._take(part, m, batch, now)       # an end-of-partition event, or an error raised
            run = [m for m, err in zip(run, errors) if err is None]
            if not run:
                return
        keys = [m.key() for m in run]
        values = [m.value() for m in run]
        meta = batch.meta(part)
        data = run
        if None in keys or min(keys) < b"\x01":          # reserved keys: the partition's metadata records
            keys, values, data = _take_metas(part, run, keys, values, meta)
        if keys:
            batch.collect_run(part, keys, values, data)
        last = run[-1].offset()
        meta["offsets"][part.store] = last
        part.position = max(part.position, last + 1)
        part.restored += len(run)
        part.last_progress = now
        part.retries = 0
        self.records_restored += len(run)

    def _take(self, part: RestorePart, m, batch: "_Batch", now: float) -> None:
        """One consumed message of ``part``'s changelog, into ``batch``."""
        err = m.error()
        if err is not None:
            if err.code() == _PARTITION_EOF:      # the end as the broker sees it now; done only at/after ours
                part.position = max(part.position, m.offset())
                return
            raise BrokerError(f"restoring store {part.store!r} from {part.topic}[{part.partition}] failed: "
                              f"{err.str()}")
        meta = batch.meta(part)
        kb, off = m.key(), m.offset()
        if part.spec.source is not None:                  # a table's source topic: user records
            if off < part.end:                            # (beyond the committed offset: not yet)
                batch.collect(part, kb, m.value(), off, m.timestamp()[1])
                meta["offsets"][part.store] = off
        elif kb is None or kb[:1] == b"\x00":            # reserved: the partition's metadata record
            _take_meta(part, kb, m.value(), off, meta)
            meta["offsets"][part.store] = off
        else:
            batch.collect(part, kb, m.value(), off, None)
            meta["offsets"][part.store] = off
        part.position = off + 1
        part.restored += 1
        part.last_progress = now
        part.retries = 0
        self.records_restored += 1

    def _count_by_store(self) -> None:
        for part in self._by_tp.values():
            if part.restored != part.counted:
                self.restored_by_store[part.store] = (self.restored_by_store.get(part.store, 0)
                                                      + part.restored - part.counted)
                part.counted = part.restored

    def _finish(self, part: RestorePart) -> None:
        """A part reached its end: it leaves the consumer's assignment, exactly once."""
        part.done = True
        if self._by_tp.pop((part.topic, part.partition), None) is part:
            self._consumer.incremental_unassign([TopicPartition(part.topic, part.partition)])

    def _completed(self) -> list:
        """The keys of the tasks whose every part is done (no longer restoring). A RocksDB backend is flushed
        then: its restored writes skip the WAL (``RocksDBBackend.restore_columns``), and a secondary
        instance (the interactive queries) sees only what is in the WAL or on disk."""
        done = []
        for key in list(self._tasks):
            parts = self._tasks[key]
            if all(p.done for p in parts):
                del self._tasks[key]
                done.append(key)
                for backend in {id(p.backend): p.backend for p in parts if p.restored}.values():
                    if hasattr(backend, "restore_columns"):
                        backend.flush()
                log.info("restored task %s: %s", key,
                         ", ".join(f"{p.store}={p.restored} records" for p in parts))
        return done

    def _check_progress(self, now: float, full: bool = False) -> None:
        """A changelog that stops yielding records before its end is fetched again from its position
        every ``retry_after_s``; after ``stall_timeout_s`` without progress it is an error. It never
        counts as restored (its task would start on partial state and diverge for good)."""
        if full:                 # the consumer is busy with other partitions: nobody is stalled
            for part in self._by_tp.values():
                part.last_progress = now
            return
        for part in list(self._by_tp.values()):
            idle = now - part.last_progress
            if idle > self.stall_timeout_s:
                raise BrokerError(
                    f"restoring store {part.store!r} of task {part.key}: changelog {part.topic}[{part.partition}] "
                    f"yielded nothing for {idle:.0f} s at offset {part.position}, before its end offset "
                    f"{part.end} (measured when the restore started, read_committed). The task is not started on "
                    f"partial state. Check the brokers and the changelog topic (a slow fetch, a leader change, "
                    f"an unavailable partition); the limit is `streamproc run --restore-timeout SECONDS`.")
            if idle > self.retry_after_s * (part.retries + 1):
                part.retries += 1
                log.info("changelog %s[%d] yielded nothing for %.0f s at offset %d (end %d): fetching again",
                         part.topic, part.partition, idle, part.position, part.end)
                try:
                    self._consumer.seek(TopicPartition(part.topic, part.partition, part.position))
                except KafkaException as e:
                    log.debug("seek %s[%d] for a retry: %s", part.topic, part.partition, e)

    # ------------------------------------------------------------------------------ consumer
    def _ensure_consumer(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(self._conf)
        return self._consumer

    def _assign_more(self, tps: list[TopicPartition]) -> None:
        c = self._ensure_consumer()
        c.incremental_assign(tps)
        now = time.monotonic()
        for tp in tps:
            self._by_tp[(tp.topic, tp.partition)].last_progress = now

    def _watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        c = self._ensure_consumer()
        try:
            return retrying(f"report the end offset of changelog {topic}[{partition}]",
                            lambda: c.get_watermark_offsets(TopicPartition(topic, partition),
                                                            timeout=self.metadata_timeout_s, cached=False),
                            max(self.metadata_timeout_s * 3, 30.0))
        except KafkaException as e:
            raise BrokerError(f"cannot read the end offset of changelog {topic}[{partition}] to restore "
                              f"state: {e.args[0].str() if e.args else e}") from None


@contextmanager
def _no_cycle_collection():
    """No cycle collection while a step allocates its ~10 objects per record (messages, byte strings, decoded
    values), none of them in a reference cycle: the collector would run every few hundred of them and
    scan everything young, ~15% of a restore's time. It runs again (if it was on) when the step is done."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


class _Batch:
    """What one step read: per part its records, per backend one write (entries, offsets, stream time,
    watermarks)."""

    def __init__(self):
        self.writes: dict[int, tuple[object, dict, dict]] = {}     # id(backend) -> (backend, entries, meta)
        # id(part) -> (part, keys, values, offsets, timestamps or None, messages): a changelog's records have
        # their messages (offsets are read from them when needed), a table's its offsets and timestamps
        self.data: dict[int, tuple] = {}

    def meta(self, part: RestorePart) -> dict:
        acc = self.writes.get(id(part.backend))
        if acc is None:
            acc = self.writes[id(part.backend)] = (part.backend, {}, {"offsets": {}, "stream_time": None,
                                                                      "watermarks": {}})
        return acc[2]

    def collect(self, part: RestorePart, kb, vb, off: int, ts) -> None:
        """Add a record of ``part`` (``ts``: its timestamp, for a table's source records only)."""
        d = self.data.get(id(part))
        if d is None:
            d = self.data[id(part)] = (part, [], [], [], [] if ts is not None else None, [])
        d[1].append(kb)
        d[2].append(vb)
        d[3].append(off)
        if ts is not None:
            d[4].append(ts)

    def collect_run(self, part: RestorePart, keys: list, values: list, msgs: list) -> None:
        """Add store records of ``part``'s changelog: their keys, values and messages (for their offsets)."""
        d = self.data.get(id(part))
        if d is None:
            d = self.data[id(part)] = (part, [], [], [], None, [])
        d[1].extend(keys)
        d[2].extend(values)
        d[5].extend(msgs)

    def write(self) -> None:
        """Decode every record read (untrusted bytes) and make each backend's one write."""
        for part, keys, values, offsets, stamps, msgs in self.data.values():
            _, entries, meta = self.writes[id(part.backend)]
            _stage(part, keys, values, offsets or _Offsets(msgs), stamps, entries, meta)
        for backend, entries, meta in self.writes.values():
            _write(backend, entries, meta)


class _Offsets:
    """The offsets of messages, read from them only if asked (to name a record that does not decode)."""

    __slots__ = ("msgs",)

    def __init__(self, msgs: list):
        self.msgs = msgs

    def __iter__(self):
        return (m.offset() for m in self.msgs)


def _take_metas(part: RestorePart, run: list, keys: list, values: list, meta: dict) -> tuple[list, list, list]:
    """The metadata records among a run of ``part``'s messages (reserved keys, see :func:`_take_meta`) into
    ``meta``; the keys, values and messages of the others."""
    reserved = [i for i, kb in enumerate(keys) if kb is None or kb[:1] == b"\x00"]
    for i in reserved:
        _take_meta(part, keys[i], values[i], run[i].offset(), meta)
    skip = set(reserved)
    keep = [i for i in range(len(keys)) if i not in skip]
    return [keys[i] for i in keep], [values[i] for i in keep], [run[i] for i in keep]


def _take_meta(part: RestorePart, kb, value, off: int, meta: dict) -> None:
    """A partition's metadata record: check the store's definition, take its stream time and watermarks."""
    if kb != META_KEY:
        raise StateError(f"changelog {part.topic}[{part.partition}] at offset {off}: a record with "
                         f"key {kb[:40] if kb is not None else None!r} is not one streamproc writes")
    pmeta = read_meta(value, part.topic, part.partition, off)
    check_meta(pmeta, part.spec, part.topic, part.partition)
    if meta["stream_time"] is None or pmeta["stream_time"] > meta["stream_time"]:
        meta["stream_time"] = pmeta["stream_time"]
    merge_watermarks(meta["watermarks"], pmeta.get("watermarks"))


def _stage(part: RestorePart, keys: list, values: list, offsets, stamps, entries: dict, meta: dict) -> None:
    """Decode a part's records of one step into its backend's ``entries`` (RocksDB: ``{store: (keys, values)}``,
    the checked bytes as they are; otherwise ``{key: value or DELETED}``); a table's records also move
    ``meta``'s stream time."""
    raw = hasattr(part.backend, "restore_columns")
    if stamps is not None:
        keys, values, decoded_keys, decoded_values = _decode_table(part, keys, values, offsets, stamps, meta)
    elif raw:
        _check_encoded(part, keys, values, offsets)   # untrusted bytes
    else:
        decoded_keys, decoded_values = _decode_checked(part, keys, values, offsets)   # untrusted bytes
    if raw:
        columns = entries.setdefault(part.store, ([], []))
        columns[0].extend(keys)
        columns[1].extend(values)
    else:
        e = entries.setdefault(part.store, {})
        for k, v in zip(decoded_keys, decoded_values):
            e[k] = DELETED if v is None else v


def _check_encoded(part: RestorePart, keys: list, values: list, offsets) -> None:
    """:func:`_decode_checked` for records stored as they are (RocksDB): keys of the common form are
    checked in bulk (``codec.canonical_str_keys``), the others decoded and encoded again; every value
    is decoded."""
    if not canonical_str_keys(part.spec.kind, keys):
        _decode_checked(part, keys, values, offsets)
        return
    try:
        check_values(values)
    except Exception:  # noqa: BLE001 - find the record and say where it is
        _decode_checked(part, keys, values, offsets)
        raise


def _decode_checked(part: RestorePart, keys: list, values: list, offsets) -> tuple[list, list]:
    """Decode a part's records of one batch (one pass per column); a record that does not decode,
    or whose key is not in the one canonical form streamproc writes (its bytes are stored as they
    are: another form of an equal key would be a second copy of it), is a ``StateError`` naming
    its topic, partition and offset."""
    kind = part.spec.kind
    try:
        dec = key_decoder(kind)
        decoded = [dec(k) for k in keys]
        values_out = decode_values(values)
    except Exception:  # noqa: BLE001 - find the record and say where it is
        for kb, vb, off in zip(keys, values, offsets):
            decode_record(kind, kb, vb, part.topic, part.partition, off)
        raise
    if list(map(key_encoder(kind), decoded)) != keys:
        enc = key_encoder(kind)
        off = next(o for k, kb, o in zip(decoded, keys, offsets) if enc(k) != kb)
        raise StateError(f"changelog {part.topic}[{part.partition}] at offset {off}: the key is not in the canonical "
                         f"form streamproc writes (it decodes, but to a key whose encoding differs): the changelog "
                         f"was written by something else")
    return decoded, values_out


def _decode_table(part: RestorePart, keys: list, values: list, offsets: list, stamps: list, meta: dict):
    """A table's source records as store records (``state.table_rows``, with the table's ``on_error``):
    key -> ``[timestamp, value]``, or a tombstone. Returns encoded keys and values (for a RocksDB
    restore) and the decoded ones; ``meta``'s stream time moves to their largest timestamp. Records
    with a ``None`` key are passed over (the table never held them); one that cannot be read stops the
    restore under ``on_error="fail"`` and is passed over (it was skipped or dead-lettered when
    processed) otherwise."""
    def fail(off, e):
        return StateError(f"restoring table {part.store!r} from {part.topic}[{part.partition}]: the record "
                          f"at offset {off} cannot be read: {e.reason}")

    def skipped(off, e):
        log.debug("restore of table %s: skipping the record at %s[%d]@%d: %s", part.store, part.topic,
                  part.partition, off, e)

    rows = read_rows(part.spec.source, keys, values, stamps, offsets, fail=fail, skipped=skipped, encode=True)
    top = int(max(rows.timestamps)) if rows.timestamps else None
    if top is not None and (meta["stream_time"] is None or top > meta["stream_time"]):
        meta["stream_time"] = top
    return [k for k, _ in rows.encoded], [v for _, v in rows.encoded], rows.keys, rows.rows


def _write(backend, entries: dict, meta: dict) -> None:
    """One backend write: ``entries`` (see :func:`_stage`) plus the offsets and stream time."""
    new_meta = {META_CHANGELOG_OFFSETS: {**changelog_offsets(backend), **meta["offsets"]}}
    if meta["stream_time"] is not None:
        new_meta[META_STREAM_TIME] = max(int(meta["stream_time"]), backend.get_meta(META_STREAM_TIME, -1))
    if meta.get("watermarks"):
        saved = backend.get_meta("watermarks", None) or {}
        new_meta["watermarks"] = merge_watermarks({t: {"marks": [list(m) for m in c.get("marks", [])],
                                                       "time": c.get("time", -1)} for t, c in saved.items()},
                                                  meta["watermarks"])
    if hasattr(backend, "restore_columns"):
        backend.restore_columns(entries, new_meta)    # raw records and the meta: one RocksDB write batch
    else:
        backend.write(entries, new_meta)


def restore_blocking(consumer_config: dict, key, backend, stores: list, partition: int, ends: dict | None = None,
                     **kwargs) -> int:
    """Restore one task's stores (``StoreSpec``s) from changelog partition ``partition`` to the end, then
    return the number of changelog records applied. ``ends``: as for :meth:`Restorer.start`. ``kwargs``
    go to :class:`Restorer` (e.g. ``stall_timeout_s``)."""
    r = Restorer(consumer_config, **kwargs)
    try:
        r.start(key, backend, stores, partition, ends)
        r.run(0.2)
        return r.records_restored
    finally:
        r.close()
