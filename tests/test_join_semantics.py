"""Join semantics of streamproc (DESIGN.md sections 3 and 4) against tests/join_reference.py.

Everything here goes through the public API of DESIGN.md section 3 only:
``Topology``/``windows``/``serdes`` and ``streamproc.testing.TopologyTestDriver``.

What is compared
----------------
A scenario is a topology kind plus a list of pipes; a pipe is ``(topic, records, single)``:
``single`` pipes go through ``d.pipe`` (one record, one batch), the others through
``d.pipe_many`` (the whole list is one batch).  After every pipe each output topic is drained;
results are compared per pipe as multisets (the order inside one batch is not part of the
contract), and the sequence of per-pipe multisets must be equal, so every result must also come
out in the right batch (e.g. an unmatched left-join result neither before its window closes
nor later than the record that closes it).  The model runs record at a time also inside a
batch; for a batch the union of its records' results is compared.  Metrics ``late_records``
and ``dropped_none_key`` are compared at the end.

Kinds: ``ss`` stream-stream join; ``ss_tab`` the same task also holding a stream-table join
(so that a table record advances the task's stream time); ``st`` stream-table join;
``global`` stream-global-table join; ``tt`` table-table join (optionally behind filter /
map_values); ``table`` a table, a filtered or mapped table, or ``to_stream`` written to a topic.
Inputs have one partition (one task) except in ``test_stream_stream_join_three_partitions`` and the
``*_rekeyed_four_partitions`` tests, where the model keeps one task per partition: keys placed with
the declared partitioner (murmur2 or crc32) over the String key; a re-keyed side (``map(by_k)``)
goes through its upstream task first and then to the partition the other side's topic gives its
new key (:func:`_route`).

Values carry a unique ``id`` so that two updates are never equal (DESIGN does not say whether
an update to an identical value is a change) and every result names the records it came from.

Ambiguities kept out of the random inputs (each has a hand example or is left alone):
* ``None``-key records get a timestamp <= the stream time so far, so that whether they advance
  stream time does not matter (pinned by ``ss_none_key_advances_stream_time``, the reading that
  a record the task received is "seen");
* ``None``-key stream records stay out of global-table joins (the hand examples
  ``global_none_key_dropped*`` pin DESIGN's "dropped and counted" there);
* inside one ``pipe_many`` a second tombstone of a key the same batch already deleted is left
  out (which timestamp the one ``None`` change would carry is not pinned).

Knob: STREAMPROC_PROP_SCALE=20 multiplies the number of Hypothesis examples (deep run).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import join_reference as jr

from streamproc import Topology, serdes, windows
from streamproc.partitioner import partition_for
from streamproc.state import codec
from streamproc.testing import TopologyTestDriver

KEYS = ["a", "b", "c"]
ORIGINAL_KEYS = ["o1", "o2", "o3", "o4", "o5"]     # keys of re-keyed topics before their re-key
SEL = ("late_records", "dropped_none_key")


# --------------------------------------------------------------------------- user functions


def compact_joiner(left, right):
    """A non-default joiner: the ids of both sides."""
    return {"l": None if left is None else left["id"], "r": None if right is None else right["id"]}


def positive(k, v):
    return v["v"] > 0


def times_ten(v):
    return {"id": v["id"], "w": v["v"] * 10}


def by_ref(k, v):
    return v["ref"]


JOINERS = {None: None, "compact": compact_joiner}
FILTERS = {"positive": positive}
MAPPERS = {"times_ten": times_ten}


# --------------------------------------------------------------------------- scenarios


OUTPUTS = {"ss": ["out"], "ss_tab": ["out", "out2"], "st": ["out"], "global": ["out"], "tt": ["out"],
           "table": ["out"]}


@dataclass
class Scenario:
    kind: str
    params: dict
    pipes: list            # [(topic, [(key, value, ts), ...], single)]
    expected: list | None = None      # per pipe: {topic: [(key, value, ts), ...]}  (hand examples)
    metrics: dict = field(default_factory=dict)   # expected counters (hand examples; absent = 0)
    partitions: int = 1               # of every input topic (each partition is one task)


def by_k(k, v):
    """The re-key of the re-keyed scenarios: the join key travels in the value as ``k``."""
    return v["k"], v


def build(kind: str, p: dict) -> Topology:
    t = Topology("app")
    joiner = JOINERS[p.get("joiner")]
    part = p.get("partitioner", "murmur2")
    rekey = p.get("rekey", ())
    if kind in ("ss", "ss_tab"):
        s = t.stream("left", key=serdes.String(), value=serdes.Json(), partitioner=part)
        r = t.stream("right", key=serdes.String(), value=serdes.Json(), partitioner=part)
        s = s.map(by_k) if "left" in rekey else s
        r = r.map(by_k) if "right" in rekey else r
        w = windows.JoinWindow(p["before"], after=p.get("after"), grace=p.get("grace", 0))
        s.join(r, joiner, how=p["how"], window=w, name="j").to("out", value=serdes.Json())
        if kind == "ss_tab":
            tab = t.table("tab", key=serdes.String(), value=serdes.Json(), name="tab")
            s.join(tab, how="left").to("out2", value=serdes.Json())
    elif kind == "st":
        s = t.stream("left", key=serdes.String(), value=serdes.Json(), partitioner=part)
        s = s.map(by_k) if "left" in rekey else s
        tab = t.table("tab", key=serdes.String(), value=serdes.Json(), name="tab", partitioner=part)
        s.join(tab, joiner, how=p["how"]).to("out", value=serdes.Json())
    elif kind == "global":
        s = t.stream("left", key=serdes.String(), value=serdes.Json())
        g = t.global_table("glob", key=serdes.String(), value=serdes.Json(), name="glob")
        key_fn = by_ref if p.get("key") == "ref" else None
        s.join(g, joiner, how=p["how"], key=key_fn).to("out", value=serdes.Json())
    elif kind == "tt":
        tab = t.table("tab", key=serdes.String(), value=serdes.Json(), name="tab")
        tab2 = t.table("tab2", key=serdes.String(), value=serdes.Json(), name="tab2")
        left, right = tab, tab2
        pipeline = p.get("pipeline", "plain")
        if pipeline == "filter_left":
            left = tab.filter(positive)
        elif pipeline == "map_left":
            left = tab.map_values(times_ten)
        elif pipeline == "filter_right":
            right = tab2.filter(positive)
        left.join(right, joiner, how=p["how"]).to("out", value=serdes.Json())
    elif kind == "table":
        tab = t.table("tab", key=serdes.String(), value=serdes.Json(), name="tab")
        view = p.get("view", "plain")
        if view == "plain":
            tab.to("out", value=serdes.Json())
        elif view == "filter":
            tab.filter(positive).to("out", value=serdes.Json())
        elif view == "map_values":
            tab.map_values(times_ten).to("out", value=serdes.Json())
        elif view == "to_stream":
            tab.to_stream().to("out", value=serdes.Json())
        else:
            raise ValueError(view)
    else:
        raise ValueError(kind)
    return t


class Model:
    """The reference model wired like ``build(kind, p)``."""

    def __init__(self, kind: str, p: dict):
        self.kind = kind
        joiner = JOINERS[p.get("joiner")]
        self.ss = self.st = self.tt = None
        self.chains: dict = {}
        if kind in ("ss", "ss_tab"):
            self.ss = jr.StreamStreamJoin(p["how"], p["before"], p.get("after"), p.get("grace", 0), joiner)
            if kind == "ss_tab":
                self.tab = jr.SourceTable()
                self.st = jr.StreamTableJoin(self.tab, "left")
        elif kind == "st":
            self.tab = jr.SourceTable()
            self.st = jr.StreamTableJoin(self.tab, p["how"], joiner)
        elif kind == "global":
            self.tab = jr.SourceTable()
            self.st = jr.StreamTableJoin(self.tab, p["how"], joiner, key_fn=by_ref if p.get("key") == "ref" else None)
        elif kind == "tt":
            self.tt = jr.TableTableJoin(p["how"], joiner)
            pipeline = p.get("pipeline", "plain")
            left = [jr.SourceTable()]
            right = [jr.SourceTable()]
            if pipeline == "filter_left":
                left.append(jr.FilterTable(positive))
            elif pipeline == "map_left":
                left.append(jr.MapValuesTable(times_ten))
            elif pipeline == "filter_right":
                right.append(jr.FilterTable(positive))
            self.chains = {"tab": (left, self.tt.left_batch), "tab2": (right, self.tt.right_batch)}
        elif kind == "table":
            view = p.get("view", "plain")
            nodes = [jr.SourceTable()]
            if view == "filter":
                nodes.append(jr.FilterTable(positive))
            elif view == "map_values":
                nodes.append(jr.MapValuesTable(times_ten))
            self.chains = {"tab": (nodes, None)}
        else:
            raise ValueError(kind)

    def feed(self, topic: str, records: list) -> dict:
        """``records``: ``(key, value, ts)``, or ``(key, value, ts, judge_at)`` for a re-keyed topic's."""
        out = {t: [] for t in OUTPUTS[self.kind]}
        if self.kind in ("ss", "ss_tab"):
            for k, v, ts, *judge in records:
                if topic in ("left", "right"):
                    out["out"] += self.ss.process(topic, k, v, ts, *judge)
                    if self.kind == "ss_tab" and topic == "left":
                        out["out2"] += self.st.process(k, v, ts)
                else:   # a table record: an input of the task like any other
                    out["out"] += self.ss.advance(ts)
                    self.tab.batch([(k, v, ts)])
        elif self.kind in ("st", "global"):
            if topic == "left":
                for k, v, ts, *_ in records:
                    out["out"] += self.st.process(k, v, ts)
            else:
                self.tab.batch(records)
        else:
            nodes, sink = self.chains[topic]
            changes = records
            for n in nodes:
                changes = n.batch(changes)
            out["out"] += sink(changes) if sink else changes
        return out

    def metrics(self) -> dict:
        m = {k: 0 for k in SEL}
        for op in (self.ss, self.st):
            if op is not None:
                for k, v in op.metrics().items():
                    m[k] += v
        return m


