"""How many partitions every topic of a plan has, and THE co-partitioning check.

A sub-topology runs one task per partition number of its inputs, so the inputs of a stateful
sub-topology (an aggregation reading a repartition topic, a join of a stream and a table) must
have equal partition counts: partition N of each lands on task N.

Repartition topics are sized by streamproc: one feeding a sub-topology that also reads external
topics takes their partition count (so a re-keyed stream is co-partitioned with the table or
stream it joins); otherwise it takes the task count of the sub-topology writing it (as Kafka
Streams does).
"""
from __future__ import annotations

from ..errors import TopologyError


def partition_counts(plan, source_counts: dict[str, int], overrides: dict[str, int] | None = None) -> dict:
    """Partition count of every input and internal topic, and ``("task", st.id)`` -> tasks.

    ``source_counts``: the external inputs' counts (as the cluster has them); ``overrides``: explicit
    counts for repartition topics (the test driver's ``partitions=``). Raises ``TopologyError`` when the
    inputs of a stateful sub-topology are not co-partitioned, naming each input with its count.
    """
    overrides = overrides or {}
    counts = dict(source_counts)
    subs = list(plan.subtopologies)
    reader = {t: st for st in subs for t in st.repartition_sources}
    for _ in range(len(subs) + 1):                 # upstream first; iterate until settled
        changed = False
        for st in subs:
            ins = [counts[t] for t in st.input_topics if t in counts]
            if len(ins) != len(st.input_topics):
                continue
            n = max(ins)
            if counts.get(("task", st.id)) != n:
                counts[("task", st.id)] = n
                changed = True
            for t in st.repartition_sinks:
                external = [counts[x] for x in reader[t].source_topics if x in counts] if t in reader else []
                want = overrides.get(t, max(external) if external else n)
                if counts.get(t) != want:
                    counts[t] = want
                    changed = True
        if not changed:
            break
    for st in subs:
        if ("task", st.id) not in counts:
            raise TopologyError(f"cannot size sub-topology {st.id}: its inputs {st.input_topics} form a cycle")
        if st.stateful:
            ins = {t: counts[t] for t in st.input_topics}
            if len(set(ins.values())) > 1:
                detail = ", ".join(f"{t!r} has {n}" for t, n in ins.items())
                raise TopologyError(
                    f"the inputs of one stateful sub-topology (an aggregation or a join) must have the same number "
                    f"of partitions (co-partitioning: partition N of each goes to task N), but {detail}. "
                    f"Recreate the source topics with matching partition counts.")
    return counts
