"""The Redis Streams connector against a real redis-server (tests/_server_redis.py starts one).

Sink: entry layout, order, MAXLEN, the idempotent write (a re-published batch, or an overlapping one,
is written once), tombstones, per-record streams, the script reloaded after SCRIPT FLUSH, and which
failures are Unavailable (server down) and which ConnectorError (WRONGTYPE, NOPERM, bad password).
Source: body mapping, ack, redelivery to the same consumer after a reopen, takeover by another
consumer after claim_idle, two consumers sharing a group, deleted pending entries, the group made
again when the stream was deleted. Definition: validation, pickling, describe without the password.
"""
from __future__ import annotations

import os
import pickle
import signal
import time
import uuid

import orjson
import pytest
import redis

import _server_redis
from streamproc.connectors._base import Outgoing, Unavailable
from streamproc.connectors.redis import RedisStream
from streamproc.errors import ConnectorError, TopologyError

pytestmark = pytest.mark.xdist_group("redis")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if _server_redis.redis_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    srv = _server_redis.start_redis(tmp_path_factory.mktemp("redis"))
    yield srv
    srv.kill()


@pytest.fixture
def r(server):
    server.start()                              # a test that stopped it may have failed half-way
    c = redis.Redis.from_url(server.url, socket_timeout=5)
    yield c
    c.close()


def _name(prefix="s") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _out(offset, *, topic="t", partition=0, target="out", key=b"k", value=b"v") -> Outgoing:
    return Outgoing(id=f"app/{topic}/{partition}/{offset}", position=(topic, partition, offset),
                    target=target, key=key, value=value)


def _batch(stream, offsets, **kw) -> list[Outgoing]:
    return [_out(o, target=stream, key=f"k{o}".encode(), value=f"v{o}".encode(), **kw) for o in offsets]


def _sink(url, stream, **kw):
    s = RedisStream(url, stream, **kw).sink_client()
    s.open()
    return s


def _source(url, stream, group="g", consumer="c1", **kw):
    c = RedisStream(url, stream, group=group, **kw).source_client(consumer)
    c.open()
    return c


def _ids(r, stream) -> list[bytes]:
    return [f[b"id"] for _, f in r.xrange(stream)]


def _fetch_all(src, n, timeout_s=5.0) -> list:
    got, deadline = [], time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        got += src.fetch(n - len(got), 0.2)
    return got


# ------------------------------------------------------------------------------------------------ sink

def test_sink_writes_entries_in_order_with_fields(server, r):
    stream = _name()
    sink = _sink(server.url, stream)
    sink.publish(_batch(stream, range(5)))
    entries = r.xrange(stream)
    assert [f for _, f in entries] == [
        {b"id": f"app/t/0/{o}".encode(), b"key": f"k{o}".encode(), b"value": f"v{o}".encode()}
        for o in range(5)]
    assert r.hgetall("{%s}:streamproc-delivered" % stream) == {b"t/0": b"4"}
    sink.close()


def test_sink_maxlen_trims_the_stream(server, r):
    stream = _name()
    sink = _sink(server.url, stream, maxlen=10)
    for start in range(0, 1000, 100):
        sink.publish(_batch(stream, range(start, start + 100)))
    n = r.xlen(stream)
    # MAXLEN ~ trims whole macro nodes (100 entries by default): about maxlen, never all 1000
    assert 10 <= n <= 110
    assert _ids(r, stream)[-1] == b"app/t/0/999"
    sink.close()


def test_sink_republished_batch_is_written_once(server, r):
    stream = _name()
    sink = _sink(server.url, stream)
    sink.publish(_batch(stream, range(10)))
    sink.publish(_batch(stream, range(10)))                  # the same batch again (crash before commit)
    sink.publish(_batch(stream, range(5, 15)))               # an overlapping one
    sink.close()
    sink2 = _sink(server.url, stream)                        # a new client (another instance) too
    sink2.publish(_batch(stream, range(12, 20)))
    assert _ids(r, stream) == [f"app/t/0/{o}".encode() for o in range(20)]
    sink2.close()


