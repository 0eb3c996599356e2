"""Tables and joins without a broker: the DSL's validation, the plan (stores, changelogs, repartition
topics, co-partitioning), event-time ordering of a task's inputs, join state that outlives its task
(memory and RocksDB, a rollback), the table restore from its own topic, and the checkpoint's handling
of table stores. Join *semantics* are property-tested against a reference model in
``test_join_semantics.py``."""
from __future__ import annotations

import pytest

from streamproc import Topology, agg, serdes, windows
from streamproc.errors import StateError, TopologyError
from streamproc.operators import RawBatch
from streamproc.plan import compile_topology
from streamproc.plan.describe import render_tree, to_dict
from streamproc.plan.partitions import partition_counts
from streamproc.runtime.worker import checkpoint as cp
from streamproc.runtime.instance.app import RETENTION_MARGIN_MS, internal_topic_specs
from streamproc.runtime.changelog.restore import Restorer
from streamproc.runtime.engine.task import Task, _runs
from streamproc.state import MemoryBackend
from streamproc.testing import TopologyTestDriver

from test_task_lifecycle import ChangelogLog, FakeRestoreConsumer

S, J = serdes.String(), serdes.Json()


def _orders():
    t = Topology("shop")
    orders = t.stream("orders", key=S, value=J)
    customers = t.table("customers", key=S, value=J, name="customers")
    return t, orders, customers


# ------------------------------------------------------------------------------------------ DSL errors

def test_stream_table_join_refuses_a_window_and_key():
    t, orders, customers = _orders()
    with pytest.raises(TopologyError, match="stream-table join has no window"):
        orders.join(customers, window=windows.JoinWindow("1m"))
    with pytest.raises(TopologyError, match="key= picks the row of a GlobalTable only"):
        orders.join(customers, key=lambda k, v: k)
    with pytest.raises(TopologyError, match="how='inner' | 'left'"):
        orders.join(customers, how="outer")


def test_stream_stream_join_needs_a_join_window():
    t, orders, _ = _orders()
    pay = t.stream("payments", key=S, value=J)
    with pytest.raises(TopologyError, match="needs window=windows.JoinWindow"):
        orders.join(pay)
    with pytest.raises(TopologyError, match="needs window=windows.JoinWindow"):
        orders.join(pay, window=windows.Tumbling("1m"))
    with pytest.raises(TopologyError, match="key= picks the row of a GlobalTable only"):
        orders.join(pay, window=windows.JoinWindow("1m"), key=lambda k, v: k)
    with pytest.raises(TopologyError, match="how="):
        orders.join(pay, window=windows.JoinWindow("1m"), how="right")


def test_joins_across_topologies_and_of_other_things_are_refused():
    t, orders, _ = _orders()
    other = Topology("other")
    with pytest.raises(TopologyError, match="same Topology"):
        orders.join(other.stream("x"), window=windows.JoinWindow("1m"))
    with pytest.raises(TopologyError, match="same Topology"):
        orders.join(other.global_table("g"))
    with pytest.raises(TopologyError, match="needs a Stream, Table or GlobalTable"):
        orders.join(42)
    with pytest.raises(TopologyError, match="joins two tables"):
        t.table("t2", key=S, value=J).join(orders)
    with pytest.raises(TopologyError, match="global_table.*window|has no window"):
        orders.join(t.global_table("g"), window=windows.JoinWindow("1m"))


def test_a_topic_is_read_once_whatever_reads_it():
    t, orders, _ = _orders()
    with pytest.raises(TopologyError, match="read twice"):
        t.global_table("orders")
    t.global_table("products")
    with pytest.raises(TopologyError, match="already read as a global table"):
        t.stream("products")


