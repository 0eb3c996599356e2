"""Global tables of one worker: restored before it processes anything, then kept current.

Every worker holds every global table of the topology whole (all partitions of its topic) in
one backend: RocksDB under ``<state-dir>/<app-id>/global-<worker>`` (``state.layout.global_dir``;
or memory). A group-less ``read_committed`` consumer (``assign``, never ``subscribe``) reads the
topics, whose records become rows in ``GlobalStore.apply`` (``operators/global_table.py``):

* :meth:`GlobalTables.restore`, before the worker joins its consumer group: from the offsets
  the backend already holds (a fresh backend: the beginning) to the end offsets measured when
  it starts - never counted done before them; a partition that yields nothing for
  ``stall_timeout_s`` is an error naming it and its offsets;
* :meth:`GlobalTables.poll`, in the worker's loop *between* batches: whatever arrived since,
  applied at once, so one batch of a task always sees one consistent table.

Each apply writes the rows and the offsets they reflect in one backend write: a restarted
worker resumes after them. The tables are derived data (the topics are their changelogs), so
they are outside the checkpoint's transaction.
"""
from __future__ import annotations

import logging
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from ...errors import BrokerError
from ...kafka.retry import retrying
from ...operators import RawBatch
from ...operators.global_table import GlobalStore

log = logging.getLogger("streamproc.globals")

#: How long a transient broker condition (a leader being elected) is retried before the worker starts.
RETRY_S = 30.0


class GlobalTables:
    """The global stores of one worker and the consumer that fills them."""

    def __init__(self, specs: list, backend, consumer_config: dict, *, stall_timeout_s: float = 60.0,
                 batch_size: int = 10_000):
        self.stores = {s.name: GlobalStore(s, backend) for s in specs}
        self._by_topic = {s.source.topic: self.stores[s.name] for s in specs}
        self.backend = backend
        conf = dict(consumer_config)
        conf["enable.partition.eof"] = True
        conf["isolation.level"] = "read_committed"
        conf.setdefault("fetch.wait.max.ms", 50)
        self._conf = conf
        self._consumer: Consumer | None = None
        self.stall_timeout_s = stall_timeout_s
        self.batch_size = batch_size
        self.records_applied = 0

    def __bool__(self) -> bool:
        return bool(self.stores)

    def _open(self) -> Consumer:
        c = Consumer(self._conf)
        try:
            md = retrying("list the global tables' topics", lambda: c.list_topics(timeout=10).topics, RETRY_S)
        except KafkaException as e:
            c.close()
            raise BrokerError(f"cannot read the metadata of the global tables' topics: {e}") from None
        assign = []
        for topic, store in self._by_topic.items():
            t = md.get(topic)
            if t is None or t.error is not None or not t.partitions:
                c.close()
                raise BrokerError(f"global table {store.name!r}: topic {topic!r} does not exist or has no "
                                  f"partitions (create it before starting the app)")
            done = store.offsets()
            for p in sorted(t.partitions):
                assign.append(TopicPartition(topic, p, done.get(p, OFFSET_BEGINNING)))
        c.assign(assign)
        return c

    def restore(self, stopping=lambda: False) -> int:
        """Read every global topic to the end offsets measured now; returns the records applied."""
        c = self._consumer = self._consumer or self._open()
        ends, positions = {}, {}
        for tp in c.assignment():
            try:
                low, high = retrying(f"report the end offset of global topic {tp.topic}[{tp.partition}]",
                                     lambda tp=tp: c.get_watermark_offsets(tp, timeout=10, cached=False), RETRY_S)
            except KafkaException as e:
                raise BrokerError(f"cannot read the end offset of global topic {tp.topic}[{tp.partition}]: "
                                  f"{e}") from None
            start = self._by_topic[tp.topic].offsets().get(tp.partition, low)
            if max(start, low) < high:
                ends[(tp.topic, tp.partition)] = high
                positions[(tp.topic, tp.partition)] = max(start, low)
        started, applied, last_progress, last_log = time.monotonic(), 0, time.monotonic(), time.monotonic()
        while ends and not stopping():
            msgs = c.consume(self.batch_size, 0.2)
            now = time.monotonic()
            raws = self._raws(msgs, positions)
            if raws:
                applied += self._apply(raws)
                last_progress = now
            for tp in [tp for tp, end in ends.items() if positions.get(tp, 0) >= end]:
                del ends[tp]
            if ends and now - last_progress > self.stall_timeout_s:
                tp, end = next(iter(ends.items()))
                raise BrokerError(
                    f"restoring global tables: topic {tp[0]}[{tp[1]}] yielded nothing for "
                    f"{now - last_progress:.0f} s at offset {positions.get(tp)}, before its end offset {end}; "
                    f"the worker does not start on a partial global table")
            if now - last_log > 10:
                last_log = now
                log.info("restoring global tables: %d records applied, %d partition(s) to go", applied, len(ends))
        if applied:
            log.info("global tables restored: %d records in %.1f s", applied, time.monotonic() - started)
        return applied

    def poll(self, max_records: int | None = None) -> int:
        """Apply what arrived on the global topics since the last call (never blocks)."""
        if self._consumer is None:
            return 0
        msgs = self._consumer.consume(max_records or self.batch_size, 0)
        raws = self._raws(msgs, {})
        return self._apply(raws) if raws else 0

    def _raws(self, msgs, positions: dict) -> list:
        groups: dict = {}
        for m in msgs:
            err = m.error()
            tp = (m.topic(), m.partition())
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    positions[tp] = max(positions.get(tp, 0), m.offset())
                    continue
                if err.fatal() or err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.TOPIC_AUTHORIZATION_FAILED):
                    raise BrokerError(f"reading global topic {m.topic()}: {err.str()}")
                log.warning("global tables: consumer error: %s", err.str())
                continue
            g = groups.get(tp)
            if g is None:
                g = groups[tp] = RawBatch(tp[0], tp[1], [], [], [], [])
            g.keys.append(m.key())
            g.values.append(m.value())
            g.timestamps.append(m.timestamp()[1])
            g.offsets.append(m.offset())
            positions[tp] = m.offset() + 1
        return list(groups.values())

    def _apply(self, raws: list) -> int:
        n = 0
        by_store: dict = {}
        for raw in raws:
            by_store.setdefault(raw.topic, []).append(raw)
        for topic, rs in by_store.items():
            n += self._by_topic[topic].apply(rs)
        self.records_applied += n
        return n

    def metrics(self) -> dict:
        total: dict = {}
        for s in self.stores.values():
            for k, v in s.metrics.items():
                total[k] = total.get(k, 0) + v
        return total

    def close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()
            except Exception as e:  # noqa: BLE001
                log.debug("global tables consumer close: %s", e)
            self._consumer = None
        if self.backend is not None:
            self.backend.close()
            self.backend = None
