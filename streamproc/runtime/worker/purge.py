"""Deleting processed repartition records: :class:`Purger`.

Repartition topics keep ``retention.ms=-1`` so unprocessed records never expire; once their
offsets are committed, the worker that consumed them deletes the records below (``DeleteRecords``,
as Kafka Streams does), which keeps the topics small. Purging is housekeeping: it never stops
the worker.
"""
from __future__ import annotations

import logging
import time

from confluent_kafka import TopicPartition

from .errors import kafka_error

log = logging.getLogger("streamproc.worker")

#: How often processed records are deleted from repartition topics (and the longest retry backoff).
PURGE_INTERVAL_S = 30.0
PURGE_MAX_BACKOFF_S = 600.0


class Purger:
    """Deletes repartition records below the committed offsets of worker ``worker_id`` of ``app_id``.

    Requests run on the admin client's thread; their results are read here, on the worker's
    loop, which alone touches this state. A failed request is retried with exponential backoff."""

    def __init__(self, options, app_id: str, worker_id: str):
        self._options = options
        self._app_id = app_id
        self._worker_id = worker_id
        self._admin = None
        self._todo: dict = {}               # (topic, partition) -> committed offset to purge below
        self._inflight: dict = {}           # (topic, partition) -> (future, offset)
        self._next = time.monotonic() + PURGE_INTERVAL_S
        self._backoff = PURGE_INTERVAL_S
        self._warned = False

    def committed(self, positions: dict) -> None:
        self._todo.update(positions)

    def tick(self) -> None:
        failures, succeeded = [], False
        for tp, (fut, off) in list(self._inflight.items()):
            if not fut.done():
                continue
            del self._inflight[tp]
            exc = fut.exception()
            if exc is None:
                succeeded = True
            else:
                failures.append(exc)
                if off > self._todo.get(tp, -1):
                    self._todo[tp] = off          # try again later
        if failures:
            self._failed(failures[0])
        elif succeeded:
            self._backoff = PURGE_INTERVAL_S
        now = time.monotonic()
        if not self._todo or self._inflight or now < self._next:
            return
        self._next = now + self._backoff
        todo, self._todo = self._todo, {}
        try:
            if self._admin is None:
                from ...kafka.admin import make_admin
                o = self._options
                self._admin = make_admin(o.bootstrap_servers, self._app_id, o.client("admin"))
            futures = self._admin.delete_records([TopicPartition(t, p, o) for (t, p), o in todo.items()],
                                                 request_timeout=10)
        except Exception as e:  # noqa: BLE001 - housekeeping
            for tp, off in todo.items():
                self._todo[tp] = max(off, self._todo.get(tp, -1))
            self._failed(e)
            return
        for tp_obj, fut in futures.items():
            tp = (tp_obj.topic, tp_obj.partition)
            self._inflight[tp] = (fut, todo.get(tp, -1))

    def _failed(self, e) -> None:
        self._backoff = min(PURGE_MAX_BACKOFF_S, self._backoff * 2)
        self._next = time.monotonic() + self._backoff
        err = kafka_error(e)
        denied = err is not None and "AUTHORIZATION" in err.name()
        log.log(logging.WARNING if denied or not self._warned else logging.INFO,
                "worker %s: cannot purge processed repartition records (%s); retrying in %.0f s%s", self._worker_id,
                err.str() if err is not None else e, self._backoff,
                ": grant the app DeleteRecords (ALTER on the topics)" if denied else "")
        self._warned = True