def test_join_window_defaults_and_close_times():
    w = windows.JoinWindow("10s", grace="1s")
    assert (w.before, w.after, w.grace) == (10_000, 10_000, 1_000)
    w = windows.JoinWindow(5, after=7, grace=2)
    assert w.close_time(100, "left") == 100 + 7 + 2 + 1     # left closes when st > tl + after + grace
    assert w.close_time(100, "right") == 100 + 5 + 2 + 1    # right closes when st > tr + before + grace
    assert w.describe() == "join(before=5ms, after=7ms, grace=2ms)"


# ------------------------------------------------------------------------------------------ plan

def test_stream_table_join_runs_in_one_subtopology_with_the_table_as_changelog():
    t, orders, customers = _orders()
    orders.join(customers, how="left").to("out")
    plan = compile_topology(t)
    assert [st.input_topics for st in plan.subtopologies] == [["orders", "customers"]]
    spec = plan.store("customers")
    assert (spec.kind, spec.changelog, spec.internal_changelog) == ("table", "customers", False)
    assert plan.changelog_topics == [] and plan.table_topics == ["customers"]
    assert plan.copartition_groups == [["orders", "customers"]]
    counts = partition_counts(plan, {"orders": 3, "customers": 3})
    assert internal_topic_specs(plan, counts) == []          # no changelog topic: the source is one


def test_non_copartitioned_join_inputs_are_refused_with_their_counts():
    t, orders, customers = _orders()
    orders.join(customers).to("out")
    plan = compile_topology(t)
    with pytest.raises(TopologyError, match="'orders' has 2, 'customers' has 3"):
        partition_counts(plan, {"orders": 2, "customers": 3})
    with pytest.raises(TopologyError, match="co-partitioning"):
        TopologyTestDriver(t, partitions={"orders": 2, "customers": 3})


def test_rekeyed_stream_is_repartitioned_like_the_table_before_the_join():
    t, orders, customers = _orders()
    (orders.map(lambda k, v: (v["customer"], v))
        .join(customers, name="with-customer").to("out"))
    plan = compile_topology(t)
    assert plan.repartition_topics == ["shop-with-customer-left-repartition"]
    assert plan.generated_names == []
    counts = partition_counts(plan, {"orders": 8, "customers": 3})
    assert counts["shop-with-customer-left-repartition"] == 3     # sized like the table it joins
    # without name= the repartition topic is generated and warned about, with the call that names it
    t2, orders2, customers2 = _orders()
    orders2.map(lambda k, v: (v["customer"], v)).join(customers2).to("out")
    names = compile_topology(t2).generated_names
    assert [(g.what, g.call) for g in names] == [("repartition topic", "join(..., name=...)")]
    assert "join(..., name=...)" in names[0].warning()


def test_stream_stream_join_stores_changelogs_and_retention():
    t, orders, _ = _orders()
    pay = t.stream("payments", key=S, value=J)
    orders.join(pay, how="outer", window=windows.JoinWindow("10m", after="5m", grace="1m"), name="op").to("out")
    plan = compile_topology(t)
    left, right = plan.store("op-left"), plan.store("op-right")
    assert (left.kind, left.side, left.changelog) == ("join", "left", "shop-op-left-changelog")
    assert (right.kind, right.side) == ("join", "right")
    assert left.fingerprint != right.fingerprint
    specs = {s.name: s for s in internal_topic_specs(plan, partition_counts(plan, {"orders": 2, "payments": 2, "customers": 2}))}
    for name in ("shop-op-left-changelog", "shop-op-right-changelog"):
        assert specs[name].partitions == 2
        assert specs[name].config == {"cleanup.policy": "compact,delete",
                                      "retention.ms": str(600_000 + 300_000 + 60_000 + RETENTION_MARGIN_MS)}
    assert "shop-op-left-changelog" in plan.changelog_topics
    # generated store names are warned about
    t2, o2, _ = _orders()
    o2.join(t2.stream("p", key=S, value=J), window=windows.JoinWindow("1m")).to("out")
    assert [(g.what, g.name) for g in compile_topology(t2).generated_names] == [
        ("store", "join-3-left"), ("store", "join-3-right")]


