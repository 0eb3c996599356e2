"""The RabbitMQ connector against a real private RabbitMQ node (tests/_server_rabbitmq.py)."""
from __future__ import annotations

import pickle
import time
import uuid

import pytest

from streamproc.connectors._base import Outgoing, Unavailable
from streamproc.connectors.rabbitmq import KEY_HEADER, TOMBSTONE_HEADER, RabbitMQ, _parse_inequivalent
from streamproc.errors import ConnectorError, TopologyError

from _server_rabbitmq import available, start_rabbitmq

pytestmark = pytest.mark.xdist_group("rabbitmq")

pika = pytest.importorskip("pika")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    why = available()
    if why:
        pytest.skip(why)
    s = start_rabbitmq(tmp_path_factory.mktemp("rabbitmq"))
    yield s
    s.destroy()


@pytest.fixture
def admin(server):
    """A plain pika channel for setting up and checking queues; reconnects after server restarts."""
    conn = pika.BlockingConnection(pika.URLParameters(server.url))
    yield conn.channel()
    if conn.is_open:
        conn.close()


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _bound_queue(admin, exchange_type="direct", routing_key="rk", **queue_args):
    ex, q = _name("ex"), _name("q")
    admin.exchange_declare(ex, exchange_type, durable=True)
    admin.queue_declare(q, durable=True, arguments=queue_args or None)
    admin.queue_bind(q, ex, routing_key)
    return ex, q


def _out(i: int, key=b"k", value=b"v", target="rk") -> Outgoing:
    return Outgoing(id=f"app/topic/0/{i}", position=("topic", 0, i), target=target, key=key,
                    value=value if value is None else value + str(i).encode())


def _drain(admin, queue: str, n: int, timeout_s: float = 5.0) -> list:
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        method, props, body = admin.basic_get(queue, auto_ack=True)
        if method is None:
            time.sleep(0.02)
            continue
        out.append((props, body))
    return out


def _publish_plain(admin, queue: str, n: int, prefix="m") -> None:
    for i in range(n):
        admin.basic_publish("", queue, f"body{i}".encode(),
                            pika.BasicProperties(message_id=f"{prefix}{i}", delivery_mode=2))


def _fetch_n(src, n: int, timeout_s: float = 5.0) -> list:
    got = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        got += src.fetch(n - len(got), 0.5)
    return got


def _key_fn(value):
    return value[:1]


def _rk_fn(key, value):
    return "rk"


# ---------------------------------------------------------------------------------------------------
# definition


def test_definition_roles_names_and_pickle():
    sink = RabbitMQ("amqp://u:secret@h:5673/v", "orders", routing_key=_rk_fn)
    assert sink.exchange == "orders" and sink.queue == "orders" and sink.sink and sink.source
    assert sink.resolve(b"k", b"v") == "rk"
    src = RabbitMQ("amqp://u:secret@h/v", queue="in q/1", key=_key_fn, prefetch=10)
    assert src.source and not src.sink and src.exchange is None
    assert src.default_name() == "rabbitmq-in-q-1"
    assert RabbitMQ("amqp://h", exchange="").default_name() == "rabbitmq-default-exchange"
    clone = pickle.loads(pickle.dumps(sink))
    assert (clone.url, clone.exchange, clone.target, clone.buffer) == (sink.url, "orders", _rk_fn, 10_000)
    assert clone.kind == "rabbitmq"


def test_describe_hides_password():
    d = RabbitMQ("amqp://user:s3cr3t@broker:5673/prod", queue="q", exchange="ex").describe()
    assert "s3cr3t" not in d and "user" not in d
    assert d == "RabbitMQ amqp://broker:5673/prod queue=q exchange=ex"


@pytest.mark.parametrize("kwargs, needle", [
    (dict(url="http://h"), "amqp://"),
    (dict(url="amqp://h"), "give a queue"),
    (dict(url="amqp://h", queue=""), "non-empty"),
    (dict(url="amqp://h", queue="q", prefetch=0), "prefetch"),
    (dict(url="amqp://h", queue="q", prefetch=70000), "prefetch"),
    (dict(url="amqp://h", queue="q", dead_letter="yes"), "dead_letter"),
    (dict(url="amqp://h", exchange="e", routing_key=3), "target"),
    (dict(url="amqp://h", exchange="e", routing_key=None), "routing_key"),
    (dict(url="amqp://h", exchange="e", routing_key="x" * 256), "routing_key"),
    (dict(url="amqp://h", queue="q", key="notfn"), "key="),
    (dict(url="amqp://h", queue="q", name="a b"), "name="),
    (dict(url="amqp://h", where="w", queue="q", exchange="e"), "ignored"),
    (dict(url="amqp://h?heartbeat=abc", queue="q"), "not valid"),
])
def test_argument_validation(kwargs, needle):
    with pytest.raises(TopologyError, match=needle):
        RabbitMQ(**kwargs)


