"""The plan layer: validation, sub-topology split, internal topic and store names,
fingerprints, co-partitioning and the ``describe`` data (DESIGN.md sections 2, 3, 5, 7)."""
from __future__ import annotations

import datetime as dt
import json
import os

import pytest

from streamproc import Topology, TopologyError, agg, serdes, windows
from streamproc.plan import compile_topology
from streamproc.plan.describe import to_dict

THIS_FILE = os.path.basename(__file__)


def _source(top: Topology, topic: str = "in"):
    return top.stream(topic, key=serdes.String(), value=serdes.Json())


def _shape(plan):
    """[(input topics, repartition sinks, store names)] per sub-topology."""
    return [(st.input_topics, st.repartition_sinks, [s.name for s in st.stores]) for st in plan.subtopologies]


def _kinds(st):
    return [n.kind for n in st.nodes]


# --------------------------------------------------------------------------- split


def test_group_by_then_aggregate_splits_into_two_subtopologies_at_a_repartition_topic():
    top = Topology("clicks")
    (_source(top)
        .group_by(lambda k, v: v["user"])
        .window(windows.Tumbling("1m"))
        .aggregate(n=agg.count(), name="per-user")
        .to("out"))
    plan = compile_topology(top)

    assert len(plan.subtopologies) == 2
    first, second = plan.subtopologies
    assert plan.repartition_topics == ["clicks-per-user-repartition"]
    # upstream: source -> select_key -> writes the repartition topic, no state
    assert first.input_topics == ["in"]
    assert first.repartition_sinks == ["clicks-per-user-repartition"]
    assert "aggregate" not in _kinds(first)
    assert first.stores == [] and not first.stateful
    # downstream: reads the repartition topic, aggregates, writes the sink
    assert second.input_topics == ["clicks-per-user-repartition"]
    assert second.source_topics == [] and second.repartition_sources == ["clicks-per-user-repartition"]
    assert _kinds(second) == ["repartition_source", "aggregate", "sink"]
    assert [s.name for s in second.stores] == ["per-user"]
    assert second.sink_topics == ["out"]
    assert plan.subtopology_of("in") is first
    assert plan.subtopology_of("clicks-per-user-repartition") is second


def test_group_by_key_without_a_key_change_stays_in_one_subtopology():
    top = Topology("app")
    (_source(top)
        .filter(lambda k, v: True)
        .map_values(lambda v: v)
        .peek(lambda k, v: None)
        .group_by_key()
        .count(name="counts")
        .to("out"))
    plan = compile_topology(top)

    assert len(plan.subtopologies) == 1
    assert plan.repartition_topics == []
    st = plan.subtopologies[0]
    assert st.input_topics == ["in"]
    assert "repartition_sink" not in _kinds(st) and "repartition_source" not in _kinds(st)
    assert [s.name for s in st.stores] == ["counts"]


@pytest.mark.parametrize("rekey", [
    pytest.param(lambda s: s.map(lambda k, v: (v["user"], v)), id="map"),
    pytest.param(lambda s: s.flat_map(lambda k, v: [(v["user"], v)]), id="flat_map"),
    pytest.param(lambda s: s.map(lambda k, v: (k, v)).filter(lambda k, v: True), id="map-then-filter"),
    pytest.param(lambda s: s.map(lambda k, v: (k, v)).map_values(lambda v: v), id="map-then-map_values"),
    pytest.param(lambda s: s.map(lambda k, v: (k, v)).branch(lambda k, v: True)[0], id="map-then-branch"),
])
def test_a_key_change_upstream_makes_group_by_key_repartition(rekey):
    # even a map that happens to keep the key: the plan cannot know, so it repartitions
    top = Topology("app")
    rekey(_source(top)).group_by_key().count(name="cnt").to("out")
    plan = compile_topology(top)

    assert len(plan.subtopologies) == 2
    assert plan.repartition_topics == ["app-cnt-repartition"]
    assert _shape(plan) == [
        (["in"], ["app-cnt-repartition"], []),
        (["app-cnt-repartition"], [], ["cnt"]),
    ]


