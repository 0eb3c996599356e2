"""Declared partitioners (DESIGN section 3, ``partitioner=``) and placement of re-keyed records
(``streamproc/plan/placement.py``): the plan, the test driver, key routing, the misplaced check,
and - on a broker - that ``"crc32"`` is what confluent-kafka's default partitioner really does."""
from __future__ import annotations

import logging

import pytest

import runtime_helpers as h
from streamproc import Topology, serdes, windows
from streamproc.errors import CodecError, TopologyError
from streamproc.partitioner import partition_for, partitions_for
from streamproc.plan import compile_topology
from streamproc.runtime.worker.misplaced import FULL_CHECK, MisplacedCheck
from streamproc.runtime.serve.queries import Stores
from streamproc.testing import TopologyTestDriver

STR, JSON = serdes.String(), serdes.Json()


def rekey(k, v):
    return v["cust"], v


def test_crc32_is_zlib_crc32_and_null_keys_are_left_to_the_producer():
    import zlib

    keys = [f"key-{i}".encode() for i in range(200)]
    assert [partition_for(k, 7, "crc32") for k in keys] == [zlib.crc32(k) % 7 for k in keys]
    assert partitions_for(keys + [None], 7, "crc32") == [zlib.crc32(k) % 7 for k in keys] + [-1]
    assert partitions_for(keys, 7) == [partition_for(k, 7) for k in keys]
    # the two partitioners really place keys differently (else nothing below could fail)
    assert sum(partition_for(k, 4, "crc32") != partition_for(k, 4) for k in keys) > 100
    with pytest.raises(ValueError, match="crc32"):
        partition_for(b"x", 4, "fnv")


@pytest.mark.parametrize("call", ["stream", "table", "global_table"])
def test_unknown_partitioner_is_a_topology_error(call):
    t = Topology("p")
    with pytest.raises(TopologyError, match=r"partitioner must be 'murmur2'.*'crc32'.*got 'random'"):
        getattr(t, call)("in", key=STR, partitioner="random")


def _join_app(left_part="murmur2", right_part="murmur2", left_key=STR, right_key=STR, rekey_left=False):
    t = Topology("j")
    s = t.stream("orders", key=left_key, value=JSON, partitioner=left_part)
    tab = t.table("customers", key=right_key, value=JSON, partitioner=right_part)
    (s.map(rekey) if rekey_left else s).join(tab, name="oc").to("out", value=JSON)
    return t


def test_join_of_topics_with_different_partitioners_is_refused_naming_both():
    with pytest.raises(TopologyError) as e:
        compile_topology(_join_app(left_part="murmur2", right_part="crc32"))
    msg = str(e.value)
    assert "'orders' (partitioner='murmur2')" in msg and "'customers' (partitioner='crc32'" in msg
    assert "re-key one side" in msg


def test_join_of_topics_with_different_key_serdes_is_refused():
    with pytest.raises(TopologyError, match=r"'orders' \(key serde .*'customers' \(key serde .*serialize keys"):
        compile_topology(_join_app(right_key=serdes.Json()))


def test_a_rekeyed_side_is_placed_like_the_topic_it_meets():
    plan = compile_topology(_join_app(left_part="murmur2", right_part="crc32", rekey_left=True))
    rp = plan.repartition_topics[0]
    pl = plan.placement(rp)
    assert (pl.follows, pl.partitioner, pl.by_producer) == ("customers", "crc32", False)
    assert "like 'customers' (crc32" in pl.describe()
    sink = next(n for st in plan.subtopologies for n in st.nodes if n.kind == "repartition_sink")
    assert sink.params["placement"] is pl
    # an aggregation's repartition follows no topic: murmur2 of the internal codec, by the producer
    t = Topology("a")
    t.stream("in", key=STR, value=JSON).group_by(lambda k, v: v["u"], name="by-u").count(name="c").to("out")
    agg = compile_topology(t)
    assert agg.placement("a-by-u-repartition").by_producer
    assert agg.placement("in").partitioner == "murmur2"


