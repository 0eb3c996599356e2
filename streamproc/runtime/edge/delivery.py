"""A sink delivery: committed records of ``<app-id>-<name>-egress`` -> the external system.

The order that makes it lossless (DESIGN section 9):

1. read a batch of the egress topic with ``isolation.level=read_committed``: only what a committed
   checkpoint produced, never a rolled-back result;
2. publish it and wait until the system confirmed every message (``SinkClient.publish``);
3. only then commit the consumer offsets past the batch (group ``<app-id>-<name>-delivery``).

A crash before 3 publishes the batch again from the last committed position, with the same ids
(``<app-id>/<topic>/<partition>/<offset>``): JetStream drops them by ``Nats-Msg-Id``, the Redis write
skips offsets it already wrote, RabbitMQ consumers see a second copy with the same ``message_id``.

While the system is down, the batch is retried with a backoff and the consumer's partitions are paused,
so it keeps its group membership without reading further: what waits stays in Kafka, not in memory.
The tasks producing to the egress topic pause once their backlog passes the connector's ``buffer``
(``worker/egress.py``).
"""
from __future__ import annotations

import logging

from confluent_kafka import Consumer, KafkaException, TopicPartition

from ...connectors import TARGET_HEADER, Outgoing, Unavailable
from .backoff import Backoff

log = logging.getLogger("streamproc.connectors")

DEFAULT_BATCH = 1000


def delivery_group(topic: str) -> str:
    """The consumer group delivering egress topic ``topic`` (its committed offsets are what was confirmed)."""
    return f"{topic}-delivery"


class Delivery:
    """One sink connector's delivery (one thread). ``consumer_conf``: a consumer's config (group and
    offsets set here)."""

    def __init__(self, ct, app_id: str, consumer_conf: dict, stats, stop):
        self.ct = ct
        self.conn = ct.connector
        self.app_id = app_id
        conf = dict(consumer_conf)
        conf.update({"group.id": delivery_group(ct.topic), "enable.auto.commit": False,
                     "enable.auto.offset.store": False, "isolation.level": "read_committed",
                     "auto.offset.reset": "earliest", "enable.partition.eof": False})
        conf.pop("group.instance.id", None)
        self._consumer_conf = conf
        self.stats = stats
        self.stop = stop
        self.batch = self.conn.batch or DEFAULT_BATCH
        self.client = None
        self.consumer = None
        self._assigned: set = set()
        self._backoff = Backoff(f"sink {self.conn.describe()}", log)

    def run(self) -> None:
        """Deliver until ``stop`` is set; a ``ConnectorError`` (a restart cannot fix it) propagates."""
        self.consumer = Consumer(self._consumer_conf)
        self.consumer.subscribe([self.ct.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)
        try:
            while not self.stop.is_set():
                self.step(0.5)
        finally:
            self._close_client()
            try:
                self.consumer.close()
            except Exception as e:  # noqa: BLE001
                log.debug("sink %s: consumer close: %s", self.conn.describe(), e)

    def step(self, timeout_s: float) -> int:
        """One batch: read, publish until confirmed, commit. Returns how many records it delivered."""
        msgs = [m for m in self.consumer.consume(self.batch, timeout_s) if m.error() is None]
        if not msgs:
            return 0
        self.stats.add("out", len(msgs))
        out = [_outgoing(self.app_id, m) for m in msgs]
        self.stats.buffered = len(out)
        if not self._publish(out):
            return 0                      # stopping: nothing committed, delivered again by whoever comes next
        self.stats.add("confirmed", len(out))
        self._commit(msgs)
        self.stats.buffered = 0
        return len(out)

    # ------------------------------------------------------------------ internals
    def _publish(self, out: list) -> bool:
        """Publish ``out`` until the system confirms it (True) or the thread is stopped (False). While the
        system fails, the consumer is paused but kept in its group."""
        paused = False
        try:
            while True:
                try:
                    if self.client is None:
                        self.client = self.conn.sink_client()
                        self.client.open()
                    self.client.publish(out)
                    self._backoff.ok()
                    self.stats.available = True
                    return True
                except Unavailable as e:
                    self.stats.available, self.stats.error = False, str(e)
                    self._backoff.failed(str(e))
                    self._close_client()
                    if not paused and self._assigned:
                        self.consumer.pause([TopicPartition(t, p) for t, p in self._assigned])
                        paused = True
                    self._backoff.wait(self.stop)
                    self.consumer.poll(0)         # group heartbeats and rebalance callbacks while waiting
                    if self.stop.is_set():
                        return False
        finally:
            if paused and self._assigned:
                self.consumer.resume([TopicPartition(t, p) for t, p in self._assigned])

    def _commit(self, msgs) -> None:
        """Commit past the delivered records of partitions still assigned (one that moved to another
        instance meanwhile is delivered again from its committed position there, with the same ids)."""
        last: dict = {}
        for m in msgs:
            last[(m.topic(), m.partition())] = m.offset()
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in last.items() if (t, p) in self._assigned]
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
            self.stats.add("committed", len(msgs))
        except KafkaException as e:          # a rebalance at this moment: delivered again, same ids
            log.info("sink %s: offsets not committed (%s); the batch will be delivered again", self.conn.describe(),
                     e.args[0].str() if e.args else e)

    def _on_assign(self, consumer, partitions) -> None:
        self._assigned = {(tp.topic, tp.partition) for tp in partitions}

    def _on_revoke(self, consumer, partitions) -> None:
        self._assigned -= {(tp.topic, tp.partition) for tp in partitions}

    def _close_client(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except Exception as e:  # noqa: BLE001
                log.debug("sink %s: close: %s", self.conn.describe(), e)
            self.client = None


def _outgoing(app_id: str, m) -> Outgoing:
    topic, partition, offset = m.topic(), m.partition(), m.offset()
    target = ""
    for name, value in m.headers() or ():
        if name == TARGET_HEADER and value is not None:
            target = value.decode("utf-8", "replace")
    return Outgoing(f"{app_id}/{topic}/{partition}/{offset}", (topic, partition, offset), target, m.key(), m.value())