def test_map_values_never_needs_a_repartition():
    top = Topology("app")
    _source(top).map_values(lambda v: v["n"]).group_by_key().aggregate(s=agg.sum(), name="s").to("out")
    plan = compile_topology(top)
    assert len(plan.subtopologies) == 1
    assert plan.repartition_topics == []


def test_a_stateless_key_change_without_a_stateful_operator_does_not_repartition():
    top = Topology("app")
    _source(top).map(lambda k, v: (v, k)).to("out")
    plan = compile_topology(top)
    assert len(plan.subtopologies) == 1
    assert plan.repartition_topics == [] and plan.stores == []


def test_two_aggregates_on_one_rekeyed_stream_share_one_repartition_topic():
    top = Topology("app")
    grouped = _source(top).group_by(lambda k, v: v["user"])
    grouped.count(name="c1").to("o1")
    grouped.aggregate(total=agg.sum("n"), name="c2").to("o2")
    plan = compile_topology(top)

    assert plan.repartition_topics == ["app-c1-repartition"]
    assert _shape(plan) == [
        (["in"], ["app-c1-repartition"], []),
        (["app-c1-repartition"], [], ["c1", "c2"]),
    ]
    assert plan.changelog_topics == ["app-c1-changelog", "app-c2-changelog"]


def test_two_aggregates_after_one_map_share_one_repartition_topic():
    top = Topology("app")
    rekeyed = _source(top).map(lambda k, v: (v["user"], v))
    rekeyed.group_by_key().count(name="a").to("o1")
    rekeyed.group_by_key().window(windows.Tumbling("1m")).count(name="b").to("o2")
    plan = compile_topology(top)
    assert plan.repartition_topics == ["app-a-repartition"]
    assert len(plan.subtopologies) == 2
    assert [s.name for s in plan.subtopologies[1].stores] == ["a", "b"]


def test_aggregates_on_separately_rekeyed_streams_get_their_own_repartition_topics():
    top = Topology("app")
    s = _source(top)
    s.group_by(lambda k, v: v["user"]).count(name="by-user").to("o1")
    s.group_by(lambda k, v: v["page"]).count(name="by-page").to("o2")
    plan = compile_topology(top)
    assert sorted(plan.repartition_topics) == ["app-by-page-repartition", "app-by-user-repartition"]
    assert len(plan.subtopologies) == 3
    assert plan.subtopologies[0].input_topics == ["in"]
    assert sorted(plan.subtopologies[0].repartition_sinks) == sorted(plan.repartition_topics)


def test_group_by_name_names_the_repartition_topic_and_aggregate_name_the_store():
    top = Topology("shop")
    (_source(top)
        .group_by(lambda k, v: v["user"], name="by-user")
        .aggregate(n=agg.count(), name="orders")
        .to("out"))
    plan = compile_topology(top)
    assert plan.repartition_topics == ["shop-by-user-repartition"]
    assert [s.name for s in plan.stores] == ["orders"]
    assert plan.changelog_topics == ["shop-orders-changelog"]


def test_an_aggregate_result_can_be_regrouped_and_aggregated_again():
    top = Topology("app")
    per_key = _source(top).group_by_key().window(windows.Tumbling(10)).count(name="per-key")
    per_key.group_by(lambda k, v: v["window_start"]).aggregate(keys=agg.count(), name="per-window").to("out")
    plan = compile_topology(top)
    assert plan.repartition_topics == ["app-per-window-repartition"]
    assert _shape(plan) == [
        (["in"], ["app-per-window-repartition"], ["per-key"]),
        (["app-per-window-repartition"], [], ["per-window"]),
    ]


def test_two_repartition_points_with_the_same_name_are_rejected():
    # Kafka Streams rejects a repartition topic name used twice; silently sharing it
    # mixes two differently keyed streams in one topic.
    top = Topology("app")
    s = _source(top)
    s.group_by(lambda k, v: v["u"], name="x").count(name="a").to("o1")
    s.group_by(lambda k, v: v["w"], name="x").count(name="b").to("o2")
    with pytest.raises(TopologyError, match="x"):
        compile_topology(top)


# --------------------------------------------------------------------------- names


