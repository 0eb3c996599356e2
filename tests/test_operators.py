"""Physical operators through TopologyTestDriver: stateless ops, table aggregates, every
built-in aggregation, batching, None keys, bad timestamps, user-function errors,
deserialization policies and partitions (DESIGN.md sections 3, 4, 7).

Window semantics proper (all kinds, grace, emit modes under random streams) are in
test_window_semantics.py; here windows only appear where batching or partitions matter.
"""
from __future__ import annotations

import pytest

from streamproc import SerdeError, StreamprocError, Topology, TopologyError, agg, serdes, windows
from streamproc.operators import ProcessingError
from streamproc.partitioner import partition_for
from streamproc.testing import Record, TopologyTestDriver


def source(top, topic="in", **kw):
    return top.stream(topic, key=serdes.String(), value=serdes.Json(), **kw)


def kvt(records):
    return [(r.key, r.value, r.timestamp) for r in records]


def run(top, records, *, out="out", topic="in", mode="one"):
    """Pipe ``records`` ((key, value, ts)) one by one, in one batch, or in batches of 3."""
    with TopologyTestDriver(top) as d:
        feed(d, topic, records, mode)
        return d.read_output(out), d


def feed(d, topic, records, mode):
    if mode == "one":
        for k, v, t in records:
            d.pipe(topic, k, v, timestamp=t)
    elif mode == "batch":
        d.pipe_many(topic, records)
    elif mode == "threes":
        for i in range(0, len(records), 3):
            d.pipe_many(topic, records[i:i + 3])
    else:
        raise ValueError(mode)


MODES = ["one", "batch", "threes"]


# --------------------------------------------------------------------------- stateless


def test_map_changes_key_and_value_and_keeps_timestamps():
    top = Topology("app")
    source(top).map(lambda k, v: (v["user"], k.upper())).to("out")
    out, _ = run(top, [("a", {"user": "u1"}, 5), ("b", {"user": "u2"}, 3)], mode="batch")
    assert kvt(out) == [("u1", "A", 5), ("u2", "B", 3)]


def test_map_values_keeps_the_key():
    top = Topology("app")
    source(top).map_values(lambda v: v["n"] * 2).to("out")
    out, _ = run(top, [("a", {"n": 1}, 1), ("b", {"n": 5}, 2)])
    assert kvt(out) == [("a", 2, 1), ("b", 10, 2)]


def test_filter_drops_records_for_which_the_predicate_is_false():
    top = Topology("app")
    source(top).filter(lambda k, v: v % 2 == 0 and k != "skip").to("out")
    out, _ = run(top, [("a", 1, 1), ("b", 2, 2), ("skip", 4, 3), ("c", 6, 4)], mode="batch")
    assert kvt(out) == [("b", 2, 2), ("c", 6, 4)]


def test_flat_map_emits_zero_or_more_records_each_with_the_input_timestamp():
    top = Topology("app")
    source(top).flat_map(lambda k, v: [(f"{k}{i}", i) for i in range(v)]).to("out")
    out, _ = run(top, [("a", 2, 10), ("b", 0, 11), ("c", 3, 12)], mode="batch")
    assert kvt(out) == [("a0", 0, 10), ("a1", 1, 10), ("c0", 0, 12), ("c1", 1, 12), ("c2", 2, 12)]


def test_flat_map_accepts_any_iterable():
    top = Topology("app")
    source(top).flat_map(lambda k, v: ((k, x) for x in v)).to("out")
    out, _ = run(top, [("a", [1, 2], 1)])
    assert kvt(out) == [("a", 1, 1), ("a", 2, 1)]


def test_peek_sees_every_record_in_order_and_passes_it_on_unchanged():
    seen = []
    top = Topology("app")
    source(top).peek(lambda k, v: seen.append((k, v))).to("out")
    recs = [("a", 1, 1), ("b", {"x": 2}, 2), ("c", [3], 3)]
    out, _ = run(top, recs, mode="batch")
    assert seen == [("a", 1), ("b", {"x": 2}), ("c", [3])]
    assert kvt(out) == recs


