"""What a compiled plan is made of. Plain data, no behaviour beyond lookups."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..kinds import NodeKind, StoreKind


@dataclass(eq=False)
class PlanNode:
    """A physical node of one sub-topology.

    ``kind``: a :class:`~streamproc.kinds.NodeKind`: the logical node's, or ``REPARTITION_SINK`` /
    ``REPARTITION_SOURCE`` inserted where a stateful operator needs records keyed anew.
    ``params["stores"]``: the ``StoreSpec``s the node owns.
    """

    id: int
    kind: NodeKind
    parents: list["PlanNode"]
    params: dict
    where: str = ""
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or f"{self.kind}-{self.id}"


@dataclass(frozen=True)
class GeneratedName:
    """A store or repartition topic named from its position in the graph (no ``name=``)."""

    what: str      # "store" or "repartition topic"
    name: str
    where: str     # file:line of the DSL call
    call: str = ""  # the DSL call that takes name=, e.g. "join(..., name=...)"

    def warning(self) -> str:
        call = self.call or ("aggregate/count/reduce(..., name=...)" if self.what == "store"
                             else "group_by(..., name=...)")
        return (f"{self.where}: the {self.what} {self.name!r} has a generated name: inserting an operator "
                f"upstream renames it and orphans its state; give it a stable name with {call}")


@dataclass(frozen=True)
class TableSource:
    """Where a table store's records come from when its changelog is a user topic (``Topology.table``,
    ``global_table``): the topic, its serdes and the policy for records that fail to deserialize."""

    topic: str
    key_serde: object
    value_serde: object
    on_error: str = "fail"
    partitioner: str = "murmur2"


@dataclass
class StoreSpec:
    name: str
    kind: StoreKind        # WINDOW (tumbling/hopping), SLIDING, SESSION, KV, TABLE, JOIN
    changelog: str         # changelog topic name (a table's: its source topic)
    fingerprint: str
    node_id: int
    window: object = None  # the WindowSpec, if any
    description: str = ""  # the operator's definition in words (recorded with the fingerprint)
    generated_name: bool = False   # no name= was given: the name depends on the position in the graph
    source: TableSource | None = None   # a table read from a user topic: that topic is the changelog
    side: str = ""         # a stream-stream join store: "left" or "right"
    retention: int | None = None   # windowed: how long closed windows stay (ms); None: until they close

    @property
    def internal_changelog(self) -> bool:
        """True when streamproc writes the changelog (``<app-id>-<store>-changelog``); False for a
        table whose source topic is its changelog (never written, created or deleted by streamproc)."""
        return self.source is None


@dataclass
class SubTopology:
    id: int
    nodes: list[PlanNode]                          # topological order
    source_topics: list[str]                       # external source topics
    repartition_sources: list[str]                 # internal topics this sub-topology reads
    sink_topics: list[str] = field(default_factory=list)
    repartition_sinks: list[str] = field(default_factory=list)
    stores: list[StoreSpec] = field(default_factory=list)
    on_processing_error: str = "fail"               # the topology's policy for a user function that raises

    @property
    def input_topics(self) -> list[str]:
        return self.source_topics + self.repartition_sources

    @property
    def stateful(self) -> bool:
        return bool(self.stores)


@dataclass(frozen=True)
class ConnectorTopic:
    """A connector of a plan and the internal topic between it and the topology."""
    connector: object          # streamproc.connectors.Connector
    topic: str                 # <app-id>-<name>-ingest (a source) or <app-id>-<name>-egress (a sink)
    subtopology: int           # the sub-topology reading (source) or writing (sink) the topic
    params: dict               # the node's params (serdes, on_error, partitioner)


@dataclass
class Plan:
    app_id: str
    subtopologies: list[SubTopology]
    source_topics: list[str]           # external inputs, all sub-topologies
    sink_topics: list[str]             # external outputs
    repartition_topics: list[str]
    stores: list[StoreSpec]
    where: str = ""
    generated_names: list["GeneratedName"] = field(default_factory=list)
    global_tables: list[StoreSpec] = field(default_factory=list)   # StoreKind.TABLE, one per worker
    on_processing_error: str = "fail"
    idle_close: int | None = None      # ms (Topology(idle_close=...)); None: off
    max_task_idle: int = 0             # ms (Topology(max_task_idle=...))
    placements: dict = field(default_factory=dict)     # input topic -> Placement (plan.placement)

    @property
    def changelog_topics(self) -> list[str]:
        """The changelogs streamproc writes (a table's source topic is not one of them)."""
        return [s.changelog for s in self.stores if s.internal_changelog]

    @property
    def table_topics(self) -> list[str]:
        """Source topics read as tables (they must be compacted)."""
        return [s.source.topic for s in self.stores + self.global_tables if s.source is not None]

    @property
    def copartition_groups(self) -> list[list[str]]:
        """Input topics that must have equal partition counts (they feed the same stateful tasks)."""
        return [st.input_topics for st in self.subtopologies if st.stateful and len(st.input_topics) > 1]

    @property
    def connector_sources(self) -> list["ConnectorTopic"]:
        """The source connectors, each with the ingest topic it is bridged into (DESIGN section 9)."""
        return self._connectors(NodeKind.SOURCE)

    @property
    def connector_sinks(self) -> list["ConnectorTopic"]:
        """The sink connectors, each with the egress topic delivered to it and its sub-topology."""
        return self._connectors(NodeKind.SINK)

    def _connectors(self, kind) -> list["ConnectorTopic"]:
        out: dict = {}
        for st in self.subtopologies:
            for n in st.nodes:
                c = n.params.get("connector") if n.kind == kind else None
                if c is not None and n.params["topic"] not in out:
                    out[n.params["topic"]] = ConnectorTopic(c, n.params["topic"], st.id, n.params)
        return list(out.values())

    def placement(self, topic: str):
        """How the records of input or repartition topic ``topic`` are partitioned (``plan.placement``)."""
        return self.placements[topic]

    def subtopology_of(self, topic: str) -> SubTopology:
        for st in self.subtopologies:
            if topic in st.input_topics:
                return st
        raise KeyError(topic)

    def store(self, name: str) -> StoreSpec:
        for s in self.stores + self.global_tables:
            if s.name == name:
                return s
        raise KeyError(name)