def test_changelog_topics_are_named_app_store_changelog_with_default_store_names():
    top = Topology("my.app_1")
    s = _source(top)
    s.group_by_key().count().to("o1")
    s.group_by_key().window(windows.Session("5m")).aggregate(n=agg.count()).to("o2")
    plan = compile_topology(top)

    names = [st.name for st in plan.stores]
    assert len(names) == 2 and len(set(names)) == 2
    assert all(n for n in names)
    assert plan.changelog_topics == [f"my.app_1-{n}-changelog" for n in names]
    for st in plan.stores:
        assert st.changelog == f"my.app_1-{st.name}-changelog"


def test_default_store_names_are_stable_across_rebuilds():
    def build():
        top = Topology("app")
        _source(top).group_by(lambda k, v: v).count().to("o")
        return compile_topology(top)

    a, b = build(), build()
    assert [s.name for s in a.stores] == [s.name for s in b.stores]
    assert a.repartition_topics == b.repartition_topics
    assert a.repartition_topics == [f"app-{a.stores[0].name}-repartition"]


def test_store_kinds_follow_the_window():
    top = Topology("app")
    s = _source(top)
    g = s.group_by_key()
    g.count(name="table").to("o1")
    g.window(windows.Tumbling("1m")).count(name="tumbling").to("o2")
    g.window(windows.Hopping("5m", "1m")).count(name="hopping", emit="update").to("o3")
    g.window(windows.Sliding("1m")).count(name="sliding").to("o4")
    g.window(windows.Session("1m")).count(name="session").to("o5")
    plan = compile_topology(top)
    kinds = {st.name: st.kind for st in plan.stores}
    assert kinds == {"table": "kv", "tumbling": "window", "hopping": "window",
                     "sliding": "sliding", "session": "session"}
    assert plan.store("tumbling").window == windows.Tumbling("1m")
    assert plan.store("table").window is None


# --------------------------------------------------------------------------- validation


def test_duplicate_store_names_are_rejected_naming_both_places():
    top = Topology("app")
    s = _source(top)
    line = _line_of_next_call() + 1
    s.group_by_key().count(name="dup").to("o1")
    s.group_by_key().aggregate(n=agg.count(), name="dup").to("o2")
    with pytest.raises(TopologyError) as ei:
        compile_topology(top)
    msg = str(ei.value)
    assert "'dup'" in msg
    assert f"{THIS_FILE}:{line}" in msg
    assert f"{THIS_FILE}:{line + 1}" in msg


def _line_of_next_call() -> int:
    import inspect
    return inspect.currentframe().f_back.f_lineno


def test_reading_a_topic_twice_is_rejected_naming_both_places():
    top = Topology("app")
    line = _line_of_next_call() + 1
    top.stream("events")
    top.stream("events")
    with pytest.raises(TopologyError) as ei:
        compile_topology(top)
    msg = str(ei.value)
    assert "'events'" in msg and "twice" in msg
    assert f"{THIS_FILE}:{line}" in msg and f"{THIS_FILE}:{line + 1}" in msg


def test_a_topology_without_sources_is_rejected():
    with pytest.raises(TopologyError, match="no input"):
        compile_topology(Topology("empty"))


def test_compile_rejects_something_that_is_not_a_topology():
    with pytest.raises(TopologyError):
        compile_topology("not a topology")


@pytest.mark.parametrize("method", ["aggregate", "window", "count", "reduce"])
def test_stateful_calls_on_an_ungrouped_stream_raise_with_a_hint(method):
    top = Topology("app")
    s = _source(top)
    with pytest.raises(TopologyError) as ei:
        getattr(s, method)
    msg = str(ei.value)
    assert f"{method}()" in msg
    assert "group_by" in msg and "group_by_key" in msg


def test_aggregate_on_an_ungrouped_stream_raises_when_called_like_a_user_would():
    top = Topology("app")
    with pytest.raises(TopologyError, match="group_by"):
        _source(top).aggregate(n=agg.count())
    with pytest.raises(TopologyError, match="group_by"):
        _source(top, "in2").window(windows.Tumbling("1m"))


def test_unknown_stream_attributes_still_raise_attribute_error():
    top = Topology("app")
    with pytest.raises(AttributeError):
        _source(top).no_such_method  # noqa: B018


