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
from .model import GeneratedName, Plan, PlanNode, StoreSpec, SubTopology


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
    if not any(n.kind == "source" for n in nodes):
        raise TopologyError(f"topology {topology.app_id!r} has no input: add topology.stream('topic', ...)")
    _check_sources(nodes)

    app = topology.app_id
    pnodes: dict[int, PlanNode] = {}
    extra: list[PlanNode] = []
    next_id = len(nodes)
    repartition_of: dict[int, PlanNode] = {}     # logical parent id -> repartition_source node
    stores: list[StoreSpec] = []
    store_names: dict[str, str] = {}
    repartition_names: dict[str, str] = {}
    generated_names: list[GeneratedName] = []

    for n in nodes:
        parents = [pnodes[p.id] for p in n.parents]
        params = dict(n.params)
        name = ""
        if n.kind == "aggregate":
            generated = not params.get("store")
            name = params.get("store") or f"aggregate-{n.id}"
            if name in store_names:
                raise TopologyError(
                    f"two stateful operators are named {name!r} ({store_names[name]} and {n.where}): "
                    f"store names must be unique within a topology")
            store_names[name] = n.where
            _check_name(name, "store", n.where)
            up = n.parents[0]
            if up.key_changed:
                if up.id not in repartition_of:
                    rp_name = n.params.get("repartition_name") or name
                    _check_name(rp_name, "repartition", n.where)
                    topic = f"{app}-{rp_name}-repartition"
                    if topic in repartition_names:
                        raise TopologyError(
                            f"two re-keyed streams would share the repartition topic {topic!r} "
                            f"({repartition_names[topic]} and {n.where}): give each group_by(..., name=) "
                            f"a different name")
                    repartition_names[topic] = n.where
                    rp = {"topic": topic, "generated_name": not n.params.get("repartition_name") and generated}
                    if rp["generated_name"]:
                        generated_names.append(GeneratedName("repartition topic", topic, up.where or n.where))
                    sink = PlanNode(next_id, "repartition_sink", [pnodes[up.id]], dict(rp), n.where)
                    src = PlanNode(next_id + 1, "repartition_source", [], {**rp, "on_error": _policy_upstream(up)},
                                   n.where)
                    next_id += 2
                    extra += [sink, src]
                    repartition_of[up.id] = src
                parents = [repartition_of[up.id]]
            window = params.get("window")
            kind = "kv" if window is None else {"tumbling": "window", "hopping": "window"}.get(window.kind, window.kind)
            store = StoreSpec(name, kind, f"{app}-{name}-changelog", _fingerprint(kind, params), n.id, window,
                              description=_description(kind, params), generated_name=generated)
            if generated:
                generated_names.append(GeneratedName("store", name, n.where))
            params["store"] = store
            stores.append(store)
        pnodes[n.id] = PlanNode(n.id, n.kind, parents, params, n.where, name)

    all_nodes = list(pnodes.values()) + extra
    subs = _split(all_nodes)
    return Plan(
        app_id=app,
        subtopologies=subs,
        source_topics=[n.params["topic"] for n in all_nodes if n.kind == "source"],
        sink_topics=_unique(n.params["topic"] for n in all_nodes if n.kind == "sink"),
        repartition_topics=[n.params["topic"] for n in extra if n.kind == "repartition_source"],
        stores=stores,
        where=topology.where,
        generated_names=generated_names,
    )


def _policy_upstream(node) -> str:
    """The ``on_error`` policy for undecodable records of a repartition topic fed by ``node``: the
    strictest policy of the sources upstream (fail > dead-letter > skip)."""
    seen, todo, policies = set(), [node], set()
    while todo:
        n = todo.pop()
        if n.id in seen:
            continue
        seen.add(n.id)
        if n.kind == "source":
            policies.add(n.params.get("on_error", "fail"))
        todo.extend(n.parents)
    for p in ("fail", "dead-letter", "skip"):
        if p in policies:
            return p
    return "fail"


def _check_sources(nodes) -> None:
    seen: dict[str, str] = {}
    for n in nodes:
        if n.kind == "source":
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
        ids = [m.id for m in members if m.kind in ("source", "repartition_source")]
        return min(ids) if ids else min(m.id for m in members)

    subs = []
    for i, members in enumerate(sorted(groups.values(), key=first_source)):
        ordered = _topo_order(members)
        subs.append(SubTopology(
            id=i,
            nodes=ordered,
            source_topics=[n.params["topic"] for n in ordered if n.kind == "source"],
            repartition_sources=[n.params["topic"] for n in ordered if n.kind == "repartition_source"],
            sink_topics=_unique(n.params["topic"] for n in ordered if n.kind == "sink"),
            repartition_sinks=[n.params["topic"] for n in ordered if n.kind == "repartition_sink"],
            stores=[n.params["store"] for n in ordered if n.kind == "aggregate"],
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


def _fingerprint(kind: str, params: dict) -> str:
    """The store's identity: its kind, window and aggregations (functions by their code, see
    ``streamproc.fingerprint``): the same in every process, whatever ``PYTHONHASHSEED``."""
    w = params.get("window")
    return digest(kind, w.describe() if w is not None else "",
                  [(k, a.fingerprint()) for k, a in params["aggs"].items()])


def _description(kind: str, params: dict) -> str:
    """The store's definition in words, shown when a changed definition is refused."""
    w = params.get("window")
    aggs = ", ".join(f"{k}={a.describe()}" for k, a in params["aggs"].items())
    return f"{kind} store; {w.describe() if w is not None else 'table (no window)'}; aggregations {aggs}"


def _unique(items):
    out = []
    for x in items:
        if x not in out:
            out.append(x)
    return out
