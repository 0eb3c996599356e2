"""The bulk restore path (issue: restore, replay and memory to target).

* ``codec.canonical_str_keys`` (the restore loop's bulk check of untrusted key bytes) accepts only keys
  that decode and encode back to the same bytes, and every common str-keyed store key;
* ``codec.decode_values`` (with its fast path for tuple values) and ``codec.check_values`` decode
  and refuse exactly as ``decode_value`` does, nesting limit included;
* the restore loop still names the offset of a record whose value does not decode, and applies none
  of that batch;
* restored writes skip the WAL: killed at any moment, a RocksDB backend never claims changelog offsets
  ahead of its data; a logged write after a restore, a close and the end of a task's restore persist
  what was restored (a secondary instance, the queries' reader, then sees it);
* ``RocksDBBackend.clear_store`` empties a store and its time index and keeps its definition.
"""
from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import msgpack
import pytest
from confluent_kafka import KafkaError

from streamproc.errors import CodecError, StateError
from streamproc.plan.model import StoreSpec
from streamproc.runtime.changelog.records import META_KEY, meta_value
from streamproc.runtime.changelog.restore import Restorer
from streamproc.state import codec
from streamproc.state.rocksdb import RocksDBBackend

REPO = str(Path(__file__).resolve().parents[1])
WSPEC = StoreSpec("w", "window", "app-w-changelog", "fp-w", 0)
KSPEC = StoreSpec("k", "kv", "app-k-changelog", "fp-k", 0)


# ------------------------------------------------------------------------------ canonical_str_keys
def _round_trips(kind: str, kb) -> bool:
    try:
        return codec.key_encoder(kind)(codec.key_decoder(kind)(kb)) == kb
    except Exception:  # noqa: BLE001
        return False


def test_canonical_str_keys_accepts_str_keyed_store_keys():
    kv = [codec.encode_store_key("kv", k) for k in ("", "a", "user-1", "é\u4e2d\U0001F600", "lone \udc80 surrogate")]
    win = [codec.encode_store_key("window", (k, s)) for k in ("", "a", "é\u4e2d") for s in (-(1 << 63), -1, 0, 256,
                                                                                            (1 << 63) - 1)]
    assert codec.canonical_str_keys("kv", kv) and codec.canonical_str_keys("session", kv)
    assert codec.canonical_str_keys("window", win)
    assert codec.canonical_str_keys("kv", [])
    assert not codec.canonical_str_keys("kv", win[:3]) and not codec.canonical_str_keys("window", kv[:3])


@pytest.mark.parametrize("bad", [
    b"\x011a\x00\x00x", b"\x011a\x00", b"\x011\xc0\x80\x00\x00", b"\x011\xff\x00\x00", b"\x011\xed\xa0\x00\x00",
    b"\x011a\x00\xff\x00\x00",              # an escaped 00: canonical, but not for the bulk check (checked one by one)
    b"\x01\x10" + bytes(8),                  # an int key
    b"\x80\x04x", b"", b"\x01", b"\x011", b"\x00streamproc.meta", None, "not bytes"])
def test_canonical_str_keys_refuses_anything_else(bad):
    good = [codec.encode_store_key("kv", f"k{i}") for i in range(3)]
    assert not codec.canonical_str_keys("kv", good + [bad])
    assert not codec.canonical_str_keys("kv", [bad] + good)


def test_canonical_str_keys_never_accepts_a_key_that_does_not_round_trip():
    rng = random.Random(7)
    alphabet = [0, 1, 0x31, 0x41, 0x7f, 0x80, 0xa0, 0xa9, 0xbf, 0xc3, 0xed, 0xf0, 0x9f, 0xff]
    seeds = {"kv": [codec.encode_store_key("kv", k) for k in ("", "ab", "é", "\U0001F600x")],
             "window": [codec.encode_store_key("window", (k, s)) for k in ("", "ab", "é") for s in (0, -5, 1 << 40)]}
    accepted = 0
    for _ in range(20_000):
        kind = rng.choice(("kv", "window"))
        b = bytearray(rng.choice(seeds[kind]))
        for _ in range(rng.randint(1, 2)):
            op = rng.random()
            if op < 0.4 and b:
                b[rng.randrange(len(b))] = rng.choice(alphabet)
            elif op < 0.7:
                b.insert(rng.randrange(len(b) + 1), rng.choice(alphabet))
            elif b:
                del b[rng.randrange(len(b))]
        keys = seeds[kind][:2] + [bytes(b)]
        if codec.canonical_str_keys(kind, keys):
            accepted += 1
            assert all(_round_trips(kind, k) for k in keys), (kind, bytes(b))
    assert accepted > 100            # the mutations do produce valid keys too