def _key(k):
    return k.decode() if isinstance(k, (bytes, bytearray)) else k


def _canon(rows) -> list:
    rows = [(_key(k), v, ts) for k, v, ts in rows]
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))


def _partition(key, n: int, partitioner: str = "murmur2") -> int:
    return 0 if n == 1 else partition_for(serdes.String().serialize(key), n, partitioner)


def _route(sc: Scenario, topic: str, recs: list, up_time: dict) -> dict:
    """``{partition: records}``: where a pipe's records reach the join tasks. A source topic's record
    goes to its key's partition (the declared partitioner over the String key). A re-keyed topic's
    records first go to the upstream task of their original key; each upstream task's share is one
    batch, handed on in the order the upstream partitions first appear; a re-keyed record then goes
    to the partition the *other side's topic* gives its new key (DESIGN section 3: co-partitioned),
    carrying its upstream task's stream time (``up_time``: (topic, upstream partition) -> time)."""
    n, part = sc.partitions, sc.params.get("partitioner", "murmur2")
    rekey = sc.params.get("rekey", ())
    place = lambda k: _partition(k, n, part)                             # noqa: E731
    if topic in rekey:
        upstream: dict = {}
        for k, v, ts in recs:
            u = place(k)
            up_time[(topic, u)] = max(up_time.get((topic, u), -1), ts)
            upstream.setdefault(u, []).append((v["k"], v, ts, up_time[(topic, u)]))
        recs = [r for rs in upstream.values() for r in rs]
        if len(rekey) == len(STREAM_TOPICS[sc.kind]):
            # every input re-keyed: no topic to follow, streamproc's own placement (murmur2 of the
            # internal key encoding) - the one rule this model takes from streamproc
            place = lambda k: 0 if n == 1 else partition_for(codec.encode_key(k), n)   # noqa: E731
    by_p: dict = {}
    for r in recs:
        by_p.setdefault(place(r[0]), []).append(r)
    return by_p


