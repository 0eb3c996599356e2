"""``Stream`` and the grouped/windowed builders. They only append nodes to the graph."""
from __future__ import annotations

from ..agg import Aggregation
from ..errors import TopologyError
from ..kinds import JoinKind, NodeKind
from ..windows import WindowSpec


def _need_callable(fn, what: str):
    if not callable(fn):
        raise TopologyError(f"{what} needs a function, got {fn!r}")


def _check_how(how, allowed: tuple, what: str) -> None:
    if how not in allowed:
        raise TopologyError(f"{what} takes how={' | '.join(repr(a) for a in allowed)}, got how={how!r}")


class Stream:
    """A stream of (key, value) records with event timestamps."""

    def __init__(self, topology, node, *, key_serde=None, value_serde=None):
        self.topology = topology
        self.node = node
        self.key_serde = key_serde        # what the key is known to be, if known (default sink serde)
        self.value_serde = value_serde

    def _then(self, kind: NodeKind, params=None, *, key_changed=None, key_serde="same", value_serde="same",
              parents=None) -> "Stream":
        node = self.topology._add(kind, parents or [self.node], params,
                                  self.node.key_changed if key_changed is None else key_changed)
        return Stream(self.topology, node,
                      key_serde=self.key_serde if key_serde == "same" else key_serde,
                      value_serde=self.value_serde if value_serde == "same" else value_serde)

    # -- stateless ----------------------------------------------------------------------
    def map(self, fn) -> "Stream":
        """``fn(key, value) -> (key, value)``. Changing the key marks the stream for repartitioning."""
        _need_callable(fn, "map")
        return self._then(NodeKind.MAP, {"fn": fn}, key_changed=True, key_serde=None, value_serde=None)

    def map_values(self, fn) -> "Stream":
        """``fn(value) -> value``; the key is kept, so no repartition is needed."""
        _need_callable(fn, "map_values")
        return self._then(NodeKind.MAP_VALUES, {"fn": fn}, value_serde=None)

    def filter(self, fn) -> "Stream":
        """Keep records for which ``fn(key, value)`` is true."""
        _need_callable(fn, "filter")
        return self._then(NodeKind.FILTER, {"fn": fn})

    def flat_map(self, fn) -> "Stream":
        """``fn(key, value) -> iterable of (key, value)``; each output keeps the input's timestamp."""
        _need_callable(fn, "flat_map")
        return self._then(NodeKind.FLAT_MAP, {"fn": fn}, key_changed=True, key_serde=None, value_serde=None)

    def peek(self, fn) -> "Stream":
        """Call ``fn(key, value)`` for each record (side effects only), pass records on unchanged."""
        _need_callable(fn, "peek")
        return self._then(NodeKind.PEEK, {"fn": fn})

    def branch(self, *predicates) -> list["Stream"]:
        """One stream per predicate; a record goes to the first whose ``pred(key, value)`` is true."""
        if not predicates:
            raise TopologyError("branch() needs at least one predicate")
        for p in predicates:
            _need_callable(p, "branch")
        b = self.topology._add(NodeKind.BRANCH, [self.node], {"predicates": list(predicates)}, self.node.key_changed)
        outs = []
        for i in range(len(predicates)):
            node = self.topology._add(NodeKind.BRANCH_OUT, [b], {"index": i}, self.node.key_changed)
            outs.append(Stream(self.topology, node, key_serde=self.key_serde, value_serde=self.value_serde))
        return outs

    def merge(self, other: "Stream") -> "Stream":
        """Records of both streams, interleaved in processing order."""
        if not isinstance(other, Stream) or other.topology is not self.topology:
            raise TopologyError("merge() needs another Stream of the same Topology")
        same_k = self.key_serde if self.key_serde == other.key_serde else None
        same_v = self.value_serde if self.value_serde == other.value_serde else None
        return self._then(NodeKind.MERGE, {}, parents=[self.node, other.node],
                          key_changed=self.node.key_changed or other.node.key_changed,
                          key_serde=same_k, value_serde=same_v)

    # -- grouping -----------------------------------------------------------------------
    def group_by(self, fn, *, name: str | None = None) -> "GroupedStream":
        """Group by a new key ``fn(key, value)``: records are repartitioned by it."""
        _need_callable(fn, "group_by")
        s = self._then(NodeKind.SELECT_KEY, {"fn": fn}, key_changed=True, key_serde=None)
        return GroupedStream(s, name=name)

    def group_by_key(self) -> "GroupedStream":
        """Group by the current key (repartitioned only if an earlier step changed the key)."""
        return GroupedStream(self, name=None)

    def join(self, other, joiner=None, *, how: str = "inner", window=None, key=None,
             name: str | None = None) -> "Stream":
        """Join this stream with ``other`` (DESIGN section 4); the result is keyed by this stream's key.

        * a ``Stream``: windowed stream-stream join, ``window=windows.JoinWindow(before, after, grace)``
          required, ``how`` = inner | left | outer;
        * a ``Table``: each record joins the table's current row for its key, inner | left;
        * a ``GlobalTable``: the row ``key(k, v)`` (default: the stream key), inner | left.

        ``joiner(left_value, right_value) -> value``; the missing side of a left/outer result is
        ``None``; default ``{"left": left_value, "right": right_value}``. ``name`` names the join's
        stores (stream-stream: ``<name>-left`` and ``<name>-right``) and repartition topics.
        """
        from ..windows import JoinWindow
        from .table import GlobalTable, Table

        if joiner is not None:
            _need_callable(joiner, "join")
        if getattr(other, "topology", None) is not self.topology:
            if isinstance(other, (Stream, GlobalTable)):
                raise TopologyError("join(): both sides must belong to the same Topology (a join cannot cross "
                                    "topologies: each one is a separate application)")
            raise TopologyError(f"join() needs a Stream, Table or GlobalTable of the same Topology, got {other!r}")
        if isinstance(other, GlobalTable):
            _check_how(how, ("inner", "left"), "a stream-global-table join")
            if window is not None:
                raise TopologyError("a stream-global-table join has no window: remove window=")
            if key is not None:
                _need_callable(key, "join key=")
            params = {"join": JoinKind.STREAM_GLOBAL, "global": other, "key": key}
            parents = [self.node]
        elif isinstance(other, Table):
            _check_how(how, ("inner", "left"), "a stream-table join")
            if window is not None:
                raise TopologyError(
                    "a stream-table join has no window (each record joins the table's current row): remove "
                    "window=, or join two streams with window=windows.JoinWindow(...)")
            if key is not None:
                raise TopologyError(
                    "key= picks the row of a GlobalTable only; a stream-table join uses the stream's key "
                    "(re-key the stream first with .map(...) or use topology.global_table(...))")
            params = {"join": JoinKind.STREAM_TABLE, "key": None}
            parents = [self.node, other.node]
        elif isinstance(other, Stream):
            _check_how(how, ("inner", "left", "outer"), "a stream-stream join")
            if window is None:
                raise TopologyError("a stream-stream join needs window=windows.JoinWindow(before, after=None, "
                                    "grace=0): which records of the other stream may match")
            if not isinstance(window, JoinWindow):
                raise TopologyError(f"a stream-stream join needs window=windows.JoinWindow(...), got {window!r}")
            if key is not None:
                raise TopologyError("key= picks the row of a GlobalTable only; a stream-stream join matches "
                                    "records with equal keys (re-key a stream first with .map(...))")
            params = {"join": JoinKind.STREAM_STREAM, "key": None}
            parents = [self.node, other.node]
        else:
            raise TopologyError(f"join() needs a Stream, Table or GlobalTable, got {other!r}")
        if name is not None and not isinstance(name, str):
            raise TopologyError(f"join(name=) must be a string, got {name!r}")
        params.update({"how": how, "joiner": joiner, "window": window, "name": name})
        node = self.topology._add(NodeKind.JOIN, parents, params, key_changed=False)
        return Stream(self.topology, node, key_serde=self.key_serde, value_serde=None)

    # -- sinks --------------------------------------------------------------------------
    def to(self, topic, *, key=None, value=None) -> None:
        """Write the stream to ``topic`` with the given serdes (default: the stream's, else Json).

        ``topic`` may be a connector (``connectors.RabbitMQ(...)`` ...): the records go to the internal
        topic ``<app-id>-<name>-egress`` in the checkpoint's transaction, and the instances deliver what
        committed to the external system (DESIGN section 9)."""
        from .. import serdes
        from ..connectors import Connector

        connector = None
        if isinstance(topic, Connector):
            if not topic.sink:
                raise TopologyError(f"{topic.describe()} cannot be written to: give it where to write "
                                    f"(a RabbitMQ exchange, a JetStream subject, a Redis stream)")
            connector, topic = topic, f"{self.topology.app_id}-{topic.name or topic.default_name()}-egress"
        if not isinstance(topic, str) or not topic:
            raise TopologyError(f"to() needs a topic name, got {topic!r}")
        for what, s in (("key", key), ("value", value)):
            if s is not None and not isinstance(s, serdes.Serde):
                raise TopologyError(f"to({topic!r}): {what}= must be a serde such as serdes.Json(), got {s!r}")
        params = {
            "topic": topic,
            "key_serde": key or self.key_serde or serdes.Json(),
            "value_serde": value or self.value_serde or serdes.Json(),
        }
        if connector is not None:
            params["connector"] = connector
        self._then(NodeKind.SINK, params)

    def __getattr__(self, name):
        if name in ("aggregate", "count", "reduce", "window"):
            raise TopologyError(
                f"{name}() needs a grouped stream: call .group_by(fn) or .group_by_key() first, "
                f"e.g. stream.group_by_key().{name}(...)")
        raise AttributeError(f"'Stream' has no attribute {name!r}")

    def __repr__(self):
        return f"Stream({self.node.label})"