def test_describe_names_the_placement_of_every_repartition(tmp_path):
    from streamproc.plan.describe import to_dict

    d = to_dict(compile_topology(_join_app(right_part="crc32", left_part="crc32", rekey_left=True)))
    assert d["partitioning"]["j-oc-left-repartition"].startswith("like 'customers' (crc32")
    assert d["partitioning"]["customers"].startswith("crc32")


@pytest.mark.parametrize("part", ["murmur2", "crc32"])
@pytest.mark.parametrize("rekey_left", [False, True])
def test_driver_places_keys_with_the_declared_partitioner(part, rekey_left):
    """4 partitions: a table's rows and the stream records of the same key meet in one task whatever
    the partitioner, re-keyed or not (the driver and the runtime place records with plan.placement)."""
    custs = [f"c{i}" for i in range(40)]
    with TopologyTestDriver(_join_app(part, part, rekey_left=rekey_left),
                            partitions={"orders": 4, "customers": 4}) as d:
        for c in custs:
            d.pipe("customers", c, {"name": c.upper()}, timestamp=1)
        for i, c in enumerate(custs * 3):
            d.pipe("orders", c if not rekey_left else f"o{i}", {"cust": c, "i": i}, timestamp=2)
        out = d.read_output("out")
    assert len(out) == 120
    assert all(r.value["right"]["name"] == r.key.upper() for r in out)
    # the table's rows sit in the tasks the declared partitioner gives their keys
    for p in range(4):
        rows = d._tasks[(1 if rekey_left else 0, p)].snapshot("customers") if (1 if rekey_left else 0, p) in \
            d._tasks else {}
        assert all(partition_for(STR.serialize(k), 4, part) == p for k in rows)


def test_a_key_the_met_topics_serde_refuses_stops_with_a_clear_error():
    t = Topology("j")
    s = t.stream("orders", key=STR, value=JSON)
    tab = t.table("customers", key=STR, value=JSON)
    s.map(lambda k, v: (v["n"], v)).join(tab, name="oc").to("out", value=JSON)
    with TopologyTestDriver(t, partitions={"orders": 2, "customers": 2}) as d:
        with pytest.raises(CodecError, match=r"partitioned with that topic's key serde"):
            d.pipe("orders", "o1", {"n": 42}, timestamp=1)


def test_http_routing_uses_the_placement(tmp_path):
    """``Stores.task_of``: a table declared crc32 routes by crc32; a store behind a repartition that meets
    that table routes like the table; an aggregation's store behind its own repartition by the codec."""
    t = Topology("q")
    orders = t.stream("orders", key=STR, value=JSON, partitioner="crc32")
    custs = t.table("customers", key=STR, value=JSON, name="custs", partitioner="crc32")
    (orders.map(rekey).join(custs, name="oc").group_by_key().count(name="per-cust").to("per-cust"))
    orders.group_by(lambda k, v: v["cust"], name="by-cust").count(name="orders-by-cust").to("obc")
    plan = compile_topology(t)
    counts = {("task", st.id): 4 for st in plan.subtopologies}
    stores = Stores(plan, str(tmp_path), counts)
    try:
        from streamproc.state import codec

        for k in (f"c{i}" for i in range(50)):
            crc = partition_for(k.encode(), 4, "crc32")
            assert stores.task_of("custs", k)[1] == crc
            assert stores.task_of("per-cust", k)[1] == crc
            assert stores.task_of("orders-by-cust", k)[1] == partition_for(codec.encode_key(k), 4)
    finally:
        stores.close()


class _Plan:
    def __init__(self, partitioners: dict):
        self.source_topics = list(partitioners)
        self._p = partitioners

    def placement(self, topic):
        from streamproc.plan.placement import Placement

        return Placement(topic, STR, self._p[topic])


