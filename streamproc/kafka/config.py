"""Configuration dictionaries for the confluent-kafka (librdkafka) clients streamproc creates.

Every builder takes the bootstrap servers, the application id and the user's
overrides (a plain dict of librdkafka properties, applied last so the user always
wins) and returns a new dict ready for ``Consumer(...)``, ``Producer(...)`` or
``AdminClient(...)``.

Choices that matter for correctness (see the librdkafka CONFIGURATION.md):

* ``partition.assignment.strategy=range``. The range assignor works per topic:
  it sorts the members subscribed to the topic and hands each a contiguous range
  of partitions. Two topics with the same partition count and the same subscribed
  members therefore get identical assignments: partition N of every co-partitioned
  topic lands on the same member, which stateful tasks (joins, tables) require.
  ``roundrobin`` and ``cooperative-sticky`` balance over all partitions of all
  topics and give no such guarantee. Cooperative and eager strategies cannot be
  mixed in one group, so every worker must use the same value.
* ``partitioner=murmur2_random``: the Java client's default partitioner for
  non-null keys (murmur2 of the key bytes), so records written by streamproc land
  in the same partition as records written by Java/Kafka Streams producers with the
  same key. librdkafka's own default (``consistent_random``, CRC32) would not.
* ``isolation.level=read_committed`` and ``enable.auto.commit=false``: offsets are
  committed only by the runtime (in the transaction under exactly-once).
* ``fetch.queue.backoff.ms=10`` (librdkafka default 1000) so a fast consumer
  does not stall a second whenever its local queue is full.
* ``queued.min.messages=20000`` (librdkafka default 100000) for the group consumer:
  a worker's prefetch per partition, and most of its memory (see the constant).
* ``allow.auto.create.topics=false`` on every client: a metadata request for a
  missing topic must never create it with the broker's default partition count.
"""
from __future__ import annotations

import logging
import time

from collections.abc import Mapping
from typing import Any

#: Assignment strategy for streamproc consumer groups (see the module docstring).
ASSIGNMENT_STRATEGY = "range"

#: Default consumer session timeout. Short enough that a crashed worker's
#: partitions move within seconds, long enough to ride out a GC pause or a
#: long batch. With static membership (``group.instance.id``) a worker restarted
#: within this time gets its partitions back without a rebalance.
DEFAULT_SESSION_TIMEOUT_MS = 10_000

#: Default transaction timeout: how long the broker waits before aborting the
#: open transaction of a producer that vanished (Kafka Streams uses 10 s too).
#: A transaction must finish (begin .. commit) well within it.
DEFAULT_TRANSACTION_TIMEOUT_MS = 10_000

#: How long librdkafka postpones the next fetch of a partition whose local
#: queue is over ``queued.min.messages``. The default (1000 ms) makes a consumer
#: that drains 100k records faster than one fetch round trip idle for a second:
#: measured 4x lower throughput (110k vs 475k msgs/s) on one partition.
DEFAULT_FETCH_QUEUE_BACKOFF_MS = 10

#: Messages librdkafka prefetches per partition for the group consumer (``queued.min.messages``; its default,
#: 100000, is what a worker holds per assigned partition). Each costs ~250 bytes of librdkafka bookkeeping
#: beyond its payload, which ``queued.max.messages.kbytes`` does not count: with 4 partitions of small
#: records the default held ~35 MB more per worker (peak RSS 148 vs 118 MB on benchmarks/e2e.py (d)) for no
#: throughput (20000 is ~10 of the worker's consume() batches per partition, refilled every
#: ``fetch.queue.backoff.ms``).
DEFAULT_QUEUED_MIN_MESSAGES = 20_000

#: Producer batching delay. Transactions flush at commit anyway; this only
#: bounds how long records wait inside a checkpoint interval.
DEFAULT_LINGER_MS = 10


#: librdkafka's own log lines (connection resets, config notes) go to stderr unformatted;
#: keep them to errors by default. ``--config log_level=7`` (with ``debug=...``) brings them back.
DEFAULT_LOG_LEVEL = 3


class _OncePer(logging.Filter):
    """Lets one record of each kind through per ``interval_s``: a broker that is down makes librdkafka
    log the same connection failure many times a second."""

    def __init__(self, interval_s: float = 30.0):
        super().__init__()
        self.interval_s = interval_s
        self._last: dict = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.levelno, record.getMessage().split("]:")[-1][:48])
        now = time.monotonic()
        if now - self._last.get(key, -self.interval_s) < self.interval_s:
            return False
        self._last[key] = now
        return True