def test_branch_first_matching_predicate_wins_and_unmatched_records_are_dropped():
    top = Topology("app")
    big, medium, odd = source(top).branch(lambda k, v: v > 100, lambda k, v: v > 10, lambda k, v: v % 2 == 1)
    big.to("big")
    medium.to("medium")
    odd.to("odd")
    recs = [("a", 500, 1), ("b", 50, 2), ("c", 7, 3), ("d", 4, 4), ("e", 101, 5), ("f", 11, 6)]
    with TopologyTestDriver(top) as d:
        d.pipe_many("in", recs)
        assert kvt(d.read_output("big")) == [("a", 500, 1), ("e", 101, 5)]
        assert kvt(d.read_output("medium")) == [("b", 50, 2), ("f", 11, 6)]    # 11 is odd too: first wins
        assert kvt(d.read_output("odd")) == [("c", 7, 3)]                        # 4 matched nothing: dropped


def test_branch_outputs_can_be_processed_further():
    top = Topology("app")
    yes, no = source(top).branch(lambda k, v: v, lambda k, v: not v)
    yes.map_values(lambda v: "Y").to("out")
    no.map_values(lambda v: "N").to("out")
    out, _ = run(top, [("a", True, 1), ("b", False, 2), ("c", True, 3)])
    assert kvt(out) == [("a", "Y", 1), ("b", "N", 2), ("c", "Y", 3)]


def test_merge_of_two_topics_passes_records_of_both():
    top = Topology("app")
    source(top, "left").merge(source(top, "right")).map_values(lambda v: v * 10).to("out")
    with TopologyTestDriver(top) as d:
        d.pipe("left", "a", 1, timestamp=1)
        d.pipe("right", "b", 2, timestamp=2)
        d.pipe("left", "c", 3, timestamp=3)
        assert kvt(d.read_output("out")) == [("a", 10, 1), ("b", 20, 2), ("c", 30, 3)]


def test_merge_of_branches_rejoins_them():
    top = Topology("app")
    even, odd = source(top).branch(lambda k, v: v % 2 == 0, lambda k, v: True)
    even.map_values(lambda v: ("even", v)).merge(odd.map_values(lambda v: ("odd", v))).to("out")
    out, _ = run(top, [("a", 1, 1), ("b", 2, 2), ("c", 3, 3)])
    assert kvt(out) == [("a", ["odd", 1], 1), ("b", ["even", 2], 2), ("c", ["odd", 3], 3)]


def _merged_first_last():
    top = Topology("app")
    big, rest = source(top).branch(lambda k, v: v > 10, lambda k, v: True)
    big.merge(rest).group_by_key().aggregate(first=agg.first(), all=agg.collect(), name="m").to("out")
    return top


def test_merge_keeps_processing_order_inside_a_batch():
    recs = [("k", 7, 1), ("k", 20, 2), ("k", 8, 3)]
    with TopologyTestDriver(_merged_first_last()) as one:
        feed(one, "in", recs, "one")
        expected = one.state("m")
    assert expected == {"k": {"first": 7, "all": [7, 20, 8]}}
    with TopologyTestDriver(_merged_first_last()) as batched:
        feed(batched, "in", recs, "batch")
        assert batched.state("m") == expected


def test_an_aggregate_result_is_a_stream():
    top = Topology("app")
    (source(top).group_by_key().count(name="c")
        .filter(lambda k, v: v["count"] > 1)
        .map_values(lambda v: v["count"] * 100)
        .to("out"))
    out, _ = run(top, [("a", 0, 1), ("a", 0, 2), ("b", 0, 3), ("a", 0, 4)])
    assert kvt(out) == [("a", 200, 2), ("a", 300, 4)]


# --------------------------------------------------------------------------- table aggregates


def test_table_aggregate_emits_the_current_value_per_key_after_each_batch():
    top = Topology("app")
    source(top).group_by_key().aggregate(n=agg.count(), total=agg.sum("x"), name="t").to("out")
    with TopologyTestDriver(top) as d:
        d.pipe("in", "a", {"x": 1}, timestamp=10)
        assert kvt(d.read_output("out")) == [("a", {"n": 1, "total": 1}, 10)]
        d.pipe("in", "a", {"x": 2}, timestamp=5)             # timestamp = largest event time so far
        assert kvt(d.read_output("out")) == [("a", {"n": 2, "total": 3}, 10)]
        d.pipe_many("in", [("b", {"x": 5}, 20), ("a", {"x": 3}, 21), ("a", {"x": 4}, 22), ("b", {"x": 6}, 23)])
        out = sorted(kvt(d.read_output("out")))             # one record per changed key in the batch
        assert out == [("a", {"n": 4, "total": 10}, 22), ("b", {"n": 2, "total": 11}, 23)]
        assert d.state("t") == {"a": {"n": 4, "total": 10}, "b": {"n": 2, "total": 11}}