def test_describe_shows_join_stores_tables_and_global_tables():
    t, orders, customers = _orders()
    products = t.global_table("products", key=S, value=J)
    pay = t.stream("payments", key=S, value=J)
    (orders.join(customers, how="left").join(products, key=lambda k, v: v["p"])
        .join(pay, window=windows.JoinWindow("1m"), name="op").to("out"))
    plan = compile_topology(t)
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render_tree(plan))
    text = console.export_text()
    assert "stream-table how=left  table=customers" in text
    assert "stream-global how=inner  global table=products" in text
    assert "stream-stream how=inner  join(before=1m, after=1m, grace=0ms)  store=op-left" in text
    assert "Global tables" in text and "products  topic=products" in text
    d = to_dict(plan)
    assert d["topics"]["tables"] == ["customers", "products"]
    assert d["global_tables"][0]["name"] == "products"
    assert {s["name"] for s in d["stores"]} == {"customers", "op-left", "op-right"}


def test_aggregate_without_window_is_a_table_and_still_a_stream():
    from streamproc.dsl import Table

    t = Topology("agg")
    counts = t.stream("in", key=S, value=J).group_by_key().count(name="n")
    assert isinstance(counts, Table)
    counts.filter(lambda k, v: v["count"] < 3).to("small")
    counts.to_stream().map_values(lambda v: v["count"]).to("all")
    with TopologyTestDriver(t) as d:
        for ts in range(4):
            d.pipe("in", "a", {}, timestamp=ts)
        assert [r.value for r in d.read_output("all")] == [1, 2, 3, 4]
        # the row stops passing at count 3: it is deleted from the filtered view (None), then nothing more
        assert [r.value for r in d.read_output("small")] == [{"count": 1}, {"count": 2}, None]


# ------------------------------------------------------------------------------------------ processing order

def test_runs_merge_partitions_by_timestamp_then_offset_without_reordering_any():
    assert _runs([([5, 1, 9], [0, 1, 2])]) == [(0, 0, 3)]
    # input 0 at 10, 20, 30; input 1 at 15, 15, 40 -> 10 | 15 15 | 20 30 | 40
    assert _runs([([10, 20, 30], [0, 1, 2]), ([15, 15, 40], [7, 8, 9])]) == [
        (0, 0, 1), (1, 0, 2), (0, 1, 3), (1, 2, 3)]
    # ties: the smaller offset first; out-of-order records of one input keep their order
    assert _runs([([5, 3], [4, 5]), ([5], [2])]) == [(1, 0, 1), (0, 0, 2)]


def test_a_task_applies_an_older_table_update_before_a_newer_stream_record():
    t, orders, customers = _orders()
    orders.join(customers, lambda o, c: c and c["tier"], how="left").to("out", value=J)
    st = compile_topology(t).subtopologies[0]
    task = Task(st, 0, MemoryBackend())

    def raw(topic, recs, first_offset=0):
        return RawBatch(topic, 0, [S.serialize(k) for k, _, _ in recs], [J.serialize(v) for _, v, _ in recs],
                        [ts for _, _, ts in recs], list(range(first_offset, first_offset + len(recs))))

    produced = task.process_many([
        raw("orders", [("c", {}, 10), ("c", {}, 20), ("c", {}, 30)]),
        raw("customers", [("c", {"tier": "silver"}, 15), ("c", {"tier": "gold"}, 25)]),
    ])
    values = [J.deserialize(v) for _, _, vs, _ in produced for v in vs]
    ts = [t for _, _, _, tss in produced for t in tss]
    assert values == [None, "silver", "gold"]
    assert ts == [10, 20, 30]
    assert task.state.stream_time == 30


# ------------------------------------------------------------------------------------------ join state lifetime

def _stream_stream(how="left"):
    t = Topology("ss")
    left, right = t.stream("l", key=S, value=J), t.stream("r", key=S, value=J)
    left.join(right, how=how, window=windows.JoinWindow(10, grace=5), name="j").to("out", value=J)
    return compile_topology(t).subtopologies[0]