def test_emit_final_without_a_window_is_rejected():
    top = Topology("app")
    with pytest.raises(TopologyError, match="window"):
        _source(top).group_by_key().aggregate(n=agg.count(), emit="final")
    with pytest.raises(TopologyError, match="window"):
        _source(top, "in2").group_by_key().count(emit="final")


def test_emit_must_be_final_or_update():
    top = Topology("app")
    with pytest.raises(TopologyError, match="emit"):
        _source(top).group_by_key().window(windows.Tumbling(10)).aggregate(n=agg.count(), emit="eventually")


def test_aggregate_needs_aggregations_and_reserves_window_field_names():
    top = Topology("app")
    g = _source(top).group_by_key()
    with pytest.raises(TopologyError):
        g.aggregate()
    with pytest.raises(TopologyError):
        g.aggregate(n=42)
    with pytest.raises(TopologyError, match="window_start"):
        g.window(windows.Tumbling(10)).aggregate(window_start=agg.count())


def test_window_needs_a_window_spec_and_only_one():
    top = Topology("app")
    g = _source(top).group_by_key()
    with pytest.raises(TopologyError):
        g.window("1m")
    with pytest.raises(TopologyError):
        g.window(windows.Tumbling(10)).window(windows.Tumbling(20))


@pytest.mark.parametrize("bad", ["10x", -5, "-5s", "1.5s", "", "ten seconds", 1.5, None, True])
def test_bad_durations_are_rejected(bad):
    with pytest.raises(TopologyError):
        windows.Tumbling(bad)


@pytest.mark.parametrize("make", [
    lambda: windows.Tumbling("1m", grace=-5),
    lambda: windows.Tumbling("1m", grace="10x"),
    lambda: windows.Hopping("5m", advance=-5),
    lambda: windows.Sliding("10x"),
    lambda: windows.Session(-5),
    lambda: windows.Session("5m", grace="-1s"),
    lambda: windows.Tumbling(0),
    lambda: windows.Session(0),
])
def test_bad_durations_are_rejected_for_every_window_kind_and_grace(make):
    with pytest.raises(TopologyError):
        make()


@pytest.mark.parametrize("given,ms", [
    (250, 250), ("500ms", 500), ("10s", 10_000), ("5m", 300_000), ("1h", 3_600_000),
    ("1d", 86_400_000), (dt.timedelta(seconds=2, milliseconds=5), 2005),
])
def test_durations_accept_int_ms_timedelta_and_unit_strings(given, ms):
    assert windows.Tumbling(given).size == ms
    assert windows.Tumbling(1, grace=given).grace == ms


def test_a_duration_error_message_says_what_is_accepted():
    with pytest.raises(TopologyError) as ei:
        windows.Tumbling("10x")
    msg = str(ei.value)
    assert "'10x'" in msg and "10s" in msg


def test_hopping_advance_larger_than_size_is_rejected():
    with pytest.raises(TopologyError, match="advance"):
        windows.Hopping("1m", advance="2m")
    assert windows.Hopping("1m", advance="1m").advance == 60_000   # equal is a tumbling window


def test_app_id_must_be_usable_in_topic_names():
    for bad in ("", "has space", "a/b", None):
        with pytest.raises(TopologyError):
            Topology(bad)


def test_store_names_that_make_invalid_kafka_topic_names_are_rejected():
    top = Topology("app")
    _source(top).group_by_key().count(name="my store").to("out")
    with pytest.raises(TopologyError):
        compile_topology(top)


def test_dsl_rejects_non_callables_and_bad_serdes():
    top = Topology("app")
    s = _source(top)
    for call in (lambda: s.map(1), lambda: s.filter("x"), lambda: s.flat_map(None),
                 lambda: s.group_by(3), lambda: s.branch(), lambda: s.branch(1),
                 lambda: s.to(""), lambda: s.to("t", value="json"),
                 lambda: top.stream("x", value=dict), lambda: top.stream("y", on_error="ignore"),
                 lambda: top.stream("z", timestamp=5), lambda: s.merge(Topology("other").stream("q"))):
        with pytest.raises(TopologyError):
            call()


# --------------------------------------------------------------------------- fingerprints


