"""``Topology``: the root of the DSL. It owns the app id and the logical graph."""
from __future__ import annotations

import re

from ..errors import TopologyError
from .graph import Node, caller_location

_APP_ID = re.compile(r"^[A-Za-z0-9._-]+$")


class Topology:
    """A named processing graph. ``app_id`` is the consumer group and internal topic prefix."""

    def __init__(self, app_id: str):
        if not isinstance(app_id, str) or not _APP_ID.match(app_id):
            raise TopologyError(
                f"Topology app id {app_id!r} must be a non-empty string of letters, digits, '.', '_' or '-' "
                f"(it names the consumer group and internal topics)")
        self.app_id = app_id
        self.nodes: list[Node] = []
        self.where = caller_location()

    def _add(self, kind: str, parents: list[Node], params: dict | None = None,
             key_changed: bool = False) -> Node:
        node = Node(len(self.nodes), kind, parents, params or {}, key_changed, caller_location())
        self.nodes.append(node)
        return node

    def stream(self, topic: str, *, key=None, value=None, timestamp=None, on_error: str = "fail"):
        """A stream of the records of ``topic``.

        ``key``/``value`` are serdes (default ``Bytes``); ``timestamp(key, value, record_ts) -> ms``
        extracts event time (default: the record's timestamp). ``on_error`` is the policy for a
        record that fails to deserialize: ``fail`` (stop), ``skip`` (count and log) or
        ``dead-letter`` (to ``<app-id>-dlq``).
        """
        from .. import serdes
        from .stream import Stream

        if not isinstance(topic, str) or not topic:
            raise TopologyError(f"stream() needs a topic name, got {topic!r}")
        if on_error not in ("fail", "skip", "dead-letter"):
            raise TopologyError(f"on_error must be 'fail', 'skip' or 'dead-letter', got {on_error!r}")
        if timestamp is not None and not callable(timestamp):
            raise TopologyError("timestamp must be a function (key, value, record_timestamp) -> ms")
        for what, s in (("key", key), ("value", value)):
            if s is not None and not isinstance(s, serdes.Serde):
                raise TopologyError(f"stream({topic!r}): {what}= must be a serde such as serdes.String(), got {s!r}")
        node = self._add("source", [], {
            "topic": topic,
            "key_serde": key or serdes.Bytes(),
            "value_serde": value or serdes.Bytes(),
            "timestamp": timestamp,
            "on_error": on_error,
        })
        return Stream(self, node, key_serde=node.params["key_serde"], value_serde=node.params["value_serde"])

    def table(self, topic: str, *, key=None, value=None):
        raise TopologyError("Topology.table() is not available yet: tables and joins arrive in a later release")

    def __repr__(self):
        return f"Topology({self.app_id!r}, {len(self.nodes)} nodes)"
