"""Window semantics of streamproc (DESIGN.md section 4) against tests/reference_model.py.

Everything here goes through the public API of DESIGN.md section 3 only:
``Topology``/``windows``/``agg``/``serdes`` and ``streamproc.testing.TopologyTestDriver``.

How results are compared
------------------------
Each ``pipe`` is one batch (DESIGN.md section 4), and ``read_output`` drains, so
the tests call ``read_output`` after EVERY ``pipe`` and compare the results of
each batch with the model's results for that batch, as multisets.  Inside one
batch the order across different windows/keys is not specified; a batch holds
at most one result per window in both emit modes ("the current value of each
window changed by a batch"; "one result per window when it closes"), so the
multiset comparison per batch is exactly "per key+window: same results in the
same order", and it also checks that each result comes out in the right batch.

Sliding windows: the model covers timestamps >= max_difference only (Kafka
Streams handles earlier records with a special [0, d] window), so the sliding
generators keep timestamps >= d.  reference_model._SlidingKind defines the
window set ("a new window each time a record enters or drops out", Kafka
SlidingWindows javadoc / KIP-450).  Kafka Streams' own incremental algorithm
(reference_model.kafka_sliding_port) loses records in some out-of-order cases
(see test_sliding_out_of_order_beyond_grace_creates_drop_out_window); the
"disorder within grace" tests stay where both agree, so a failure there is
unambiguous, and every failing sliding example says whether streamproc's
output equals Kafka's algorithm.

Session windows in emit="update": Kafka Streams also sends a tombstone for each
session that a merge removes; DESIGN.md does not pin that, so results whose
value is None are ignored (and only those).

Knobs: STREAMPROC_PROP_SCALE=20 multiplies the number of Hypothesis examples
(deep run); STREAMPROC_SESSION_MERGE_CLOSED=0 switches sessions to the reading
where closed sessions are never merged (default: the literal DESIGN.md text,
every session within the gap is merged).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import reference_model as m
from reference_model import Hopping, Session, Sliding, Tumbling

from streamproc import Topology, agg, serdes, windows
from streamproc.testing import TopologyTestDriver


KEYS = ["a", "b", "c"]
COUNT_SUM = {"n": ("count", None), "total": ("sum", "v")}
MIN_MAX = {"n": ("count", None), "total": ("sum", "v"), "lo": ("min", "v"), "hi": ("max", "v")}
ORDERED = {"n": ("count", None), "first": ("first", "v"), "last": ("last", "v"), "all": ("collect", "v")}
# DESIGN.md question (see test_session_merging_a_closed_session_literal_reading):
# does a record merge a session that has already closed?  Kafka Streams does not: its
# session store's retention defaults to gap + grace and a fetch never returns a session
# older than observedStreamTime - retention + 1 (AbstractRocksDBSegmentedBytesStore
# .getActualFrom), so a closed session is final.  Keeping closed sessions mergeable would
# also need unbounded state: a later record can extend an open session backwards until it
# bridges to any closed one.  Default: closed sessions never merge.
# STREAMPROC_SESSION_MERGE_CLOSED=1 holds the model to the literal "every session" reading.
SESSION_MERGE_CLOSED = os.environ.get("STREAMPROC_SESSION_MERGE_CLOSED", "0") != "0"


# --------------------------------------------------------------------------- plumbing


def sp_window(spec):
    if isinstance(spec, Tumbling):
        return windows.Tumbling(spec.size, grace=spec.grace)
    if isinstance(spec, Hopping):
        return windows.Hopping(spec.size, spec.advance, grace=spec.grace)
    if isinstance(spec, Sliding):
        return windows.Sliding(spec.max_difference, grace=spec.grace)
    if isinstance(spec, Session):
        return windows.Session(spec.gap, grace=spec.grace)
    raise TypeError(spec)


def sp_aggs(aggs):
    return {name: (agg.count() if op == "count" else getattr(agg, op)(f)) for name, (op, f) in aggs.items()}


def build(spec, aggs, emit):
    t = Topology("app")
    (
        t.stream("in", key=serdes.String(), value=serdes.Json())
        .group_by_key()
        .window(sp_window(spec))
        .aggregate(**sp_aggs(aggs), emit=emit)
        .to("out", value=serdes.Json())
    )
    return t


def drive(records, spec, aggs=COUNT_SUM, emit="final"):
    """Pipe one record per batch; return the drained output after each pipe."""
    out = []
    with TopologyTestDriver(build(spec, aggs, emit)) as d:
        for key, value, ts in records:
            d.pipe("in", key, value, timestamp=ts)
            out.append(list(d.read_output("out")))
    return out


def _key(k):
    # the output key serde is not given explicitly; accept the group key as str or its UTF-8 bytes
    return k.decode() if isinstance(k, (bytes, bytearray)) else k


def canon(key, value, ts):
    return (_key(key), value, ts)


def _sort_key(c):
    key, value, ts = c
    if value is None:
        return (repr(key), -1, -1, ts, "")
    return (repr(key), value.get("window_start"), value.get("window_end"), ts, repr(sorted(value.items())))


def canon_batches(batches, *, drop_tombstones=False):
    res = []
    for b in batches:
        cs = [canon(r.key, r.value, r.timestamp) for r in b]
        if drop_tombstones:
            cs = [c for c in cs if c[1] is not None]
        res.append(sorted(cs, key=_sort_key))
    return res


def fmt(rows):
    return "\n".join(f"      {k!r} {v} ts={t}" for k, v, t in rows) or "      (nothing)"


def diff_report(records, spec, emit, expected, got):
    lines = [f"spec={spec} emit={emit}", "input (key, value, ts) one per pipe:"]
    lines += [f"  {i}: {r!r}" for i, r in enumerate(records)]
    for i, (e, g) in enumerate(zip(expected, got)):
        if e != g:
            lines.append(f"first differing batch: #{i} (after piping {records[i]!r})")
            lines.append("   expected (model):")
            lines.append(fmt(e))
            lines.append("   got (streamproc):")
            lines.append(fmt(g))
            break
    return "\n".join(lines)


def check(records, spec, aggs=COUNT_SUM, emit="final"):
    """Run streamproc and the model on ``records``; assert equal batch by batch."""
    got_raw = drive(records, spec, aggs, emit)
    tomb = isinstance(spec, Session) and emit == "update"
    got = canon_batches(got_raw, drop_tombstones=tomb)
    expected = canon_batches(m.run(records, spec, aggs, emit, session_merge_closed=SESSION_MERGE_CLOSED).batches)
    if got != expected:
        msg = diff_report(records, spec, emit, expected, got)
        if isinstance(spec, Sliding):
            kafka = canon_batches(m.kafka_sliding_port(records, spec, aggs, emit).batches)
            msg += (
                "\nstreamproc output EQUALS Kafka Streams' incremental algorithm (reference_model.kafka_sliding_port)"
                if kafka == got
                else "\nstreamproc output differs from Kafka Streams' incremental algorithm too"
            )
        pytest.fail(msg, pytrace=False)
    return got


# --------------------------------------------------------------------------- strategies

GRACES = [0, 1, 3, 10]


def spec_strategy(kind):
    if kind == "tumbling":
        return st.builds(Tumbling, st.sampled_from([5, 10, 20]), st.sampled_from(GRACES))
    if kind == "hopping":
        return st.sampled_from([(10, 5), (10, 3), (20, 5), (10, 10), (12, 8)]).flatmap(
            lambda sa: st.builds(Hopping, st.just(sa[0]), st.just(sa[1]), st.sampled_from(GRACES))
        )
    if kind == "sliding":
        return st.builds(Sliding, st.sampled_from([3, 5, 10]), st.sampled_from(GRACES))
    if kind == "session":
        return st.builds(Session, st.sampled_from([2, 5, 10]), st.sampled_from(GRACES))
    raise ValueError(kind)


def min_ts(spec):
    # sliding: keep ts >= d (see module doc); others start at 0 so that hopping
    # windows with negative start are exercised.
    return spec.max_difference if isinstance(spec, Sliding) else 0


@st.composite
def streams(draw, spec, max_len=25, span=150, max_back=25, none_keys=True, keys=tuple(KEYS)):
    """A random out-of-order stream: a bounded random walk of timestamps (so
    windows overlap, close, and records arrive late), 3 keys, int values.
    Drawn as a list of steps so that Hypothesis shrinks by deleting records
    and moving steps towards 0.  None-key records get a timestamp <= the
    current maximum so that they do not move stream time (whether they would
    is a separate, pinned test)."""
    lo = min_ts(spec)
    key_st = st.sampled_from(list(keys) + ([None] if none_keys else []))
    steps = draw(st.lists(st.tuples(key_st, st.integers(-max_back, 12), st.integers(-5, 20)), min_size=1, max_size=max_len))
    ts = lo + draw(st.integers(0, 30))
    top = None
    out = []
    for key, delta, v in steps:
        ts = min(lo + span, max(lo, ts + delta))
        if key is None and top is None:
            key = keys[0]
        t = ts if key is not None else min(ts, top)
        top = t if top is None else max(top, t)
        out.append((key, {"v": v}, t))
    return out


def spec_and_stream(kind, **kw):
    return spec_strategy(kind).flatmap(lambda s: st.tuples(st.just(s), streams(s, **kw)))


# STREAMPROC_PROP_SCALE=20 for a deep run (examples x 20)
SCALE = float(os.environ.get("STREAMPROC_PROP_SCALE", "1"))


def prop(n):
    return settings(
        max_examples=max(1, int(n * SCALE)),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


PROP = prop(400)

# --------------------------------------------------------------------------- property tests


@pytest.mark.parametrize("emit", ["final", "update"])
@pytest.mark.parametrize("kind", ["tumbling", "hopping", "session"])
def test_matches_model(kind, emit):
    @PROP
    @given(spec_and_stream(kind))
    def run(case):
        spec, records = case
        check(records, spec, COUNT_SUM, emit)

    run()


@pytest.mark.parametrize("emit", ["final", "update"])
def test_session_one_key_dense(emit):
    """One key, small gaps: many merges, including merges of closed sessions."""

    @PROP
    @given(st.builds(Session, st.sampled_from([2, 3, 5]), st.sampled_from([0, 1, 3])).flatmap(
        lambda s: st.tuples(st.just(s), streams(s, max_back=15, span=60, keys=("a", "x")))))
    def run(case):
        spec, records = case
        check(records, spec, COUNT_SUM, emit)

    run()


@pytest.mark.parametrize("emit", ["final", "update"])
def test_sliding_matches_model_disorder_within_grace(emit):
    """Sliding, out-of-order by at most ``grace``: here Kafka Streams'
    algorithm and the model agree exactly (asserted), so any difference is
    unambiguous."""

    @PROP
    @given(st.builds(Sliding, st.sampled_from([3, 5, 10]), st.sampled_from([0, 2, 6, 12])).flatmap(
        lambda s: st.tuples(st.just(s), streams(s, max_back=s.grace))))
    def run(case):
        spec, records = case
        assume(
            canon_batches(m.run(records, spec, emit=emit).batches)
            == canon_batches(m.kafka_sliding_port(records, spec, emit=emit).batches)
        )
        check(records, spec, COUNT_SUM, emit)

    run()


@pytest.mark.parametrize("emit", ["final", "update"])
def test_sliding_matches_model(emit):
    """Sliding, any disorder (records more than grace behind stream time)."""

    @PROP
    @given(spec_and_stream("sliding"))
    def run(case):
        spec, records = case
        check(records, spec, COUNT_SUM, emit)

    run()


@pytest.mark.parametrize("kind", ["tumbling", "hopping", "sliding", "session"])
def test_min_max_match_model(kind):
    @prop(150)
    @given(spec_and_stream(kind, max_back=6))
    def run(case):
        spec, records = case
        check(records, spec, MIN_MAX, "update")

    run()


@pytest.mark.parametrize("kind", ["tumbling", "hopping"])
def test_arrival_ordered_aggregates_match_model(kind):
    """first/last/collect, read as arrival order (DESIGN.md does not define
    the order; this is the Flink FIRST_VALUE/LAST_VALUE reading)."""

    @prop(100)
    @given(spec_and_stream(kind))
    def run(case):
        spec, records = case
        check(records, spec, ORDERED, "final")

    run()


# --------------------------------------------------------------------------- pinned examples
#
# Each example states the expected batches literally AND checks them against the
# model, so a reviewer can read the rule off the test.


def W(key, start, end, ts, n, total):
    return (key, {"window_start": start, "window_end": end, "n": n, "total": total}, ts)


def expect(records, spec, emit, expected):
    expected = [sorted(b, key=_sort_key) for b in expected]
    model = m.run(records, spec, COUNT_SUM, emit, session_merge_closed=SESSION_MERGE_CLOSED)
    assert canon_batches(model.batches) == expected, "model disagrees with example"
    got = canon_batches(drive(records, spec, COUNT_SUM, emit),
                        drop_tombstones=isinstance(spec, Session) and emit == "update")
    assert got == expected, diff_report(records, spec, emit, expected, got)


def test_tumbling_basic_close():
    expect([("k", {"v": 1}, 1), ("k", {"v": 2}, 5), ("k", {"v": 4}, 12)], Tumbling(10, 0), "final",
           [[], [], [W("k", 0, 10, 5, 2, 3)]])


def test_tumbling_record_at_end_plus_grace_is_late():
    # [0,10) grace 5 is closed from stream time 15 on (>=)
    recs = [("k", {"v": 1}, 3), ("x", {"v": 1}, 15), ("k", {"v": 7}, 9)]
    expect(recs, Tumbling(10, 5), "final", [[], [W("k", 0, 10, 3, 1, 1)], []])
    expect(recs, Tumbling(10, 5), "update", [[W("k", 0, 10, 3, 1, 1)], [W("x", 10, 20, 15, 1, 1)], []])


def test_tumbling_record_at_end_plus_grace_minus_one_is_accepted():
    recs = [("k", {"v": 1}, 3), ("x", {"v": 1}, 14), ("k", {"v": 7}, 9), ("x", {"v": 1}, 15)]
    expect(recs, Tumbling(10, 5), "final", [[], [], [], [W("k", 0, 10, 9, 2, 8)]])
    expect(recs, Tumbling(10, 5), "update",
           [[W("k", 0, 10, 3, 1, 1)], [W("x", 10, 20, 14, 1, 1)], [W("k", 0, 10, 9, 2, 8)], [W("x", 10, 20, 15, 2, 2)]])


def test_result_timestamp_is_max_event_time_in_window():
    # 2 arrives after 8: the result timestamp stays 8 (not the last arrival, not stream time 10)
    expect([("k", {"v": 1}, 8), ("k", {"v": 1}, 2), ("x", {"v": 0}, 10)], Tumbling(10, 0), "final",
           [[], [], [W("k", 0, 10, 8, 2, 2)]])


def test_update_mode_late_record_emits_nothing():
    recs = [("k", {"v": 1}, 1), ("k", {"v": 2}, 5), ("k", {"v": 3}, 12), ("k", {"v": 9}, 7)]
    expect(recs, Tumbling(10, 0), "update",
           [[W("k", 0, 10, 1, 1, 1)], [W("k", 0, 10, 5, 2, 3)], [W("k", 10, 20, 12, 1, 3)], []])


def test_open_windows_are_not_emitted_in_final_mode():
    expect([("k", {"v": 1}, 1), ("k", {"v": 2}, 9)], Tumbling(10, 0), "final", [[], []])


def test_duration_strings_equal_milliseconds():
    recs = [("k", {"v": 1}, 1000), ("k", {"v": 2}, 14999), ("k", {"v": 4}, 9999), ("k", {"v": 8}, 20000)]
    by_int = drive(recs, Tumbling(10_000, 5_000))
    t = Topology("app")
    (t.stream("in", key=serdes.String(), value=serdes.Json())
       .group_by_key().window(windows.Tumbling("10s", grace="5s"))
       .aggregate(n=agg.count(), total=agg.sum("v"), emit="final").to("out", value=serdes.Json()))
    with TopologyTestDriver(t) as d:
        by_str = []
        for k, v, ts in recs:
            d.pipe("in", k, v, timestamp=ts)
            by_str.append(list(d.read_output("out")))
    assert canon_batches(by_str) == canon_batches(by_int) == [[], [], [], [W("k", 0, 10000, 9999, 2, 5)]]


def test_all_aggregates_and_callable_fields():
    t = Topology("app")
    (t.stream("in", key=serdes.String(), value=serdes.Json())
       .group_by_key().window(windows.Tumbling(10))
       .aggregate(n=agg.count(), s=agg.sum("v"), lo=agg.min("v"), hi=agg.max("v"), avg=agg.mean("v"),
                  first=agg.first("v"), last=agg.last("v"), all=agg.collect("v"),
                  dbl=agg.sum(lambda v: 2 * v["v"]), emit="final")
       .to("out", value=serdes.Json()))
    with TopologyTestDriver(t) as d:
        for k, v, ts in [("k", 4, 7), ("k", 1, 2), ("k", 6, 5), ("x", 0, 10)]:
            d.pipe("in", k, {"v": v}, timestamp=ts)
        (res,) = d.read_output("out")
    assert (_key(res.key), res.timestamp) == ("k", 7)
    value = dict(res.value)
    assert value.pop("avg") == pytest.approx(11 / 3)
    assert value == {
        "window_start": 0, "window_end": 10, "n": 3, "s": 11, "lo": 1, "hi": 6,
        "first": 4, "last": 6, "all": [4, 1, 6],  # arrival order (DESIGN.md does not say)
        "dbl": 22,
    }


def test_hopping_record_in_every_containing_window():
    # size 10 advance 5: ts 7 -> [0,10) and [5,15); ts 3 -> only [0,10) (no [-5,5))
    expect([("k", {"v": 1}, 7), ("k", {"v": 2}, 3)], Hopping(10, 5, 0), "update",
           [[W("k", 0, 10, 7, 1, 1), W("k", 5, 15, 7, 1, 1)], [W("k", 0, 10, 7, 2, 3)]])


def test_hopping_size_over_advance_not_integral():
    expect([("k", {"v": 1}, 12)], Hopping(10, 3, 0), "update",
           [[W("k", 3, 13, 12, 1, 1), W("k", 6, 16, 12, 1, 1), W("k", 9, 19, 12, 1, 1), W("k", 12, 22, 12, 1, 1)]])


def test_hopping_late_for_some_windows_only():
    recs = [("k", {"v": 1}, 7), ("k", {"v": 2}, 3), ("k", {"v": 4}, 12), ("k", {"v": 8}, 9), ("k", {"v": 16}, 16)]
    # 9 arrives at stream time 12: late for [0,10), applied to [5,15)
    expect(recs, Hopping(10, 5, 0), "final", [[], [], [W("k", 0, 10, 7, 2, 3)], [], [W("k", 5, 15, 12, 3, 13)]])


def test_sliding_kafka_javadoc_example():
    recs = [("A", {"v": 1}, 8000), ("A", {"v": 2}, 9200), ("A", {"v": 3}, 12400), ("x", {"v": 0}, 20000)]
    expect(recs, Sliding(5000, 0), "final", [
        [],
        [W("A", 3000, 8000, 8000, 1, 1)],
        [W("A", 4200, 9200, 9200, 2, 3)],
        [W("A", 7400, 12400, 12400, 3, 6), W("A", 8001, 13001, 12400, 2, 5), W("A", 9201, 14201, 12400, 1, 3)],
    ])
    expect(recs, Sliding(5000, 0), "update", [
        [W("A", 3000, 8000, 8000, 1, 1)],
        [W("A", 4200, 9200, 9200, 2, 3), W("A", 8001, 13001, 9200, 1, 2)],
        [W("A", 7400, 12400, 12400, 3, 6), W("A", 8001, 13001, 12400, 2, 5), W("A", 9201, 14201, 12400, 1, 3)],
        [W("x", 15000, 20000, 20000, 1, 0)],
    ])


def test_sliding_window_still_open_at_stream_time_end_plus_grace():
    # d 10 grace 0: [90,100] is closed only when stream time > 100 (strict, unlike tumbling)
    recs = [("k", {"v": 1}, 100), ("x", {"v": 0}, 100), ("k", {"v": 2}, 95), ("x", {"v": 0}, 101)]
    expect(recs, Sliding(10, 0), "final",
           [[], [], [], [W("k", 90, 100, 100, 2, 3), W("x", 90, 100, 100, 1, 0)]])
    expect(recs, Sliding(10, 0), "update", [
        [W("k", 90, 100, 100, 1, 1)],
        [W("x", 90, 100, 100, 1, 0)],
        [W("k", 90, 100, 100, 2, 3), W("k", 96, 106, 100, 1, 1)],
        [W("x", 91, 101, 101, 2, 0), W("x", 101, 111, 101, 1, 0)],
    ])


def test_sliding_record_lateness_boundary():
    base = [("k", {"v": 1}, 100), ("k", {"v": 2}, 112)]
    # stream 112: ts 101 is late (112 > 101 + 10 + 0); ts 102 is not
    expect(base + [("k", {"v": 4}, 101)], Sliding(10, 0), "update",
           [[W("k", 90, 100, 100, 1, 1)], [W("k", 102, 112, 112, 1, 2)], []])
    expect(base + [("k", {"v": 4}, 102)], Sliding(10, 0), "update",
           [[W("k", 90, 100, 100, 1, 1)], [W("k", 102, 112, 112, 1, 2)],
            [W("k", 102, 112, 112, 2, 6), W("k", 103, 113, 112, 1, 2)]])


def test_sliding_previous_record_right_window_when_own_left_window_is_closed():
    """d 10 grace 1.  20 arrives at stream time 22: its left window [10,20] is
    born closed (22 > 21), but the right window of the previous record 10,
    [11,21], now holds 20 and is open until stream time 22 (> 21 + 1 needed),
    so it is created (Kafka Streams does this too: createPreviousRecordRightWindow)."""
    recs = [("a", {"v": 1}, 10), ("a", {"v": 2}, 22), ("a", {"v": 4}, 20), ("a", {"v": 8}, 23)]
    expect(recs, Sliding(10, 1), "update", [
        [W("a", 0, 10, 10, 1, 1)],
        [W("a", 12, 22, 22, 1, 2)],
        [W("a", 11, 21, 20, 1, 4), W("a", 12, 22, 22, 2, 6), W("a", 21, 31, 22, 1, 2)],
        [W("a", 13, 23, 23, 3, 14), W("a", 21, 31, 23, 2, 10), W("a", 23, 33, 23, 1, 8)],
    ])
    # final: [11,21] closes at stream time 23 (> 21 + 1)
    expect(recs, Sliding(10, 1), "final", [[], [W("a", 0, 10, 10, 1, 1)], [], [W("a", 11, 21, 20, 1, 4)]])


def test_sliding_out_of_order_beyond_grace_creates_drop_out_window():
    """d 10 grace 5.  14's left window [4,14] is born closed; when 10 arrives
    (not late: 23 <= 10+10+5) the window after 10 drops out, [11,21], holds 14
    and is open.  Kafka Streams' incremental algorithm does not create it (see
    reference_model.kafka_sliding_port); the definition does."""
    recs = [("a", {"v": 2}, 23), ("a", {"v": 3}, 14), ("a", {"v": 0}, 10)]
    expect(recs, Sliding(10, 5), "update", [
        [W("a", 13, 23, 23, 1, 2)],
        [W("a", 13, 23, 23, 2, 5), W("a", 15, 25, 23, 1, 2)],
        [W("a", 11, 21, 14, 1, 3)],
    ])


def test_session_merge_by_bridging_record():
    recs = [("k", {"v": 1}, 100), ("k", {"v": 2}, 118), ("k", {"v": 4}, 109), ("x", {"v": 0}, 149)]
    expect(recs, Session(10, 20), "update", [
        [W("k", 100, 100, 100, 1, 1)],
        [W("k", 118, 118, 118, 1, 2)],
        [W("k", 100, 118, 118, 3, 7)],
        [W("x", 149, 149, 149, 1, 0)],
    ])
    # [100,118] closes when stream time > 118 + 10 + 20; the merged-away sessions never appear
    expect(recs, Session(10, 20), "final", [[], [], [], [W("k", 100, 118, 118, 3, 7)]])


def test_session_gap_inclusive():
    recs = [("k", {"v": 1}, 100), ("k", {"v": 1}, 110), ("k", {"v": 1}, 121)]
    expect(recs, Session(10, 100), "update",
           [[W("k", 100, 100, 100, 1, 1)], [W("k", 100, 110, 110, 2, 2)], [W("k", 121, 121, 121, 1, 1)]])


def test_session_close_boundary():
    recs = [("k", {"v": 1}, 100), ("x", {"v": 0}, 110), ("x", {"v": 0}, 111)]
    expect(recs, Session(10, 0), "final", [[], [], [W("k", 100, 100, 100, 1, 1)]])


def test_session_late_record_dropped():
    recs = [("k", {"v": 1}, 100), ("x", {"v": 0}, 200), ("k", {"v": 5}, 150), ("k", {"v": 7}, 195)]
    expect(recs, Session(10, 0), "update", [
        [W("k", 100, 100, 100, 1, 1)],
        [W("x", 200, 200, 200, 1, 0)],
        [],
        [W("k", 195, 195, 195, 1, 7)],
    ])


def test_session_merging_a_closed_session_literal_reading():
    """Closed [100,100] (already emitted) and a record at 105 within the gap.
    Kafka Streams (and the default here): a closed session is final, so 105 starts
    its own session [105,105].  Literal "every session" reading
    (STREAMPROC_SESSION_MERGE_CLOSED=1): 105 merges it into [100,105] and record
    100 counts in two final results."""
    recs = [("k", {"v": 1}, 100), ("x", {"v": 0}, 111), ("k", {"v": 2}, 105), ("x", {"v": 0}, 116)]
    last = W("k", 100, 105, 105, 2, 3) if SESSION_MERGE_CLOSED else W("k", 105, 105, 105, 1, 2)
    expect(recs, Session(10, 0), "final", [[], [W("k", 100, 100, 100, 1, 1)], [], [last]])


def test_session_record_bridging_a_closed_and_an_open_session():
    """gap 5 grace 3.  At stream time 114, [100,100] is closed (114 > 108) and
    [106,106] is open.  103 is within the gap of both: the literal DESIGN.md
    rule merges both, [100,106] (open: 114 > 114 is false)."""
    recs = [("a", {"v": 1}, 100), ("a", {"v": 2}, 106), ("x", {"v": 0}, 114), ("a", {"v": 4}, 103)]
    last = W("a", 100, 106, 106, 3, 7) if SESSION_MERGE_CLOSED else W("a", 103, 106, 106, 2, 6)
    expect(recs, Session(5, 3), "update",
           [[W("a", 100, 100, 100, 1, 1)], [W("a", 106, 106, 106, 1, 2)], [W("x", 114, 114, 114, 1, 0)], [last]])


def test_none_key_dropped():
    recs = [(None, {"v": 1}, 5), ("k", {"v": 2}, 5)]
    for spec in (Tumbling(10, 0), Hopping(10, 5, 0), Sliding(5, 0), Session(5, 0)):
        got = canon_batches(drive(recs, spec, COUNT_SUM, "update"), drop_tombstones=isinstance(spec, Session))
        assert got[0] == [], spec
        assert all(c[0] == "k" for c in got[1]), spec


def test_none_key_record_advances_task_stream_time():
    """DESIGN.md: stream time is per TASK, the largest event timestamp seen so
    far; a None-key record is seen by the task, so it moves stream time (Kafka
    Streams' window processors skip null keys before updating their own
    observed stream time, so Kafka would emit nothing here)."""
    expect([("k", {"v": 1}, 5), (None, {"v": 1}, 10)], Tumbling(10, 0), "final", [[], [W("k", 0, 10, 5, 1, 1)]])


def _murmur2(data: bytes) -> int:
    """Kafka's Utils.murmur2 (unsigned 32-bit result)."""
    m32, mix, r = 0xFFFFFFFF, 0x5BD1E995, 24
    n = len(data)
    h = (0x9747B28C ^ n) & m32
    for i in range(0, n - n % 4, 4):
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * mix) & m32
        k ^= k >> r
        k = (k * mix) & m32
        h = ((h * mix) & m32) ^ k
    tail, rem = n & ~3, n % 4
    if rem == 3:
        h ^= data[tail + 2] << 16
    if rem >= 2:
        h ^= data[tail + 1] << 8
    if rem >= 1:
        h ^= data[tail]
        h = (h * mix) & m32
    h ^= h >> 13
    h = (h * mix) & m32
    h ^= h >> 15
    return h


