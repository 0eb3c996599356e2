"""RabbitMQ in and out of a running instance (DESIGN section 9), on a real rabbitmq-server and a Kafka
broker: queue -> ingest topic -> topology -> egress topic -> exchange. See test_connectors_runtime.py for
what these tests hold the bridge and the delivery to."""
from __future__ import annotations

import os
import signal
import time
import uuid
from collections import defaultdict

import orjson
import pytest

import runtime_helpers as h
from _server_rabbitmq import available, start_rabbitmq

pika = pytest.importorskip("pika")

pytestmark = [pytest.mark.broker, pytest.mark.xdist_group("connectors-rabbitmq")]


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory):
    why = available()
    if why:
        pytest.skip(why)
    s = start_rabbitmq(tmp_path_factory.mktemp("rabbitmq-e2e"))
    yield s
    s.destroy()


def _channel(url: str):
    conn = pika.BlockingConnection(pika.URLParameters(url))
    return conn, conn.channel()


def _setup(url: str, *, dlx: bool = False) -> dict:
    """An input queue (with a dead-letter exchange and its queue if ``dlx``), an output exchange bound to
    an output queue."""
    n = uuid.uuid4().hex[:8]
    names = {"in": f"in-{n}", "ex": f"ex-{n}", "out": f"out-{n}", "dlx": f"dlx-{n}", "dead": f"dead-{n}"}
    conn, ch = _channel(url)
    args = None
    if dlx:
        ch.exchange_declare(names["dlx"], "fanout", durable=True)
        ch.queue_declare(names["dead"], durable=True)
        ch.queue_bind(names["dead"], names["dlx"])
        args = {"x-dead-letter-exchange": names["dlx"]}
    ch.queue_declare(names["in"], durable=True, arguments=args)
    ch.exchange_declare(names["ex"], "direct", durable=True)
    ch.queue_declare(names["out"], durable=True)
    ch.queue_bind(names["out"], names["ex"], "orders")
    conn.close()
    return names


def _publish(url: str, queue: str, seqs, *, bad=()) -> None:
    conn, ch = _channel(url)
    ch.confirm_delivery()
    for i in seqs:
        body = b"{not json" if i in bad else orjson.dumps({"user": f"u{i % 5}", "seq": i})
        ch.basic_publish("", queue, body, pika.BasicProperties(message_id=f"m-{i}", delivery_mode=2))
    conn.close()


def _drain(url: str, queue: str) -> list[tuple[str, dict | bytes]]:
    """(message_id, body) of everything in ``queue`` now (acked: taken away)."""
    conn, ch = _channel(url)
    out = []
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            break
        try:
            out.append((props.message_id, orjson.loads(body)))
        except orjson.JSONDecodeError:
            out.append((props.message_id, body))
    conn.close()
    return out


def _depth(url: str, queue: str) -> int:
    conn, ch = _channel(url)
    n = ch.queue_declare(queue, passive=True).method.message_count
    conn.close()
    return n


TOPO = '''
from streamproc import Topology, connectors, serdes
URL = "{url}"
t = Topology("{app}")
orders = t.stream(connectors.RabbitMQ(URL, queue="{q_in}", key=lambda v: v["user"], prefetch=500,
                                      dedupe="10m", name="orders"),
                  key=serdes.String(), value=serdes.Json(), on_error="{on_error}")
orders.map_values(lambda v: dict(v, seen=True)).to(
    connectors.RabbitMQ(URL, exchange="{ex}", routing_key="orders", name="results"),
    key=serdes.String(), value=serdes.Json())
'''


def _run(tmp_path, bootstrap, rabbit, names, on_error="fail"):
    app = h.unique("rq")
    ref = h.write_topology(tmp_path / "topo.py", TOPO.format(url=rabbit.url, app=app, q_in=names["in"],
                                                             ex=names["ex"], on_error=on_error))
    return app, ref, str(tmp_path / "state")


def _stop(p) -> None:
    p.send_signal(signal.SIGTERM)
    assert p.wait(60) == 0