def test_count_and_reduce_shorthands_have_their_value_shapes():
    top = Topology("app")
    g = source(top).group_by_key()
    g.count(name="c").to("counts")
    g.reduce(lambda acc, v: acc + v, name="r").to("sums")
    with TopologyTestDriver(top) as d:
        d.pipe("in", "k", 5, timestamp=1)
        d.pipe("in", "k", 7, timestamp=2)
        assert kvt(d.read_output("counts")) == [("k", {"count": 1}, 1), ("k", {"count": 2}, 2)]
        assert kvt(d.read_output("sums")) == [("k", {"reduce": 5}, 1), ("k", {"reduce": 12}, 2)]
        assert d.state("c") == {"k": {"count": 2}}
        assert d.state("r") == {"k": {"reduce": 12}}


def test_windowed_count_shorthand_value_shape():
    top = Topology("app")
    source(top).group_by_key().window(windows.Tumbling(10)).count(emit="update").to("out")
    out, _ = run(top, [("k", 0, 3)])
    assert kvt(out) == [("k", {"window_start": 0, "window_end": 10, "count": 1}, 3)]


# --------------------------------------------------------------------------- every aggregation

NUMBERS = [{"x": 3, "s": "b"}, {"x": -1, "s": "a"}, {"x": 2, "s": "c"}, {"x": 10, "s": "ab"}]


def _all_aggs():
    return dict(
        n=agg.count(),
        total=agg.sum("x"), total_fn=agg.sum(lambda v: v["x"] * 2),
        lo=agg.min("x"), hi=agg.max("x"), lo_fn=agg.min(lambda v: -v["x"]),
        avg=agg.mean("x"), avg_fn=agg.mean(lambda v: v["x"] + 1),
        first=agg.first("x"), last=agg.last("x"), first_fn=agg.first(lambda v: v["s"]),
        all=agg.collect("x"), all_fn=agg.collect(lambda v: v["s"] * 2),
        red=agg.reduce(lambda a, b: a + b, f="x"),
        red_max=agg.reduce(lambda a, b: a if a >= b else b, f="x"),
        s_lo=agg.min("s"), s_hi=agg.max("s"), s_first=agg.first("s"), s_last=agg.last("s"),
        s_all=agg.collect("s"), s_len=agg.sum(lambda v: len(v["s"])),
    )


EXPECTED_ALL = dict(
    n=4, total=14, total_fn=28, lo=-1, hi=10, lo_fn=-10, avg=3.5, avg_fn=4.5,
    first=3, last=10, first_fn="b", all=[3, -1, 2, 10], all_fn=["bb", "aa", "cc", "abab"],
    red=14, red_max=10,
    s_lo="a", s_hi="c", s_first="b", s_last="ab", s_all=["b", "a", "c", "ab"], s_len=5,
)


@pytest.mark.parametrize("mode", MODES)
def test_every_aggregation_as_a_table(mode):
    top = Topology("app")
    source(top).group_by_key().aggregate(name="t", **_all_aggs()).to("out")
    recs = [("k", v, i) for i, v in enumerate(NUMBERS)]
    out, d = run(top, recs, mode=mode)
    assert out[-1].value == EXPECTED_ALL
    assert d.state("t") == {"k": EXPECTED_ALL}


@pytest.mark.parametrize("mode", MODES)
def test_every_aggregation_in_a_window(mode):
    top = Topology("app")
    source(top).group_by_key().window(windows.Tumbling(100)).aggregate(name="w", **_all_aggs()).to("out")
    recs = [("k", v, i) for i, v in enumerate(NUMBERS)] + [("other", {"x": 0, "s": ""}, 100)]
    out, _ = run(top, recs, mode=mode)
    assert kvt(out) == [("k", {"window_start": 0, "window_end": 100, **EXPECTED_ALL}, 3)]


