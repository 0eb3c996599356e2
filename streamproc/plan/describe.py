"""``streamproc describe``: the compiled plan as a rich tree or as JSON-ready data."""
from __future__ import annotations

from rich.text import Text
from rich.tree import Tree

from ..kinds import JoinKind, NodeKind
from ..windows import format_duration
from .model import Plan, PlanNode


_GENERATED = " (generated name: add name=)"
_STYLE = {NodeKind.SOURCE: "green", NodeKind.REPARTITION_SOURCE: "green", NodeKind.TABLE_SOURCE: "green",
          NodeKind.SINK: "magenta", NodeKind.REPARTITION_SINK: "magenta",
          NodeKind.AGGREGATE: "yellow", NodeKind.JOIN: "yellow"}    # other kinds: white


def node_detail(n: PlanNode) -> str:
    p = n.params
    if n.kind == NodeKind.SOURCE and p.get("connector") is not None:
        c = p["connector"]
        return (f"{p['topic']}  <- {c.describe()}  value={p['value_serde'].name}"
                + (f"  dedupe={format_duration(c.dedupe)} store={p['dedupe_store'].name}" if c.dedupe else "")
                + (f"  on_error={p['on_error']}" if p.get("on_error", "fail") != "fail" else ""))
    if n.kind == NodeKind.SINK and p.get("connector") is not None:
        c = p["connector"]
        return f"{p['topic']}  -> {c.describe()}  value={p['value_serde'].name}  buffer={c.buffer}"
    if n.kind == NodeKind.SOURCE:
        return f"{p['topic']}  key={p['key_serde'].name} value={p['value_serde'].name}" + (
            "  timestamp=extractor" if p.get("timestamp") else "") + _partitioner(p) + (
            f"  on_error={p['on_error']}" if p.get("on_error", "fail") != "fail" else "")
    if n.kind == NodeKind.SINK:
        return f"{p['topic']}  key={p['key_serde'].name} value={p['value_serde'].name}"
    if n.kind == NodeKind.REPARTITION_SINK:
        return (p["topic"] + (_GENERATED if p.get("generated_name") else "")
                + (f"  partitioned {p['placement'].describe()}" if p.get("placement") else ""))
    if n.kind == NodeKind.REPARTITION_SOURCE:
        return p["topic"] + (_GENERATED if p.get("generated_name") else "")
    if n.kind == NodeKind.AGGREGATE:
        store = p["store"]
        w = p["window"]
        aggs = " ".join(f"{k}={a.describe()}" for k, a in p["aggs"].items())
        return (f"{w.describe() if w else 'table'}  {aggs}  emit={p['emit']}  "
                f"store={store.name}{_GENERATED if store.generated_name else ''} changelog={store.changelog}")
    if n.kind == NodeKind.TABLE_SOURCE:
        store = p["store"]
        return (f"{p['topic']}  key={p['key_serde'].name} value={p['value_serde'].name}{_partitioner(p)}  "
                f"store={store.name}  (the topic is the store's changelog)")
    if n.kind == NodeKind.JOIN:
        return _join_detail(n)
    if n.kind == NodeKind.BRANCH:
        return f"{len(p['predicates'])} predicates"
    if n.kind == NodeKind.BRANCH_OUT:
        return f"#{p['index']}"
    fn = p.get("fn")
    return getattr(fn, "__name__", "") if fn is not None else ""


def _partitioner(p: dict) -> str:
    return f"  partitioner={p['partitioner']}" if p.get("partitioner", "murmur2") != "murmur2" else ""


def _join_detail(n: PlanNode) -> str:
    p = n.params
    kind = p["join"].replace("_", "-")
    parts = [f"{kind} how={p['how']}"]
    if p["join"] == JoinKind.STREAM_STREAM:
        parts.append(p["window"].describe())
        parts += [f"store={s.name}{_GENERATED if s.generated_name else ''} changelog={s.changelog}"
                  for s in p["stores"]]
    elif p["join"] == JoinKind.STREAM_TABLE:
        parts.append(f"table={n.parents[1].label}")
    elif p["join"] == JoinKind.TABLE_TABLE:
        parts.append(f"tables={n.parents[0].label},{n.parents[1].label}")
    else:
        key = p.get("key")
        parts.append(f"global table={p['global']} key={getattr(key, '__name__', 'stream key') if key else 'stream key'}")
    joiner = p.get("joiner")
    parts.append(f"joiner={getattr(joiner, '__name__', 'function')}" if joiner else "joiner=default")
    return "  ".join(parts)