def test_sink_two_partitions_interleaved_are_tracked_apart(server, r):
    stream = _name()
    sink = _sink(server.url, stream)
    batch = [_out(o, partition=p, target=stream) for o, p in ((0, 0), (0, 1), (1, 0), (5, 1), (2, 0))]
    sink.publish(batch)
    sink.publish(batch + [_out(6, partition=1, target=stream), _out(3, partition=0, target=stream)])
    assert _ids(r, stream) == [b"app/t/0/0", b"app/t/1/0", b"app/t/0/1", b"app/t/1/5", b"app/t/0/2",
                               b"app/t/1/6", b"app/t/0/3"]
    assert r.hgetall("{%s}:streamproc-delivered" % stream) == {b"t/0": b"3", b"t/1": b"6"}
    sink.close()


def test_sink_offsets_compare_as_numbers_not_text(server, r):
    stream = _name()
    sink = _sink(server.url, stream)
    sink.publish([_out(o, target=stream) for o in (9, 10, 99, 100, 2 ** 62 + 1)])
    sink.publish([_out(o, target=stream) for o in (100, 2 ** 62 + 1)])       # already written
    sink.publish([_out(2 ** 62 + 2, target=stream)])
    assert _ids(r, stream) == [f"app/t/0/{o}".encode() for o in (9, 10, 99, 100, 2 ** 62 + 1, 2 ** 62 + 2)]
    sink.close()


def test_sink_tombstone_and_missing_key(server, r):
    stream = _name()
    sink = _sink(server.url, stream)
    sink.publish([_out(0, target=stream, key=b"k", value=None), _out(1, target=stream, key=None, value=b"v"),
                  _out(2, target=stream, key=b"", value=b"")])
    assert [f for _, f in r.xrange(stream)] == [{b"id": b"app/t/0/0", b"key": b"k"},
                                                 {b"id": b"app/t/0/1", b"value": b"v"},
                                                 {b"id": b"app/t/0/2", b"key": b"", b"value": b""}]
    sink.close()


def test_sink_per_record_streams(server, r):
    a, b = _name("a"), _name("b")
    conn = RedisStream(server.url, lambda k, v: a if v.startswith(b"a") else b)
    sink = conn.sink_client()
    sink.open()
    batch = [_out(o, target=conn.resolve(None, v), value=v) for o, v in enumerate([b"a0", b"b1", b"a2", b"b3"])]
    sink.publish(batch)
    sink.publish(batch)
    assert _ids(r, a) == [b"app/t/0/0", b"app/t/0/2"]
    assert _ids(r, b) == [b"app/t/0/1", b"app/t/0/3"]
    sink.close()


def test_sink_reloads_script_after_flush(server, r):
    stream = _name()
    sink = _sink(server.url, stream)
    sink.publish(_batch(stream, [0]))
    r.script_flush()
    sink.publish(_batch(stream, [0, 1]))
    assert _ids(r, stream) == [b"app/t/0/0", b"app/t/0/1"]
    sink.close()


def test_sink_wrong_type_is_connector_error(server, r):
    stream = _name()
    r.set(stream, "not a stream")
    sink = _sink(server.url, stream)
    with pytest.raises(ConnectorError, match="WRONGTYPE") as e:
        sink.publish(_batch(stream, [0]))
    assert stream in str(e.value) and not isinstance(e.value, Unavailable)
    r.delete(stream)
    r.hset("{%s}:streamproc-delivered" % stream, "x", "1")
    r.delete("{%s}:streamproc-delivered" % stream)
    r.set("{%s}:streamproc-delivered" % stream, "oops")
    with pytest.raises(ConnectorError, match="streamproc-delivered"):
        sink.publish(_batch(stream, [0]))
    assert r.exists(stream) == 0                             # nothing written half-way
    sink.close()


