"""NatsJetStream against a real nats-server (JetStream on, loopback, started by the fixture).

Every test makes its own stream (unique name and subjects), so the tests share one server but no data.
"""
from __future__ import annotations

import asyncio
import itertools
import pickle
import threading
import time

import pytest

from streamproc.connectors._base import Outgoing, Unavailable
from streamproc.connectors.nats import NatsJetStream, decode_key, encode_key
from streamproc.errors import ConnectorError, TopologyError

from _server_nats import nats_binary, start_nats

pytestmark = pytest.mark.xdist_group("nats")

_ids = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if nats_binary() is None:
        pytest.skip("nats-server is not installed (apt-get install nats-server)")
    srv = start_nats(tmp_path_factory.mktemp("nats"))
    try:
        yield srv
    finally:
        srv.kill()


@pytest.fixture
def stream(server):
    """A fresh file-backed stream ``T<n>`` capturing ``t<n>.>``: (name, subject prefix)."""
    n = next(_ids)
    name, prefix = f"T{n}", f"t{n}"
    _admin(server.url, lambda js: js.add_stream(name=name, subjects=[f"{prefix}.>"]))
    return name, prefix


def _admin(url, action):
    """Run ``action(js)`` with a plain nats-py connection (test set-up and read-back)."""
    import nats

    async def run():
        nc = await nats.connect(url, allow_reconnect=False, connect_timeout=2)
        try:
            return await action(nc.jetstream(timeout=5))
        finally:
            await nc.close()
    return asyncio.run(run())


def _read_all(url, stream_name, count):
    """The first ``count`` stored messages of a stream, by sequence, with their headers."""
    async def get(js):
        return [await js.get_msg(stream_name, seq) for seq in range(1, count + 1)]
    return _admin(url, get)


def _stored(url, stream_name) -> int:
    async def info(js):
        return (await js.stream_info(stream_name)).state.messages
    return _admin(url, info)


def _out(subject, i, key=b"k", value=b"v"):
    return Outgoing(id=f"app/egress/0/{i}", position=("egress", 0, i), target=subject,
                    key=key, value=value if value is None else value + b"%d" % i)


@pytest.fixture
def opened():
    """Clients to close at the end of the test, even when it fails."""
    clients = []

    def _open(client):
        clients.append(client)
        client.open()
        return client
    yield _open
    for c in clients:
        c.close()


# --------------------------------------------------------------------------- sink


def test_sink_batch_is_stored_in_order_with_ids_key_and_tombstone(server, stream, opened):
    name, prefix = stream
    sink = opened(NatsJetStream(server.url, f"{prefix}.out").sink_client())
    batch = [_out(f"{prefix}.out", i, key=b"user %d/\x00\xff" % i) for i in range(50)]
    batch[7] = _out(f"{prefix}.out", 7, key=None, value=None)
    sink.publish(batch)
    stored = _read_all(server.url, name, 50)
    assert [m.headers["Nats-Msg-Id"] for m in stored] == [o.id for o in batch]
    assert [m.data or b"" for m in stored] == [o.value or b"" for o in batch]
    assert decode_key(stored[3].headers["Streamproc-Key"]) == b"user 3/\x00\xff"
    assert "Streamproc-Key" not in stored[7].headers
    assert stored[7].headers["Streamproc-Tombstone"] == "true"
    assert "Streamproc-Tombstone" not in stored[8].headers


def test_key_encoding_roundtrips_any_bytes():
    for key in (b"", b"plain-key_1.2~", b"a b\r\n: x", bytes(range(256))):
        encoded = encode_key(key)
        assert encoded.isascii() and "\r" not in encoded and "\n" not in encoded and " " not in encoded
        assert decode_key(encoded) == key
    assert encode_key(b"order-42") == "order-42"


def test_same_batch_twice_is_stored_once(server, stream, opened):
    name, prefix = stream
    sink = opened(NatsJetStream(server.url, f"{prefix}.dup").sink_client())
    batch = [_out(f"{prefix}.dup", i) for i in range(20)]
    sink.publish(batch)
    sink.publish(batch)               # a re-delivery after a crash: same ids
    sink.publish(batch[5:] + [_out(f"{prefix}.dup", 20)])
    assert _stored(server.url, name) == 21


