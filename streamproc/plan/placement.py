"""THE rule for which partition a keyed record of a topology sits in (its *placement*).

Equal keys must meet in one task: a join task N sees partition N of each of its inputs, and a
key is looked up (HTTP queries) in the task its partition maps to. Each input topic of a plan
has one :class:`Placement`, decided here and nowhere else:

- **A source topic** (a stream, table or global table): its producers placed the records, with
  the partitioner the topology declares for it (``partitioner="murmur2"`` by default, or
  ``"crc32"``), over the key bytes of the topic's key serde.
- **A repartition topic read by a sub-topology that also reads source topics** (a re-keyed stream
  joined with a table or a stream read straight from its topic, or merged with one): each record
  goes to the partition that source topic's producers would give its key - the key serialized with
  that topic's key serde and hashed with its partitioner - so a re-keyed record meets the other
  side's records of the same key (Kafka Streams co-partitions the same way). The record itself
  keeps the internal codec; only the partition number is chosen this way.
- **Any other repartition topic** (one feeding only an aggregation or a join of two re-keyed
  streams): murmur2 of the internal codec's key bytes, which is what streamproc's producer
  (``partitioner=murmur2_random``) does by itself.

The inputs of a join must agree on their placement (same key serde, same partitioner):
:func:`check_join_inputs` refuses a topology whose join sides could not meet.

A repartition topic's placement also says what its readers do with the upstream stream time a
record carries (``runtime/engine/watermarks.py``): ``lateness_windows`` are the time windows whose
lateness rule is the only use any node reading the topic makes of it (None: some node may use it
otherwise), so a writer can leave the time off a record it cannot make late (``operators/io.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import CodecError, SerdeError, TopologyError
from ..kinds import USER_SOURCE_KINDS, JoinKind, NodeKind
from ..partitioner import partition_for, partitions_for
from ..state import codec

__all__ = ["Placement", "placements", "check_join_inputs"]


@dataclass(frozen=True)
class Placement:
    """How the records of ``topic`` are placed: the key bytes of ``key_serde`` (``None``: the internal
    codec) hashed with ``partitioner``. ``follows``: for a repartition topic placed like a source
    topic, that topic (its records are placed by this rule, not by the producer)."""

    topic: str
    key_serde: object | None
    partitioner: str = "murmur2"
    follows: str | None = None
    #: a repartition topic read only by nodes that pass records on and tumbling/hopping aggregations (and
    #: sinks): those aggregations' windows (the upstream stream time a record carries only decides whether
    #: it is late for one of them); None: a node reading the topic may use that time otherwise
    lateness_windows: tuple | None = None

    @property
    def by_producer(self) -> bool:
        """True when streamproc's producer places the records itself (murmur2 of the record's own key
        bytes): the internal codec's keys of a repartition topic that follows no source topic."""
        return self.key_serde is None

    def describe(self) -> str:
        serde = "internal key codec" if self.key_serde is None else f"key serde {self.key_serde.describe()}"
        how = f"{self.partitioner} of the {serde}"
        return f"like {self.follows!r} ({how})" if self.follows else how

    def key_bytes(self, key) -> bytes | None:
        """``key`` serialized as this placement hashes it (``SerdeError`` if it cannot be)."""
        if self.key_serde is None:
            return None if key is None else codec.encode_key(key)
        return self.key_serde.serialize(key)

    def partition_of(self, key, num_partitions: int) -> int | None:
        """The partition ``key`` (a deserialized key) is placed in; None for a None key."""
        kb = self.key_bytes(key)
        return None if kb is None else partition_for(kb, num_partitions, self.partitioner)

    def partitions(self, keys: list, num_partitions: int, *, where: str = "") -> list:
        """The partition of each of ``keys`` (``-1`` for a None key: the producer picks one), for a
        repartition sink that follows a source topic. A key the source's key serde cannot serialize
        could never meet that topic's records: ``CodecError`` naming both."""
        try:
            kb = self.key_serde.serialize_many(keys)
        except SerdeError as e:
            raise CodecError(
                f"a key written to {self.topic!r}{where} must meet the keys of topic {self.follows!r} it is "
                f"joined or merged with, so it is partitioned with that topic's key serde "
                f"({self.key_serde.describe()}), which refuses it: {e}. Make the re-keyed stream's keys what "
                f"{self.follows!r}'s key serde reads (e.g. str keys for serdes.String()).") from None
        return partitions_for(kb, num_partitions, self.partitioner)