def run_model(sc: Scenario):
    """One model per task (input partition); a pipe's records go where :func:`_route` says,
    each partition's share of a pipe_many being one batch."""
    models = [Model(sc.kind, sc.params) for _ in range(sc.partitions)]
    per_pipe = []
    up_time: dict = {}
    for topic, recs, _ in sc.pipes:
        by_p = _route(sc, topic, recs, up_time)
        out = {t: [] for t in OUTPUTS[sc.kind]}
        for p, rs in by_p.items():
            for t, rows in models[p].feed(topic, rs).items():
                out[t] += rows
        if up_time and models[0].ss is not None:
            # the end of a pipe: every upstream task publishes its stream time, idle (all caught up), so
            # a repartitioned input's time is the largest of them (DESIGN section 4)
            wm = max(up_time.values())
            for m in models:
                out["out"] += m.ss.advance(wm)
        per_pipe.append({t: _canon(rs) for t, rs in out.items()})
    metrics = {k: sum(m.metrics()[k] for m in models) for k in SEL}
    return per_pipe, metrics


def run_streamproc(sc: Scenario):
    per_pipe = []
    parts = None if sc.partitions == 1 else {t: sc.partitions for t in STREAM_TOPICS[sc.kind]}
    with TopologyTestDriver(build(sc.kind, sc.params), partitions=parts) as d:
        for topic, recs, single in sc.pipes:
            if single:
                assert len(recs) == 1
                (k, v, ts), = recs
                d.pipe(topic, k, v, timestamp=ts)
            else:
                d.pipe_many(topic, list(recs))
            per_pipe.append({t: _canon(d.read_output(t)) for t in OUTPUTS[sc.kind]})
        metrics = d.metrics()
    return per_pipe, {k: metrics.get(k, 0) for k in SEL}


def _fmt_rows(rows):
    return "\n".join(f"        {k!r} {json.dumps(v)} ts={t}" for k, v, t in rows) or "        (nothing)"


def report(sc: Scenario, expected, got, exp_m, got_m, who_expected="model") -> str:
    lines = [f"kind={sc.kind} params={sc.params} partitions={sc.partitions}",
             "pipes (topic, [(key, value, ts)], single):"]
    lines += [f"  #{i}: {topic} {'pipe' if single else 'pipe_many'} {recs!r}"
              for i, (topic, recs, single) in enumerate(sc.pipes)]
    for i, (e, g) in enumerate(zip(expected, got)):
        if e != g:
            lines.append(f"first differing pipe: #{i}")
            for t in e:
                if e[t] != g.get(t):
                    lines.append(f"  topic {t!r} expected ({who_expected}):")
                    lines.append(_fmt_rows(e[t]))
                    lines.append(f"  topic {t!r} got (streamproc):")
                    lines.append(_fmt_rows(g.get(t, [])))
            break
    if exp_m != got_m:
        lines.append(f"metrics expected ({who_expected}) {exp_m}, got (streamproc) {got_m}")
    return "\n".join(lines)


def check(sc: Scenario):
    expected, exp_m = run_model(sc)
    got, got_m = run_streamproc(sc)
    if got != expected or got_m != exp_m:
        pytest.fail(report(sc, expected, got, exp_m, got_m), pytrace=False)


# --------------------------------------------------------------------------- strategies

SCALE = float(os.environ.get("STREAMPROC_PROP_SCALE", "1"))


def prop(n):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


STREAM_TOPICS = {"ss": ["left", "right"], "ss_tab": ["left", "right", "tab"], "st": ["left", "tab"],
                 "global": ["left", "glob"], "tt": ["tab", "tab2"], "table": ["tab"]}
TABLE_TOPICS = {"tab", "tab2", "glob"}