def test_parse_inequivalent_texts():
    assert _parse_inequivalent("PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'dl' in "
                               "vhost '/': received none but current is the value '60000' of type "
                               "'signedint'") == ("x-message-ttl", 60000)
    assert _parse_inequivalent("PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-exchange' for queue "
                               "'q' in vhost '/': received '\x00p' but current is 'dlx'") == (
        "x-dead-letter-exchange", "dlx")
    assert _parse_inequivalent("inequivalent arg 'x-dead-letter-exchange' for queue 'q' in vhost '/': "
                               "received the value 'p' of type 'longstr' but current is none") == (
        "x-dead-letter-exchange", None)
    assert _parse_inequivalent("NOT_FOUND - no queue") is None


# ---------------------------------------------------------------------------------------------------
# sink


def test_sink_publishes_batch_with_ids_headers_order_and_tombstones(server, admin):
    ex, q = _bound_queue(admin)
    sink = RabbitMQ(server.url, ex, routing_key="rk").sink_client()
    sink.open()
    try:
        batch = [_out(i) for i in range(200)] + [_out(200, key=None), _out(201, value=None)]
        sink.publish(batch)
    finally:
        sink.close()
    got = _drain(admin, q, len(batch))
    assert [p.message_id for p, _ in got] == [m.id for m in batch]
    assert [b for _, b in got[:200]] == [f"v{i}".encode() for i in range(200)]
    props0 = got[0][0]
    assert props0.delivery_mode == 2
    assert props0.headers == {KEY_HEADER: b"k"}
    assert got[200][0].headers is None                     # no key: no header
    assert got[201][1] == b"" and got[201][0].headers == {KEY_HEADER: b"k", TOMBSTONE_HEADER: True}


def test_sink_republished_batch_carries_same_ids(server, admin):
    ex, q = _bound_queue(admin)
    sink = RabbitMQ(server.url, exchange=ex, routing_key=_rk_fn).sink_client()
    sink.open()
    batch = [_out(i) for i in range(5)]
    sink.publish(batch)
    sink.close()
    sink.open()                                            # a re-delivery after a crash
    sink.publish(batch)
    sink.close()
    ids = [p.message_id for p, _ in _drain(admin, q, 10)]
    assert ids == [m.id for m in batch] * 2


def test_sink_default_exchange_routes_by_queue_name(server, admin):
    q = _name("q")
    admin.queue_declare(q, durable=True)
    sink = RabbitMQ(server.url, exchange="").sink_client()
    sink.open()
    sink.publish([_out(1, target=q)])
    sink.close()
    assert [b for _, b in _drain(admin, q, 1)] == [b"v1"]


def test_sink_missing_exchange_is_connector_error(server):
    sink = RabbitMQ(server.url, "no-such-exchange").sink_client()
    with pytest.raises(ConnectorError, match="no-such-exchange"):
        sink.open()
    sink.close()


def test_sink_exchange_deleted_after_open_is_connector_error(server, admin):
    ex, _ = _bound_queue(admin)
    sink = RabbitMQ(server.url, ex).sink_client()
    sink.open()
    admin.exchange_delete(ex)
    with pytest.raises(ConnectorError, match="NOT_FOUND"):
        sink.publish([_out(1)])
    sink.close()


def test_sink_unroutable_is_connector_error_naming_exchange_and_key(server, admin):
    ex, q = _bound_queue(admin)
    sink = RabbitMQ(server.url, ex).sink_client()
    sink.open()
    with pytest.raises(ConnectorError, match=rf"{ex}.*unroutable.*'nobody-binds-this'"):
        sink.publish([_out(1), _out(2, target="nobody-binds-this")])
    sink.publish([_out(3)])                                # the client stays usable
    sink.close()
    assert [p.message_id for p, _ in _drain(admin, q, 2)] == ["app/topic/0/1", "app/topic/0/3"]


