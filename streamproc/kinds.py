"""The closed vocabularies of a topology: what a graph node does, what a store holds, what a join joins.

All are ``StrEnum``s: a kind prints, serializes and compares as its plain name (``"window"`` in a
changelog's metadata, ``"aggregate"`` in ``describe``), but code names it by member, so a misspelt
kind is an ``AttributeError`` at import, not a comparison that is silently never true.
See docs/design.md ("Where each rule lives").
"""
from __future__ import annotations

from enum import StrEnum


class NodeKind(StrEnum):
    """A node of the logical graph (``dsl``) and of a compiled sub-topology (``plan``)."""

    SOURCE = "source"                        # Topology.stream
    TABLE_SOURCE = "table_source"            # Topology.table
    GLOBAL_TABLE = "global_table"            # Topology.global_table (no node in any sub-topology)
    MAP = "map"
    MAP_VALUES = "map_values"
    FILTER = "filter"
    FLAT_MAP = "flat_map"
    PEEK = "peek"
    BRANCH = "branch"
    BRANCH_OUT = "branch_out"
    MERGE = "merge"
    SELECT_KEY = "select_key"                # group_by: the new key, before the repartition
    AGGREGATE = "aggregate"
    TABLE_FILTER = "table_filter"
    TABLE_MAP_VALUES = "table_map_values"
    TO_STREAM = "to_stream"
    JOIN = "join"
    SINK = "sink"
    REPARTITION_SINK = "repartition_sink"    # inserted by the plan where records are keyed anew
    REPARTITION_SOURCE = "repartition_source"


#: Nodes that read a topic: the first node of every sub-topology.
SOURCE_KINDS = frozenset({NodeKind.SOURCE, NodeKind.TABLE_SOURCE, NodeKind.REPARTITION_SOURCE})
#: Nodes that read a user topic (not a repartition topic).
USER_SOURCE_KINDS = frozenset({NodeKind.SOURCE, NodeKind.TABLE_SOURCE})


class StoreKind(StrEnum):
    """What a store holds; it decides the key encoding (``state/codec.py``) and the time index."""

    KV = "kv"                  # a non-windowed aggregate
    WINDOW = "window"          # tumbling/hopping windows: keys (group key, window start)
    SLIDING = "sliding"
    SESSION = "session"
    TABLE = "table"            # a table read from a topic
    JOIN = "join"              # one side of a stream-stream join's buffer
    DEDUPE = "dedupe"          # a source connector's message ids seen within its dedupe= window


class JoinKind(StrEnum):
    """What a ``join`` node joins (its ``params["join"]``): one operator per kind (``operators/join.py``)."""

    STREAM_STREAM = "stream_stream"    # windowed; a store per side (StoreKind.JOIN)
    STREAM_TABLE = "stream_table"      # each record joins the table's current row
    STREAM_GLOBAL = "stream_global"    # the row key(k, v) of a global table
    TABLE_TABLE = "table_table"        # every change re-computes the key's result