@pytest.mark.parametrize("mode", MODES)
def test_aggregations_of_the_value_itself(mode):
    top = Topology("app")
    source(top).group_by_key().aggregate(
        name="t", s=agg.sum(), lo=agg.min(), hi=agg.max(), m=agg.mean(), c=agg.collect(), f=agg.first(),
        la=agg.last()).to("out")
    out, _ = run(top, [("k", 4, 1), ("k", 1, 2), ("k", 7, 3)], mode=mode)
    assert out[-1].value == {"s": 12, "lo": 1, "hi": 7, "m": 4.0, "c": [4, 1, 7], "f": 4, "la": 7}


@pytest.mark.parametrize("mode", MODES)
def test_non_numeric_min_max_fall_back_to_python_comparison(mode):
    top = Topology("app")
    source(top).group_by_key().aggregate(
        name="t", lo=agg.min("v"), hi=agg.max("v"), lo_list=agg.min(lambda v: tuple(v["pair"]))).to("out")
    recs = [("k", {"v": "pear", "pair": [2, "b"]}, 1), ("k", {"v": "apple", "pair": [1, "z"]}, 2),
            ("k", {"v": "zucchini", "pair": [1, "a"]}, 3)]
    out, _ = run(top, recs, mode=mode)
    assert out[-1].value == {"lo": "apple", "hi": "zucchini", "lo_list": [1, "a"]}


@pytest.mark.parametrize("mode", MODES)
def test_float_and_mixed_numbers(mode):
    top = Topology("app")
    source(top).group_by_key().aggregate(name="t", s=agg.sum("x"), m=agg.mean("x"), lo=agg.min("x"),
                                         hi=agg.max("x")).to("out")
    out, _ = run(top, [("k", {"x": 1.5}, 1), ("k", {"x": 2}, 2), ("k", {"x": -0.25}, 3)], mode=mode)
    v = out[-1].value
    assert v["s"] == pytest.approx(3.25) and v["m"] == pytest.approx(3.25 / 3)
    assert v["lo"] == -0.25 and v["hi"] == 2


@pytest.mark.parametrize("mode", MODES)
def test_reduce_without_initial_starts_from_the_first_value(mode):
    top = Topology("app")
    source(top).group_by_key().aggregate(name="t", r=agg.reduce(lambda a, b: f"{a}+{b}")).to("out")
    out, _ = run(top, [("k", "a", 1), ("k", "b", 2), ("k", "c", 3)], mode=mode)
    assert out[-1].value == {"r": "a+b+c"}


def test_reduce_with_initial_in_one_batch():
    top = Topology("app")
    source(top).group_by_key().aggregate(
        name="t", prod=agg.reduce(lambda a, b: a * b, 10, f="x"),
        s=agg.reduce(lambda a, b: a + b, "!", f=lambda v: str(v["x"]))).to("out")
    out, _ = run(top, [("k", {"x": 3}, 1), ("k", {"x": 1}, 2), ("k", {"x": 2}, 3)], mode="batch")
    assert out[-1].value == {"prod": 60, "s": "!312"}


@pytest.mark.parametrize("mode", ["one", "threes"])
def test_reduce_with_initial_applies_initial_once_per_key(mode):
    top = Topology("app")
    source(top).group_by_key().aggregate(
        name="t", prod=agg.reduce(lambda a, b: a * b, 10, f="x"),
        s=agg.reduce(lambda a, b: a + b, "!", f="s")).to("out")
    recs = [("k", {"x": 3, "s": "b"}, 1), ("k", {"x": 1, "s": "a"}, 2), ("k", {"x": 2, "s": "c"}, 3),
            ("k", {"x": 5, "s": "d"}, 4)]
    out, _ = run(top, recs, mode=mode)
    assert out[-1].value == {"prod": 300, "s": "!bacd"}


def test_non_associative_reduce_does_not_depend_on_batching():
    top = Topology("app")
    source(top).group_by_key().aggregate(name="t", r=agg.reduce(lambda a, x: a - x)).to("out")
    with TopologyTestDriver(top) as d:
        d.pipe("in", "k", 10, timestamp=0)
        d.pipe_many("in", [("k", 3, 1), ("k", 2, 2)])
        assert d.state("t") == {"k": {"r": 5}}