def _feed(task, topic, recs):
    out = task.process(RawBatch(topic, 0, [S.serialize(k) for k, _, _ in recs], [J.serialize(v) for _, v, _ in recs],
                                [ts for _, _, ts in recs], list(range(len(recs)))))
    task.state.changes()
    task.state.apply()
    return [(S.deserialize(k), J.deserialize(v), t) for _, ks, vs, ts in out for k, v, t in zip(ks, vs, ts)]


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
def test_join_state_outlives_its_task_and_closes_on_time(tmp_path, backend):
    """Records stored by one task instance are matched, and their unmatched ones emitted when their window
    closes, by a new task built on the same backend (what a restore or a restart hands over)."""
    st = _stream_stream()

    def open_backend():
        if backend == "memory":
            return shared
        from streamproc.state.rocksdb import RocksDBBackend
        return RocksDBBackend.for_task(tmp_path / "task", st)

    shared = MemoryBackend()
    b = open_backend()
    assert _feed(Task(st, 0, b), "l", [("a", 1, 100), ("b", 2, 100)]) == []
    if backend == "rocksdb":
        b.close()
    b = open_backend()
    task = Task(st, 0, b)
    assert _feed(task, "r", [("a", "x", 105)]) == [("a", {"left": 1, "right": "x"}, 105)]
    # b's window closes when stream time > 100 + 10 + 5: it never matched, so the left join emits it then
    assert _feed(task, "r", [("z", "y", 115)]) == []
    assert _feed(task, "r", [("z", "y", 116)]) == [("b", {"left": 2, "right": None}, 100)]
    assert _feed(task, "r", [("a", "late-enough", 140)]) == []
    assert task.snapshot("j-left") == {}      # state bounded by window + grace
    if backend == "rocksdb":
        b.close()


def test_a_rolled_back_batch_leaves_no_trace_in_join_state():
    st = _stream_stream()
    backend = MemoryBackend()
    task = Task(st, 0, backend)
    _feed(task, "l", [("a", 1, 100)])
    task.process(RawBatch("r", 0, [S.serialize("a")], [J.serialize("x")], [105], [0]))   # matched, not committed
    task.state.discard()                               # the checkpoint was aborted
    task = Task(st, 0, backend)                         # the worker rebuilds it from the backend
    assert _feed(task, "r", [("q", "y", 200)]) == [("a", {"left": 1, "right": None}, 100)]


# ------------------------------------------------------------------------------------------ table restore

def _table_log(records):
    log = ChangelogLog()
    for k, v in records:
        log.append(("customers", 0), None if k is None else S.serialize(k), None if v is None else J.serialize(v))
    return log


def _restore(log, ends, store_spec):
    r = Restorer({"bootstrap.servers": "fake:1", "group.id": "x"}, stall_timeout_s=5)
    r._consumer = FakeRestoreConsumer(log)
    backend = MemoryBackend()
    r.start(("0", 0), backend, [store_spec], 0, ends)
    for _ in range(50):
        if not r.pending:
            break
        r.step(0.01)
    assert not r.pending
    return backend


def test_a_table_restores_from_its_own_topic_up_to_the_committed_offset():
    t, orders, customers = _orders()
    orders.join(customers).to("out")
    spec = compile_topology(t).store("customers")
    log = _table_log([("a", {"v": 1}), (None, {"v": 9}), ("b", {"v": 2}), ("a", None), ("c", {"v": 3}),
                      ("d", {"v": 4})])
    backend = _restore(log, {"customers": 5}, spec)       # offsets 0..4 were processed; 5 was not
    assert dict(backend.items("customers")) == {"b": [1002, {"v": 2}], "c": [1004, {"v": 3}]}
    assert backend.get_meta("changelog_offsets") == {"customers": 4}
    assert backend.get_meta("stream_time") == 1004
    # nothing committed: nothing to restore (processing starts from the beginning of the topic)
    assert dict(_restore(log, {}, spec).items("customers")) == {}