def test_permissions_and_credentials_are_connector_errors(server, r):
    user = _name("u")
    r.acl_setuser(user, enabled=True, passwords=["+pw"], keys=["*"], commands=["+@connection", "+xadd"])
    try:
        url = server.url.replace("redis://", f"redis://{user}:pw@")
        stream = _name()
        with pytest.raises(ConnectorError, match="may not") as e:
            _sink(url, stream)                               # SCRIPT LOAD is not granted
        assert "pw@" not in str(e.value) and ":***@" in str(e.value)
        with pytest.raises(ConnectorError, match="credentials") as e:
            _sink(server.url.replace("redis://", f"redis://{user}:wrong@"), stream)
        assert "wrong" not in str(e.value)
        with pytest.raises(ConnectorError):
            _source(url, stream)                             # XGROUP not granted
    finally:
        r.acl_deluser(user)


# ---------------------------------------------------------------------------------------------- source

def test_fetch_whole_entry_as_json_and_ack(server, r):
    stream = _name()
    r.xadd(stream, {"a": "1", "b": "x"})
    r.xadd(stream, {"c": b"\xff"})
    src = _source(server.url, stream)
    got = _fetch_all(src, 2)
    assert [orjson.loads(m.body) for m in got] == [{"a": "1", "b": "x"}, {"c": "\ufffd"}]
    ids = [e for e, _ in r.xrange(stream)]
    assert [m.id for m in got] == [f"{stream}:{e.decode()}" for e in ids]
    assert [m.redelivered for m in got] == [False, False]
    assert r.xpending(stream, "g")["pending"] == 2
    src.ack(got)
    assert r.xpending(stream, "g")["pending"] == 0
    assert src.fetch(10, 0.1) == []
    src.close()


def test_fetch_field_body_and_missing_field(server, r):
    stream = _name()
    r.xadd(stream, {"value": b"\x00\x01", "id": "x"})
    r.xadd(stream, {"id": "tombstone"})
    src = _source(server.url, stream, field="value")
    assert [m.body for m in _fetch_all(src, 2)] == [b"\x00\x01", b""]
    src.close()


def test_group_created_from_start_reads_older_entries(server, r):
    stream = _name()
    r.xadd(stream, {"n": "0"})
    src = _source(server.url, stream, group="fresh")
    assert r.xinfo_groups(stream)[0]["name"] == b"fresh"
    r.xadd(stream, {"n": "1"})
    assert [orjson.loads(m.body)["n"] for m in _fetch_all(src, 2)] == ["0", "1"]
    src.close()
    empty = _name()
    src = _source(server.url, empty)                         # MKSTREAM: a stream that does not exist yet
    assert r.exists(empty) == 1 and src.fetch(5, 0.05) == []
    src.close()


def test_fetch_waits_at_most_the_timeout(server, r):
    src = _source(server.url, _name())
    t0 = time.monotonic()
    assert src.fetch(10, 0.3) == []
    assert 0.25 <= time.monotonic() - t0 < 1.5
    src.close()


def test_unacked_entries_come_back_to_the_same_consumer(server, r):
    stream = _name()
    for i in range(5):
        r.xadd(stream, {"n": str(i)})
    src = _source(server.url, stream, prefetch=2)
    first = _fetch_all(src, 5)
    src.ack(first[:2])
    src.close()                                               # "crash" with 3 unacked
    r.xadd(stream, {"n": "5"})
    src = _source(server.url, stream, prefetch=2)
    again = src.fetch(10, 0.1) + src.fetch(10, 0.1)
    assert [m.id for m in again] == [m.id for m in first[2:]]
    assert all(m.redelivered for m in again)
    new = _fetch_all(src, 1)
    assert [orjson.loads(m.body)["n"] for m in new] == ["5"] and not new[0].redelivered
    src.ack(again + new)
    assert r.xpending(stream, "g")["pending"] == 0
    src.close()