@st.composite
def events(draw, kind, *, max_len=30, none_keys=True, span=200):
    """A random out-of-order input: a bounded random walk of timestamps in [0, span] over 1-3
    keys, drawn as steps (small moves, now and then a jump forward that closes windows) so that
    Hypothesis shrinks by deleting records and moving steps to 0.
    Table records are tombstones one time in four (x == -1).  None-key records (stream topics
    only) never move stream time (see the module doc)."""
    keys = KEYS[:draw(st.integers(1, 3))]
    key_pool = keys * 4 + ([None] if none_keys else [])
    steps = draw(st.lists(
        st.tuples(st.sampled_from(STREAM_TOPICS[kind]), st.sampled_from(key_pool), st.integers(-30, 15),
                  st.integers(-1, 2), st.sampled_from(keys), st.sampled_from([0, 0, 0, 0, 0, 40])),
        min_size=2, max_size=max_len))
    ts = draw(st.integers(0, 40))
    top = None
    out = []
    for i, (topic, key, delta, x, ref, jump) in enumerate(steps):
        ts = min(span, max(0, ts + delta + jump))
        if key is None and (top is None or topic in TABLE_TOPICS):
            key = keys[0]
        t = ts if key is not None else min(ts, top)
        top = t if top is None else max(top, t)
        if topic in TABLE_TOPICS:
            value = None if x == -1 else {"id": i, "v": x}
        elif kind == "global":
            value = {"id": i, "ref": ref}
        else:
            value = {"id": i, "v": x}
        out.append((topic, key, value, t))
    return out


def _drop_repeated_tombstones(chunk, present: dict):
    """Inside one pipe_many, leave out a tombstone of a key the same batch already left absent
    (its change's timestamp is not pinned); ``present`` tracks table contents across batches."""
    topic = chunk[0][0]
    seen = set()
    kept = []
    for rec in chunk:
        _, k, v, _ = rec
        if topic in TABLE_TOPICS:
            here = present.setdefault(topic, set())
            if v is None and k in seen and k not in here:
                continue
            seen.add(k)
            (here.add if v is not None else here.discard)(k)
        kept.append(rec)
    return kept


@st.composite
def scenarios(draw, kind, params, *, mode, partitions=1, **kw):
    """mode "single": one pipe per record; "batch": runs of one topic cut at random, each a
    pipe_many (a run of length one included). Topics in ``params["rekey"]`` are re-keyed by the
    topology: their records get a random original key and carry the join key in the value."""
    evs = draw(events(kind, **kw))
    rekey = params.get("rekey", ())
    if rekey:
        orig = draw(st.lists(st.sampled_from(ORIGINAL_KEYS), min_size=len(evs), max_size=len(evs)))
        evs = [(topic, o, {**v, "k": k}, ts) if topic in rekey else (topic, k, v, ts)
               for (topic, k, v, ts), o in zip(evs, orig)]
    if mode == "single":
        pipes = [(topic, [(k, v, ts)], True) for topic, k, v, ts in evs]
    else:
        cuts = draw(st.lists(st.booleans(), min_size=len(evs), max_size=len(evs)))
        chunks = []
        for e, cut in zip(evs, cuts):
            if chunks and not cut and chunks[-1][-1][0] == e[0]:
                chunks[-1].append(e)
            else:
                chunks.append([e])
        present: dict = {}
        pipes = []
        for ch in chunks:
            ch = _drop_repeated_tombstones(ch, present)
            pipes.append((ch[0][0], [(k, v, ts) for _, k, v, ts in ch], False))
    return Scenario(kind, dict(params), pipes, partitions=partitions)


def ss_params(how=None):
    return st.fixed_dictionaries({
        "how": st.sampled_from(["inner", "left", "outer"]) if how is None else st.just(how),
        "before": st.sampled_from([0, 3, 10, 25]),
        "after": st.sampled_from([None, 0, 5, 15]),
        "grace": st.sampled_from([0, 2, 10]),
        "joiner": st.sampled_from([None, "compact"]),
    })


def with_params(param_st, kind, mode, **kw):
    return param_st.flatmap(lambda p: scenarios(kind, p, mode=mode, **kw))


# --------------------------------------------------------------------------- property tests


@pytest.mark.parametrize("mode", ["single", "batch"])
@pytest.mark.parametrize("how", ["inner", "left", "outer"])
def test_stream_stream_join_matches_model(how, mode):
    @prop(350)
    @given(with_params(ss_params(how), "ss", mode))
    def run(sc):
        check(sc)

    run()


def test_stream_stream_join_three_partitions():
    """Stream time is per task: with 3 partitions keys a and c share a task, b has its own
    (murmur2), so b's records never close a's windows."""
    assert [_partition(k, 3) for k in KEYS] == [1, 2, 1]

    @prop(250)
    @given(st.sampled_from(["single", "batch"]).flatmap(
        lambda mode: with_params(ss_params(), "ss", mode, partitions=3, none_keys=False)))
    def run(sc):
        check(sc)

    run()


@pytest.mark.parametrize("rekey", [("left",), ("right",), ("left", "right")])
@pytest.mark.parametrize("partitioner", ["murmur2", "crc32"])
def test_stream_stream_join_rekeyed_four_partitions(rekey, partitioner):
    """A re-keyed side meets the other side's records of its key in one task: its repartition places
    each record like the other side's topic does (its key serde, its partitioner), 4 partitions."""
    assert len({_partition(k, 4, partitioner) for k in KEYS}) > 1

    @prop(120)
    @given(st.sampled_from(["single", "batch"]).flatmap(lambda mode: with_params(
        ss_params().map(lambda p: {**p, "rekey": rekey, "partitioner": partitioner}), "ss", mode,
        partitions=4, none_keys=False)))
    def run(sc):
        check(sc)

    run()


@pytest.mark.parametrize("how", ["inner", "left"])
@pytest.mark.parametrize("partitioner", ["murmur2", "crc32"])
def test_stream_table_join_rekeyed_four_partitions(how, partitioner):
    """A re-keyed stream joined with a table topic of 4 partitions finds every row of its key."""
    @prop(120)
    @given(st.sampled_from(["single", "batch"]).flatmap(lambda mode: with_params(
        st.fixed_dictionaries({"how": st.just(how), "joiner": st.sampled_from([None, "compact"]),
                               "rekey": st.just(("left",)), "partitioner": st.just(partitioner)}),
        "st", mode, partitions=4, none_keys=False)))
    def run(sc):
        check(sc)

    run()


