"""Connectors end to end (DESIGN section 9): a real redis-server / rabbitmq-server / nats-server, a Kafka
broker, and ``run_app`` in a child process. Each system's client-level behaviour is tested in
``test_connector_<system>.py``; here the guarantees of the bridge and the delivery: what an external
source holds reaches the topology, results reach the external sink, nothing is lost through a SIGKILL of
the instance or an outage of the target, and a target that is down pauses the task instead of buffering.
"""
from __future__ import annotations

import os
import signal
import time

import orjson
import pytest

import runtime_helpers as h
import _server_redis
from streamproc import serdes

STR, JSON = serdes.String(), serdes.Json()

redis = pytest.importorskip("redis")

pytestmark = [pytest.mark.broker, pytest.mark.xdist_group("connectors-redis")]


@pytest.fixture(scope="module")
def rserver(tmp_path_factory):
    if _server_redis.redis_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    srv = _server_redis.start_redis(tmp_path_factory.mktemp("redis-e2e"))
    yield srv
    srv.kill()


@pytest.fixture
def r(rserver):
    rserver.start()
    c = redis.Redis.from_url(rserver.url, socket_timeout=5)
    yield c
    c.close()


REDIS_TO_REDIS = '''
from streamproc import Topology, connectors, serdes
URL = "{url}"
t = Topology("{app}", on_processing_error="fail")
orders = t.stream(connectors.RedisStream(URL, "{src}", group="g", field="value", key=lambda v: v["user"],
                                         dedupe="10m", name="orders"),
                  key=serdes.String(), value=serdes.Json())
doubled = orders.map_values(lambda v: {{"user": v["user"], "seq": v["seq"], "amount": v["amount"] * 2}})
doubled.to(connectors.RedisStream(URL, "{dst}", name="doubled"), key=serdes.String(), value=serdes.Json())
'''


def _add(r, stream: str, seqs) -> None:
    pipe = r.pipeline(transaction=False)
    for i in seqs:
        pipe.xadd(stream, {"value": orjson.dumps({"user": f"u{i % 7}", "seq": i, "amount": i})})
    pipe.execute()


def _results(r, stream: str) -> list[tuple[str, dict]]:
    """(id, value) of every entry of the sink stream, in order."""
    return [(f[b"id"].decode(), orjson.loads(f[b"value"])) for _, f in r.xrange(stream)]


def _app(tmp_path, bootstrap: str, source: str, **names) -> tuple[str, str]:
    ref = h.write_topology(tmp_path / "topo.py", source.format(**names))
    return ref, str(tmp_path / "state")


def test_redis_stream_in_and_out_end_to_end(tmp_path, kafka, r, rserver):
    bootstrap = kafka[0]
    app, src, dst = h.unique("rd"), h.unique("in"), h.unique("out")
    _add(r, src, range(300))
    ref, state = _app(tmp_path, bootstrap, REDIS_TO_REDIS, url=rserver.url, app=app, src=src, dst=dst)
    p = h.app_subprocess(ref, bootstrap, state, log_path=str(tmp_path / "app.log"))
    try:
        h.wait_until(lambda: r.xlen(dst) >= 300, 90, what="300 results in the sink stream")
        _add(r, src, range(300, 400))                   # while it runs
        h.wait_until(lambda: r.xlen(dst) >= 400, 60, what="400 results in the sink stream")
        time.sleep(1.0)
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    got = _results(r, dst)
    assert sorted(v["seq"] for _, v in got) == list(range(400))          # each once
    assert all(v["amount"] == 2 * v["seq"] for _, v in got)
    ids = [i for i, _ in got]
    assert len(set(ids)) == len(ids) and all(i.startswith(f"{app}/{app}-doubled-egress/") for i in ids)
    assert r.xpending(src, "g")["pending"] == 0                           # every source entry acked
    ingest = h.read_to_end(bootstrap, f"{app}-orders-ingest")
    assert len(ingest) == 400
    heads = [dict(m[5] or ()) for m in ingest]
    assert all(hd.get("streamproc-message-id", b"").startswith(src.encode()) for hd in heads)


def test_redis_no_loss_through_sigkill_of_the_instance(tmp_path, kafka, r, rserver):
    bootstrap = kafka[0]
    app, src, dst = h.unique("rk"), h.unique("in"), h.unique("out")
    ref, state = _app(tmp_path, bootstrap, REDIS_TO_REDIS, url=rserver.url, app=app, src=src, dst=dst)
    log = str(tmp_path / "app.log")
    _add(r, src, range(1000))
    p = h.app_subprocess(ref, bootstrap, state, log_path=log)
    try:
        h.wait_until(lambda: r.xlen(dst) >= 200, 90, what="results before the kill")
        _add(r, src, range(1000, 2000))
        os.killpg(p.pid, signal.SIGKILL)                 # mid-stream: bridge, workers and delivery at once
        p.wait(10)
        _add(r, src, range(2000, 2500))
        p = h.app_subprocess(ref, bootstrap, state, log_path=log)
        h.wait_until(lambda: {v["seq"] for _, v in _results(r, dst)} >= set(range(2500)), 120,
                     interval=1.0, what="every input's result after a SIGKILL and a restart")
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    got = _results(r, dst)
    seqs = [v["seq"] for _, v in got]
    assert set(seqs) == set(range(2500))                 # nothing lost
    ids = [i for i, _ in got]
    assert len(set(ids)) == len(ids)                     # the sink never wrote one egress record twice
    assert r.xpending(src, "g")["pending"] == 0