def test_misplaced_check_warns_once_per_topic_and_counts(caplog):
    keys = [f"k{i}".encode() for i in range(600)]
    wrong = [k for k in keys if partition_for(k, 4, "crc32") != partition_for(k, 4)]
    check = MisplacedCheck(_Plan({"t": "murmur2", "u": "crc32"}), lambda topic: 4, "w0")
    assert check.counts == {"t": 0, "u": 0}               # every series exists from the start
    with caplog.at_level(logging.WARNING, logger="streamproc.partitioning"):
        # records a crc32 producer placed in partition 1, read as murmur2
        crc_p1 = [k for k in keys if partition_for(k, 4, "crc32") == 1]
        check.check("t", 1, crc_p1)
        check.check("t", 1, crc_p1)
        check.check("t", 1, crc_p1)
        # correctly placed records of the other topic: nothing
        check.check("u", 1, crc_p1)
        check.check("repartition-topic", 0, keys)          # not a source topic: not checked
    def bad(ks):
        return sum(partition_for(k, 4) != 1 for k in ks)

    assert bad(crc_p1) > 0 and wrong
    assert check.counts["u"] == 0
    # the first FULL_CHECK records of a partition are all checked, then the first of each batch
    assert len(crc_p1) < FULL_CHECK < 2 * len(crc_p1)
    assert check.counts["t"] == bad(crc_p1) + bad(crc_p1[:FULL_CHECK - len(crc_p1)]) + bad(crc_p1[:1])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert "topic 't'" in msg and "partitioner='murmur2'" in msg and 'partitioner="crc32"' in msg
    assert "murmur2_random" in msg


# ------------------------------------------------------------------------------------------ broker

@pytest.mark.broker
def test_crc32_and_murmur2_match_what_librdkafka_producers_do(kafka):
    """confluent-kafka's default partitioner (consistent_random) is "crc32"; murmur2_random is "murmur2"."""
    from confluent_kafka import Producer

    bootstrap, _ = kafka
    topic = h.unique("placement")
    h.create(bootstrap, [topic], 4)
    keys = [f"user-{i}".encode() for i in range(120)]
    got: dict = {}
    for conf in ({}, {"partitioner": "murmur2_random"}):
        p = Producer({"bootstrap.servers": bootstrap, **conf})
        name = conf.get("partitioner", "default")
        for k in keys:
            p.produce(topic, b"v", k, on_delivery=lambda err, m, name=name: got.setdefault(name, []).append(
                (m.key(), m.partition())))
        assert p.flush(30) == 0
    assert {k: p for k, p in got["default"]} == {k: partition_for(k, 4, "crc32") for k in keys}
    assert {k: p for k, p in got["murmur2_random"]} == {k: partition_for(k, 4) for k in keys}


@pytest.mark.broker
def test_worker_warns_about_and_counts_records_of_another_partitioner(kafka, tmp_path, caplog):
    """A topic produced with confluent-kafka's default partitioner, read as the default murmur2: one WARNING
    naming the fix, ``misplaced`` counted in the stats; the records are processed all the same."""
    from confluent_kafka import Producer

    from streamproc.runtime.options import RunOptions
    from streamproc.runtime.instance.app import prepare_topics

    bootstrap, _ = kafka
    src, out = h.unique("crc-in"), h.unique("crc-out")
    h.create(bootstrap, [src, out], 4)
    ref = h.write_topology(tmp_path / "topo.py", f"""
        from streamproc import Topology, serdes
        topology = Topology("{h.unique('crc-app')}")
        topology.stream("{src}", key=serdes.String(), value=serdes.Json()).to("{out}", value=serdes.Json())
    """)
    p = Producer({"bootstrap.servers": bootstrap})                # default partitioner: CRC32
    for i in range(200):
        p.produce(src, b'{"i": %d}' % i, f"k{i}".encode())
    assert p.flush(30) == 0
    plan = h.load_plan(ref)
    opts = RunOptions(bootstrap_servers=bootstrap, state_dir=str(tmp_path / "state"), topology=ref,
                      client_config=dict(h.CLIENT_CONFIG))
    prepare_topics(plan, opts)
    with caplog.at_level(logging.WARNING, logger="streamproc.partitioning"):
        with h.WorkerThread(plan, opts) as w:
            h.wait_until(lambda: w.worker.records_in >= 200, 60, what="the 200 records processed")
            misplaced = dict(w.worker.stats.snapshot()["misplaced"])
    assert 0 < misplaced[src] <= 200
    warns = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and src in r.getMessage()]
    assert len(warns) == 1 and 'partitioner="crc32"' in warns[0]
    assert len(h.read_topic(bootstrap, out, expect=200)) == 200