def test_stream_stream_join_time_moved_by_table_records():
    """A stream-stream and a stream-table join in one task: table records advance the task's
    stream time too, so they close join windows (left/outer results come out on them)."""

    @prop(400)
    @given(st.sampled_from(["single", "batch"]).flatmap(
        lambda mode: with_params(ss_params(), "ss_tab", mode, none_keys=False)))
    def run(sc):
        check(sc)

    run()


@pytest.mark.parametrize("how", ["inner", "left"])
def test_stream_table_join_matches_model(how):
    @prop(250)
    @given(st.sampled_from(["single", "batch"]).flatmap(lambda mode: with_params(
        st.fixed_dictionaries({"how": st.just(how), "joiner": st.sampled_from([None, "compact"])}), "st", mode)))
    def run(sc):
        check(sc)

    run()


@pytest.mark.parametrize("key", [None, "ref"])
@pytest.mark.parametrize("how", ["inner", "left"])
def test_global_table_join_matches_model(how, key):
    # None keys stay out: with key= the stream key is not the table key (see the hand examples)
    @prop(150)
    @given(st.sampled_from(["single", "batch"]).flatmap(lambda mode: with_params(
        st.fixed_dictionaries({"how": st.just(how), "key": st.just(key),
                               "joiner": st.sampled_from([None, "compact"])}), "global", mode, none_keys=False)))
    def run(sc):
        check(sc)

    run()


@pytest.mark.parametrize("pipeline", ["plain", "filter_left", "map_left", "filter_right"])
@pytest.mark.parametrize("how", ["inner", "left", "outer"])
def test_table_table_join_matches_model(how, pipeline):
    @prop(120 if pipeline != "plain" else 300)
    @given(st.sampled_from(["single", "batch"]).flatmap(lambda mode: with_params(
        st.fixed_dictionaries({"how": st.just(how), "pipeline": st.just(pipeline),
                               "joiner": st.sampled_from([None, "compact"])}), "tt", mode, none_keys=False)))
    def run(sc):
        check(sc)

    run()


@pytest.mark.parametrize("view", ["plain", "filter", "map_values", "to_stream"])
def test_table_changes_match_model(view):
    @prop(150)
    @given(st.sampled_from(["single", "batch"]).flatmap(lambda mode: with_params(
        st.just({"view": view}), "table", mode, none_keys=False)))
    def run(sc):
        check(sc)

    run()


# --------------------------------------------------------------------------- hand examples
# Each is checked twice: the model must give the expected output (a bug in the model is
# caught) and so must streamproc.  Expected values are written out from DESIGN's wording.


def V(i, **kw):
    return {"id": i, **kw}


def J(left, right):
    return {"left": None if left is None else V(left), "right": None if right is None else V(right)}


def one(topic, key, value, ts):
    return (topic, [(key, value, ts)], True)


def many(topic, recs):
    return (topic, list(recs), False)


def outs(*rows, topic="out", **more):
    d = {topic: list(rows)}
    d.update({t: list(r) for t, r in more.items()})
    return d


def ss(how, before, after=None, grace=0, **kw):
    return dict(how=how, before=before, after=after, grace=grace, **kw)