@pytest.mark.parametrize("mode", ["one", "batch"])
def test_integer_sums_do_not_overflow(mode):
    top = Topology("app")
    source(top).group_by_key().aggregate(name="t", s=agg.sum("x"), m=agg.mean("x")).to("out")
    out, _ = run(top, [("k", {"x": 2 ** 62}, i) for i in range(3)], mode=mode)
    assert out[-1].value["s"] == 3 * 2 ** 62
    assert out[-1].value["m"] == pytest.approx(2.0 ** 62)


def test_missing_field_is_an_error_naming_the_field():
    top = Topology("app")
    source(top).group_by_key().aggregate(name="t", s=agg.sum("x")).to("out")
    with TopologyTestDriver(top) as d:
        d.pipe("in", "k", {"x": 1}, timestamp=1)
        with pytest.raises(Exception, match="'x'"):
            d.pipe("in", "k", {"y": 1}, timestamp=2)


# --------------------------------------------------------------------------- batching


def _tumbling_final(aggs):
    top = Topology("app")
    source(top).group_by_key().window(windows.Tumbling(10, grace=5)).aggregate(name="w", **aggs).to("out")
    return top


TUMBLING_RECORDS = [
    ("a", {"v": 1}, 1), ("b", {"v": 2}, 3), ("a", {"v": 3}, 12),
    ("a", {"v": 4}, 4),      # stream time 12 < 10 + 5: within grace
    ("b", {"v": 5}, 16),     # closes [0, 10)
    ("a", {"v": 6}, 2),      # late
    ("c", {"v": 7}, 25),     # closes [10, 20)
    ("a", {"v": 8}, 14),     # late
    ("b", {"v": 9}, 27),
    ("a", {"v": 10}, 40),    # closes [20, 30)
]


def _w(start, **v):
    return {"window_start": start, "window_end": start + 10, **v}


@pytest.mark.parametrize("mode", MODES)
def test_tumbling_final_gives_the_same_results_however_records_are_batched(mode):
    top = _tumbling_final(dict(n=agg.count(), total=agg.sum("v"), first=agg.first("v"), last=agg.last("v"),
                               all=agg.collect("v"), hi=agg.max("v")))
    out, d = run(top, TUMBLING_RECORDS, mode=mode)
    assert sorted(kvt(out), key=repr) == sorted([
        ("a", _w(0, n=2, total=5, first=1, last=4, all=[1, 4], hi=4), 4),
        ("b", _w(0, n=1, total=2, first=2, last=2, all=[2], hi=2), 3),
        ("a", _w(10, n=1, total=3, first=3, last=3, all=[3], hi=3), 12),
        ("b", _w(10, n=1, total=5, first=5, last=5, all=[5], hi=5), 16),
        ("c", _w(20, n=1, total=7, first=7, last=7, all=[7], hi=7), 25),
        ("b", _w(20, n=1, total=9, first=9, last=9, all=[9], hi=9), 27),
    ], key=repr)
    assert d.metrics()["late_records"] == 2
    assert d.state("w") == {("a", 40): _w(40, n=1, total=10, first=10, last=10, all=[10], hi=10)}


@pytest.mark.parametrize("mode", MODES)
def test_tumbling_final_with_order_insensitive_aggregates_only(mode):
    top = _tumbling_final(dict(n=agg.count(), total=agg.sum("v"), lo=agg.min("v"), m=agg.mean("v")))
    out, d = run(top, TUMBLING_RECORDS, mode=mode)
    got = {(k, v["window_start"]): v for k, v, _ in kvt(out)}
    assert got[("a", 0)] == _w(0, n=2, total=5, lo=1, m=2.5)
    assert got[("b", 20)] == _w(20, n=1, total=9, lo=9, m=9.0)
    assert len(got) == 6
    assert d.metrics()["late_records"] == 2


def test_pipe_many_across_keys_matches_one_by_one_for_a_table():
    recs = [(k, {"v": i}, i) for i, k in enumerate("abcabcaab")]

    def build():
        top = Topology("app")
        source(top).group_by_key().aggregate(name="t", n=agg.count(), all=agg.collect("v"),
                                             last=agg.last("v")).to("out")
        return top

    results = {}
    for mode in MODES:
        _, d = run(build(), recs, mode=mode)
        results[mode] = d.state("t")
    assert results["one"] == results["batch"] == results["threes"]
    assert results["one"]["a"] == {"n": 4, "all": [0, 3, 6, 7], "last": 7}