def test_a_table_restore_refuses_an_unreadable_record_under_fail():
    t, orders, customers = _orders()
    orders.join(customers).to("out")
    spec = compile_topology(t).store("customers")
    log = _table_log([("a", {"v": 1})])
    log.append(("customers", 0), b"k", b"{not json")
    with pytest.raises(StateError, match=r"customers\[0\]: the record at offset 1 cannot be read"):
        _restore(log, {"customers": 2}, spec)
    t2 = Topology("shop")
    t2.stream("orders", key=S, value=J).join(t2.table("customers", key=S, value=J, on_error="skip")).to("o")
    skipped = _restore(log, {"customers": 2}, compile_topology(t2).store("customers"))
    assert dict(skipped.items("customers")) == {"a": [1000, {"v": 1}]}


def test_checkpoint_writes_no_changelog_for_a_table_and_records_its_consumed_offset():
    t, orders, customers = _orders()
    orders.join(customers).to("out")
    st = compile_topology(t).subtopologies[0]
    task = Task(st, 0, MemoryBackend())
    task.process(RawBatch("customers", 0, [S.serialize("a")], [J.serialize({"v": 1})], [5], [41]))

    class W:
        produced = []

        def produce(self, topic, value, key, partition=-1, timestamp=0, headers=None):
            self.produced.append(topic)

    w = W()
    cp._write_changelogs(task, w.produce)
    assert w.produced == []                         # the topic itself is the changelog
    c = cp.Checkpoint(None, None, None, eos=False, commit_interval_s=1.0, txn_budget_s=10.0)
    c.ran((0, 0), ("customers", 0), 42)
    task.state.apply(cp._task_changelog_offsets(c, task))
    assert task.state.backend.get_meta("changelog_offsets") == {"customers": 41}
    assert dict(task.state.backend.items("customers")) == {"a": [5, {"v": 1}]}


def test_aggregate_table_joins_a_stream_in_one_task():
    t = Topology("totals")
    pays = t.stream("payments", key=S, value=J)
    totals = pays.group_by_key().aggregate(total=agg.sum("amount"), name="totals")
    t.stream("orders", key=S, value=J).join(totals, lambda o, tot: {**o, **(tot or {})}, how="left").to("out", value=J)
    with TopologyTestDriver(t) as d:
        d.pipe("orders", "c", {"id": 1}, timestamp=1)
        d.pipe("payments", "c", {"amount": 5}, timestamp=2)
        d.pipe("payments", "c", {"amount": 7}, timestamp=3)
        d.pipe("orders", "c", {"id": 2}, timestamp=4)
        assert [r.value for r in d.read_output("out")] == [{"id": 1}, {"id": 2, "total": 12}]


def test_join_records_of_a_key_emptied_and_refilled_within_one_checkpoint_reach_the_store():
    """Several batches, one checkpoint: a key whose records all expire (deleted from the store) and
    then get a new one must be stored with the new one (its working list is a new object)."""
    st = _stream_stream(how="inner")
    backend = MemoryBackend()
    task = Task(st, 0, backend)

    def batch(topic, recs):
        task.process(RawBatch(topic, 0, [S.serialize(k) for k, _, _ in recs], [J.serialize(v) for _, v, _ in recs],
                              [ts for _, _, ts in recs], list(range(len(recs)))))

    batch("l", [("a", 1, 100)])
    batch("r", [("z", 0, 200)])          # stream time 200: a's record (closes after 115) expires
    batch("l", [("a", 2, 201)])
    task.state.changes()
    task.state.apply()
    assert [[e[0], e[1]] for e in backend.get("j-left", "a")[1:]] == [[201, 2]]
    fresh = Task(st, 0, backend)
    out = fresh.process(RawBatch("r", 0, [S.serialize("a")], [J.serialize("x")], [205], [0]))
    assert [J.deserialize(v) for _, _, vs, _ in out for v in vs] == [{"left": 2, "right": "x"}]
