"""What every connector is made of (DESIGN section 9).

A connector is a *definition* (``RabbitMQ(...)``, ``NatsJetStream(...)``, ``RedisStream(...)``): plain,
picklable settings that a topology holds. The runtime asks a definition for *clients*, one per thread
that uses it, through :meth:`Connector.source_client` and :meth:`Connector.sink_client`. Clients speak
to the external system and nothing else: they know no Kafka, no topology and no checkpoint. The
guarantees come from the order in which the bridge (``bridge.py``) and the delivery (``delivery.py``)
call them:

* a source message is acked (:meth:`SourceClient.ack`) only after Kafka confirmed its record, so a
  crash re-delivers rather than loses;
* a sink batch is confirmed (:meth:`SinkClient.publish` returned) before the Kafka position past it is
  committed, so a crash re-publishes rather than loses, with the same ids.

Errors: a client raises :class:`Unavailable` for anything a retry can fix (connection refused or lost,
server restarting, a publish not confirmed in time); anything else it raises is a failure a restart
cannot fix (bad credentials, a queue or stream that does not exist), and it raises
:class:`~streamproc.errors.ConnectorError` with one paragraph saying which and how to fix it.
"""
from __future__ import annotations

from dataclasses import dataclass

import re

from ..errors import StreamprocError, TopologyError

_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


class Unavailable(StreamprocError):
    """The external system cannot be reached or did not confirm in time: retried with a backoff."""


@dataclass(slots=True)
class Incoming:
    """One message read from an external source.

    ``body``: its payload bytes; ``id``: its stable external id (RabbitMQ ``message_id``, JetStream
    ``Nats-Msg-Id`` or ``<stream>:<sequence>``, Redis ``<stream>:<entry id>``), "" when the system gives
    none; ``redelivered``: the system says it delivered this message before; ``token``: what the client
    needs to ack or reject it (opaque to everyone else)."""
    body: bytes
    id: str
    redelivered: bool
    token: object


@dataclass(slots=True)
class Outgoing:
    """One result to deliver to an external sink.

    ``id``: its stable id, ``<app>/<topic>/<partition>/<offset>`` of the Kafka record it comes from (the
    same on every re-delivery); ``position``: ``(topic, partition, offset)`` of that record, for clients
    that make writes idempotent by remembering the highest offset written per partition; ``target``: the
    exchange's routing key / the subject / the stream name, already resolved; ``key``/``value``: the
    serialized key and value (value None for a tombstone)."""
    id: str
    position: tuple
    target: str
    key: bytes | None
    value: bytes | None


class SourceClient:
    """Reads messages from one external queue/stream for one bridge thread."""

    def open(self) -> None:
        """Connect (and create nothing the user did not ask for). Raises :class:`Unavailable`."""
        raise NotImplementedError

    def fetch(self, max_messages: int, timeout_s: float) -> list[Incoming]:
        """Up to ``max_messages`` messages, waiting at most ``timeout_s`` for the first; [] when none came.
        Messages not acked before :meth:`close` (or a crash) are delivered again later, to this or
        another client."""
        raise NotImplementedError

    def ack(self, messages: list[Incoming]) -> None:
        """Tell the system these messages are done (Kafka holds them now)."""
        raise NotImplementedError

    def reject(self, messages: list[Incoming]) -> None:
        """Dead-letter these messages through the system's own mechanism (RabbitMQ: reject without requeue,
        so the queue's dead-letter exchange gets them). Only called when :attr:`dead_letters` is True."""
        raise NotImplementedError

    #: the system has its own dead-letter route for this source (checked by :meth:`open`)
    dead_letters: bool = False

    def close(self) -> None:
        raise NotImplementedError


class SinkClient:
    """Publishes results to one external system for one delivery thread."""

    def open(self) -> None:
        """Connect. Raises :class:`Unavailable`."""
        raise NotImplementedError

    def publish(self, messages: list[Outgoing]) -> None:
        """Publish ``messages`` in order and return only when the system confirmed every one of them
        (RabbitMQ publisher confirms, JetStream PubAck, the Redis reply). Raises :class:`Unavailable`
        if it cannot; some of them may have been written then, and the same batch comes again."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class Connector:
    """Base of the connector definitions. ``kind``: ``"rabbitmq"``, ``"nats"`` or ``"redis"``.

    As a source (``topology.stream(connector)``): ``name`` names the ingest topic
    ``<app-id>-<name>-ingest``; ``key(value) -> key`` picks each record's key from the deserialized value
    (None: no key); ``partitions`` is the ingest topic's partition count; ``dedupe`` (a duration, or None)
    drops re-deliveries by external id within that window.

    As a sink (``stream.to(connector)``): ``name`` names the internal egress topic
    ``<app-id>-<name>-egress``; ``target(key, value) -> str`` (or a fixed string) picks the routing key /
    subject / stream of each record; ``buffer`` bounds how many results may wait for the target before the
    task producing them pauses."""

    kind = "connector"

    def _common(self, *, name, target, key, partitions, dedupe, buffer, batch) -> None:
        """Checks and keeps the settings every connector has (see the class docstring); ``target`` is the
        sink's routing key / subject / stream: a string, a callable ``(key, value) -> str``, or None (not
        usable as a sink)."""
        from ..windows import parse_duration

        if name is not None and (not isinstance(name, str) or not _NAME.match(name)):
            raise TopologyError(f"{type(self).__name__}: name= must be letters, digits, '.', '_' or '-', "
                                f"got {name!r}")
        if target is not None and not (isinstance(target, str) or callable(target)):
            raise TopologyError(f"{type(self).__name__}: the target must be a string or a function "
                                f"(key, value) -> str, got {target!r}")
        if key is not None and not callable(key):
            raise TopologyError(f"{type(self).__name__}: key= must be a function (value) -> key, got {key!r}")
        for what, n in (("partitions", partitions), ("buffer", buffer), ("batch", batch)):
            if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
                raise TopologyError(f"{type(self).__name__}: {what}= must be a positive int, got {n!r}")
        self.name = name
        self.target = target
        self.key = key
        self.partitions = partitions
        self.dedupe = None if dedupe is None else parse_duration(dedupe, "dedupe")
        self.buffer = buffer
        self.batch = batch

    def resolve(self, key, value) -> str:
        """The routing key / subject / stream of one result."""
        t = self.target
        return t if isinstance(t, str) else str(t(key, value))

    @property
    def source(self) -> bool:
        """Defined with something to read (a queue, a durable consumer, a group): usable as a source."""
        raise NotImplementedError

    @property
    def sink(self) -> bool:
        """Defined with somewhere to write (an exchange, a subject, a stream): usable as a sink."""
        return self.target is not None

    def default_name(self) -> str:
        """The name used when ``name=`` is not given (stable: derived from the settings, not the position)."""
        raise NotImplementedError

    def source_client(self, consumer_name: str) -> SourceClient:
        """A new client reading this source; ``consumer_name`` identifies this instance to the system
        where it keeps per-consumer state (Redis consumer groups)."""
        raise NotImplementedError

    def sink_client(self) -> SinkClient:
        raise NotImplementedError

    def describe(self) -> str:
        """One line for ``describe``: the system and where (never a password)."""
        raise NotImplementedError