def test_queue_to_exchange_end_to_end_with_ids(tmp_path, kafka, rabbit):
    bootstrap = kafka[0]
    names = _setup(rabbit.url)
    _publish(rabbit.url, names["in"], range(500))
    app, ref, state = _run(tmp_path, bootstrap, rabbit, names)
    got: list = []
    p = h.app_subprocess(ref, bootstrap, state, log_path=str(tmp_path / "app.log"))
    try:
        h.wait_until(lambda: got.extend(_drain(rabbit.url, names["out"])) or len(got) >= 500, 90,
                     what="500 results in the output queue")
        _stop(p)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert sorted(v["seq"] for _, v in got) == list(range(500))
    assert all(v["seen"] for _, v in got)
    assert len({mid for mid, _ in got}) == 500 and all(mid.startswith(f"{app}/{app}-results-egress/") for mid, _ in got)
    assert _depth(rabbit.url, names["in"]) == 0              # every input acked
    ingest = h.read_to_end(bootstrap, f"{app}-orders-ingest")
    assert sorted(dict(m[5])["streamproc-message-id"] for m in ingest) == sorted(f"m-{i}".encode() for i in range(500))


def test_sigkill_mid_stream_loses_nothing_and_duplicates_keep_their_id(tmp_path, kafka, rabbit):
    bootstrap = kafka[0]
    names = _setup(rabbit.url)
    app, ref, state = _run(tmp_path, bootstrap, rabbit, names)
    log = str(tmp_path / "app.log")
    _publish(rabbit.url, names["in"], range(2000))
    got: list = []
    p = h.app_subprocess(ref, bootstrap, state, log_path=log)
    try:
        h.wait_until(lambda: got.extend(_drain(rabbit.url, names["out"])) or len(got) >= 300, 90,
                     what="results before the kill")
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)
        _publish(rabbit.url, names["in"], range(2000, 3000))
        p = h.app_subprocess(ref, bootstrap, state, log_path=log)
        h.wait_until(lambda: got.extend(_drain(rabbit.url, names["out"])) or
                     {v["seq"] for _, v in got} >= set(range(3000)), 120, interval=1.0,
                     what="every result after a SIGKILL and a restart")
        _stop(p)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    got.extend(_drain(rabbit.url, names["out"]))
    assert {v["seq"] for _, v in got} == set(range(3000))         # nothing lost
    ids_of = defaultdict(set)
    for mid, v in got:
        ids_of[v["seq"]].add(mid)
    # a result published twice (a crash between the publish and the offset commit) carries one id
    assert all(len(ids) == 1 for ids in ids_of.values()), [s for s, ids in ids_of.items() if len(ids) > 1][:5]
    assert _depth(rabbit.url, names["in"]) == 0


def test_malformed_messages_go_to_the_queues_dead_letter_exchange(tmp_path, kafka, rabbit):
    bootstrap = kafka[0]
    names = _setup(rabbit.url, dlx=True)
    bad = {7, 50, 51, 199}
    _publish(rabbit.url, names["in"], range(200), bad=bad)
    app, ref, state = _run(tmp_path, bootstrap, rabbit, names, on_error="dead-letter")
    got: list = []
    p = h.app_subprocess(ref, bootstrap, state, log_path=str(tmp_path / "app.log"))
    try:
        h.wait_until(lambda: got.extend(_drain(rabbit.url, names["out"])) or len(got) >= 196, 90,
                     what="the good messages' results")
        h.wait_until(lambda: _depth(rabbit.url, names["dead"]) >= 4, 30, what="the bad ones dead-lettered")
        _stop(p)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert sorted(v["seq"] for _, v in got) == sorted(set(range(200)) - bad)
    dead = _drain(rabbit.url, names["dead"])
    assert sorted(mid for mid, _ in dead) == sorted(f"m-{i}" for i in bad)
    assert _depth(rabbit.url, names["in"]) == 0


def test_target_restarted_mid_stream_then_everything_arrives(tmp_path, kafka, rabbit):
    bootstrap = kafka[0]
    names = _setup(rabbit.url)
    app, ref, state = _run(tmp_path, bootstrap, rabbit, names)
    _publish(rabbit.url, names["in"], range(300))
    got: list = []
    p = h.app_subprocess(ref, bootstrap, state, log_path=str(tmp_path / "app.log"))
    try:
        h.wait_until(lambda: got.extend(_drain(rabbit.url, names["out"])) or len(got) >= 100, 90,
                     what="the first results")
        rabbit.stop()                          # source and sink both go away
        time.sleep(3.0)
        rabbit.start()
        _publish(rabbit.url, names["in"], range(300, 600))
        h.wait_until(lambda: got.extend(_drain(rabbit.url, names["out"])) or
                     {v["seq"] for _, v in got} >= set(range(600)), 120, interval=1.0,
                     what="every result after the server restart")
        assert p.poll() is None, "the instance died with its external system"
        _stop(p)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert {v["seq"] for _, v in got} == set(range(600))