class GroupedStream:
    """A stream grouped by key, ready for ``window`` / ``aggregate`` / ``count`` / ``reduce``."""

    def __init__(self, stream: Stream, *, name=None, window: WindowSpec | None = None, late_topic=None):
        self._stream = stream
        self._name = name
        self._window = window
        self._late_topic = late_topic

    def window(self, spec: WindowSpec, *, late_topic: str | None = None) -> "WindowedStream":
        """Aggregate per key and window (``windows.Tumbling/Hopping/Sliding/Session``).

        ``late_topic``: records late for a closed window are also written there (in the checkpoint, so
        exactly-once covers them), key and value as they reached the window, with headers ``window``,
        ``stream_time`` and ``operator``; they are counted as late either way."""
        from ..windows import JoinWindow

        if not isinstance(spec, WindowSpec) or isinstance(spec, JoinWindow):
            raise TopologyError(f"window() needs a window spec such as windows.Tumbling('1m'), got {spec!r}"
                                + (" (a JoinWindow is for stream.join(..., window=))" if isinstance(spec, JoinWindow)
                                   else ""))
        if self._window is not None:
            raise TopologyError("window() was already given for this grouped stream")
        if late_topic is not None and (not isinstance(late_topic, str) or not late_topic):
            raise TopologyError(f"window(late_topic=) must be a topic name, got {late_topic!r}")
        return WindowedStream(self._stream, name=self._name, window=spec, late_topic=late_topic)

    def aggregate(self, *, emit: str | None = None, name: str | None = None, retention=None, **aggs):
        """Named aggregations, e.g. ``aggregate(views=agg.count(), seconds=agg.sum("s"))``.

        Windowed: one record per window, ``{"window_start", "window_end", <agg>...}``;
        ``emit="final"`` (default) when the window closes, ``emit="update"`` after each batch.
        Not windowed: a continuously updated table, ``{<agg>: ...}`` per key after each batch.

        ``retention`` (windowed only; a duration, default and minimum: the window's size + grace) keeps
        closed windows in the store, with their final values, until stream time reaches the window's
        start + retention (sessions: end + retention), as a Kafka Streams window store does, so
        HTTP queries, ``streamproc state`` and ``TopologyTestDriver.state`` can read recent closed
        windows (marked ``"closed": True``); the changelog's retention follows. Closing and emitting
        are unchanged (see ``streamproc.windows``).
        """
        if isinstance(retention, Aggregation):
            raise TopologyError("aggregate(): 'retention' is the store's retention, not an aggregation name; "
                                "pick another name")
        if not aggs:
            raise TopologyError("aggregate() needs at least one named aggregation, e.g. aggregate(n=agg.count())")
        for k, a in aggs.items():
            if not isinstance(a, Aggregation):
                raise TopologyError(f"aggregate({k}=...) must be an aggregation such as agg.count(), got {a!r}")
            if k in ("window_start", "window_end"):
                raise TopologyError(f"aggregate(): {k!r} is reserved for the window bounds; pick another name")
        if emit is None:
            emit = "final" if self._window is not None else "update"
        if emit not in ("final", "update"):
            raise TopologyError(f"emit must be 'final' or 'update', got {emit!r}")
        if emit == "final" and self._window is None:
            raise TopologyError(
                "emit='final' needs a window: an aggregate without .window(...) never closes; "
                "use emit='update' or add .window(...)")
        if retention is not None:
            if self._window is None:
                raise TopologyError(
                    "aggregate(retention=...) is for windowed aggregations (how long closed windows are kept); "
                    "an aggregate without .window(...) keeps every key, so leave retention out or add .window(...)")
            retention = self._window.check_retention(retention, name)
        up = self._stream
        from .. import serdes

        node = up.topology._add(NodeKind.AGGREGATE, [up.node], {
            "aggs": dict(aggs), "window": self._window, "emit": emit, "retention": retention,
            "store": name, "repartition_name": self._name, "late_topic": self._late_topic,
            "late_key_serde": up.key_serde or serdes.Json(), "late_value_serde": up.value_serde or serdes.Json(),
        }, key_changed=False)
        # the result is keyed by the group key, which is how it is (re)partitioned
        if self._window is None:
            from .table import Table
            return Table(up.topology, node, key_serde=up.key_serde, value_serde=None)
        return Stream(up.topology, node, key_serde=up.key_serde, value_serde=None)

    def count(self, *, emit: str | None = None, name: str | None = None, retention=None):
        """Shorthand for ``aggregate(count=agg.count())``."""
        from .. import agg
        return self.aggregate(count=agg.count(), emit=emit, name=name, retention=retention)

    def reduce(self, fn, *, emit: str | None = None, name: str | None = None, retention=None):
        """Shorthand for ``aggregate(reduce=agg.reduce(fn))``: ``fn(acc, value)``, the first value starts."""
        from .. import agg
        return self.aggregate(reduce=agg.reduce(fn), emit=emit, name=name, retention=retention)


class WindowedStream(GroupedStream):
    """A grouped stream with a window spec."""