def _fingerprint(window=None, **aggs):
    top = Topology("app")
    g = _source(top).group_by_key()
    if window is not None:
        g = g.window(window)
    g.aggregate(name="s", emit="update", **(aggs or {"n": agg.count()})).to("out")
    return compile_topology(top).store("s").fingerprint


def test_fingerprint_is_equal_for_an_identical_rebuild():
    a = _fingerprint(windows.Tumbling("1m", grace="10s"), n=agg.count(), total=agg.sum("x"))
    b = _fingerprint(windows.Tumbling("1m", grace="10s"), n=agg.count(), total=agg.sum("x"))
    assert a == b
    assert _fingerprint(None, n=agg.count()) == _fingerprint(None, n=agg.count())
    # durations given another way are the same definition
    assert _fingerprint(windows.Tumbling(60_000, grace=10_000), n=agg.count(), total=agg.sum("x")) == a


@pytest.mark.parametrize("other", [
    pytest.param(windows.Tumbling("2m", grace="10s"), id="size"),
    pytest.param(windows.Tumbling("1m", grace="20s"), id="grace"),
    pytest.param(windows.Hopping("1m", "30s", grace="10s"), id="hopping"),
    pytest.param(windows.Session("1m", grace="10s"), id="session"),
    pytest.param(windows.Sliding("1m", grace="10s"), id="sliding"),
    pytest.param(None, id="no-window"),
])
def test_fingerprint_changes_with_the_window_spec(other):
    base = _fingerprint(windows.Tumbling("1m", grace="10s"), n=agg.count())
    assert _fingerprint(other, n=agg.count()) != base


@pytest.mark.parametrize("aggs", [
    pytest.param(dict(n=agg.count(), total=agg.sum("y")), id="field"),
    pytest.param(dict(n=agg.count(), total=agg.max("x")), id="kind"),
    pytest.param(dict(n=agg.count()), id="removed"),
    pytest.param(dict(n=agg.count(), total=agg.sum("x"), lo=agg.min("x")), id="added"),
    pytest.param(dict(count=agg.count(), total=agg.sum("x")), id="renamed"),
    pytest.param(dict(total=agg.sum("x"), n=agg.count()), id="reordered"),
    pytest.param(dict(n=agg.count(), total=agg.sum(lambda v: v["x"] * 2)), id="callable"),
    pytest.param(dict(n=agg.count(), total=agg.reduce(lambda a, b: a + b)), id="reduce"),
])
def test_fingerprint_changes_with_the_aggregates(aggs):
    base = _fingerprint(windows.Tumbling("1m"), n=agg.count(), total=agg.sum("x"))
    assert _fingerprint(windows.Tumbling("1m"), **aggs) != base


def test_fingerprint_of_reduce_depends_on_function_and_initial():
    w = windows.Tumbling("1m")
    plus = _fingerprint(w, r=agg.reduce(lambda a, b: a + b))
    assert plus == _fingerprint(w, r=agg.reduce(lambda a, b: a + b))
    assert plus != _fingerprint(w, r=agg.reduce(lambda a, b: a * b))
    assert plus != _fingerprint(w, r=agg.reduce(lambda a, b: a + b, 0))
    assert _fingerprint(w, r=agg.reduce(lambda a, b: a + b, 0)) != _fingerprint(w, r=agg.reduce(lambda a, b: a + b, 1))


def test_fingerprint_of_one_store_ignores_other_stores():
    def build(second_window):
        top = Topology("app")
        g = _source(top).group_by_key()
        g.count(name="stable").to("o1")
        g.window(second_window).count(name="other").to("o2")
        return compile_topology(top)

    a, b = build(windows.Tumbling("1m")), build(windows.Tumbling("2m"))
    assert a.store("stable").fingerprint == b.store("stable").fingerprint
    assert a.store("other").fingerprint != b.store("other").fingerprint


# --------------------------------------------------------------------------- co-partitioning


def test_merged_sources_feeding_a_stateful_operator_form_a_copartition_group():
    top = Topology("app")
    a, b = _source(top, "a"), _source(top, "b")
    a.merge(b).group_by_key().count(name="c").to("out")
    plan = compile_topology(top)
    assert len(plan.subtopologies) == 1
    assert sorted(plan.subtopologies[0].input_topics) == ["a", "b"]
    assert [sorted(g) for g in plan.copartition_groups] == [["a", "b"]]