def _partition(key: str, n: int) -> int:
    return (_murmur2(key.encode()) & 0x7FFFFFFF) % n


def test_stream_time_is_per_task():
    """Two input partitions = two tasks, each with its own stream time: a
    record far in the future on one partition closes nothing on the other."""
    assert _murmur2(b"21") == -973932308 & 0xFFFFFFFF  # Kafka UtilsTest vector
    assert _murmur2(b"abc") == 479470107
    by_part = {}
    for c in "abcdefghijklmnopqrstuvwxyz":
        by_part.setdefault(_partition(c, 2), c)
    k0, k1 = by_part[0], by_part[1]
    t = build(Tumbling(10, 0), COUNT_SUM, "final")
    with TopologyTestDriver(t, partitions={"in": 2}) as d:
        d.pipe("in", k0, {"v": 1}, timestamp=5)
        d.pipe("in", k1, {"v": 1}, timestamp=100)  # other task: k0's [0,10) stays open
        assert d.read_output("out") == []
        d.pipe("in", k0, {"v": 2}, timestamp=7)  # not late in its own task
        d.pipe("in", k0, {"v": 4}, timestamp=10)  # k0's task reaches 10: [0,10) closes
        got = [canon(r.key, r.value, r.timestamp) for r in d.read_output("out")]
    assert got == [W(k0, 0, 10, 7, 2, 3)]


def test_negative_timestamp_rejected():
    t = build(Tumbling(10, 0), COUNT_SUM, "final")
    with TopologyTestDriver(t) as d:
        with pytest.raises(Exception):
            d.pipe("in", "k", {"v": 1}, timestamp=-1)