# --------------------------------------------------------------------------- None keys, timestamps


def test_none_keys_are_dropped_by_grouped_and_windowed_operators_and_counted():
    top = Topology("app")
    s = source(top)
    s.group_by_key().count(name="c").to("counts")
    s.group_by(lambda k, v: v.get("user")).window(windows.Tumbling(10)).count(name="w", emit="update").to("win")
    s.to("copy")                                        # stateless: None keys pass
    with TopologyTestDriver(top) as d:
        d.pipe("in", None, {"user": "u"}, timestamp=1)  # dropped by c, counted by w
        d.pipe("in", "a", {"user": None}, timestamp=2)  # counted by c, dropped by w
        d.pipe("in", "a", {}, timestamp=3)              # counted by c, dropped by w
        assert kvt(d.read_output("counts")) == [("a", {"count": 1}, 2), ("a", {"count": 2}, 3)]
        assert kvt(d.read_output("win")) == [("u", {"window_start": 0, "window_end": 10, "count": 1}, 1)]
        assert [r.key for r in d.read_output("copy")] == [None, "a", "a"]
        assert d.metrics()["dropped_none_key"] == 3


def test_negative_timestamp_is_rejected_by_the_driver():
    top = Topology("app")
    source(top).to("out")
    with TopologyTestDriver(top) as d:
        with pytest.raises(StreamprocError, match="negative"):
            d.pipe("in", "a", 1, timestamp=-1)
        assert d.read_output("out") == []


def test_negative_event_time_from_the_extractor_is_rejected():
    top = Topology("app")
    source(top, timestamp=lambda k, v, ts: v["ts"]).to("out")
    with TopologyTestDriver(top) as d:
        d.pipe("in", "a", {"ts": 5}, timestamp=1)
        with pytest.raises(StreamprocError, match="negative"):
            d.pipe("in", "a", {"ts": -5}, timestamp=1)
        assert kvt(d.read_output("out")) == [("a", {"ts": 5}, 5)]


def test_negative_event_time_with_skip_policy_is_skipped_and_counted():
    top = Topology("app")
    source(top, timestamp=lambda k, v, ts: v, on_error="skip").to("out")
    with TopologyTestDriver(top) as d:
        d.pipe_many("in", [("a", 1, 0), ("b", -3, 0), ("c", 2, 0)])
        assert kvt(d.read_output("out")) == [("a", 1, 1), ("c", 2, 2)]
        assert d.metrics()["skipped_records"] == 1


def test_a_filtered_record_still_advances_stream_time_and_closes_windows():
    # stream time is the largest event time the task has seen, filtered records included
    top = Topology("app")
    source(top).filter(lambda k, v: v > 0).group_by_key().window(windows.Tumbling(10)).count().to("out")
    with TopologyTestDriver(top) as d:
        d.pipe("in", "a", 1, timestamp=1)
        d.pipe("in", "a", 0, timestamp=50)
        assert kvt(d.read_output("out")) == [("a", {"window_start": 0, "window_end": 10, "count": 1}, 1)]


def test_unhashable_group_keys_give_a_clear_error():
    top = Topology("app")
    source(top).group_by(lambda k, v: v).count().to("out")
    with TopologyTestDriver(top) as d:
        with pytest.raises(StreamprocError, match="hashable"):
            d.pipe("in", "a", [1, 2], timestamp=1)


# --------------------------------------------------------------------------- user function errors


