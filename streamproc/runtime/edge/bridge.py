"""A source bridge: messages of an external queue/stream -> records of ``<app-id>-<name>-ingest``.

The order that makes it lossless (DESIGN section 9):

1. fetch a batch from the external system (unacked: the system still owns it);
2. produce each message as one record (idempotent producer, ``acks=all``), key from the connector's
   ``key(value)``, the external id in the :data:`~streamproc.connectors.INGEST_ID_HEADER` header;
3. wait until Kafka confirmed every record of the batch (and of the batches fetched before it: a few are
   in flight at once);
4. only then ack the batch to the external system.

A crash anywhere before 4 leaves the messages unacked: the system delivers them again (to this instance
after a restart, or to another), so nothing is lost and a message can reach Kafka twice with the same id,
which the source's ``dedupe=`` drops. If Kafka does not confirm (3 fails), the client is closed without
acking, which hands the batch back to the system, and the bridge starts again after a backoff.

A message whose value does not deserialize (only tried when the key or a dead-letter route needs the
value) goes to the system's own dead-letter route when the source says ``on_error="dead-letter"`` and the
system has one for it; otherwise it is forwarded as it is and the source's ``on_error`` policy decides
in the worker, like for any Kafka record.
"""
from __future__ import annotations

import logging
import time
from collections import deque

from confluent_kafka import Producer

from ...connectors import INGEST_ID_HEADER, Unavailable
from ...errors import SerdeError
from .backoff import Backoff

log = logging.getLogger("streamproc.connectors")

#: messages fetched per batch when the connector does not say (``batch=``)
DEFAULT_BATCH = 1000
#: the longest a batch waits for Kafka's confirmation before it is handed back to the system
CONFIRM_TIMEOUT_S = 30.0
#: batches sent to Kafka and not yet confirmed, at most
IN_FLIGHT = 4
REDELIVERED_HEADER = "streamproc-redelivered"
_PARTITIONERS = {"murmur2": "murmur2_random", "crc32": "consistent_random"}


class KafkaNotConfirmed(Unavailable):
    """Kafka did not confirm every record of a batch: the batch goes back to the external system."""


class _Batch:
    """One fetched batch on its way: acked once Kafka confirmed every record of it."""
    __slots__ = ("forward", "left", "error")

    def __init__(self, forward: list):
        self.forward = forward          # [(message, key bytes)]
        self.left = len(forward)        # records Kafka has not confirmed yet
        self.error = None               # the first refusal, if Kafka refused one

    def delivered(self, err, msg) -> None:
        self.left -= 1
        if err is not None and self.error is None:
            self.error = err.str()