EXAMPLES = {
    # "a left record at tl matches right records with tl - before <= tr <= tl + after";
    # "timestamp max(tl, tr), emitted at once"; a left record's window closes when
    # stream_time > tl + after + grace; "a record whose own window is already closed on arrival is late"
    "ss_inner_range_close_and_late": Scenario("ss", ss("inner", 10), [
        one("left", "a", V(1), 100),
        one("right", "a", V(2), 90),     # tl - before = 90: in range
        one("right", "a", V(3), 110),    # tl + after = 110: in range; left still open (110 > 110 is false)
        one("right", "a", V(4), 111),    # out of range; stream time 111 closes left@100
        one("left", "a", V(5), 100),     # own window closes at stream time > 110: late
        one("right", "b", V(6), 105),    # open (closes at > 115); no left b
        one("left", "b", V(7), 101),     # window open (> 111); matches right b@105
    ], expected=[
        outs(), outs(("a", J(1, 2), 100)), outs(("a", J(1, 3), 110)), outs(), outs(), outs(),
        outs(("b", J(7, 6), 105)),
    ], metrics={"late_records": 1}),
    # before != after: a left at 100 with before=5, after=20 matches right records in [95, 120];
    # a right record's window closes when stream_time > tr + before + grace
    "ss_asymmetric_window": Scenario("ss", ss("inner", 5, after=20), [
        one("left", "a", V(1), 100),
        one("right", "a", V(2), 95),     # closes at stream time > 100: open
        one("right", "a", V(3), 94),     # closes at > 99: late (and out of range)
        one("right", "a", V(4), 120),    # tl + after: in range
        one("left", "a", V(5), 118),     # [113, 138]: right@120 (open until > 125)
        one("right", "a", V(6), 121),    # closes left@100 (> 120); matches left@118 (<= 138)
        one("left", "a", V(7), 126),     # [121, 146]: right@121 open (closes at > 126); right@120 closed
    ], expected=[
        outs(), outs(("a", J(1, 2), 100)), outs(), outs(("a", J(1, 4), 120)), outs(("a", J(5, 4), 120)),
        outs(("a", J(5, 6), 121)), outs(("a", J(7, 6), 126)),
    ], metrics={"late_records": 1}),
    # left: "a record that never matched emits joiner(v, None) when its window closes, timestamp =
    # its own; never earlier"; stream time is per task over both inputs (any key)
    "ss_left_unmatched_at_close": Scenario("ss", ss("left", 10), [
        one("left", "a", V(1), 100),
        one("right", "b", V(2), 110),    # stream time 110: left@100 not closed yet (110 > 110 false)
        one("right", "b", V(3), 111),    # closes it: unmatched result now, at its own timestamp
        one("left", "a", V(4), 105),     # open until > 115
        one("right", "a", V(5), 100),    # closes at > 110: late
        one("left", "b", V(6), 112),     # matches right b@110 and b@111: two results
        one("left", "c", V(7), 200),     # closes all: left a@105 unmatched, left b@112 matched
    ], expected=[
        outs(), outs(), outs(("a", J(1, None), 100)), outs(), outs(),
        outs(("b", J(6, 2), 112), ("b", J(6, 3), 112)), outs(("a", J(4, None), 105)),
    ], metrics={"late_records": 1}),
    # grace delays the close: left@100 with JoinWindow(10, grace=5) closes at stream time > 115
    "ss_left_grace": Scenario("ss", ss("left", 10, grace=5), [
        one("left", "a", V(1), 100),
        one("right", "z", V(2), 115),
        one("right", "a", V(3), 110),    # still joins: left@100 open, right@110 open (closes > 125)
        one("left", "b", V(4), 100),     # open until > 115: not late (stream time 115)
        one("right", "z", V(5), 116),    # closes left a@100 (matched) and left b@100 (unmatched)
    ], expected=[
        outs(), outs(), outs(("a", J(1, 3), 110)), outs(), outs(("b", J(4, None), 100)),
    ]),
    # outer: unmatched records of both sides emit when their window closes
    "ss_outer": Scenario("ss", ss("outer", 10, after=0, grace=5), [
        one("right", "a", V(1), 50),
        one("left", "a", V(2), 60),      # [50, 60]: right@50 open (closes > 65)
        one("left", "b", V(3), 61),      # closes at > 66
        one("right", "c", V(4), 70),     # closes left b@61 (unmatched); a@60 and right a@50 matched
        one("left", "d", V(5), 86),      # closes right c@70 (> 85, unmatched)
    ], expected=[
        outs(), outs(("a", J(2, 1), 60)), outs(), outs(("b", J(3, None), 61)), outs(("c", J(None, 4), 70)),
    ]),
    # a window that never closes never emits its unmatched result
    "ss_outer_never_closed": Scenario("ss", ss("outer", 10), [
        one("left", "a", V(1), 100),
        one("right", "b", V(2), 105),
        one("left", "a", V(3), 110),
    ], expected=[outs(), outs(), outs()]),
    # the same inputs as one batch: same results as record by record
    "ss_left_batch": Scenario("ss", ss("left", 10), [
        many("left", [("a", V(1), 100), ("b", V(2), 103), ("a", V(3), 111)]),
        # right b@104 joins left b@103; right b@90 is late (closes at > 100); right a@121 closes
        # left b@103 (matched: nothing) and joins left a@111 (open until > 121)
        many("right", [("b", V(4), 104), ("b", V(5), 90), ("a", V(6), 121)]),
    ], expected=[
        outs(("a", J(1, None), 100)),
        outs(("b", J(2, 4), 104), ("a", J(3, 6), 121)),
    ], metrics={"late_records": 1}),
    # "one result per match": equal records (same key, value and timestamp) are two records
    "ss_duplicate_records": Scenario("ss", ss("left", 10), [
        one("left", "a", V(1), 10),
        one("left", "a", V(1), 10),
        one("right", "a", V(2), 12),
        one("left", "b", V(3), 10),
        one("left", "b", V(3), 10),
        one("right", "z", V(4), 21),     # closes all four left records: b's two never matched
    ], expected=[
        outs(), outs(), outs(("a", J(1, 2), 12), ("a", J(1, 2), 12)), outs(), outs(),
        outs(("b", J(3, None), 10), ("b", J(3, None), 10)),
    ]),
    # "Records with a None key reaching ... a join are dropped and counted"
    "ss_none_key_dropped": Scenario("ss", ss("outer", 10), [
        one("left", None, V(1), 5),
        one("right", None, V(2), 5),
    ], expected=[outs(), outs()], metrics={"dropped_none_key": 2}),
    # stream time = the largest event timestamp the task has seen: a None-key record is seen
    "ss_none_key_advances_stream_time": Scenario("ss", ss("left", 10), [
        one("left", "a", V(1), 100),
        one("left", None, V(2), 111),
    ], expected=[outs(), outs(("a", J(1, None), 100))], metrics={"dropped_none_key": 1}),
    # "Stream time is per task over both inputs" -- and over a table topic of the same task
    "ss_table_record_advances_stream_time": Scenario("ss_tab", ss("left", 10), [
        one("left", "a", V(1), 100),
        one("tab", "x", V(2), 110),
        one("tab", "x", None, 111),
    ], expected=[
        outs(out2=[("a", J(1, None), 100)]), outs(out2=[]), outs(("a", J(1, None), 100), out2=[]),
    ]),
    # "Stream time is per task (per input partition group)": with 3 partitions a and c share a task
    # (murmur2), b has its own
    "ss_stream_time_per_task": Scenario("ss", ss("left", 10), [
        one("left", "a", V(1), 100),
        one("right", "b", V(2), 200),    # another task: a's window stays open
        one("right", "c", V(3), 111),    # a's task: closes it
    ], expected=[outs(), outs(), outs(("a", J(1, None), 100))], partitions=3),
    # stream-table: the table's value at the moment the stream record is processed; result
    # timestamp = the stream record's; inner drops a record with no row
    "st_inner": Scenario("st", dict(how="inner"), [
        one("left", "a", V(1), 10),
        one("tab", "a", V(2), 50),
        one("left", "a", V(3), 1),
        one("tab", "a", None, 60),
        one("left", "a", V(4), 70),
        one("left", None, V(5), 70),
    ], expected=[outs(), outs(), outs(("a", J(3, 2), 1)), outs(), outs(), outs()],
        metrics={"dropped_none_key": 1}),
    "st_left": Scenario("st", dict(how="left"), [
        one("left", "a", V(1), 10),
        one("tab", "a", V(2), 50),
        one("left", "a", V(3), 1),
        one("tab", "a", None, 60),
        one("left", "a", V(4), 70),
        one("left", None, V(5), 70),
    ], expected=[outs(("a", J(1, None), 10)), outs(), outs(("a", J(3, 2), 1)), outs(),
                 outs(("a", J(4, None), 70)), outs()],
        metrics={"dropped_none_key": 1}),
    "st_batches": Scenario("st", dict(how="inner"), [
        many("tab", [("a", V(1), 1), ("b", V(2), 2), ("c", V(9), 3), ("c", None, 4)]),
        many("left", [("a", V(3), 5), ("b", V(4), 6), ("c", V(5), 7), ("a", V(6), 0)]),
    ], expected=[outs(), outs(("a", J(3, 1), 5), ("b", J(4, 2), 6), ("a", J(6, 1), 0))]),
    # global table: key= picks the row
    "global_inner_key_fn": Scenario("global", dict(how="inner", key="ref"), [
        one("glob", "x", V(1), 1),
        one("left", "a", V(2, ref="x"), 10),
        one("left", "b", V(3, ref="y"), 11),
    ], expected=[outs(), outs(("a", {"left": V(2, ref="x"), "right": V(1)}, 10)), outs()]),
    "global_left_key_fn": Scenario("global", dict(how="left", key="ref"), [
        one("glob", "x", V(1), 1),
        one("left", "a", V(2, ref="x"), 10),
        one("left", "b", V(3, ref="y"), 11),
        one("glob", "x", None, 12),
        one("left", "c", V(4, ref="x"), 13),
    ], expected=[outs(), outs(("a", {"left": V(2, ref="x"), "right": V(1)}, 10)),
                 outs(("b", {"left": V(3, ref="y"), "right": None}, 11)), outs(),
                 outs(("c", {"left": V(4, ref="x"), "right": None}, 13))]),
    "global_default_key": Scenario("global", dict(how="inner"), [
        one("glob", "a", V(1), 1),
        one("left", "a", V(2), 10),
        one("left", "b", V(3), 10),
    ], expected=[outs(), outs(("a", J(2, 1), 10)), outs()]),
    # DESIGN section 4: "Records with a None key reaching ... a join are dropped and counted" --
    # also a global-table join, even when key= could pick a row from the value (Kafka Streams
    # >= 3.7, KIP-962, would join it; DESIGN's sentence has no exception)
    "global_none_key_dropped": Scenario("global", dict(how="left"), [
        one("glob", "a", V(1), 1),
        one("left", None, V(2), 10),
    ], expected=[outs(), outs()], metrics={"dropped_none_key": 1}),
    "global_none_key_dropped_with_key_fn": Scenario("global", dict(how="left", key="ref"), [
        one("glob", "x", V(1), 1),
        one("left", None, V(2, ref="x"), 10),
    ], expected=[outs(), outs()], metrics={"dropped_none_key": 1}),
    # table-table: "every change of either side re-computes the key's result"; "a key whose result
    # stops existing emits None; nothing is emitted for a key that had and has no result";
    # timestamp = max(the triggering change's, the other side's row's)
    "tt_inner": Scenario("tt", dict(how="inner"), [
        one("tab", "a", V(1), 10),
        one("tab2", "a", V(2), 5),
        one("tab", "a", V(3), 7),
        one("tab2", "a", None, 20),
        one("tab", "a", None, 25),
        one("tab2", "b", V(6), 1),
    ], expected=[outs(), outs(("a", J(1, 2), 10)), outs(("a", J(3, 2), 7)), outs(("a", None, 20)), outs(),
                 outs()]),
    "tt_left": Scenario("tt", dict(how="left"), [
        one("tab", "a", V(1), 10),
        one("tab2", "a", V(2), 5),
        one("tab", "a", V(3), 7),
        one("tab2", "a", None, 20),
        one("tab", "a", None, 25),
        one("tab2", "b", V(6), 1),
    ], expected=[outs(("a", J(1, None), 10)), outs(("a", J(1, 2), 10)), outs(("a", J(3, 2), 7)),
                 outs(("a", J(3, None), 20)), outs(("a", None, 25)), outs()]),
    "tt_outer": Scenario("tt", dict(how="outer"), [
        one("tab", "a", V(1), 10),
        one("tab2", "a", V(2), 5),
        one("tab", "a", V(3), 7),
        one("tab2", "a", None, 20),
        one("tab", "a", None, 25),
        one("tab2", "b", V(6), 1),
        one("tab2", "c", None, 30),      # tombstone for an absent key: nothing
    ], expected=[outs(("a", J(1, None), 10)), outs(("a", J(1, 2), 10)), outs(("a", J(3, 2), 7)),
                 outs(("a", J(3, None), 20)), outs(("a", None, 25)), outs(("b", J(None, 6), 1)), outs()]),
    "tt_delete_timestamp_is_the_larger": Scenario("tt", dict(how="inner"), [
        one("tab", "a", V(1), 50),
        one("tab2", "a", V(2), 60),
        one("tab", "a", None, 55),       # result gone: max(55, right row's 60)
    ], expected=[outs(), outs(("a", J(1, 2), 60)), outs(("a", None, 60))]),
    # "A table's changes flow downstream at the end of each batch, one per changed key"
    "tt_batch_one_change_per_key": Scenario("tt", dict(how="inner"), [
        one("tab2", "a", V(1), 1),
        many("tab", [("a", V(2), 2), ("a", None, 3)]),   # inserted then deleted: nothing
        many("tab", [("a", V(4), 4), ("a", V(5), 3)]),   # the latest only
        many("tab2", [("b", V(6), 6), ("a", None, 7), ("a", V(8), 2)]),
    ], expected=[outs(), outs(), outs(("a", J(5, 1), 3)), outs(("a", J(5, 8), 3))]),
    "tt_outer_other_side_inserted_then_deleted": Scenario("tt", dict(how="outer"), [
        one("tab", "a", V(1), 1),
        many("tab2", [("a", V(2), 2), ("a", None, 3)]),  # tab2 emits nothing for a: no change
    ], expected=[outs(("a", J(1, None), 1)), outs()]),
    "table_batches": Scenario("table", dict(view="plain"), [
        many("tab", [("a", V(1), 1), ("a", V(2), 2), ("b", V(3), 3), ("b", None, 4), ("c", None, 5)]),
        many("tab", [("a", None, 6), ("a", V(7), 7)]),
        one("tab", "a", None, 8),
        one("tab", "a", None, 9),
    ], expected=[outs(("a", V(2), 2)), outs(("a", V(7), 7)), outs(("a", None, 8)), outs()]),
    "table_to_stream": Scenario("table", dict(view="to_stream"), [
        many("tab", [("a", V(1), 1), ("b", V(3), 3), ("b", None, 4)]),
        one("tab", "a", None, 8),
    ], expected=[outs(("a", V(1), 1)), outs(("a", None, 8))]),
    # filter: "a row that stops passing ... flows as None; a key that never passed flows nothing"
    "table_filter": Scenario("table", dict(view="filter"), [
        one("tab", "a", V(1, v=0), 1),
        one("tab", "a", V(2, v=1), 2),
        one("tab", "a", V(3, v=0), 3),
        one("tab", "a", V(4, v=0), 4),
        one("tab", "a", None, 5),
        one("tab", "b", V(6, v=5), 6),
        one("tab", "b", None, 7),
        many("tab", [("c", V(8, v=1), 8), ("c", V(9, v=0), 9)]),  # passed then not, in one batch
    ], expected=[outs(), outs(("a", V(2, v=1), 2)), outs(("a", None, 3)), outs(), outs(),
                 outs(("b", V(6, v=5), 6)), outs(("b", None, 7)), outs()]),
    "table_map_values": Scenario("table", dict(view="map_values"), [
        one("tab", "a", V(1, v=2), 1),
        one("tab", "a", None, 2),
        one("tab", "b", None, 3),
    ], expected=[outs(("a", {"id": 1, "w": 20}, 1)), outs(("a", None, 2)), outs()]),
    "tt_filtered_left": Scenario("tt", dict(how="left", pipeline="filter_left"), [
        one("tab2", "a", V(1), 1),
        one("tab", "a", V(2, v=0), 2),   # never passed: no left row, nothing
        one("tab", "a", V(3, v=1), 3),
        one("tab", "a", V(4, v=0), 4),   # stops passing: the left row is gone, result None
    ], expected=[outs(), outs(), outs(("a", {"left": V(3, v=1), "right": V(1)}, 3)), outs(("a", None, 4))]),
}