KAFKA_TO_REDIS = '''
from streamproc import Topology, connectors, serdes
t = Topology("{app}")
s = t.stream("{src}", key=serdes.String(), value=serdes.Json())
s.to(connectors.RedisStream("{url}", "{dst}", name="out", buffer=200, batch=100),
     key=serdes.String(), value=serdes.Json())
'''


def test_redis_down_pauses_the_task_then_everything_arrives(tmp_path, kafka, r, rserver):
    bootstrap = kafka[0]
    app, src, dst = h.unique("rb"), h.unique("src"), h.unique("out")
    h.create(bootstrap, [src], 1)
    ref, state = _app(tmp_path, bootstrap, KAFKA_TO_REDIS, url=rserver.url, app=app, src=src, dst=dst)
    log = str(tmp_path / "app.log")
    p = h.app_subprocess(ref, bootstrap, state, log_path=log)
    egress = f"{app}-out-egress"
    try:
        h.produce(bootstrap, src, [(f"k{i}", {"i": i}, 1000 + i) for i in range(100)], key_serde=STR,
                  value_serde=JSON)
        h.wait_until(lambda: r.xlen(dst) >= 100, 90, what="the first results")
        rserver.stop()                                   # the target goes down
        for n in range(10):                              # 5,000 more records over ~5 s
            h.produce(bootstrap, src, [(f"k{i}", {"i": i}, 1000 + i) for i in range(100 + n * 500, 600 + n * 500)],
                      key_serde=STR, value_serde=JSON)
            time.sleep(0.5)
        time.sleep(3.0)
        held = len(h.read_to_end(bootstrap, egress, read_committed=False))
        # paused: the egress topic holds about buffer + what one second of input makes, not all 5,100
        assert held < 100 + 200 + 2500, f"{held} records in the egress topic: the task did not pause"
        rserver.start()
        h.wait_until(lambda: r.xlen(dst) >= 5100, 120, interval=1.0, what="every result after the outage")
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0
    finally:
        rserver.start()
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    got = [orjson.loads(f[b"value"])["i"] for _, f in r.xrange(dst)]
    assert sorted(got) == list(range(5100))              # all of them, once each
    with open(log) as f:
        text = f.read()
    assert "paused" in text and "resumed" in text


def test_two_instances_started_together_share_a_backlog(tmp_path, kafka, r, rserver):
    """Two instances of a new app started at the same moment on a backlog: both come up (the ingest and
    egress topics created by whichever is first), both bridges read from the one Redis consumer group,
    and every entry is written once."""
    _two_instances(tmp_path, kafka[0], r, rserver, leave=False)


@pytest.mark.real_kafka("Tansu never expires a departed static member (group.instance.id): its partitions "
                        "are not given to the instance that stays")
def test_two_instances_then_one_leaves_and_the_other_takes_over(tmp_path, kafka, r, rserver):
    _two_instances(tmp_path, kafka[0], r, rserver, leave=True)


def _two_instances(tmp_path, bootstrap, r, rserver, *, leave: bool) -> None:
    app, src, dst = h.unique("r2"), h.unique("in"), h.unique("out")
    _add(r, src, range(3000))                            # the backlog, before anything runs
    ref, _ = _app(tmp_path, bootstrap, REDIS_TO_REDIS, url=rserver.url, app=app, src=src, dst=dst)
    procs = [h.app_subprocess(ref, bootstrap, str(tmp_path / f"state{i}"), log_path=str(tmp_path / f"app{i}.log"))
             for i in range(2)]
    total = 3500 if leave else 3000
    try:
        h.wait_until(lambda: r.xlen(dst) >= 3000, 120, interval=1.0, what="the backlog through two instances")
        assert all(p.poll() is None for p in procs), "an instance started at the same moment exited"
        consumers = {c["name"] for c in r.xinfo_consumers(src, "g")}
        assert len(consumers) == 2, consumers            # each instance's bridge read from the group
        if leave:
            procs[0].send_signal(signal.SIGTERM)
            assert procs[0].wait(60) == 0
            _add(r, src, range(3000, 3500))              # only the second instance is left
            h.wait_until(lambda: r.xlen(dst) >= 3500, 120, interval=1.0, what="new entries after one left")
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                assert p.wait(60) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    got = _results(r, dst)
    assert sorted(v["seq"] for _, v in got) == list(range(total))      # each once: nothing lost or doubled
    assert r.xpending(src, "g")["pending"] == 0