def test_merged_sources_without_state_need_no_copartitioning():
    top = Topology("app")
    _source(top, "a").merge(_source(top, "b")).to("out")
    plan = compile_topology(top)
    assert plan.copartition_groups == []


def test_merged_sources_rekeyed_before_the_aggregate_need_no_copartitioning():
    top = Topology("app")
    _source(top, "a").merge(_source(top, "b")).group_by(lambda k, v: v).count(name="c").to("out")
    plan = compile_topology(top)
    assert plan.copartition_groups == []
    assert _shape(plan) == [(["a", "b"], ["app-c-repartition"], []), (["app-c-repartition"], [], ["c"])]


def test_separate_sources_are_separate_subtopologies_without_copartitioning():
    top = Topology("app")
    _source(top, "a").group_by_key().count(name="ca").to("o1")
    _source(top, "b").group_by_key().count(name="cb").to("o2")
    plan = compile_topology(top)
    assert _shape(plan) == [(["a"], [], ["ca"]), (["b"], [], ["cb"])]
    assert plan.copartition_groups == []


# --------------------------------------------------------------------------- describe


def test_to_dict_describes_subtopologies_topics_and_stores():
    top = Topology("pv")
    (top.stream("views", key=serdes.String(), value=serdes.Json(), timestamp=lambda k, v, t: v["ts"])
        .filter(lambda k, v: v["ms"] > 0)
        .group_by(lambda k, v: v["user"])
        .window(windows.Tumbling("1m", grace="10s"))
        .aggregate(views=agg.count(), ms=agg.sum("ms"), name="per-user")
        .to("views-per-user", value=serdes.Json()))
    plan = compile_topology(top)
    d = to_dict(plan)

    assert json.loads(json.dumps(d)) == d           # JSON-ready
    assert d["app_id"] == "pv"
    assert d["topics"] == {
        "sources": ["views"],
        "sinks": ["views-per-user"],
        "repartition": ["pv-per-user-repartition"],
        "changelog": ["pv-per-user-changelog"],
        "tables": [],
    }
    assert [s["id"] for s in d["subtopologies"]] == [0, 1]
    sub0, sub1 = d["subtopologies"]
    assert sub0["input_topics"] == ["views"]
    assert [n["kind"] for n in sub0["nodes"]] == ["source", "filter", "select_key", "repartition_sink"]
    assert "pv-per-user-repartition" in sub0["sink_topics"]
    assert sub0["stores"] == []
    assert sub1["input_topics"] == ["pv-per-user-repartition"]
    assert [n["kind"] for n in sub1["nodes"]] == ["repartition_source", "aggregate", "sink"]
    assert sub1["stores"] == ["per-user"]
    assert sub1["sink_topics"] == ["views-per-user"]

    # parents refer to node names of the same description
    names = {n["name"] for s in d["subtopologies"] for n in s["nodes"]}
    for s in d["subtopologies"]:
        for n in s["nodes"]:
            assert set(n["parents"]) <= names
            assert f"{THIS_FILE}:" in n["defined_at"]
    agg_node = next(n for n in sub1["nodes"] if n["kind"] == "aggregate")
    assert "per-user" in agg_node["detail"] and "pv-per-user-changelog" in agg_node["detail"]
    assert "tumbling" in agg_node["detail"]

    (store,) = d["stores"]
    assert store["name"] == "per-user"
    assert store["kind"] == "window"
    assert store["changelog"] == "pv-per-user-changelog"
    assert store["fingerprint"] == plan.store("per-user").fingerprint
    assert store["window"] == "tumbling(size=1m, grace=10s)"


def test_to_dict_of_a_table_aggregate_has_no_window():
    top = Topology("t")
    _source(top).group_by_key().count(name="c").to("out")
    d = to_dict(compile_topology(top))
    assert d["stores"][0]["window"] is None
    assert d["stores"][0]["kind"] == "kv"
    assert d["topics"]["repartition"] == []
    assert len(d["subtopologies"]) == 1