def test_sink_nack_is_unavailable(server, admin):
    ex, q = _bound_queue(admin, **{"x-max-length": 1, "x-overflow": "reject-publish"})
    sink = RabbitMQ(server.url, ex).sink_client()
    sink.open()
    with pytest.raises(Unavailable, match="nacked"):
        sink.publish([_out(1), _out(2), _out(3)])
    sink.close()


def test_bad_credentials_is_connector_error(server):
    url = server.url.replace("guest:guest", "guest:wrong")
    sink = RabbitMQ(url, exchange="").sink_client()
    with pytest.raises(ConnectorError, match="credentials") as e:
        sink.open()
    assert "wrong" not in str(e.value)
    src = RabbitMQ(server.url.replace("%2F", "no-such-vhost"), "q").source_client("t")
    with pytest.raises(ConnectorError, match="vhost"):
        src.open()


# ---------------------------------------------------------------------------------------------------
# source


def test_source_fetch_ack_and_contiguous_multiple_ack(server, admin):
    q = _name("q")
    admin.queue_declare(q, durable=True)
    _publish_plain(admin, q, 30)
    src = RabbitMQ(server.url, q, prefetch=50).source_client("t1")
    src.open()
    try:
        first = src.fetch(10, 5.0)
        assert len(first) == 10
        assert [m.id for m in first] == [f"m{i}" for i in range(10)]
        assert [m.body for m in first] == [f"body{i}".encode() for i in range(10)]
        assert not any(m.redelivered for m in first)
        rest = _fetch_n(src, 20)
        assert [m.id for m in rest] == [f"m{i}" for i in range(10, 30)]
        src.ack(first)
        src.ack(rest[5:])                                  # not contiguous with the unacked rest[:5]
        assert src.fetch(10, 0.2) == []
    finally:
        src.close()
    # rest[:5] were not acked: they come back, and only they
    src = RabbitMQ(server.url, q).source_client("t2")
    src.open()
    again = _fetch_n(src, 5)
    assert [m.id for m in again] == [f"m{i}" for i in range(10, 15)]
    assert all(m.redelivered for m in again)
    src.ack(again)
    assert src.fetch(10, 0.3) == []
    src.close()
    assert admin.queue_declare(q, passive=True).method.message_count == 0


def test_unacked_messages_redelivered_after_close(server, admin):
    q = _name("q")
    admin.queue_declare(q, durable=True)
    _publish_plain(admin, q, 3)
    src = RabbitMQ(server.url, q).source_client("t")
    src.open()
    got = _fetch_n(src, 3)
    assert [m.redelivered for m in got] == [False] * 3
    src.close()                                            # no ack
    src.open()                                             # the same client reopened
    again = _fetch_n(src, 3)
    assert [m.id for m in again] == ["m0", "m1", "m2"] and all(m.redelivered for m in again)
    src.ack(got)                                           # tokens of the old connection: ignored
    src.ack(again)
    src.close()
    assert admin.queue_declare(q, passive=True).method.message_count == 0


def test_fetch_waits_at_most_timeout_and_returns_early(server, admin):
    q = _name("q")
    admin.queue_declare(q, durable=True)
    src = RabbitMQ(server.url, q).source_client("t")
    src.open()
    t0 = time.monotonic()
    assert src.fetch(10, 0.5) == []
    assert 0.45 <= time.monotonic() - t0 < 2.0
    _publish_plain(admin, q, 1)
    t0 = time.monotonic()
    assert len(src.fetch(10, 5.0)) == 1
    assert time.monotonic() - t0 < 2.0
    src.close()


def test_source_missing_queue_is_connector_error(server):
    src = RabbitMQ(server.url, "no-such-queue").source_client("t")
    with pytest.raises(ConnectorError, match="no-such-queue"):
        src.open()
    src.close()