#: Where librdkafka's own log lines go (Python logging, so the run's log format holds), rate-limited.
CLIENT_LOG = logging.getLogger("streamproc.kafka.client")
CLIENT_LOG.addFilter(_OncePer())


def _merge(base: dict[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    base.setdefault("log_level", DEFAULT_LOG_LEVEL)
    base.setdefault("logger", CLIENT_LOG)
    if overrides:
        base.update(overrides)
    return base


def _client_id(app_id: str | None, role: str) -> str:
    return f"{app_id}-{role}" if app_id else f"streamproc-{role}"


def consumer_config(bootstrap: str, app_id: str,
                    overrides: Mapping[str, Any] | None = None, *,
                    group_instance_id: str | None = None) -> dict[str, Any]:
    """Config for the consumer of an application's group (``group.id = app_id``).

    ``group_instance_id`` enables static membership (``group.instance.id``); an override that
    sets ``group.instance.id`` to the empty string turns it off (dynamic membership: a restarted
    worker then rejoins as a new member, which costs a rebalance, for brokers that lack or
    mishandle static membership).
    """
    session_ms = DEFAULT_SESSION_TIMEOUT_MS
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "client.id": _client_id(app_id, "consumer"),
        "group.id": app_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "partition.assignment.strategy": ASSIGNMENT_STRATEGY,
        "session.timeout.ms": session_ms,
        "heartbeat.interval.ms": session_ms // 4,
        "allow.auto.create.topics": False,
        # end-of-partition events tell the worker an input is caught up (idle watermarks, DESIGN section 4)
        "enable.partition.eof": True,
        "fetch.queue.backoff.ms": DEFAULT_FETCH_QUEUE_BACKOFF_MS,
        "queued.min.messages": DEFAULT_QUEUED_MIN_MESSAGES,
    }
    if group_instance_id:
        conf["group.instance.id"] = group_instance_id
    conf = _merge(conf, overrides)
    if not conf.get("group.instance.id"):        # `--config consumer.group.instance.id=`: dynamic membership
        conf.pop("group.instance.id", None)
    # Keep the heartbeat below a third of a user-chosen session timeout.
    if overrides and "session.timeout.ms" in overrides and "heartbeat.interval.ms" not in overrides:
        conf["heartbeat.interval.ms"] = max(1, int(conf["session.timeout.ms"]) // 4)
    return conf


def restore_consumer_config(bootstrap: str, app_id: str,
                            overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Config for a group-less consumer used with ``assign()`` (changelog restore, replay).

    It never joins the group and never commits; it reads committed data only.
    """
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "client.id": _client_id(app_id, "restore"),
        # librdkafka requires a group.id for some calls even without subscribe();
        # a distinct one keeps it out of the application's group.
        "group.id": f"{app_id}-restore",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "allow.auto.create.topics": False,
        "enable.partition.eof": True,
        "fetch.queue.backoff.ms": DEFAULT_FETCH_QUEUE_BACKOFF_MS,
    }
    return _merge(conf, overrides)


def producer_config(bootstrap: str, app_id: str | None = None,
                    overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Config for an idempotent (non-transactional) producer (at-least-once)."""
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "client.id": _client_id(app_id, "producer"),
        "partitioner": "murmur2_random",
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": DEFAULT_LINGER_MS,
        "allow.auto.create.topics": False,
    }
    return _merge(conf, overrides)


def transactional_producer_config(bootstrap: str, app_id: str | None, transactional_id: str,
                                  overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Config for the exactly-once producer of one worker.

    ``transactional_id`` must be stable across restarts of the same worker
    (``<app-id>-<process-id>-<worker>``) so the new instance fences the old one.
    """
    if not transactional_id:
        raise ValueError("a transactional producer needs a non-empty transactional.id")
    conf = producer_config(bootstrap, app_id)
    conf.update({
        "client.id": _client_id(app_id, "txn-producer"),
        "transactional.id": transactional_id,
        "transaction.timeout.ms": DEFAULT_TRANSACTION_TIMEOUT_MS,
    })
    return _merge(conf, overrides)


def admin_config(bootstrap: str, app_id: str | None = None,
                 overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Config for an ``AdminClient``."""
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "client.id": _client_id(app_id, "admin"),
        # The admin client is a producer-type handle whose metadata requests
        # would otherwise ask the broker to auto-create the topics they name.
        "allow.auto.create.topics": False,
    }
    return _merge(conf, overrides)