def placements(plan) -> dict[str, Placement]:
    """The placement of every input topic of ``plan`` (sources, tables, global tables, repartition topics)."""
    out: dict[str, Placement] = {}
    for st in plan.subtopologies:
        for n in st.nodes:
            if n.kind in USER_SOURCE_KINDS:
                out[n.params["topic"]] = _of_source(n.params)
    for g in plan.global_tables:
        out[g.source.topic] = Placement(g.source.topic, g.source.key_serde, g.source.partitioner)
    for st in plan.subtopologies:
        externals = [n for n in st.nodes if n.kind in USER_SOURCE_KINDS]
        for topic in st.repartition_sources:
            windows = _lateness_windows(st, topic)
            if externals:
                first = out[externals[0].params["topic"]]
                out[topic] = Placement(topic, first.key_serde, first.partitioner, follows=first.topic,
                                       lateness_windows=windows)
            else:
                out[topic] = Placement(topic, None, lateness_windows=windows)
    return out


#: Nodes that hand their input records on with their timestamps and stream times, reading neither.
_PASSING = frozenset({NodeKind.MAP, NodeKind.MAP_VALUES, NodeKind.FILTER, NodeKind.FLAT_MAP, NodeKind.PEEK,
                      NodeKind.BRANCH, NodeKind.BRANCH_OUT, NodeKind.MERGE})
_TIME_WINDOWS = frozenset({"tumbling", "hopping"})


def _lateness_windows(st, topic: str) -> tuple | None:
    """The windows of the tumbling/hopping aggregations reading repartition ``topic`` in sub-topology ``st``
    when every node its records reach is one of them, a sink, a non-windowed aggregation (which reads no
    record's stream time) or a node passing records on; None when another node (a join, a sliding or session
    aggregation, a further repartition) could use a record's stream time."""
    children: dict = {}
    for n in st.nodes:
        for parent in n.parents:
            children.setdefault(parent.id, []).append(n)
    todo = [n for n in st.nodes if n.kind == NodeKind.REPARTITION_SOURCE and n.params["topic"] == topic]
    windows: list = []
    seen: set = set()
    while todo:
        for n in children.get(todo.pop().id, ()):
            if n.id in seen:
                continue
            seen.add(n.id)
            if n.kind == NodeKind.AGGREGATE:
                w = n.params.get("window")
                if w is not None and w.kind not in _TIME_WINDOWS:
                    return None
                if w is not None and w not in windows:
                    windows.append(w)
            elif n.kind in _PASSING:
                todo.append(n)
            elif n.kind != NodeKind.SINK:
                return None
    return tuple(windows)


def _of_source(params: dict) -> Placement:
    return Placement(params["topic"], params["key_serde"], params.get("partitioner", "murmur2"))


def check_join_inputs(plan) -> None:
    """Refuse (``TopologyError``) a join whose source-topic inputs are placed differently: records of one
    key would sit in different partition numbers on the two sides and never meet. (A re-keyed side is
    placed like the other side's topic, see the module doc; partition counts are checked at start.)"""
    for st in plan.subtopologies:
        if not any(n.kind == NodeKind.JOIN and n.params.get("join") != JoinKind.STREAM_GLOBAL for n in st.nodes):
            continue
        externals = [n for n in st.nodes if n.kind in USER_SOURCE_KINDS]
        if len(externals) < 2:
            continue
        first = externals[0].params
        for n in externals[1:]:
            p = n.params
            if p.get("partitioner", "murmur2") != first.get("partitioner", "murmur2"):
                raise TopologyError(
                    f"the join inputs {first['topic']!r} (partitioner={first.get('partitioner', 'murmur2')!r}) and "
                    f"{p['topic']!r} (partitioner={p.get('partitioner', 'murmur2')!r}, {n.where}) are placed by "
                    f"different partitioners, so records of one key sit in different partitions and would not "
                    f"meet. Produce both topics with the same partitioner (or declare what their producers "
                    f"really use), or re-key one side (e.g. .map(lambda k, v: (k, v))) so it is repartitioned "
                    f"like the other.")
            if p["key_serde"].fingerprint() != first["key_serde"].fingerprint():
                raise TopologyError(
                    f"the join inputs {first['topic']!r} (key serde {first['key_serde'].describe()}) and "
                    f"{p['topic']!r} (key serde {p['key_serde'].describe()}, {n.where}) serialize keys "
                    f"differently, so equal keys hash to different partitions and would not meet. Declare the "
                    f"same key serde on both, or re-key one side so it is repartitioned like the other.")
