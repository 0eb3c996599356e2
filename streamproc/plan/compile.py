"""Logical graph -> validated plan of sub-topologies.

A sub-topology is a connected piece of the graph between Kafka topics; it runs as one
task per input partition. The graph is cut where a stateful operator receives records
whose key was changed upstream (``map``/``flat_map``/``group_by``): there the records go
through a repartition topic ``<app-id>-<name>-repartition`` and a new sub-topology reads it.
"""
from __future__ import annotations

import re

from ..dsl import Topology
from ..errors import TopologyError
from ..fingerprint import digest
from ..kinds import SOURCE_KINDS, USER_SOURCE_KINDS, JoinKind, NodeKind, StoreKind
from ..windows import format_duration
from .model import GeneratedName, Plan, PlanNode, StoreSpec, SubTopology, TableSource
from .placement import check_join_inputs, placements


_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def _check_name(name: str, what: str, where: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise TopologyError(
            f"{what} name {name!r} ({where}) must be letters, digits, '.', '_' or '-': "
            f"it becomes part of a Kafka topic name")


def compile_topology(topology: Topology) -> Plan:
    """Validate ``topology`` and split it into sub-topologies with named internal topics and stores."""
    if not isinstance(topology, Topology):
        raise TopologyError(f"expected a streamproc.Topology, got {type(topology).__name__}")
    nodes = topology.nodes
    if not any(n.kind in USER_SOURCE_KINDS for n in nodes):
        raise TopologyError(f"topology {topology.app_id!r} has no input: add topology.stream('topic', ...)")
    _check_sources(nodes)

    c = _Names(topology.app_id, next_id=len(nodes))
    pnodes: dict[int, PlanNode] = {}
    for n in nodes:
        pnodes[n.id] = _plan_node(n, [pnodes[p.id] for p in n.parents], c)

    all_nodes = list(pnodes.values()) + c.extra
    subs = _split(all_nodes)
    for st in subs:
        st.on_processing_error = topology.on_processing_error
    plan = Plan(
        app_id=c.app,
        subtopologies=subs,
        source_topics=_topics(all_nodes, USER_SOURCE_KINDS),
        sink_topics=_sink_topics(all_nodes),
        repartition_topics=_topics(c.extra, {NodeKind.REPARTITION_SOURCE}),
        stores=c.stores,
        where=topology.where,
        generated_names=c.generated,
        global_tables=[_global_store(g) for g in topology.global_tables],
        on_processing_error=topology.on_processing_error,
        idle_close=getattr(topology, "idle_close", None),
        max_task_idle=getattr(topology, "max_task_idle", 0),
    )
    check_join_inputs(plan)
    plan.placements = placements(plan)
    for n in c.extra:
        if n.kind == NodeKind.REPARTITION_SINK:
            n.params["placement"] = plan.placements[n.params["topic"]]
    return plan


def _plan_node(n, parents: list[PlanNode], c: "_Names") -> PlanNode:
    """The plan node of logical node ``n`` (``parents``: its parents' plan nodes). A stateful node gets
    its stores and, where its input was re-keyed upstream, a repartition_source as that parent."""
    params = dict(n.params)
    name = ""
    if n.kind == NodeKind.AGGREGATE:
        name, parents = c.aggregate(n, params, parents)
    elif n.kind == NodeKind.TABLE_SOURCE:
        name = c.table_source(n, params)
    elif n.kind == NodeKind.JOIN:
        name, parents = c.join(n, params, parents)
    elif n.kind == NodeKind.SOURCE and getattr(params.get("connector"), "dedupe", None):
        name = c.dedupe(n, params)
    return PlanNode(n.id, n.kind, parents, params, n.where, name)


class _Names:
    """What compiling has named so far: stores, repartition topics, and the nodes it inserted."""

    def __init__(self, app: str, next_id: int):
        self.app = app
        self.next_id = next_id
        self.extra: list[PlanNode] = []
        self.stores: list[StoreSpec] = []
        self.generated: list[GeneratedName] = []
        self._store_where: dict[str, str] = {}
        self._topic_where: dict[str, str] = {}
        self._repartition_of: dict[int, PlanNode] = {}     # logical node id -> repartition_source

    def store_name(self, given, default: str, where: str) -> str:
        name = given or default
        if name in self._store_where:
            raise TopologyError(
                f"two stateful operators are named {name!r} ({self._store_where[name]} and {where}): "
                f"store names must be unique within a topology")
        _check_name(name, "store", where)
        self._store_where[name] = where
        return name

    def add_store(self, store: StoreSpec, where: str, call: str) -> None:
        self.stores.append(store)
        if store.generated_name:
            self.generated.append(GeneratedName("store", store.name, where, call))

    def repartition(self, up, up_plan: PlanNode, rp_name: str, generated: bool, where: str, call: str) -> PlanNode:
        """The repartition_source that re-reads ``up``'s records keyed anew (one per re-keyed node)."""
        if up.id in self._repartition_of:
            return self._repartition_of[up.id]
        _check_name(rp_name, "repartition", where)
        topic = f"{self.app}-{rp_name}-repartition"
        if topic in self._topic_where:
            raise TopologyError(
                f"two re-keyed streams would share the repartition topic {topic!r} "
                f"({self._topic_where[topic]} and {where}): give each a different name=")
        self._topic_where[topic] = where
        rp = {"topic": topic, "generated_name": generated}
        if generated:
            self.generated.append(GeneratedName("repartition topic", topic, up.where or where, call))
        sink = PlanNode(self.next_id, NodeKind.REPARTITION_SINK, [up_plan], dict(rp), where)
        src = PlanNode(self.next_id + 1, NodeKind.REPARTITION_SOURCE, [], {**rp, "on_error": _policy_upstream(up)},
                       where)
        self.next_id += 2
        self.extra += [sink, src]
        self._repartition_of[up.id] = src
        return src

    def aggregate(self, n, params: dict, parents: list[PlanNode]) -> tuple[str, list[PlanNode]]:
        """Name an aggregate's store, give it to the node and repartition its input if it was re-keyed."""
        name = self.store_name(params.get("store"), f"aggregate-{n.id}", n.where)
        generated = not params.get("store")
        up = n.parents[0]
        if up.key_changed:
            parents = [self.repartition(up, parents[0], n.params.get("repartition_name") or name,
                                        generated and not n.params.get("repartition_name"), n.where,
                                        "group_by(..., name=...)")]
        window = params.get("window")
        kind = _store_kind(window)
        # retention: how long closed windows stay (read by runtime.instance.app.window_retention_ms); not in
        # the fingerprint (see _fingerprint)
        store = StoreSpec(name, kind, f"{self.app}-{name}-changelog", _fingerprint(kind, params), n.id, window,
                          description=_description(kind, params), generated_name=generated,
                          retention=params.get("retention"))
        self.add_store(store, n.where, "aggregate/count/reduce(..., name=...)")
        params["store"] = store
        params["stores"] = [store]
        return name, parents

    def table_source(self, n, params: dict) -> str:
        """Name the store of a table read from a topic (the topic is its changelog) and give it to the node."""
        name = self.store_name(params.get("store"), params["topic"], n.where)
        src = TableSource(params["topic"], params["key_serde"], params["value_serde"], params["on_error"],
                          params.get("partitioner", "murmur2"))
        store = _table_store(name, src, n.id)
        self.add_store(store, n.where, "table(..., name=...)")
        params["store"] = store
        params["stores"] = [store]
        return name

    def dedupe(self, n, params: dict) -> str:
        """The store of a source connector's ``dedupe=`` (message ids seen within the window)."""
        conn = params["connector"]
        base = params["topic"].removeprefix(f"{self.app}-").removesuffix("-ingest")
        name = self.store_name(None, f"{base}-dedupe", n.where)
        store = StoreSpec(name, StoreKind.DEDUPE, f"{self.app}-{name}-changelog",
                          digest(StoreKind.DEDUPE, params["topic"]), n.id,
                          description=f"message ids of {params['topic']!r} seen within "
                                      f"{format_duration(conn.dedupe)}")
        self.add_store(store, n.where, "dedupe=")
        params["dedupe_store"] = store
        params["stores"] = [store]
        return name

    def join(self, n, params: dict, parents: list[PlanNode]) -> tuple[str, list[PlanNode]]:
        """Name a join, give it its stores (stream-stream) and repartition its re-keyed stream inputs."""
        kind = params["join"]
        given = params.get("name")
        base = given or f"join-{n.id}"
        _check_name(base, "join", n.where)
        call = "join(..., name=...)"
        if kind in (JoinKind.STREAM_STREAM, JoinKind.STREAM_TABLE):
            sides = ("left", "right") if kind == JoinKind.STREAM_STREAM else ("left",)
            for i, side in enumerate(sides):
                up = n.parents[i]
                if up.key_changed:
                    parents[i] = self.repartition(up, parents[i], f"{base}-{side}", not given, n.where, call)
        if kind == JoinKind.STREAM_STREAM:
            stores = []
            for side in ("left", "right"):
                name = self.store_name(f"{given}-{side}" if given else None, f"{base}-{side}", n.where)
                w = params["window"]
                store = StoreSpec(name, StoreKind.JOIN, f"{self.app}-{name}-changelog",
                                  digest(StoreKind.JOIN, side, w.describe()), n.id, w,
                                  description=f"join store ({side} side); {w.describe()}",
                                  generated_name=not given, side=side)
                self.add_store(store, n.where, call)
                stores.append(store)
            params["stores"] = stores
        if kind == JoinKind.STREAM_GLOBAL:
            params["global"] = params["global"].name
        return base, parents


def _table_store(name: str, src: TableSource, node_id: int, generated: bool = False) -> StoreSpec:
    """The store of a table read from topic ``src.topic``: that topic is its changelog."""
    desc = f"table of topic {src.topic!r}; key {src.key_serde.fingerprint()}, value {src.value_serde.fingerprint()}"
    return StoreSpec(name, StoreKind.TABLE, src.topic, digest(StoreKind.TABLE, src.topic, src.key_serde.fingerprint(),
                                                               src.value_serde.fingerprint()),
                     node_id, None, description=desc, generated_name=generated, source=src)


def _global_store(g) -> StoreSpec:
    return _table_store(g.name, TableSource(g.topic, g.key_serde, g.value_serde,
                                            partitioner=getattr(g, "partitioner", "murmur2")), -1)


def _policy_upstream(node) -> str:
    """The ``on_error`` policy for undecodable records of a repartition topic fed by ``node``: the
    strictest policy of the sources upstream (fail > dead-letter > skip)."""
    seen, todo, policies = set(), [node], set()
    while todo:
        n = todo.pop()
        if n.id in seen:
            continue
        seen.add(n.id)
        if n.kind in USER_SOURCE_KINDS:
            policies.add(n.params.get("on_error", "fail"))
        todo.extend(n.parents)
    for p in ("fail", "dead-letter", "skip"):
        if p in policies:
            return p
    return "fail"


def _check_sources(nodes) -> None:
    seen: dict[str, str] = {}
    for n in nodes:
        if n.kind in USER_SOURCE_KINDS:
            t = n.params["topic"]
            if t in seen:
                raise TopologyError(
                    f"topic {t!r} is read twice ({seen[t]} and {n.where}): read it once and reuse the stream "
                    f"(a stream can feed several operators)")
            seen[t] = n.where


def _split(all_nodes: list[PlanNode]) -> list[SubTopology]:
    """Connected components of the graph (repartition topics are not edges), in source order."""
    parent = {n.id: n.id for n in all_nodes}

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for n in all_nodes:
        for p in n.parents:
            parent[find(n.id)] = find(p.id)

    groups: dict[int, list[PlanNode]] = {}
    for n in sorted(all_nodes, key=lambda n: n.id):
        groups.setdefault(find(n.id), []).append(n)

    def first_source(members):
        ids = [m.id for m in members if m.kind in SOURCE_KINDS]
        return min(ids) if ids else min(m.id for m in members)

    subs = []
    for i, members in enumerate(sorted(groups.values(), key=first_source)):
        ordered = _topo_order(members)
        subs.append(SubTopology(
            id=i,
            nodes=ordered,
            source_topics=_topics(ordered, USER_SOURCE_KINDS),
            repartition_sources=_topics(ordered, {NodeKind.REPARTITION_SOURCE}),
            sink_topics=_sink_topics(ordered),
            repartition_sinks=_topics(ordered, {NodeKind.REPARTITION_SINK}),
            stores=[s for n in ordered for s in n.params.get("stores", ())],
        ))
    return subs


def _topo_order(members: list[PlanNode]) -> list[PlanNode]:
    ids = {m.id for m in members}
    done: set[int] = set()
    out: list[PlanNode] = []

    def visit(n):
        if n.id in done:
            return
        for p in n.parents:
            if p.id in ids:
                visit(p)
        done.add(n.id)
        out.append(n)

    for m in sorted(members, key=lambda m: m.id):
        visit(m)
    return out


def _topics(nodes, kinds) -> list[str]:
    """The topics of the ``nodes`` of ``kinds`` (sources, sinks, repartition topics), in node order."""
    return [n.params["topic"] for n in nodes if n.kind in kinds]


def _sink_topics(nodes) -> list[str]:
    """The external topics ``nodes`` write: sinks' and aggregates' late-record topics, each once."""
    return _unique(_topics(nodes, {NodeKind.SINK})
                   + [n.params["late_topic"] for n in nodes
                      if n.kind == NodeKind.AGGREGATE and n.params.get("late_topic")])


#: The store of an aggregate over a window of each kind (``WindowSpec.kind``).
_STORE_OF_WINDOW = {"tumbling": StoreKind.WINDOW, "hopping": StoreKind.WINDOW,
                    "sliding": StoreKind.SLIDING, "session": StoreKind.SESSION}


def _store_kind(window) -> StoreKind:
    """The kind of an aggregate's store: ``KV`` without a window, else by the window's kind."""
    return StoreKind.KV if window is None else _STORE_OF_WINDOW.get(window.kind, window.kind)


def _fingerprint(kind: StoreKind, params: dict) -> str:
    """The store's identity: its kind, window and aggregations (functions by their code, see
    ``streamproc.fingerprint``): the same in every process, whatever ``PYTHONHASHSEED``.

    A windowed store's ``retention`` is not part of it: it says how long closed windows are kept,
    not what a window holds nor how it is encoded, so state written under one retention is valid
    under another (a longer one keeps closed windows from now on; a shorter one removes those it no
    longer covers as stream time passes them), as Kafka Streams lets a window store's retention
    change; and a topology that passes no retention keeps the fingerprint it had before retention
    existed."""
    w = params.get("window")
    return digest(kind, w.describe() if w is not None else "",
                  [(k, a.fingerprint()) for k, a in params["aggs"].items()])


def _description(kind: StoreKind, params: dict) -> str:
    """The store's definition in words, shown when a changed definition is refused."""
    w = params.get("window")
    aggs = ", ".join(f"{k}={a.describe()}" for k, a in params["aggs"].items())
    kept = f"; retention {format_duration(params['retention'])}" if params.get("retention") is not None else ""
    return f"{kind} store; {w.describe() if w is not None else 'table (no window)'}{kept}; aggregations {aggs}"


def _unique(items):
    out = []
    for x in items:
        if x not in out:
            out.append(x)
    return out