class Bridge:
    """One source connector's bridge (one thread). ``ct``: the plan's ``ConnectorTopic``;
    ``producer_conf``: an idempotent producer's config; ``consumer_name``: this instance's name at the
    external system; ``stats``: its ``ConnectorStats``.

    Batches are pipelined: up to :data:`IN_FLIGHT` batches wait for Kafka while the next is fetched, and
    each is acked once all of its records (and those of every batch before it) are confirmed, so acks stay
    in fetch order. A source's ``prefetch`` bounds what the system hands out unacked: the batch is at most a
    quarter of it, so several batches can be in flight."""

    def __init__(self, ct, producer_conf: dict, consumer_name: str, stats, stop):
        self.ct = ct
        self.conn = ct.connector
        conf = dict(producer_conf)
        conf["partitioner"] = _PARTITIONERS.get(ct.params.get("partitioner", "murmur2"), "murmur2_random")
        self._producer_conf = conf
        self.consumer_name = consumer_name
        self.stats = stats
        self.stop = stop
        prefetch = getattr(self.conn, "prefetch", None)
        self.batch = self.conn.batch or (max(1, min(DEFAULT_BATCH, prefetch // IN_FLIGHT)) if prefetch
                                         else DEFAULT_BATCH)
        self.client = None
        self.producer = None
        self._backoff = Backoff(f"source {self.conn.describe()}", log)
        self._key_serde = ct.params["key_serde"]
        self._value_serde = ct.params["value_serde"]
        self._dead_letter = ct.params.get("on_error") == "dead-letter"
        self._in_flight: deque = deque()

    def run(self) -> None:
        """Bridge until ``stop`` is set; a ``ConnectorError`` (a restart cannot fix it) propagates."""
        self.producer = Producer(self._producer_conf)
        try:
            while not self.stop.is_set():
                try:
                    if self.client is None:
                        self.client = self.conn.source_client(self.consumer_name)
                        self.client.open()
                    self.step(0.5)
                    self._backoff.ok()
                    self.stats.available = True
                except Unavailable as e:
                    self.stats.available, self.stats.error = False, str(e)
                    self._backoff.failed(str(e))
                    self._close_client()          # whatever was not acked goes back to the system
                    self._backoff.wait(self.stop)
            if self.client is not None:           # stopping: ack what Kafka confirms in time
                try:
                    self.drain(CONFIRM_TIMEOUT_S)
                except Unavailable as e:
                    log.info("source %s: stopping with unconfirmed messages (%s): they are delivered again",
                             self.conn.describe(), e)
        finally:
            self._close_client()
            self.producer.flush(5.0)

    def step(self, timeout_s: float) -> int:
        """Fetch one batch (waiting up to ``timeout_s`` only when nothing is in flight) and send it to Kafka;
        ack the batches Kafka confirmed. Returns how many messages it fetched."""
        msgs = self.client.fetch(self.batch, timeout_s if not self._in_flight else 0.0)
        if msgs:
            self.stats.add("in", len(msgs))
            self.stats.add("redelivered", sum(1 for m in msgs if m.redelivered))
            forward, reject = self._split(msgs)
            if reject:
                self.client.reject(reject)
                self.stats.add("rejected", len(reject))
                log.warning("source %s: %d message(s) that do not deserialize went to the system's dead-letter "
                            "route (first id %r)", self.conn.describe(), len(reject), reject[0].id)
            if forward:
                self._send(forward)
        self.producer.poll(0)
        if len(self._in_flight) >= IN_FLIGHT or (not msgs and self._in_flight):
            self._wait_head(CONFIRM_TIMEOUT_S)
        self._ack_confirmed()
        self.stats.buffered = sum(len(b.forward) for b in self._in_flight)
        return len(msgs)

    def drain(self, timeout_s: float) -> None:
        """Wait until every batch in flight is confirmed and acked (raises KafkaNotConfirmed)."""
        while self._in_flight:
            self._wait_head(timeout_s)
            self._ack_confirmed()
        self.stats.buffered = 0

    # ------------------------------------------------------------------ internals
    def _split(self, msgs) -> tuple[list, list]:
        """``([(message, key bytes)], [messages to reject])``."""
        keyfn = self.conn.key
        if keyfn is None and not (self._dead_letter and self.client.dead_letters):
            return [(m, None) for m in msgs], []
        forward, reject = [], []
        for m in msgs:
            try:
                value = self._value_serde.deserialize(m.body)
            except SerdeError:
                if self._dead_letter and self.client.dead_letters:
                    reject.append(m)
                else:                              # the worker's on_error policy decides, as for Kafka input
                    forward.append((m, None))
                continue
            forward.append((m, self._key(keyfn, m, value)))
        return forward, reject

    def _key(self, keyfn, m, value) -> bytes | None:
        if keyfn is None:
            return None
        try:
            k = keyfn(value)
            return None if k is None else self._key_serde.serialize(k)
        except Exception as e:  # noqa: BLE001 - a user function: counted and logged, the record still goes
            self.stats.add("key_errors")
            log.warning("source %s: key= raised on message %r (%s: %s); forwarded without a key",
                        self.conn.describe(), m.id, type(e).__name__, e)
            return None

    def _send(self, forward: list) -> None:
        """Produce one batch; it is acked once Kafka confirmed it (``_ack_confirmed``)."""
        topic, produce = self.ct.topic, self.producer.produce
        batch = _Batch(forward)
        self._in_flight.append(batch)
        on_delivery = batch.delivered
        for m, kb in forward:
            headers = [(INGEST_ID_HEADER, m.id.encode())]
            if m.redelivered:
                headers.append((REDELIVERED_HEADER, b"1"))
            while True:
                try:
                    produce(topic, m.body, kb, headers=headers, on_delivery=on_delivery)
                    break
                except BufferError:
                    self.producer.poll(0.1)

    def _wait_head(self, timeout_s: float) -> None:
        """Wait until Kafka answered for every record of the oldest batch in flight."""
        head = self._in_flight[0]
        deadline = time.monotonic() + timeout_s
        while head.left > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                raise KafkaNotConfirmed(f"ingest topic {self.ct.topic!r}: {head.left} record(s) not confirmed "
                                        f"within {timeout_s:.0f} s; the batch goes back to the source")
            self.producer.poll(min(0.1, left))

    def _ack_confirmed(self) -> None:
        """Ack, in fetch order, the batches whose records Kafka all confirmed."""
        while self._in_flight and self._in_flight[0].left == 0:
            head = self._in_flight[0]
            if head.error is not None:
                raise KafkaNotConfirmed(f"ingest topic {self.ct.topic!r}: Kafka refused a record: {head.error}; "
                                        f"the batch goes back to the source")
            self._in_flight.popleft()
            n = len(head.forward)
            self.stats.add("forwarded", n)
            self.client.ack([m for m, _ in head.forward])
            self.stats.add("acked", n)

    def _close_client(self) -> None:
        self._in_flight.clear()               # not acked: the system delivers them again
        if self.client is not None:
            try:
                self.client.close()
            except Exception as e:  # noqa: BLE001 - closing a broken connection
                log.debug("source %s: close: %s", self.conn.describe(), e)
            self.client = None