def test_per_record_subject_and_expected_stream(server, stream, opened):
    name, prefix = stream
    definition = NatsJetStream(server.url, lambda k, v: f"{prefix}.{k.decode()}", stream=name)
    sink = opened(definition.sink_client())
    assert definition.resolve(b"x", b"1") == f"{prefix}.x"
    sink.publish([_out(definition.resolve(b"a", b""), 0), _out(definition.resolve(b"b", b""), 1)])
    assert [m.subject for m in _read_all(server.url, name, 2)] == [f"{prefix}.a", f"{prefix}.b"]
    # a computed subject no stream captures: found by the publish, not retryable
    nowhere = opened(NatsJetStream(server.url, lambda k, v: "nowhere.x").sink_client())
    with pytest.raises(ConnectorError, match="captures subject 'nowhere.x'"):
        nowhere.publish([_out("nowhere.x", 0)])
    # the stream= given does not capture the subject -> refused
    other = opened(NatsJetStream(server.url, lambda k, v: "x", stream="NOPE").sink_client())
    with pytest.raises(ConnectorError):
        other.publish([_out(f"{prefix}.c", 2)])


def test_sink_open_without_stream_is_connector_error(server, opened):
    with pytest.raises(ConnectorError, match="No JetStream stream .* captures subject 'no.stream.here'"):
        opened(NatsJetStream(server.url, "no.stream.here").sink_client())


def test_sink_open_with_wrong_stream_is_connector_error(server, stream, opened):
    name, prefix = stream
    with pytest.raises(ConnectorError, match="captured by stream"):
        opened(NatsJetStream(server.url, f"{prefix}.x", stream="OTHER").sink_client())


def test_unreachable_server_is_unavailable_fast(opened):
    t0 = time.monotonic()
    with pytest.raises(Unavailable):
        opened(NatsJetStream("nats://127.0.0.1:1", "a.b").sink_client())
    with pytest.raises(Unavailable):
        opened(NatsJetStream("nats://127.0.0.1:1", "a.b", durable="d").source_client("c"))
    assert time.monotonic() - t0 < 5


# --------------------------------------------------------------------------- source


def test_fetch_ack_and_ids(server, stream, opened):
    name, prefix = stream
    sink = opened(NatsJetStream(server.url, f"{prefix}.in").sink_client())
    sink.publish([_out(f"{prefix}.in", i) for i in range(5)])
    _admin(server.url, lambda js: js.publish(f"{prefix}.in", b"plain"))       # no Nats-Msg-Id
    source = opened(NatsJetStream(server.url, f"{prefix}.in", stream=name).source_client("c1"))
    got = source.fetch(100, 2.0)
    assert [m.body for m in got] == [b"v%d" % i for i in range(5)] + [b"plain"]
    assert [m.id for m in got] == [f"app/egress/0/{i}" for i in range(5)] + [f"{name}:6"]
    assert not any(m.redelivered for m in got)
    assert source.dead_letters is False
    source.ack(got)
    t0 = time.monotonic()
    assert source.fetch(100, 0.5) == []
    assert time.monotonic() - t0 < 2.5
    # fetch honours max_messages
    sink.publish([_out(f"{prefix}.in", i) for i in range(100, 110)])
    first = source.fetch(3, 2.0)
    assert len(first) == 3
    rest = source.fetch(100, 2.0)
    assert len(first) + len(rest) == 10
    source.ack(first + rest)


def test_unacked_messages_come_again_after_ack_wait(server, stream, opened):
    name, prefix = stream
    definition = NatsJetStream(server.url, f"{prefix}.re", durable="re", ack_wait="1s")
    sink = opened(definition.sink_client())
    sink.publish([_out(f"{prefix}.re", i) for i in range(4)])
    first = definition.source_client("c1")
    first.open()
    got = first.fetch(10, 2.0)
    assert len(got) == 4
    first.ack(got[:1])
    first.close()                             # closed without acking three of them
    second = opened(definition.source_client("c2"))
    again = []
    deadline = time.monotonic() + 6
    while len(again) < 3 and time.monotonic() < deadline:
        again += second.fetch(10, 1.0)
    assert sorted(m.id for m in again) == [f"app/egress/0/{i}" for i in (1, 2, 3)]
    assert all(m.redelivered for m in again)
    second.ack(again)