def test_another_consumer_takes_over_after_claim_idle(server, r):
    stream = _name()
    for i in range(3):
        r.xadd(stream, {"n": str(i)})
    crashed = _source(server.url, stream, consumer="dead", claim_idle=300)
    taken = _fetch_all(crashed, 3)
    crashed.close()
    other = _source(server.url, stream, consumer="alive", claim_idle=300)
    assert other.fetch(10, 0.05) == []                        # not idle long enough yet
    deadline, got = time.monotonic() + 5, []
    while len(got) < 3 and time.monotonic() < deadline:
        got += other.fetch(10, 0.1)
    assert [m.id for m in got] == [m.id for m in taken] and all(m.redelivered for m in got)
    other.ack(got)
    assert r.xpending(stream, "g")["pending"] == 0
    other.close()


def test_own_inflight_entries_are_not_claimed_back(server, r):
    stream = _name()
    r.xadd(stream, {"n": "0"})
    src = _source(server.url, stream, claim_idle=50)
    got = _fetch_all(src, 1)
    deadline = time.monotonic() + 0.6
    while time.monotonic() < deadline:                       # idle far past claim_idle, still held
        assert src.fetch(10, 0.05) == []
    src.ack(got)
    src.close()


def test_two_consumers_share_the_group_without_overlap(server, r):
    stream = _name()
    with r.pipeline(transaction=False) as p:
        for i in range(200):
            p.xadd(stream, {"n": str(i)})
        p.execute()
    a = _source(server.url, stream, consumer="a", prefetch=7)
    b = _source(server.url, stream, consumer="b", prefetch=7)
    seen = {"a": [], "b": []}
    deadline = time.monotonic() + 10
    while len(seen["a"]) + len(seen["b"]) < 200 and time.monotonic() < deadline:
        for name, c in (("a", a), ("b", b)):
            ms = c.fetch(7, 0.05)
            c.ack(ms)
            seen[name] += [m.id for m in ms]
    assert seen["a"] and seen["b"]
    assert not set(seen["a"]) & set(seen["b"])
    assert len(seen["a"]) + len(seen["b"]) == 200
    a.close()
    b.close()


def test_deleted_pending_entries_are_dropped(server, r):
    stream = _name()
    ids = [r.xadd(stream, {"n": str(i)}) for i in range(3)]
    src = _source(server.url, stream, consumer="gone", claim_idle=50)
    _fetch_all(src, 3)
    src.close()
    r.xdel(stream, ids[0])
    mine = _source(server.url, stream, consumer="gone")       # own history: the deleted one is acked away
    got = mine.fetch(10, 0.05)
    assert [m.token for m in got] == ids[1:]
    assert r.xpending(stream, "g")["pending"] == 2
    mine.close()
    r.xdel(stream, ids[1])
    time.sleep(0.1)                                           # let them idle past claim_idle
    other = _source(server.url, stream, consumer="other", claim_idle=50)
    got = _fetch_all(other, 1, timeout_s=2)
    assert [m.token for m in got] == ids[2:]
    other.ack(got)
    assert r.xpending(stream, "g")["pending"] == 0
    other.close()


def test_group_made_again_when_the_stream_was_deleted(server, r):
    stream = _name()
    src = _source(server.url, stream)
    r.delete(stream)
    assert src.fetch(5, 0.05) == []
    r.xadd(stream, {"n": "0"})
    assert [orjson.loads(m.body) for m in _fetch_all(src, 1)] == [{"n": "0"}]
    src.close()


# -------------------------------------------------------------------------------------- availability