# ------------------------------------------------------------------------------ decode_values
def _nested(depth: int) -> bytes:
    """A value that is ``depth`` tuples inside one another around [1] (msgpack built by hand)."""
    payload = msgpack.packb([1])
    for _ in range(depth - 1):
        payload = msgpack.packb([msgpack.ExtType(codec.X_TUPLE, payload)])
    return b"\x01" + msgpack.packb(msgpack.ExtType(codec.X_TUPLE, payload))


def _one(d):
    try:
        return "ok", codec.decode_value(d)
    except CodecError as e:
        return "err", str(e)


def _many(ds):
    try:
        out = "ok", codec.decode_values(ds)
    except CodecError as e:
        out = "err", str(e)
    try:                                  # check_values: the same verdict, the same error
        codec.check_values(ds)
        assert out[0] == "ok"
    except CodecError as e:
        assert out == ("err", str(e))
    return out


VALUES = [(1,), (1, 2), (), ((),), (1_700_000_000_000, 5), (1.5, "x", [1, (2, 3)], {"a": (1,)}), tuple(range(20)),
          tuple(range(300)), ((((1,),),),), [1, 2], {"k": (1,)}, "s", 1, None, 2.5, b"xyz", {1, 2}]


def test_decode_values_equals_decode_value():
    encoded = [codec.encode_value(v) for v in VALUES]
    assert codec.decode_values(encoded) == VALUES
    assert [type(x) for x in codec.decode_values(encoded)] == [type(v) for v in VALUES]
    assert _many([_nested(16)]) == ("ok", [_one(_nested(16))[1]])          # the deepest nesting allowed
    assert _one(_nested(17))[0] == "err" and _many([_nested(17)]) == _one(_nested(17))


def test_decode_values_refuses_what_decode_value_refuses_with_the_same_error():
    rng = random.Random(3)
    encoded = [codec.encode_value(v) for v in VALUES if v is not None]
    refused = 0
    for _ in range(20_000):
        d = bytearray(rng.choice(encoded))
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            if op < 0.5 and d:
                d[rng.randrange(len(d))] = rng.randrange(256)
            elif op < 0.75:
                d.insert(rng.randrange(len(d) + 1), rng.randrange(256))
            elif d:
                del d[rng.randrange(len(d))]
        d = bytes(d)
        one = _one(d)
        assert _many([d]) == (one if one[0] == "err" else ("ok", [one[1]])), d
        batch = [encoded[0], d, encoded[4]]
        expect = one if one[0] == "err" else ("ok", [codec.decode_value(x) for x in batch])
        assert _many(batch) == expect, d
        refused += one[0] == "err"
    assert refused > 1000


# ------------------------------------------------------------------------------ the restore loop
class _Msg:
    __slots__ = ("_t", "_p", "_o", "_k", "_v", "_e")

    def __init__(self, t, p, o, k=None, v=None, e=None):
        self._t, self._p, self._o, self._k, self._v, self._e = t, p, o, k, v, e

    def topic(self):
        return self._t

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def key(self):
        return self._k

    def value(self):
        return self._v

    def error(self):
        return self._e

    def timestamp(self):
        return (1, 0)


class _Consumer:
    """Hands out ``records[(topic, partition)] = [(key, value)]`` from offset 0 in batches, then an EOF."""

    def __init__(self, records: dict):
        self.records = records
        self.pos: dict = {}
        self.waits: list = []

    def get_watermark_offsets(self, tp, timeout=None, cached=False):
        return 0, len(self.records.get((tp.topic, tp.partition), ()))

    def incremental_assign(self, tps):
        for tp in tps:
            self.pos[(tp.topic, tp.partition)] = max(tp.offset, 0)

    def incremental_unassign(self, tps):
        for tp in tps:
            self.pos.pop((tp.topic, tp.partition), None)

    def consume(self, n, timeout):
        self.waits.append(timeout)
        out = []
        for tp in sorted(self.pos):
            recs = self.records.get(tp, [])
            p = self.pos[tp]
            take = recs[p:p + max(0, n - len(out))]
            out += [_Msg(tp[0], tp[1], p + i, k, v) for i, (k, v) in enumerate(take)]
            self.pos[tp] = p + len(take)
            if self.pos[tp] >= len(recs) and len(out) < n:
                out.append(_Msg(tp[0], tp[1], len(recs), e=KafkaError(KafkaError._PARTITION_EOF)))
        return out

    def close(self):
        pass