def _expected_of(sc: Scenario):
    per_pipe = [{t: _canon(rows.get(t, [])) for t in OUTPUTS[sc.kind]} for rows in sc.expected]
    return per_pipe, {k: sc.metrics.get(k, 0) for k in SEL}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_model_on_hand_example(name):
    """The reference model itself, against outputs written out from DESIGN's wording."""
    sc = EXAMPLES[name]
    expected, exp_m = _expected_of(sc)
    got, got_m = run_model(sc)
    assert (got, got_m) == (expected, exp_m), report(sc, expected, got, exp_m, got_m, "hand")


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_streamproc_on_hand_example(name):
    sc = EXAMPLES[name]
    expected, exp_m = _expected_of(sc)
    got, got_m = run_streamproc(sc)
    if (got, got_m) != (expected, exp_m):
        pytest.fail(report(sc, expected, got, exp_m, got_m, "hand"), pytrace=False)


def test_model_batches_equal_record_at_a_time_for_streams():
    """Model self-check: for stream-stream joins a batch is the union of its records' results."""
    @prop(200)
    @given(with_params(ss_params(), "ss", "batch"))
    def run(sc):
        single = Scenario(sc.kind, sc.params, [(t, [r], True) for t, recs, _ in sc.pipes for r in recs])
        got, gm = run_model(sc)
        per_record, sm = run_model(single)
        it = iter(per_record)
        for (t, recs, _), g in zip(sc.pipes, got):
            union = []
            for _ in recs:
                union += next(it)["out"]
            assert g["out"] == _canon(union)
        assert gm == sm

    run()
