"""``Topology``: the root of the DSL. It owns the app id and the logical graph."""
from __future__ import annotations

import re

from ..errors import TopologyError
from ..kinds import USER_SOURCE_KINDS, NodeKind
from .graph import Node, caller_location

_APP_ID = re.compile(r"^[A-Za-z0-9._-]+$")


class Topology:
    """A named processing graph. ``app_id`` is the consumer group and internal topic prefix.

    ``on_processing_error``: what happens to a record when a user function (map, filter, joiner,
    aggregation field...) raises on it: ``fail`` (stop the instance, the default), ``skip`` (drop
    and count it) or ``dead-letter`` (also write the input record to ``<app-id>-dlq`` with the
    error, the operator and the record's topic/partition/offset as headers).

    Event time (DESIGN section 4): ``max_task_idle`` (default 0) is how long a task with several input
    partitions waits for a caught-up partition before it processes the others' buffered records
    (Kafka Streams' ``max.task.idle.ms``); ``idle_close`` (default off) lets the stream time of a task
    whose inputs have all been idle that long advance with the wall clock, so the last windows of a
    stream that stopped close and emit.
    """

    def __init__(self, app_id: str, *, on_processing_error: str = "fail", idle_close=None, max_task_idle=0):
        if not isinstance(app_id, str) or not _APP_ID.match(app_id):
            raise TopologyError(
                f"Topology app id {app_id!r} must be a non-empty string of letters, digits, '.', '_' or '-' "
                f"(it names the consumer group and internal topics)")
        if on_processing_error not in ("fail", "skip", "dead-letter"):
            raise TopologyError(f"on_processing_error must be 'fail', 'skip' or 'dead-letter', "
                                f"got {on_processing_error!r}")
        from ..windows import parse_duration

        self.app_id = app_id
        self.on_processing_error = on_processing_error
        self.idle_close = None if idle_close is None else _positive(parse_duration(idle_close, "idle_close"),
                                                                    "idle_close")
        self.max_task_idle = parse_duration(max_task_idle, "max_task_idle")
        self.nodes: list[Node] = []
        self.global_tables: list = []      # GlobalTable definitions (outside the graph: every task reads them)
        self.where = caller_location()

    def _add(self, kind: NodeKind, parents: list[Node], params: dict | None = None,
             key_changed: bool = False) -> Node:
        node = Node(len(self.nodes), kind, parents, params or {}, key_changed, caller_location())
        self.nodes.append(node)
        return node

    def stream(self, topic: str, *, key=None, value=None, timestamp=None, on_error: str = "fail",
               partitioner: str = "murmur2"):
        """A stream of the records of ``topic``.

        ``key``/``value`` are serdes (default ``Bytes``); ``timestamp(key, value, record_ts) -> ms``
        extracts event time (default: the record's timestamp). ``on_error`` is the policy for a
        record that fails to deserialize: ``fail`` (stop), ``skip`` (count and log) or
        ``dead-letter`` (to ``<app-id>-dlq``). ``partitioner`` says how the topic's producers place
        keys: ``"murmur2"`` (Java clients; librdkafka ``murmur2``/``murmur2_random``) or ``"crc32"``
        (librdkafka ``consistent``/``consistent_random``, confluent-kafka's default); joins, key
        lookups and the test driver place keys the same way.
        """
        from .stream import Stream
        from ..connectors import Connector

        connector = None
        if isinstance(topic, Connector):         # DESIGN section 9: bridged into <app-id>-<name>-ingest
            connector, topic = topic, _ingest_topic(self.app_id, topic)
        node = self._source_node("stream", topic, key, value, timestamp, on_error, kind=NodeKind.SOURCE,
                                 partitioner=partitioner)
        if connector is not None:
            node.params["connector"] = connector
        return Stream(self, node, key_serde=node.params["key_serde"], value_serde=node.params["value_serde"])

    def _source_node(self, call: str, topic, key, value, timestamp, on_error, *, kind: NodeKind,
                     partitioner: str = "murmur2") -> Node:
        from .. import serdes

        if not isinstance(topic, str) or not topic:
            raise TopologyError(f"{call}() needs a topic name, got {topic!r}")
        _check_partitioner(partitioner, call, topic)
        if on_error not in ("fail", "skip", "dead-letter"):
            raise TopologyError(f"on_error must be 'fail', 'skip' or 'dead-letter', got {on_error!r}")
        if timestamp is not None and not callable(timestamp):
            raise TopologyError("timestamp must be a function (key, value, record_timestamp) -> ms")
        for what, s in (("key", key), ("value", value)):
            if s is not None and not isinstance(s, serdes.Serde):
                raise TopologyError(f"{call}({topic!r}): {what}= must be a serde such as serdes.String(), got {s!r}")
        for g in self.global_tables:
            if g.topic == topic:
                raise TopologyError(f"topic {topic!r} is already read as a global table ({g.where})")
        return self._add(kind, [], {
            "topic": topic,
            "key_serde": key or serdes.Bytes(),
            "value_serde": value or serdes.Bytes(),
            "timestamp": timestamp,
            "on_error": on_error,
            "partitioner": partitioner,
        })

    def table(self, topic: str, *, key=None, value=None, name: str | None = None, on_error: str = "fail",
              partitioner: str = "murmur2"):
        """The latest value per key of ``topic`` as a ``Table`` (a ``None`` value deletes the key).

        The topic is the table store's changelog: no other topic is written, and a restore reads
        the topic itself up to the committed offset. It should be compacted (``run`` warns if not).
        ``name`` names the store (default: the topic name). ``on_error`` and ``partitioner`` as for
        :meth:`stream`.
        """
        from .table import Table

        node = self._source_node("table", topic, key, value, None, on_error, kind=NodeKind.TABLE_SOURCE,
                                 partitioner=partitioner)
        node.params["store"] = name
        return Table(self, node, key_serde=node.params["key_serde"], value_serde=node.params["value_serde"])

    def global_table(self, topic: str, *, key=None, value=None, name: str | None = None,
                     partitioner: str = "murmur2"):
        """A table of ``topic`` that every task holds whole, all partitions, for ``stream.join(table, key=...)``.

        Each worker keeps it in one store (default name: the topic name), reads the topic to its end
        before processing anything and applies new records between batches.
        """
        from .. import serdes
        from .table import GlobalTable

        if not isinstance(topic, str) or not topic:
            raise TopologyError(f"global_table() needs a topic name, got {topic!r}")
        _check_partitioner(partitioner, "global_table", topic)
        for what, s in (("key", key), ("value", value)):
            if s is not None and not isinstance(s, serdes.Serde):
                raise TopologyError(
                    f"global_table({topic!r}): {what}= must be a serde such as serdes.String(), got {s!r}")
        where = caller_location()
        for n in self.nodes:
            if n.kind in USER_SOURCE_KINDS and n.params["topic"] == topic:
                raise TopologyError(f"topic {topic!r} is read twice ({n.where} and {where}): a global table's "
                                    f"topic cannot also be a stream or table of the same topology")
        for g in self.global_tables:
            if g.topic == topic:
                raise TopologyError(f"topic {topic!r} is read twice as a global table ({g.where} and {where})")
        g = GlobalTable(self, name or topic, topic, key or serdes.Bytes(), value or serdes.Bytes(), where,
                        partitioner)
        self.global_tables.append(g)
        return g

    def __repr__(self):
        return f"Topology({self.app_id!r}, {len(self.nodes)} nodes)"


def _check_partitioner(partitioner, call: str, topic) -> None:
    from ..partitioner import check_partitioner

    try:
        check_partitioner(partitioner)
    except ValueError as e:
        raise TopologyError(f"{call}({topic!r}): {e}") from None


def _positive(ms: int, what: str) -> int:
    if ms <= 0:
        raise TopologyError(f"{what} must be a positive duration, got {ms} ms")
    return ms


def _ingest_topic(app_id: str, connector) -> str:
    """The internal topic a source connector is bridged into (DESIGN section 9)."""
    if not connector.source:
        raise TopologyError(f"{connector.describe()} cannot be read as a stream: give it what to read "
                            f"(a RabbitMQ queue=, a JetStream durable=/stream=, a Redis group=)")
    return f"{app_id}-{connector.name or connector.default_name()}-ingest"