@pytest.mark.parametrize("kind,build", [
    ("map", lambda s: s.map(lambda k, v: (k, v["missing"]))),
    ("map", lambda s: s.map(lambda k, v: (k, v) if v["n"] else 0)),      # not a pair
    ("map_values", lambda s: s.map_values(lambda v: 1 / v["n"])),
    ("filter", lambda s: s.filter(lambda k, v: 1 / v["n"])),
    ("flat_map", lambda s: s.flat_map(lambda k, v: [(k, 1 / v["n"])])),
    ("flat_map", lambda s: s.flat_map(lambda k, v: None if v["n"] == 0 else [])),
    ("peek", lambda s: s.peek(lambda k, v: 1 / v["n"])),
    ("branch", lambda s: s.branch(lambda k, v: 1 / v["n"])[0]),
    ("select_key", lambda s: s.group_by(lambda k, v: 1 / v["n"]).count()),
])
def test_a_raising_user_function_gives_a_processing_error_naming_operator_and_key(kind, build):
    top = Topology("app")
    build(source(top)).to("out")
    with TopologyTestDriver(top) as d:
        with pytest.raises(ProcessingError) as ei:
            d.pipe_many("in", [("good-key", {"n": 1, "missing": 0}, 1), ("bad-key-42", {"n": 0}, 2)])
    msg = str(ei.value)
    assert kind in msg
    assert "'bad-key-42'" in msg
    assert "good-key" not in msg
    assert "test_operators.py:" in msg                  # where the operator was defined
    assert isinstance(ei.value, StreamprocError)


def test_a_raising_aggregation_field_function_gives_a_processing_error():
    top = Topology("app")
    source(top).group_by_key().aggregate(name="t", s=agg.sum(lambda v: v["x"])).to("out")
    with TopologyTestDriver(top) as d:
        with pytest.raises(ProcessingError, match="bad-key"):
            d.pipe("in", "bad-key", {"y": 1}, timestamp=1)


def test_a_raising_reduce_function_gives_a_processing_error():
    top = Topology("app")
    source(top).group_by_key().aggregate(name="t", r=agg.reduce(lambda a, x: a / x)).to("out")
    with TopologyTestDriver(top) as d:
        d.pipe("in", "bad-key", 1, timestamp=1)
        with pytest.raises(ProcessingError, match="bad-key"):
            d.pipe("in", "bad-key", 0, timestamp=2)


# --------------------------------------------------------------------------- deserialization policies


class PoisonableJson(serdes.Json):
    """Json, except that bytes are written as they are: lets a test pipe undecodable input."""

    def serialize(self, value):
        if isinstance(value, bytes):
            return value
        return super().serialize(value)


POISON = b"\xff{not json"


def _policy_topology(policy):
    top = Topology("app")
    top.stream("in", key=serdes.String(), value=PoisonableJson(), on_error=policy).map_values(
        lambda v: v * 2).to("out")
    return top


def test_fail_policy_raises_serde_error_naming_topic_and_offset():
    top = _policy_topology("fail")
    with TopologyTestDriver(top) as d:
        d.pipe("in", "a", 1, timestamp=1)              # offset 0
        with pytest.raises(SerdeError) as ei:
            d.pipe("in", "b", POISON, timestamp=2)     # offset 1
        assert ei.value.topic == "in"
        assert ei.value.offset == 1
        assert "'in'" in str(ei.value) and "offset 1" in str(ei.value)
        assert kvt(d.read_output("out")) == [("a", 2, 1)]


def test_default_policy_is_fail():
    top = Topology("app")
    top.stream("in", key=serdes.String(), value=PoisonableJson()).to("out")
    with TopologyTestDriver(top) as d:
        with pytest.raises(SerdeError):
            d.pipe("in", "b", POISON, timestamp=2)


def test_skip_policy_counts_and_continues():
    with TopologyTestDriver(_policy_topology("skip")) as d:
        d.pipe_many("in", [("a", 1, 1), ("b", POISON, 2), ("c", 3, 3)])
        d.pipe("in", "d", POISON, timestamp=4)
        d.pipe("in", "e", 5, timestamp=5)
        assert kvt(d.read_output("out")) == [("a", 2, 1), ("c", 6, 3), ("e", 10, 5)]
        assert d.metrics()["skipped_records"] == 2
        assert d.read_output("app-dlq") == []


def test_dead_letter_policy_sends_raw_bytes_to_the_dlq_and_counts():
    with TopologyTestDriver(_policy_topology("dead-letter")) as d:
        d.pipe_many("in", [("a", 1, 1), ("b", POISON, 2), ("c", 3, 3)])
        assert kvt(d.read_output("out")) == [("a", 2, 1), ("c", 6, 3)]
        dlq = d.read_output("app-dlq")
        assert dlq == [Record(b"b", POISON, 2)]
        assert d.read_output("app-dlq") == []          # drains
        dead = {k: v for k, v in d.metrics().items() if "dead" in k}
        assert list(dead.values()) == [1], d.metrics()


