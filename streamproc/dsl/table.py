"""``Table`` (a changelog view: the latest value per key) and ``GlobalTable`` (every task holds all of it).

A ``Table`` is also a ``Stream`` of its changes: at the end of each batch one record per changed
key flows downstream, value ``None`` for a deleted key. ``filter``/``map_values``/``join`` on a
table keep table semantics (a row that stops passing a filter flows as ``None``); ``to_stream()``
gives the plain stream of changes.
"""
from __future__ import annotations

from ..errors import TopologyError
from ..kinds import JoinKind, NodeKind
from .stream import Stream, _check_how, _need_callable


class Table(Stream):
    """The latest value per key of a changelog (a topic read with ``Topology.table``, or an aggregation)."""

    def filter(self, fn) -> "Table":
        """Keep rows for which ``fn(key, value)`` is true; a row that stops passing is deleted (flows as
        ``None``), a key that never passed flows nothing."""
        _need_callable(fn, "Table.filter")
        return self._table_then(NodeKind.TABLE_FILTER, {"fn": fn}, value_serde="same")

    def map_values(self, fn) -> "Table":
        """``fn(value) -> value`` for every row (deleted rows stay deleted)."""
        _need_callable(fn, "Table.map_values")
        return self._table_then(NodeKind.TABLE_MAP_VALUES, {"fn": fn}, value_serde=None)

    def join(self, other, joiner=None, *, how: str = "inner", name: str | None = None) -> "Table":
        """Table-table join: every change of either side re-computes the key's result from both sides'
        current values (inner: both, left: the left, outer: either; a result that stops existing flows as
        ``None``). ``joiner(left, right) -> value``, default ``{"left": left, "right": right}``."""
        if isinstance(other, GlobalTable) or not isinstance(other, Table):
            raise TopologyError(
                f"Table.join() joins two tables, got {type(other).__name__}: to enrich a stream with a table "
                f"use stream.join(table, ...); to join this table's changes use table.to_stream().join(...)")
        if other.topology is not self.topology:
            raise TopologyError("Table.join(): both tables must belong to the same Topology")
        if joiner is not None:
            _need_callable(joiner, "join")
        _check_how(how, ("inner", "left", "outer"), "a table-table join")
        node = self.topology._add(NodeKind.JOIN, [self.node, other.node], {
            "join": JoinKind.TABLE_TABLE, "how": how, "joiner": joiner, "window": None, "key": None, "name": name,
        })
        return Table(self.topology, node, key_serde=self.key_serde, value_serde=None)

    def to_stream(self) -> Stream:
        """The stream of this table's changes (a deleted key is a record with value ``None``)."""
        return Stream(self.topology, self.topology._add(NodeKind.TO_STREAM, [self.node], {}, self.node.key_changed),
                      key_serde=self.key_serde, value_serde=self.value_serde)

    def _table_then(self, kind: NodeKind, params, *, value_serde) -> "Table":
        node = self.topology._add(kind, [self.node], params, self.node.key_changed)
        return Table(self.topology, node, key_serde=self.key_serde,
                     value_serde=self.value_serde if value_serde == "same" else value_serde)

    def __repr__(self):
        return f"Table({self.node.label})"


class GlobalTable:
    """A table every task holds whole (all partitions), joined by ``stream.join(table, key=...)``."""

    def __init__(self, topology, name: str, topic: str, key_serde, value_serde, where: str,
                 partitioner: str = "murmur2"):
        self.topology = topology
        self.name = name
        self.topic = topic
        self.key_serde = key_serde
        self.value_serde = value_serde
        self.where = where
        self.partitioner = partitioner

    def __repr__(self):
        return f"GlobalTable({self.name!r}, topic={self.topic!r})"