def test_two_clients_on_one_durable_share_without_overlap(server, stream, opened):
    name, prefix = stream
    definition = NatsJetStream(server.url, f"{prefix}.share", stream=name, ack_wait="30s")
    a = opened(definition.source_client("a"))
    b = opened(definition.source_client("b"))
    sink = opened(definition.sink_client())
    sink.publish([_out(f"{prefix}.share", i) for i in range(200)])
    seen = {"a": [], "b": []}

    def drain(client, label):
        idle = 0
        while idle < 2:
            got = client.fetch(7, 0.5)
            idle = 0 if got else idle + 1
            seen[label] += [m.id for m in got]
            client.ack(got)
            time.sleep(0.01)              # let the other client take turns

    threads = [threading.Thread(target=drain, args=(a, "a")), threading.Thread(target=drain, args=(b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert seen["a"] and seen["b"], "both clients should have received messages"
    assert not set(seen["a"]) & set(seen["b"])
    assert sorted(seen["a"] + seen["b"]) == sorted(f"app/egress/0/{i}" for i in range(200))


def test_source_consumer_is_created_then_reused(server, stream, opened):
    name, prefix = stream
    definition = NatsJetStream(server.url, f"{prefix}.c", durable="reused", prefetch=17, ack_wait="3s")
    opened(definition.source_client("x"))

    async def info(js):
        return await js.consumer_info(name, "reused")
    config = _admin(server.url, info).config
    assert (config.max_ack_pending, config.ack_wait, config.filter_subject) == (17, 3.0, f"{prefix}.c")
    assert getattr(config.ack_policy, "value", config.ack_policy) == "explicit"
    opened(definition.source_client("y"))       # exists now: reused, no error
    wrong = NatsJetStream(server.url, f"{prefix}.other", durable="reused")
    with pytest.raises(ConnectorError, match="filters"):
        opened(wrong.source_client("z"))


def test_source_errors_for_missing_stream(server, opened):
    with pytest.raises(ConnectorError, match="does not exist"):
        opened(NatsJetStream(server.url, "zz.a", stream="MISSING").source_client("c"))
    with pytest.raises(ConnectorError, match="captures subject 'zz.b'"):
        opened(NatsJetStream(server.url, "zz.b", durable="d").source_client("c"))


# --------------------------------------------------------------------------- server down / restart


def test_server_down_gives_unavailable_then_recovers(server, stream, opened):
    name, prefix = stream
    definition = NatsJetStream(server.url, f"{prefix}.down", stream=name, ack_wait="1s")
    sink = opened(definition.sink_client())
    source = opened(definition.source_client("c"))
    sink.publish([_out(f"{prefix}.down", i) for i in range(3)])
    unacked = source.fetch(10, 2.0)
    assert len(unacked) == 3
    server.stop()
    try:
        for call in (lambda: sink.publish([_out(f"{prefix}.down", 3)]), lambda: source.fetch(10, 1.0),
                     lambda: source.ack(unacked)):
            t0 = time.monotonic()
            with pytest.raises(Unavailable):
                call()
            assert time.monotonic() - t0 < 4
    finally:
        server.start()
    # the same clients reconnect by themselves; the unacked messages come again
    sink.publish([_out(f"{prefix}.down", 3)])
    fresh = opened(definition.source_client("d"))
    again = []
    deadline = time.monotonic() + 8
    while len(again) < 4 and time.monotonic() < deadline:
        got = fresh.fetch(10, 1.0)
        fresh.ack(got)
        again += got
    assert sorted(m.id for m in again) == [f"app/egress/0/{i}" for i in range(4)]
    assert [m.redelivered for m in sorted(again, key=lambda m: m.id)] == [True, True, True, False]
    assert source.fetch(10, 0.3) == []          # the old client works again too (nothing left)


def test_publish_while_server_killed_then_republish_is_deduplicated(server, stream, opened):
    name, prefix = stream
    sink = opened(NatsJetStream(server.url, f"{prefix}.kill").sink_client())
    batch = [_out(f"{prefix}.kill", i) for i in range(10)]
    sink.publish(batch)
    server.kill()
    try:
        with pytest.raises(Unavailable):
            sink.publish(batch + [_out(f"{prefix}.kill", 10)])
    finally:
        server.start()
    sink.publish(batch + [_out(f"{prefix}.kill", 10)])
    assert _stored(server.url, name) == 11


# --------------------------------------------------------------------------- definition


def _subject_fn(key, value):
    return "orders." + key.decode()


def test_definition_is_picklable_and_describes_without_password():
    d = NatsJetStream("nats://alice:s3cret@127.0.0.1:4222,nats://tok3n@10.0.0.2:4222", "orders.*",
                      stream="ORDERS", ack_wait="2s", name="orders-in", dedupe="1m")
    again = pickle.loads(pickle.dumps(d))
    assert (again.url, again.subject, again.stream, again.durable, again.ack_wait_ms, again.dedupe) == \
        (d.url, "orders.*", "ORDERS", "orders-in", 2000, 60_000)
    text = d.describe()
    assert "s3cret" not in text and "alice" not in text and "tok3n" not in text
    assert "127.0.0.1:4222" in text and "ORDERS" in text
    assert "s3cret" not in repr(d)
    sink = pickle.loads(pickle.dumps(NatsJetStream("nats://h:4222", _subject_fn)))
    assert sink.resolve(b"7", b"") == "orders.7" and sink.sink and not sink.source


def test_source_sink_and_names():
    both = NatsJetStream("nats://h:4222", "orders.new", stream="ORDERS")
    assert both.source and both.sink and both.kind == "nats"
    assert both.default_name() == "nats-orders.new" and both.durable == "nats-orders_new"
    only_sink = NatsJetStream("nats://h:4222", "orders.new")
    assert only_sink.sink and not only_sink.source
    only_source = NatsJetStream("nats://h:4222", "orders.>", durable="d1")
    assert only_source.source and not only_source.sink
    assert only_source.default_name() == "nats-orders._"
    assert NatsJetStream("nats://h:4222", "a.b", stream="S", name="my-in").durable == "my-in"
    with pytest.raises(TopologyError):
        only_sink.source_client("c")
    with pytest.raises(TopologyError):
        only_source.sink_client()


@pytest.mark.parametrize("kwargs", [
    dict(url=None, subject="a"),
    dict(url="", subject="a"),
    dict(url="nats://h", subject="a b"),
    dict(url="nats://h", subject=42),
    dict(url="nats://h", subject=None),
    dict(url="nats://h", subject="a", stream="bad.name"),
    dict(url="nats://h", subject="a", durable="bad name"),
    dict(url="nats://h", subject=_subject_fn, durable="d"),
    dict(url="nats://h", subject="a", prefetch=0),
    dict(url="nats://h", subject="a", prefetch=True),
    dict(url="nats://h", subject="a", ack_wait="soon"),
    dict(url="nats://h", subject="a", ack_wait=0),
    dict(url="nats://h", subject="a", name="bad/name"),
    dict(url="nats://h", subject="a", buffer=0),
    dict(url="nats://h", subject="a", key="notcallable"),
])
def test_argument_validation(kwargs):
    url = kwargs.pop("url")
    subject = kwargs.pop("subject")
    with pytest.raises(TopologyError):
        NatsJetStream(url, subject, **kwargs)


def test_fetch_returns_without_waiting_out_the_timeout(server, stream, opened):
    """A fetch returns once the burst of available messages ends, also when max_ack_pending stops
    JetStream from filling the request (it then says nothing until the request expires)."""
    name, prefix = stream
    definition = NatsJetStream(server.url, f"{prefix}.fast", stream=name, prefetch=10)
    sink = opened(definition.sink_client())
    source = opened(definition.source_client("c"))
    sink.publish([_out(f"{prefix}.fast", i) for i in range(5)])
    t0 = time.monotonic()
    assert len(source.fetch(100, 3.0)) == 5          # fewer than asked: returns at once
    sink.publish([_out(f"{prefix}.fast", i) for i in range(5, 40)])
    got = source.fetch(100, 3.0)                     # 5 unacked + 10 more would pass max_ack_pending
    assert len(got) == 5
    assert time.monotonic() - t0 < 1.5
    source.ack(got)


@pytest.fixture
def plain_server():
    """Start extra nats-servers with given arguments (no JetStream unless asked); killed at the end."""
    import subprocess
    from _server_nats import _answers, _free_port

    procs = []

    def _start(*args):
        port = _free_port()
        procs.append(subprocess.Popen([nats_binary(), "-a", "127.0.0.1", "-p", str(port), *args],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 10
        while not _answers(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        return port
    yield _start
    for p in procs:
        p.kill()
        p.wait(10)


def test_server_without_jetstream_is_connector_error(server, opened, plain_server):
    port = plain_server()
    with pytest.raises(ConnectorError, match="does not have JetStream enabled"):
        opened(NatsJetStream(f"nats://127.0.0.1:{port}", "a.b").sink_client())
    with pytest.raises(ConnectorError, match="does not have JetStream enabled"):
        opened(NatsJetStream(f"nats://127.0.0.1:{port}", "a.b", durable="d").source_client("c"))


def test_bad_credentials_are_connector_error_without_the_password(server, opened, plain_server, tmp_path):
    port = plain_server("-js", "-sd", str(tmp_path), "--user", "alice", "--pass", "s3cret")
    with pytest.raises(ConnectorError) as err:
        opened(NatsJetStream(f"nats://alice:wr0ng@127.0.0.1:{port}", "a.b").sink_client())
    assert "credentials" in str(err.value) and "wr0ng" not in str(err.value)
    with pytest.raises(ConnectorError, match="captures subject"):     # right password: connected
        opened(NatsJetStream(f"nats://alice:s3cret@127.0.0.1:{port}", "a.b").sink_client())


def test_subject_denied_to_the_user_is_connector_error(opened, plain_server, tmp_path):
    """The server answers a denied publish with nothing but an async error: not a retryable timeout."""
    conf = tmp_path / "denied.conf"
    conf.write_text(f'jetstream {{ store_dir: "{tmp_path}/js" }}\n'
                    'authorization { users = [ { user: bob, password: pw, '
                    'permissions: { publish: { allow: [">"], deny: ["d.denied.>"] } } } ] }\n')
    port = plain_server("-c", str(conf))
    url = f"nats://bob:pw@127.0.0.1:{port}"
    _admin(url, lambda js: js.add_stream(name="D", subjects=["d.>"]))
    sink = opened(NatsJetStream(url, "d.denied.x").sink_client())
    with pytest.raises(ConnectorError, match="refused it to these credentials") as err:
        sink.publish([_out("d.denied.x", 0)])
    assert "pw" not in str(err.value).replace("publish", "")
    opened(NatsJetStream(url, "d.ok").sink_client()).publish([_out("d.ok", 0)])   # allowed subject works


def test_message_larger_than_max_payload_is_connector_error(server, stream, opened):
    name, prefix = stream
    sink = opened(NatsJetStream(server.url, f"{prefix}.big").sink_client())
    with pytest.raises(ConnectorError, match="will not take this message"):
        sink.publish([Outgoing(id="big/0", position=("e", 0, 0), target=f"{prefix}.big", key=None,
                               value=b"x" * (2 << 20))])


def test_error_classification():
    """JetStream 5xx / 408 / 409 and transport errors are retryable; 4xx, not-found and auth are not."""
    import nats.errors as ne
    import nats.js.errors as je
    from streamproc.connectors.nats import _translate

    def kind(exc):
        return type(_translate(exc, "doing", "nats://h:4222")).__name__

    assert kind(je.ServiceUnavailableError(code=503, description="JetStream system temporarily unavailable")) \
        == "Unavailable"
    assert kind(je.APIError(code=503, err_code=10077, description="maximum messages exceeded")) == "Unavailable"
    assert kind(je.APIError(code=409, description="Consumer Deleted")) == "Unavailable"
    assert kind(je.BadRequestError(code=400, err_code=10060, description="expected stream does not match")) \
        == "ConnectorError"
    assert kind(je.NotFoundError(code=404, description="stream not found")) == "ConnectorError"
    assert kind(ne.Error("nats: 'Authorization Violation'")) == "ConnectorError"
    for transient in (ne.ConnectionClosedError(), ne.NoServersError(), ne.TimeoutError(), ne.StaleConnectionError(),
                      ConnectionRefusedError(111, "refused"), asyncio.TimeoutError()):
        assert kind(transient) == "Unavailable", transient
    bug = KeyError("x")
    assert _translate(bug, "doing", "nats://h:4222") is bug