def render_tree(plan: Plan, source_file: str = "") -> Tree:
    title = Text.assemble(("Topology ", "bold"), (plan.app_id, "bold cyan"),
                          (f"  ({source_file})" if source_file else "", "dim"))
    root = Tree(title)
    for st in plan.subtopologies:
        ins = ", ".join(st.input_topics)
        sub = root.add(Text.assemble((f"Sub-topology {st.id}", "bold"),
                                     (f"  one task per partition of: {ins}", "dim")))
        children: dict[int, list[PlanNode]] = {}
        for n in st.nodes:
            for par in n.parents[:1]:
                children.setdefault(par.id, []).append(n)

        def add(tree, n):
            style = _STYLE.get(n.kind, "white")
            extra = ""
            if len(n.parents) > 1:
                extra = "  (also from " + ", ".join(p.label for p in n.parents[1:]) + ")"
            where = f"  {n.where}" if n.where else ""
            branch = tree.add(Text.assemble((n.kind, f"bold {style}"), " ", (n.label, style), "  ",
                                            node_detail(n), (extra, "dim"), (where, "dim")))
            for c in children.get(n.id, []):
                add(branch, c)

        for n in st.nodes:
            if not n.parents:
                add(sub, n)
    topics = root.add(Text("Topics", style="bold"))
    for label, names in (("sources", plan.source_topics), ("sinks", plan.sink_topics),
                         ("repartition", plan.repartition_topics), ("changelog", plan.changelog_topics),
                         ("tables (the topic is the changelog)", plan.table_topics)):
        if names:
            topics.add(f"{label}: " + ", ".join(names))
    if plan.connector_sources or plan.connector_sinks:
        edge = root.add(Text("Connectors (run by each instance's edge process)", style="bold"))
        for ct in plan.connector_sources:
            edge.add(f"source {ct.connector.describe()} -> {ct.topic}  (acked once Kafka has it)")
        for ct in plan.connector_sinks:
            edge.add(f"sink {ct.topic} -> {ct.connector.describe()}  (committed results only, ids "
                     f"<app>/<topic>/<partition>/<offset>)")
    if plan.stores:
        stores = root.add(Text("Stores", style="bold"))
        for s in plan.stores:
            stores.add(f"{s.name}{_GENERATED if s.generated_name else ''}  kind={s.kind}  "
                       f"changelog={s.changelog}  fingerprint={s.fingerprint}")
    if plan.global_tables:
        globs = root.add(Text("Global tables (every worker holds all partitions)", style="bold"))
        for g in plan.global_tables:
            globs.add(f"{g.name}  topic={g.source.topic}  key={g.source.key_serde.name} "
                      f"value={g.source.value_serde.name}"
                      + (f"  partitioner={g.source.partitioner}" if g.source.partitioner != "murmur2" else ""))
    return root


def to_dict(plan: Plan) -> dict:
    """The plan as plain JSON-ready data (kinds as their plain strings)."""
    return {
        "app_id": plan.app_id,
        "subtopologies": [
            {
                "id": st.id,
                "input_topics": st.input_topics,
                "nodes": [
                    {"id": n.id, "kind": str(n.kind), "name": n.label, "parents": [p.label for p in n.parents],
                     "detail": node_detail(n), "defined_at": n.where}
                    for n in st.nodes
                ],
                "sink_topics": st.sink_topics + st.repartition_sinks,
                "stores": [s.name for s in st.stores],
            }
            for st in plan.subtopologies
        ],
        "topics": {
            "sources": plan.source_topics,
            "sinks": plan.sink_topics,
            "repartition": plan.repartition_topics,
            "changelog": plan.changelog_topics,
            "tables": plan.table_topics,
        },
        "stores": [
            {"name": s.name, "kind": str(s.kind), "changelog": s.changelog, "fingerprint": s.fingerprint,
             "window": s.window.describe() if s.window else None, "description": s.description,
             "generated_name": s.generated_name}
            for s in plan.stores
        ],
        "partitioning": {t: pl.describe() for t, pl in plan.placements.items()},
        "generated_names": [{"what": g.what, "name": g.name, "defined_at": g.where}
                            for g in plan.generated_names],
        "global_tables": [{"name": g.name, "topic": g.source.topic, "fingerprint": g.fingerprint}
                          for g in plan.global_tables],
        "connectors": [{"role": role, "kind": ct.connector.kind, "topic": ct.topic, "system": ct.connector.describe()}
                       for role, cts in (("source", plan.connector_sources), ("sink", plan.connector_sinks))
                       for ct in cts],
    }