def test_a_raising_timestamp_extractor_follows_the_policy():
    top = Topology("app")
    top.stream("in", key=serdes.String(), value=serdes.Json(), timestamp=lambda k, v, t: v["ts"],
               on_error="skip").to("out")
    with TopologyTestDriver(top) as d:
        d.pipe_many("in", [("a", {"ts": 1}, 0), ("b", {}, 0), ("c", {"ts": 3}, 0)])
        assert [r.key for r in d.read_output("out")] == ["a", "c"]
        assert d.metrics()["skipped_records"] == 1


# --------------------------------------------------------------------------- partitions


def _keys_by_partition(n):
    by = {}
    for i in range(200):
        k = f"key-{i}"
        by.setdefault(partition_for(k.encode(), n), []).append(k)
    return by


def test_stream_time_is_per_partition():
    by = _keys_by_partition(2)
    a, b = by[0][0], by[1][0]
    top = Topology("app")
    source(top).group_by_key().window(windows.Tumbling(10)).count(name="w").to("out")
    with TopologyTestDriver(top, partitions={"in": 2}) as d:
        d.pipe("in", a, 0, timestamp=1)
        d.pipe("in", b, 0, timestamp=100)       # another partition: does not close a's window
        assert d.read_output("out") == []
        d.pipe("in", a, 0, timestamp=5)          # not late on a's partition
        assert d.metrics().get("late_records", 0) == 0
        d.pipe("in", a, 0, timestamp=10)         # a's own stream time closes [0, 10)
        assert kvt(d.read_output("out")) == [(a, {"window_start": 0, "window_end": 10, "count": 2}, 5)]

    with TopologyTestDriver(top) as d:           # the same input on one partition
        d.pipe("in", a, 0, timestamp=1)
        d.pipe("in", b, 0, timestamp=100)
        assert kvt(d.read_output("out")) == [(a, {"window_start": 0, "window_end": 10, "count": 1}, 1)]
        d.pipe("in", a, 0, timestamp=5)
        assert d.metrics()["late_records"] == 1


def test_records_are_partitioned_by_key_so_each_key_is_counted_in_one_task():
    top = Topology("app")
    source(top).group_by_key().count(name="c").to("out")
    keys = [f"user-{i}" for i in range(20)]
    with TopologyTestDriver(top, partitions={"in": 3}) as d:
        d.pipe_many("in", [(k, 0, i) for i, k in enumerate(keys * 3)])
        assert d.state("c") == {k: {"count": 3} for k in keys}


def test_repartitioning_regroups_keys_from_every_input_partition():
    top = Topology("app")
    source(top).group_by(lambda k, v: v["g"]).count(name="c").to("out")
    with TopologyTestDriver(top, partitions={"in": 4}) as d:
        for i in range(40):
            d.pipe("in", f"k{i}", {"g": f"g{i % 3}"}, timestamp=i)
        assert d.state("c") == {"g0": {"count": 14}, "g1": {"count": 13}, "g2": {"count": 13}}


def test_copartition_mismatch_is_a_topology_error():
    top = Topology("app")
    source(top, "a").merge(source(top, "b")).group_by_key().count(name="c").to("out")
    with pytest.raises(TopologyError) as ei:
        TopologyTestDriver(top, partitions={"a": 2, "b": 3})
    assert "'a'" in str(ei.value) and "'b'" in str(ei.value)
    with TopologyTestDriver(top, partitions={"a": 3, "b": 3}) as d:
        d.pipe("a", "k", 0, timestamp=1)
        d.pipe("b", "k", 0, timestamp=2)
        assert d.state("c") == {"k": {"count": 2}}


def test_unknown_topics_are_errors():
    top = Topology("app")
    source(top).to("out")
    with TopologyTestDriver(top) as d:
        with pytest.raises(StreamprocError):
            d.pipe("nope", "a", 1, timestamp=1)
        with pytest.raises(StreamprocError):
            d.read_output("nope")
        with pytest.raises(StreamprocError):
            d.state("no-such-store")
    with pytest.raises(StreamprocError):
        d.pipe("in", "a", 1, timestamp=1)      # closed