def _restorer(consumer, **kw) -> Restorer:
    r = Restorer({"bootstrap.servers": "fake:1", "group.id": "x-restore"}, **kw)
    r._consumer = consumer
    return r


def _wkey(i: int) -> bytes:
    return codec.encode_store_key("window", (f"k{i}", 1000 * (i % 3)))


def test_a_value_that_does_not_decode_names_its_offset_and_nothing_of_its_batch_is_applied(tmp_path):
    records = [(_wkey(i), codec.encode_value((i, i))) for i in range(30)]
    records.insert(10, (META_KEY, meta_value(WSPEC, 5)))
    records[20] = (records[20][0], b"\x01\xc7\x05\x01\x92")          # a tuple whose payload is cut short
    r = _restorer(_Consumer({(WSPEC.changelog, 0): records}))
    with RocksDBBackend(tmp_path / "t", [WSPEC]) as b:
        r.start((0, 0), b, [WSPEC], 0)
        with pytest.raises(StateError, match=rf"{WSPEC.changelog}\[0\] at offset 20"):
            r.step(0.01)
        assert b.items("w") == [] and b.get_meta("changelog_offsets") is None


def test_restore_runs_with_metadata_records_and_two_changelogs_of_one_partition(tmp_path):
    """Two stores of one task: their changelogs share the partition number, metadata records come between
    store records; everything lands in its own store and index, the offsets are the last read."""
    w = [(_wkey(i), codec.encode_value((i, 1))) for i in range(25)]
    w[7:7] = [(META_KEY, meta_value(WSPEC, 3000))]
    w.append((META_KEY, meta_value(WSPEC, 4000)))
    k = [(codec.encode_store_key("kv", f"u{i}"), codec.encode_value([i])) for i in range(12)]
    k.append((codec.encode_store_key("kv", "u3"), None))                 # a tombstone
    consumer = _Consumer({(WSPEC.changelog, 2): w, (KSPEC.changelog, 2): k})
    r = _restorer(consumer, batch_size=8)
    with RocksDBBackend(tmp_path / "t", [WSPEC, KSPEC]) as b:
        r.start((0, 2), b, [WSPEC, KSPEC], 2)
        done = []
        for _ in range(40):
            done += r.step(0.2)
            if done:
                break
        assert done == [(0, 2)]
        assert len(b.items("w")) == 25 and b.get("w", ("k4", 1000)) == (4, 1)
        assert sorted(b.keys("k")) == sorted(f"u{i}" for i in range(12) if i != 3)
        assert b.get_meta("changelog_offsets") == {"w": len(w) - 1, "k": len(k) - 1}
        assert b.get_meta("stream_time") == 4000
        assert sorted(b.index_range("w", None, 10_000)) == sorted(key for key, _ in b.items("w"))
    # the tail of a restore does not wait out the step's timeout for a batch that cannot fill
    assert consumer.waits[-1] <= r.tail_wait_s


def test_a_finished_restore_is_seen_by_a_secondary_instance(tmp_path):
    """The interactive queries read a task's state through a RocksDB secondary instance, which follows the
    WAL and the files on disk only: restored writes (no WAL) are flushed when the task's restore ends."""
    records = [(_wkey(i), codec.encode_value((i, 1))) for i in range(50)] + [(META_KEY, meta_value(WSPEC, 9))]
    r = _restorer(_Consumer({(WSPEC.changelog, 0): records}))
    with RocksDBBackend(tmp_path / "t", [WSPEC]) as b:
        r.start((0, 0), b, [WSPEC], 0)
        done = []
        for _ in range(10):
            done += r.step(0.01)
            if done:
                break
        assert done == [(0, 0)]
        reader = RocksDBBackend(tmp_path / "t", [WSPEC], secondary=str(tmp_path / "secondary"))
        try:
            reader.catch_up()
            assert len(reader.items("w")) == 50 and reader.get_meta("changelog_offsets") == {"w": 50}
        finally:
            reader.close()