def test_server_down_is_unavailable_and_new_clients_work_after_restart(server, r):
    stream = _name()
    sink = _sink(server.url, stream)
    sink.publish(_batch(stream, range(3)))
    src = _source(server.url, stream)
    first = _fetch_all(src, 3)
    server.stop()
    try:
        for call in (lambda: sink.publish(_batch(stream, range(3, 6))), lambda: src.fetch(10, 1.0),
                     lambda: src.ack(first), lambda: _sink(server.url, stream),
                     lambda: _source(server.url, stream)):
            t0 = time.monotonic()
            with pytest.raises(Unavailable):
                call()
            assert time.monotonic() - t0 < 5
    finally:
        server.start()
    sink.close()
    src.close()
    sink = _sink(server.url, stream)
    sink.publish(_batch(stream, range(6)))                    # the append-only file kept the marks
    assert _ids(r, stream) == [f"app/t/0/{o}".encode() for o in range(6)]
    src = _source(server.url, stream)
    again = _fetch_all(src, 6)
    assert [m.redelivered for m in again] == [True] * 3 + [False] * 3
    src.ack(again)
    sink.close()
    src.close()


def test_crashed_server_is_unavailable_then_recovers(server, r):
    stream = _name()
    sink = _sink(server.url, stream)
    server.kill()
    try:
        with pytest.raises(Unavailable):
            sink.publish(_batch(stream, [0]))
    finally:
        server.start()
    sink.publish(_batch(stream, [0]))                         # the same client reconnects
    assert _ids(r, stream) == [b"app/t/0/0"]
    sink.close()


# ---------------------------------------------------------------------------------------- definition

def test_definition_roles_names_and_pickling():
    both = RedisStream("redis://u:s3cret@h:6379/1", "in.put/x", group="g", claim_idle="2s", maxlen=5)
    assert both.kind == "redis" and both.source and both.sink
    assert both.default_name() == "redis-in.put_x"
    assert both.claim_idle_ms == 2000
    sink_only = RedisStream("redis://h", "out")
    assert sink_only.sink and not sink_only.source
    copy = pickle.loads(pickle.dumps(both))
    assert (copy.url, copy.stream, copy.group, copy.maxlen) == (both.url, "in.put/x", "g", 5)
    with pytest.raises(TopologyError):
        sink_only.source_client("c")


def test_describe_hides_the_password():
    d = RedisStream("redis://user:s3cret@host:6379/0", "s", group="g").describe()
    assert "s3cret" not in d and "host:6379" in d and "'s'" in d and "'g'" in d
    assert "s3cret" not in RedisStream("redis://host:6379/0?password=s3cret", "s").describe()


@pytest.mark.parametrize("args,kwargs", [
    (("http://h", "s"), {}),
    ((None, "s"), {}),
    (("redis://h",), {}),
    (("redis://h", ""), {}),
    (("redis://h", 5), {}),
    (("redis://h", lambda k, v: "s"), {"group": "g"}),
    (("redis://h", "s"), {"group": ""}),
    (("redis://h", "s"), {"maxlen": 0}),
    (("redis://h", "s"), {"maxlen": True}),
    (("redis://h", "s"), {"prefetch": 0}),
    (("redis://h", "s"), {"field": ""}),
    (("redis://h", "s"), {"claim_idle": 0}),
    (("redis://h", "s"), {"claim_idle": "soon"}),
    (("redis://h", "s"), {"name": "bad name"}),
    (("redis://h", "s"), {"buffer": 0}),
])
def test_bad_arguments_are_topology_errors(args, kwargs):
    with pytest.raises(TopologyError):
        RedisStream(*args, **kwargs)


def test_hung_server_is_unavailable_within_the_socket_timeout(server, r):
    stream = _name()
    sink = _sink(server.url, stream)
    src = _source(server.url, stream)
    os.kill(server.proc.pid, signal.SIGSTOP)                 # accepts connections, never answers
    try:
        for call in (lambda: sink.publish(_batch(stream, [0])), lambda: src.fetch(10, 1.0)):
            t0 = time.monotonic()
            with pytest.raises(Unavailable):
                call()
            assert time.monotonic() - t0 < 7
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    sink.publish(_batch(stream, [0, 1]))                     # the timed-out write may have landed: once
    assert _ids(r, stream) == [b"app/t/0/0", b"app/t/0/1"]
    sink.close()
    src.close()
