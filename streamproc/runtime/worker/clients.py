"""A worker's Kafka clients: how they are configured, created and closed.

* The producer: transactional under exactly-once (``transactional.id`` = the worker's id,
  ``<app-id>-<process-id>-<worker>``), idempotent under at-least-once. Its delivery reports go to
  the open checkpoint (``checkpoint.py``), its errors to the worker.
* The group consumer: a static member (``group.instance.id`` = the worker's id) of group
  ``<app-id>``, with the eager ``range`` assignor only (``group.py``).
* The restore consumers are the restorer's and the global tables' (``changelog/``).
"""
from __future__ import annotations

import warnings

from confluent_kafka import Consumer, Producer

from ...kafka.config import (DEFAULT_TRANSACTION_TIMEOUT_MS, consumer_config, producer_config,
                             transactional_producer_config)
from ...kafka.retry import Pending, retrying
from .group import check_assignor

#: Seconds a transaction may stay open when ``transaction.timeout.ms`` is not set: half of it.
DEFAULT_TXN_BUDGET_S = DEFAULT_TRANSACTION_TIMEOUT_MS / 2000


def open_producer(options, app_id: str, worker_id: str, on_delivery, on_error) -> tuple[Producer, float]:
    """The worker's producer, and how long its transactions may stay open: half ``transaction.timeout.ms``
    (under exactly-once; blocking calls inside a transaction stay well within its timeout).

    ``on_delivery`` gets the delivery report of every record under at-least-once (each delivery is
    checked before the offsets are committed); under exactly-once a record that fails makes the
    transaction fail to commit, so only the records produced with ``on_delivery`` are reported
    (``produce.Output.send_reported``): a report per record would cost as much as the record."""
    bootstrap = options.bootstrap_servers
    pconf = (transactional_producer_config(bootstrap, app_id, worker_id, options.client("producer")) if options.eos
             else producer_config(bootstrap, app_id, options.client("producer")))
    if not options.eos:
        pconf["on_delivery"] = on_delivery
    pconf["error_cb"] = on_error
    pconf.setdefault("queue.buffering.max.messages", 500_000)
    budget = DEFAULT_TXN_BUDGET_S
    if options.eos:
        budget = int(pconf.get("transaction.timeout.ms", DEFAULT_TRANSACTION_TIMEOUT_MS)) / 2000
    return Producer(pconf), budget


def open_consumer(options, app_id: str, worker_id: str, on_error) -> tuple[Consumer, str]:
    """The worker's group consumer (not subscribed yet), and its ``auto.offset.reset`` policy."""
    cconf = consumer_config(options.bootstrap_servers, app_id, options.client("consumer"), group_instance_id=worker_id)
    cconf["error_cb"] = on_error
    check_assignor(cconf)
    reset_policy = str(cconf.get("auto.offset.reset", "earliest"))
    return Consumer(cconf), reset_policy


def close_producer(producer, clean: bool) -> None:
    """Deliver what is queued (``clean``: for up to 5 s) and close the producer."""
    try:
        producer.flush(5 if clean else 0)
        if hasattr(producer, "close"):      # recent confluent-kafka
            with warnings.catch_warnings():        # "abort failed during close" once fenced
                warnings.simplefilter("ignore", RuntimeWarning)
                producer.close()
    except Exception:  # noqa: BLE001
        pass


def partition_count(producer, topic: str, timeout_s: float) -> int:
    """How many partitions ``topic`` has, from the cluster's metadata (retried while it is not listed)."""
    def partitions():
        t = producer.list_topics(topic, timeout=10.0).topics.get(topic)
        if t is None or not t.partitions:
            raise Pending(f"topic {topic!r} in the metadata ({t.error if t is not None else 'not listed'})")
        return len(t.partitions)

    return retrying(f"list the partitions of {topic!r}", partitions, timeout_s)