# ------------------------------------------------------------------------------ unlogged restore writes
RESTORER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    from streamproc.plan.model import StoreSpec
    from streamproc.state import codec
    from streamproc.state.rocksdb import RocksDBBackend
    spec = StoreSpec("w", "window", "w-changelog", "fp", 0)
    b = RocksDBBackend({path!r}, [spec])
    i = (b.get_meta("changelog_offsets") or {{}}).get("w", -1) + 1
    keys = [codec.encode_store_key("window", (f"key-{{j}}", 1000 * (j % 7))) for j in range(3000)]
    print("ready", flush=True)
    while True:
        b.restore_columns({{"w": (keys, [codec.encode_value((i, "x" * 40))] * len(keys))}},
                          {{"changelog_offsets": {{"w": i}}, "stream_time": i}})
        if i % 4 == 3:
            b.flush()             # as a logged write or close would
        i += 1
""")


def test_killed_mid_restore_the_offsets_are_never_ahead_of_the_data(tmp_path):
    path = tmp_path / "unlogged"
    script = RESTORER.format(repo=REPO, path=str(path))
    seen = []
    for delay in (0.1, 0.3, 0.6, 0.9):
        p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        with RocksDBBackend(path, [StoreSpec("w", "window", "w-changelog", "fp", 0)]) as b:
            offsets = b.get_meta("changelog_offsets")
            items = b.items("w")
            if offsets is None:
                continue
            i = offsets["w"]
            versions = {v[0] for _, v in items}
            assert len(items) == 3000 and len(versions) == 1       # every key from one batch
            assert versions.pop() >= i                                # the data is never behind the offsets
            assert sorted(b.index_range("w", None, 10_000)) == sorted(k for k, _ in items)
            seen.append(i)
    assert seen and seen == sorted(seen)


def test_a_logged_write_after_a_restore_persists_the_restored_records(tmp_path):
    spec = StoreSpec("w", "window", "w-changelog", "fp", 0)
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {REPO!r})
        from streamproc.plan.model import StoreSpec
        from streamproc.state import codec
        from streamproc.state.rocksdb import RocksDBBackend
        b = RocksDBBackend({str(tmp_path / 'db')!r}, [StoreSpec("w", "window", "w-changelog", "fp", 0)])
        keys = [codec.encode_store_key("window", (f"k{{j}}", 0)) for j in range(100)]
        b.restore_columns({{"w": (keys, [codec.encode_value((j, 1)) for j in range(100)])}},
                          {{"changelog_offsets": {{"w": 99}}}})
        b.write({{"w": {{("new", 0): (7, 7)}}}}, {{"changelog_offsets": {{"w": 100}}}})
        os.kill(os.getpid(), 9)                     # no close: only what is on disk or in the WAL survives
    """)
    subprocess.run([sys.executable, "-c", script])
    with RocksDBBackend(tmp_path / "db", [spec]) as b:
        assert b.get_meta("changelog_offsets") == {"w": 100}
        assert len(b.items("w")) == 101 and b.get("w", ("k42", 0)) == (42, 1) and b.get("w", ("new", 0)) == (7, 7)


def test_close_persists_a_restore(tmp_path):
    with RocksDBBackend(tmp_path / "db", [KSPEC]) as b:
        b.restore_columns({"k": ([codec.encode_store_key("kv", "a")], [codec.encode_value(1)])},
                          {"changelog_offsets": {"k": 0}})
    with RocksDBBackend(tmp_path / "db", [KSPEC]) as b:
        assert b.items("k") == [("a", 1)] and b.get_meta("changelog_offsets") == {"k": 0}


# ------------------------------------------------------------------------------ clear_store
def test_clear_store_empties_a_store_and_its_index_and_keeps_its_definition(tmp_path):
    with RocksDBBackend(tmp_path / "db", [WSPEC, KSPEC]) as b:
        b.write({"w": {("a", 0): 1, ("b", 1000): 2}, "k": {"x": 1}}, {"changelog_offsets": {"w": 5, "k": 2}})
        b.clear_store("w")
        assert b.items("w") == [] and b.index_range("w", None, 10_000) == [] and b.items("k") == [("x", 1)]
        b.write({"w": {("c", 2000): 3}}, None)
        assert b.items("w") == [(("c", 2000), 3)] and b.index_range("w", None, 10_000) == [("c", 2000)]
    with RocksDBBackend(tmp_path / "db", [WSPEC, KSPEC]) as b:                 # same definition: accepted
        assert b.kind("w") == "window" and b.fingerprint("w") == "fp-w"
        assert b.items("w") == [(("c", 2000), 3)] and b.index_range("w", None, 10_000) == [("c", 2000)]