def test_dead_letter_detection_and_reject_goes_to_dlx(server, admin):
    dlx, dlq = _name("dlx"), _name("dlq")
    admin.exchange_declare(dlx, "fanout", durable=True)
    admin.queue_declare(dlq, durable=True)
    admin.queue_bind(dlq, dlx)
    q = _name("q")
    # other arguments too, so detection has to get past them
    admin.queue_declare(q, durable=True, arguments={"x-message-ttl": 600000, "x-dead-letter-exchange": dlx,
                                                     "x-max-length": 1000})
    plain = _name("plain")
    admin.queue_declare(plain, durable=False, arguments={"x-max-length": 5})
    quorum = _name("qq")
    admin.queue_declare(quorum, durable=True, arguments={"x-queue-type": "quorum",
                                                          "x-dead-letter-exchange": dlx})

    def detected(queue, dead_letter=None):
        src = RabbitMQ(server.url, queue, dead_letter=dead_letter).source_client("t")
        src.open()
        try:
            return src.dead_letters
        finally:
            src.close()

    assert detected(plain) is False
    assert detected(quorum) is True
    assert detected(plain, dead_letter=True) is True
    assert detected(q, dead_letter=False) is False

    _publish_plain(admin, q, 4)
    src = RabbitMQ(server.url, q).source_client("t")
    src.open()
    assert src.dead_letters is True
    got = _fetch_n(src, 4)                                 # the channel still works after detection
    src.reject(got[1:3])
    src.ack([got[0], got[3]])
    src.close()
    dead = _drain(admin, dlq, 2)
    assert [p.message_id for p, _ in dead] == ["m1", "m2"]
    assert admin.queue_declare(q, passive=True).method.message_count == 0
    # detection declared nothing: the queues keep their arguments and no queue was created
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        admin.connection.channel().queue_declare(plain, passive=False, durable=True)


def test_read_only_user_consumes_and_detection_falls_back(server, admin):
    q = _name("q")
    admin.queue_declare(q, durable=True, arguments={"x-dead-letter-exchange": "somewhere"})
    _publish_plain(admin, q, 2)
    server.ctl("add_user", "reader", "pw-reader")
    server.ctl("set_permissions", "-p", "/", "reader", "^$", "^$", ".*")    # read only
    url = server.url.replace("guest:guest", "reader:pw-reader")
    src = RabbitMQ(url, q).source_client("t")
    src.open()                                             # detection is refused: no error, False
    assert src.dead_letters is False
    got = _fetch_n(src, 2)
    assert [m.id for m in got] == ["m0", "m1"]
    src.ack(got)
    src.close()
    forced = RabbitMQ(url, q, dead_letter=True).source_client("t")
    forced.open()
    assert forced.dead_letters is True
    forced.close()


# ---------------------------------------------------------------------------------------------------
# server down


def test_server_down_gives_unavailable_then_new_clients_work(server, admin):
    ex, q = _bound_queue(admin)
    admin.connection.close()
    sink = RabbitMQ(server.url, ex).sink_client()
    sink.open()
    src = RabbitMQ(server.url, q).source_client("t")
    src.open()
    server.stop()
    try:
        t0 = time.monotonic()
        with pytest.raises(Unavailable):
            sink.publish([_out(1)])
        with pytest.raises(Unavailable):
            src.fetch(10, 1.0)
        fresh = RabbitMQ(server.url, ex).sink_client()
        with pytest.raises(Unavailable):
            fresh.open()
        assert time.monotonic() - t0 < 8.0
    finally:
        sink.close()
        src.close()
        server.start()
    fresh = RabbitMQ(server.url, ex).sink_client()
    fresh.open()
    fresh.publish([_out(7)])
    fresh.close()
    sink.publish([_out(8)])                                # the old clients reconnect on their next call
    got = _fetch_n(src, 2)
    assert [m.id for m in got] == ["app/topic/0/7", "app/topic/0/8"]
    src.ack(got)
    src.close()
    sink.close()


def test_idle_sink_dropped_by_broker_reconnects_without_error(server, admin):
    ex, q = _bound_queue(admin)
    sink = RabbitMQ(server.url + "?heartbeat=1", ex).sink_client()
    sink.open()
    sink.publish([_out(1)])
    conn = sink._c.conn
    time.sleep(3.5)                                        # no I/O: the broker misses our heartbeats
    sink.publish([_out(2)])
    assert sink._c.conn is not conn                        # it really was a new connection
    sink.close()
    assert [p.message_id for p, _ in _drain(admin, q, 2)] == ["app/topic/0/1", "app/topic/0/2"]


def test_server_killed_gives_unavailable(server):
    admin_conn = pika.BlockingConnection(pika.URLParameters(server.url))
    ch = admin_conn.channel()
    ex, q = _bound_queue(ch)
    admin_conn.close()
    sink = RabbitMQ(server.url, ex).sink_client()
    sink.open()
    src = RabbitMQ(server.url, q).source_client("t")
    src.open()
    server.kill()
    try:
        t0 = time.monotonic()
        with pytest.raises(Unavailable):
            sink.publish([_out(1)])
        with pytest.raises(Unavailable):
            src.fetch(10, 1.0)
        assert time.monotonic() - t0 < 8.0
    finally:
        sink.close()
        src.close()
        server.start()
