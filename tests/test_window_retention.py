"""Windowed stores keep closed windows for a retention: ``aggregate(..., retention=)`` (DESIGN.md section 3).

The rule (``streamproc.windows``; Kafka Streams' window and session store retention): a closed window
stays in its store, with its final value and marked ``"closed": True``, until stream time reaches
``window_start + retention`` (tumbling, hopping, sliding: a window store, whose fetches skip windows
with ``start <= stream_time - retention``) or ``session_end + retention`` (a session store), and never
goes before it closed. The default, and the minimum, is the window's size + grace (sliding:
max_difference + grace; session: gap + grace): a window then goes when it closes, as without a
retention. Closing and emitting are unchanged: a record for a closed window is late even while the
window is kept, and a kept session never merges again.

* A model: tests/reference_model.py (which imports nothing from streamproc) gives every window's
  records, with closed sessions never merged; the expiry rule is written here again, independently
  of streamproc. After each pipe the driver's store holds exactly the windows the model says are not
  expired, with their values (closed ones marked), and the outputs are the model's, batch by batch.
* The changelog: a window's marked final value when it closes, a tombstone when it expires.
* RocksDB: a task rebuilt again and again from its backend, and one built on state restored from the
  changelog, keep, emit and expire exactly what a task that never was rebuilt does.
* The DSL's errors, the store fingerprint (unchanged: retention is not part of it), the changelog's
  ``retention.ms``, and the HTTP presentation (``operators.present.presenter``), which shows what the
  driver and ``streamproc state`` show.
"""
from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reference_model as m
from reference_model import Hopping, Session, Sliding, Tumbling

from streamproc import Topology, agg, serdes, windows
from streamproc.errors import TopologyError
from streamproc.operators import RawBatch
from streamproc.plan import compile_topology
from streamproc.runtime.engine.task import Task
from streamproc.state import MemoryBackend
from streamproc.state import codec as K
from streamproc.testing import TopologyTestDriver

KINDS = ["tumbling", "hopping", "sliding", "session"]
# order-insensitive: the order in which merged sessions' values are collected is not what is tested here
AGGS = {"n": ("count", None), "total": ("sum", "v"), "hi": ("max", "v")}
STORE_KIND = {"tumbling": "window", "hopping": "window", "session": "session", "sliding": "sliding"}


# --------------------------------------------------------------------------- plumbing

def sp_window(spec):
    if isinstance(spec, Tumbling):
        return windows.Tumbling(spec.size, grace=spec.grace)
    if isinstance(spec, Hopping):
        return windows.Hopping(spec.size, spec.advance, grace=spec.grace)
    if isinstance(spec, Sliding):
        return windows.Sliding(spec.max_difference, grace=spec.grace)
    return windows.Session(spec.gap, grace=spec.grace)


def floor(spec) -> int:
    """The default (and minimal) retention: the window's size + grace."""
    if isinstance(spec, (Tumbling, Hopping)):
        return spec.size + spec.grace
    if isinstance(spec, Sliding):
        return spec.max_difference + spec.grace
    return spec.gap + spec.grace


def expires_at(spec, start: int, end: int, retention: int) -> int:
    """The stream time at which a window leaves the store (written from the rule, not from streamproc):
    time windows start + retention (the floor makes that the close or later); sliding windows start +
    retention but not before they close (end + grace + 1); sessions end + retention, not before they
    close (end + gap + grace + 1). ``end``: the model's (exclusive for time windows, inclusive else)."""
    if isinstance(spec, (Tumbling, Hopping)):
        return start + retention
    if isinstance(spec, Sliding):
        return max(start + retention, end + spec.grace + 1)
    return max(end + retention, end + spec.gap + spec.grace + 1)


def build(spec, emit, retention=None, name="w"):
    t = Topology("app")
    (t.stream("in", key=serdes.String(), value=serdes.Json())
        .group_by_key()
        .window(sp_window(spec))
        .aggregate(n=agg.count(), total=agg.sum("v"), hi=agg.max("v"), emit=emit, name=name,
                   retention=retention)
        .to("out", value=serdes.Json()))
    return t


def canon(batch, drop_tombstones=False):
    rows = [(r.key.decode() if isinstance(r.key, bytes) else r.key, r.value, r.timestamp) for r in batch]
    if drop_tombstones:
        rows = [r for r in rows if r[1] is not None]
    return sorted(rows, key=repr)


def keeps_closed(spec, retention) -> bool:
    """Whether a closed window outlives its close (written from the rule: see ``expires_at``)."""
    close = {Tumbling: lambda s: s.size + s.grace, Hopping: lambda s: s.size + s.grace,
             Sliding: lambda s: s.max_difference + s.grace + 1, Session: lambda s: s.gap + s.grace + 1}
    return retention > close[type(spec)](spec)


def model_states(records, spec, retention):
    """After each record (one batch each): ``{(key, window_start): value}`` the store must hold; sessions
    of a store that keeps closed ones by ``(key, start, end)`` (a kept closed session and a later one
    can start at the same time)."""
    by_end = isinstance(spec, Session) and keeps_closed(spec, retention)
    kind = m._kind(spec, session_merge_closed=False)
    out = m.ModelOutput(batches=[])
    stream_time = None
    states = []
    for seq, (key, value, ts) in enumerate(records):
        stream_time = ts if stream_time is None else max(stream_time, ts)
        kind.process(m._Rec(seq, key, value, ts), stream_time, out)
        snap = {}
        for (k, start, end), recs in kind.w.content.items():
            if stream_time >= expires_at(spec, start, end, retention):
                continue
            v = {"window_start": start, "window_end": end, **m.aggregate(AGGS, recs)}
            if kind.closed(end, stream_time):
                v["closed"] = True
            snap[(k, start, end) if by_end else (k, start)] = v
        states.append(snap)
    return states


# --------------------------------------------------------------------------- strategies

GRACES = [0, 2, 7]
EXTRA = [0, 1, 6, 25, 90, 1000]         # retention - floor


def spec_strategy(kind):
    g = st.sampled_from(GRACES)
    if kind == "tumbling":
        return st.builds(Tumbling, st.sampled_from([5, 10]), g)
    if kind == "hopping":
        return st.sampled_from([(10, 5), (12, 8), (10, 3)]).flatmap(
            lambda sa: st.builds(Hopping, st.just(sa[0]), st.just(sa[1]), g))
    if kind == "sliding":
        return st.builds(Sliding, st.sampled_from([3, 6, 10]), g)
    return st.builds(Session, st.sampled_from([2, 5, 9]), g)


@st.composite
def streams(draw, spec, max_len=24, span=160):
    """Out-of-order records of 2 keys: a bounded random walk of timestamps (windows close, records come
    late, kept windows expire). Sliding windows keep ts >= max_difference (the model's range)."""
    lo = spec.max_difference if isinstance(spec, Sliding) else 0
    steps = draw(st.lists(st.tuples(st.sampled_from("ab"), st.integers(-20, 14), st.integers(-3, 9)),
                          min_size=4, max_size=max_len))
    ts = lo + draw(st.integers(0, 20))
    out = []
    for key, delta, v in steps:
        ts = min(lo + span, max(lo, ts + delta))
        out.append((key, {"v": v}, ts))
    return out


PROP = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# --------------------------------------------------------------------------- the model

@pytest.mark.parametrize("emit", ["final", "update"])
@pytest.mark.parametrize("kind", KINDS)
def test_the_store_holds_exactly_the_windows_not_expired_with_their_values(kind, emit):
    @PROP
    @given(spec_strategy(kind).flatmap(lambda s: st.tuples(st.just(s), streams(s), st.sampled_from(EXTRA))))
    def run(case):
        spec, records, extra = case
        retention = floor(spec) + extra
        want_states = model_states(records, spec, retention)
        want_out = m.run(records, spec, AGGS, emit, session_merge_closed=False).batches
        tomb = kind == "session" and emit == "update"
        with TopologyTestDriver(build(spec, emit, retention)) as d:
            for i, (key, value, ts) in enumerate(records):
                d.pipe("in", key, value, timestamp=ts)
                got = d.state("w")
                assert got == want_states[i], (f"after record {i} {records[i]!r} of {records!r}, {spec}, "
                                                f"retention {retention}:\n got {got}\nwant {want_states[i]}")
                out = canon(d.read_output("out"), tomb)
                assert out == canon(want_out[i], tomb), (
                    f"outputs after record {i} of {records!r}, {spec}, retention {retention}")

    run()


@pytest.mark.parametrize("kind", KINDS)
def test_the_default_retention_keeps_no_closed_window_as_before(kind):
    """``retention`` = size + grace (the floor) behaves exactly as no retention: windows go when they close."""
    spec = {"tumbling": Tumbling(10, 2), "hopping": Hopping(10, 5, 2), "sliding": Sliding(6, 2),
            "session": Session(5, 2)}[kind]
    rnd = random.Random(KINDS.index(kind))
    ts, records = 10, []
    for _ in range(120):
        ts = max(10, ts + rnd.randint(-8, 9))
        records.append((rnd.choice("abc"), {"v": rnd.randint(0, 9)}, ts))
    runs = []
    for retention in (None, floor(spec)):
        with TopologyTestDriver(build(spec, "final", retention)) as d:
            seen = []
            for key, value, t in records:
                d.pipe("in", key, value, timestamp=t)
                state = d.state("w")
                assert not any(v.get("closed") for v in state.values())
                seen.append((canon(d.read_output("out")), state))
            runs.append(seen)
    assert runs[0] == runs[1]


# --------------------------------------------------------------------------- explicit scenarios

def _revenue(retention="1h", emit="final"):
    t = Topology("shop")
    (t.stream("orders", key=serdes.String(), value=serdes.Json())
        .group_by(lambda k, v: v["tier"])
        .window(windows.Tumbling("1m", grace="10s"))
        .aggregate(revenue=agg.sum("amount"), orders=agg.count(), name="tier-revenue-1m", emit=emit,
                   retention=retention)
        .to("revenue", value=serdes.Json()))
    return t


MIN = 60_000


def test_revenue_per_minute_for_the_last_hour():
    """The issue's case: closed minutes stay readable for an hour, as their final values, then go."""
    with TopologyTestDriver(_revenue()) as d:
        for minute in range(90):
            d.pipe("orders", f"o{minute}", {"tier": "gold", "amount": minute}, timestamp=minute * MIN + 30_000)
        state = d.state("tier-revenue-1m")
        # stream time 89m30s: a minute [s, s+1m) is kept while 89m30s < s + 1h, open while 89m30s < s + 1m10s
        starts = sorted(s for _, s in state)
        assert starts == [s * MIN for s in range(30, 90)]
        assert all(state[("gold", s * MIN)] == {"window_start": s * MIN, "window_end": (s + 1) * MIN,
                                                 "revenue": s, "orders": 1, "closed": True}
                   for s in range(30, 89))
        assert "closed" not in state[("gold", 89 * MIN)]
        out = d.read_output("revenue")
        assert [r.value["window_start"] for r in out] == [s * MIN for s in range(89)]     # each once, final
        # a record for a closed minute that is still kept is late: counted, the minute unchanged
        d.pipe("orders", "late", {"tier": "gold", "amount": 1000}, timestamp=60 * MIN + 5)
        assert d.metrics()["late_records"] == 1
        assert d.state("tier-revenue-1m")[("gold", 60 * MIN)]["revenue"] == 60
        assert d.read_output("revenue") == []


def test_kept_windows_of_every_key_expire_as_stream_time_passes():
    with TopologyTestDriver(_revenue(retention="5m", emit="update")) as d:
        d.pipe("orders", "1", {"tier": "gold", "amount": 5}, timestamp=0)
        d.pipe("orders", "2", {"tier": "silver", "amount": 7}, timestamp=MIN)
        d.pipe("orders", "3", {"tier": "gold", "amount": 1}, timestamp=3 * MIN)
        assert sorted(d.state("tier-revenue-1m")) == [("gold", 0), ("gold", 3 * MIN), ("silver", MIN)]
        assert d.state("tier-revenue-1m")[("gold", 0)]["closed"] is True
        d.pipe("orders", "4", {"tier": "gold", "amount": 1}, timestamp=5 * MIN)        # [0, 1m) expires
        assert sorted(d.state("tier-revenue-1m")) == [("gold", 3 * MIN), ("gold", 5 * MIN), ("silver", MIN)]
        d.pipe("orders", "5", {"tier": "bronze", "amount": 1}, timestamp=20 * MIN)
        assert sorted(d.state("tier-revenue-1m")) == [("bronze", 20 * MIN)]


@pytest.mark.parametrize("kind", KINDS)
def test_a_late_record_never_updates_a_kept_window(kind):
    spec = {"tumbling": Tumbling(10), "hopping": Hopping(10, 5), "sliding": Sliding(10),
            "session": Session(10)}[kind]
    with TopologyTestDriver(build(spec, "final", retention=500)) as d:
        for ts in (12, 15, 18):
            d.pipe("in", "a", {"v": 1}, timestamp=ts)
        d.pipe("in", "b", {"v": 1}, timestamp=60)            # closes every window of "a"
        before = d.state("w")
        kept = {(k[0], v["window_start"], v["window_end"]): v for k, v in before.items() if k[0] == "a"}
        assert kept and all(v.get("closed") for v in kept.values())
        emitted = {(k, v["window_start"], v["window_end"]): v for k, v, _ in canon(d.read_output("out"))}
        assert {w: {**v, "closed": True} for w, v in emitted.items()} == kept      # each emitted once
        d.pipe("in", "a", {"v": 100}, timestamp=14)          # late for every kept window
        assert d.state("w") == before
        assert d.metrics()["late_records"] == 1 and d.read_output("out") == []


def test_a_kept_session_never_merges_again():
    """Kafka Streams' session store would hand a retained closed session to the merge of a later record
    within the gap; here closing does not depend on the retention: the record starts a new session."""
    with TopologyTestDriver(build(Session(10), "final", retention=500)) as d:
        for ts in (12, 15, 18):
            d.pipe("in", "a", {"v": 1}, timestamp=ts)
        d.pipe("in", "b", {"v": 1}, timestamp=35)            # [12, 18] of "a" closes (35 > 18 + 10)
        d.pipe("in", "a", {"v": 2}, timestamp=26)            # within the gap of [12, 18], not late itself
        state = d.state("w")             # a store that keeps sessions shows them by (key, start, end)
        assert state[("a", 12, 18)] == {"window_start": 12, "window_end": 18, "n": 3, "total": 3, "hi": 1,
                                        "closed": True}
        assert state[("a", 26, 26)] == {"window_start": 26, "window_end": 26, "n": 1, "total": 2, "hi": 2}
        assert d.metrics()["late_records"] == 0
        d.pipe("in", "b", {"v": 1}, timestamp=100)
        assert sorted((r.key, r.value["window_start"]) for r in d.read_output("out")) == [
            ("a", 12), ("a", 26), ("b", 35)]


def test_retention_errors_and_where_it_is_accepted():
    g = Topology("app").stream("in", key=serdes.String(), value=serdes.Json()).group_by_key()
    with pytest.raises(TopologyError) as e:
        g.window(windows.Tumbling("1m", grace="10s")).aggregate(n=agg.count(), retention="1m", name="x")
    msg = str(e.value)
    assert "retention 1m of store 'x' is shorter than the window's size + grace (70s" in msg
    assert "\n" not in msg and msg.count(". ") == 0
    with pytest.raises(TopologyError, match="shorter than the window's size \\+ grace \\(15s"):
        g.window(windows.Session("10s", grace="5s")).count(retention=14_999)
    with pytest.raises(TopologyError, match="shorter than the window's size \\+ grace \\(10s"):
        g.window(windows.Sliding("10s")).count(retention="9s")
    with pytest.raises(TopologyError, match="is for windowed aggregations"):
        g.aggregate(n=agg.count(), retention="1h")
    with pytest.raises(TopologyError, match="not a duration"):
        g.window(windows.Tumbling("1m")).count(retention="soon")
    with pytest.raises(TopologyError, match="'retention' is the store's retention"):
        g.window(windows.Tumbling("1m")).aggregate(retention=agg.count())
    g.window(windows.Tumbling("1m", grace="10s")).aggregate(n=agg.count(), retention=70_000)    # the floor
    g.window(windows.Hopping("1m", "10s")).count(retention="1h")
    g.window(windows.Session("1m")).reduce(lambda a, v: a, retention="1d")


def _fingerprints(retention=None):
    t = Topology("fp")
    s = t.stream("in", key=serdes.String(), value=serdes.Json())
    kw = {} if retention is None else {"retention": retention}
    s.group_by_key().window(windows.Tumbling("1m", grace="10s")).aggregate(n=agg.count(), total=agg.sum("v"),
                                                                            name="tum", **kw)
    s.group_by_key().window(windows.Hopping("1m", "20s")).count(name="hop", **kw)
    s.group_by_key().window(windows.Sliding("30s", grace="5s")).aggregate(hi=agg.max("v"), name="sli", **kw)
    s.group_by_key().window(windows.Session("5m")).aggregate(all=agg.collect("v"), name="ses", **kw)
    return compile_topology(t)


def test_the_fingerprint_does_not_change_and_ignores_retention():
    """Existing state stays valid: the fingerprints are those of the version before retention existed
    (computed there), and a retention does not change them (it changes which closed windows a store
    keeps, not what a window holds or how it is stored; Kafka Streams lets it change too)."""
    before = {"tum": "5116fe853ab7a898", "hop": "fdc26334b6a3e9ad", "sli": "ed90ba2e893c2edc",
              "ses": "0bf1a000c8c4a403"}
    assert {s.name: s.fingerprint for s in _fingerprints().stores} == before
    kept = _fingerprints("2h")
    assert {s.name: s.fingerprint for s in kept.stores} == before
    assert all("retention 2h" in s.description for s in kept.stores)
    assert not any("retention" in s.description for s in _fingerprints().stores)


def test_the_changelog_retention_follows_the_store_retention():
    from streamproc.runtime.instance import app as app_mod

    margin = app_mod.RETENTION_MARGIN_MS
    plain, kept = _fingerprints(), _fingerprints("2h")
    want_plain = {"tum": 70_000, "hop": 60_000, "sli": 65_000, "ses": 300_000}
    assert {s.name: app_mod.window_retention_ms(s) - margin for s in plain.stores} == want_plain
    assert {s.name: app_mod.window_retention_ms(s) - margin for s in kept.stores} == dict.fromkeys(want_plain,
                                                                                                  7_200_000)
    # a retention below how long a sliding store's value can live unwritten (2 x d + grace) does not shorten it
    t = Topology("x")
    t.stream("in").group_by_key().window(windows.Sliding("30s", grace="5s")).count(name="s", retention="40s")
    assert app_mod.window_retention_ms(compile_topology(t).stores[0]) - margin == 65_000
    specs = app_mod.internal_topic_specs(kept, app_mod.partition_counts(kept, {"in": 2}))
    assert {s.name: s.config for s in specs}["fp-tum-changelog"] == {
        "cleanup.policy": "compact,delete", "retention.ms": str(7_200_000 + margin)}


# --------------------------------------------------------------------------- tasks, changelog, RocksDB

def _topology(kind, emit="final", retention=40):
    w = {"tumbling": windows.Tumbling(10, grace=3), "hopping": windows.Hopping(10, 4, grace=2),
         "session": windows.Session(5, grace=3), "sliding": windows.Sliding(6, grace=3)}[kind]
    t = Topology("app")
    (t.stream("in", key=serdes.String(), value=serdes.Json()).group_by_key().window(w)
        .aggregate(n=agg.count(), total=agg.sum("v"), all=agg.collect("v"), name="w", emit=emit,
                   retention=retention)
        .to("out", value=serdes.Json()))
    return compile_topology(t).subtopologies[0]


def _batches(seed, n=200, keys=5):
    rnd = random.Random(seed)
    ts, recs = 10, []
    for _ in range(n):
        ts = max(10, ts + rnd.randint(-6, 7))
        recs.append((f"k{rnd.randrange(keys)}", rnd.randint(-3, 9), ts))
    out, i = [], 0
    while i < n:
        k = rnd.choice([1, 1, 2, 4])
        out.append(recs[i:i + k])
        i += k
    return out


def _run(task, batch, offset):
    raw = RawBatch("in", 0, [k.encode() for k, _, _ in batch], [json.dumps({"v": v}).encode() for _, v, _ in batch],
                   [t for _, _, t in batch], list(range(offset, offset + len(batch))))
    return sorted((kb, vb, t) for _, kbs, vbs, tss in task.process(raw) for kb, vb, t in zip(kbs, vbs, tss))


def _checkpoint(task, log=None, kind=None):
    changes = task.state.changes()
    task.state.apply()
    if log is not None:
        log.append([(K.encode_store_key(kind, k), None if v is None else K.encode_value(v)) for k, v in changes["w"]])
    return changes["w"]


def test_the_changelog_has_the_final_value_when_a_window_closes_and_a_tombstone_when_it_expires():
    sub = _topology("tumbling", retention=40)                # [0, 10) closes at 13, expires at 40
    task = Task(sub, 0, MemoryBackend())
    writes = []
    for i, ts in enumerate([1, 2, 13, 39, 40]):
        _run(task, [("a", 1, ts)], i)
        writes.append([c for c in _checkpoint(task) if c[0] == ("a", 0)])
    assert writes[0] == [(("a", 0), (1, 1, 1, [1]))]
    assert writes[1] == [(("a", 0), (2, 2, 2, [1, 1]))]
    assert writes[2] == [(("a", 0), (2, 2, 2, [1, 1], True))]       # closed: the final value, marked
    assert writes[3] == []
    assert writes[4] == [(("a", 0), None)]                          # expired: a tombstone
    assert task.snapshot("w") == {("a", 10): {"window_start": 10, "window_end": 20, "n": 1, "total": 1,
                                              "all": [1], "closed": True},
                                  ("a", 30): {"window_start": 30, "window_end": 40, "n": 1, "total": 1,
                                              "all": [1]},
                                  ("a", 40): {"window_start": 40, "window_end": 50, "n": 1, "total": 1,
                                              "all": [1]}}


@pytest.mark.parametrize("kind", KINDS)
def test_rocksdb_tasks_rebuilt_and_restored_keep_emit_and_expire_as_one_that_never_was(kind, tmp_path):
    pytest.importorskip("rocksdict")
    from streamproc.state import RocksDBBackend

    sub = _topology(kind, retention=45)
    batches = _batches(KINDS.index(kind))
    ref = Task(sub, 0, MemoryBackend())
    expected, snaps, log = [], [], []
    for i, b in enumerate(batches):
        expected.append(_run(ref, b, i * 10))
        _checkpoint(ref, log, STORE_KIND[kind])
        snaps.append(ref.snapshot("w"))
    assert any(expected) and any(v.get("closed") for s in snaps for v in s.values())

    # rebuilt every 3 batches, the database reopened every 7
    backend = RocksDBBackend.for_task(tmp_path / "t", sub)
    task = Task(sub, 0, backend)
    for i, b in enumerate(batches):
        if i % 7 == 6:
            backend.close()
            backend = RocksDBBackend.for_task(tmp_path / "t", sub)
            task = Task(sub, 0, backend)
        elif i % 3 == 2:
            task = Task(sub, 0, backend)
        got = _run(task, b, i * 10)
        _checkpoint(task)
        assert got == expected[i], f"batch {i}"
        assert task.snapshot("w") == snaps[i], f"state after batch {i}"
    backend.close()

    # a new host: the first half restored from the changelog, the task built on it, the rest processed
    half = len(batches) // 2
    backend = RocksDBBackend.for_task(tmp_path / "r", sub)
    for i, records in enumerate(log[:half]):
        backend.restore_batch({"w": records}, {"stream_time": _stream_time(batches[:i + 1])})
    task = Task(sub, 0, backend)
    assert task.snapshot("w") == snaps[half - 1]
    for i in range(half, len(batches)):
        got = _run(task, batches[i], i * 10)
        _checkpoint(task)
        assert got == expected[i], f"batch {i} after the restore"
        assert task.snapshot("w") == snaps[i]
    backend.close()


class _NoIndex(MemoryBackend):
    """A backend that keeps no time index: operators index the store by reading it when built."""

    def declare_index(self, store, kind):
        return False


@pytest.mark.parametrize("kind", KINDS)
def test_tasks_rebuilt_on_a_backend_without_a_time_index(kind):
    sub = _topology(kind, retention=45)
    batches = _batches(80 + KINDS.index(kind))
    ref = Task(sub, 0, MemoryBackend())
    backend = _NoIndex()
    task = Task(sub, 0, backend)
    for i, b in enumerate(batches):
        if i % 3 == 2:
            task = Task(sub, 0, backend)
        assert _run(task, b, i * 10) == _run(ref, b, i * 10), f"batch {i}"
        _checkpoint(task)
        _checkpoint(ref)
        assert task.snapshot("w") == ref.snapshot("w"), f"state after batch {i}"


def _stream_time(batches):
    return max(t for b in batches for _, _, t in b)


@pytest.mark.parametrize("kind", KINDS)
def test_an_aborted_checkpoint_with_kept_windows(kind):
    sub = _topology(kind, retention=45)
    batches = _batches(20 + KINDS.index(kind))
    ref = Task(sub, 0, MemoryBackend())
    expected = []
    for i, b in enumerate(batches):
        expected.append(_run(ref, b, i * 10))
        _checkpoint(ref)
    backend = MemoryBackend()
    task = Task(sub, 0, backend)
    for i, b in enumerate(batches):
        if i % 4 == 1:
            _run(task, b, i * 10)            # processed, then its checkpoint aborts
            task.state.discard()
        assert _run(task, b, i * 10) == expected[i], f"batch {i}"
        _checkpoint(task)
    assert task.snapshot("w") == ref.snapshot("w")


@pytest.mark.parametrize("kind", KINDS)
def test_changing_the_retention_keeps_the_state_and_never_emits_twice(kind):
    """Retention is not in the fingerprint: a store written with one retention runs on with another.
    Lowered to the default, the kept windows go (time windows at the next batch, sliding/session ones
    when their key is next visited, at the latest when the old retention ends) and none is emitted
    again: the outputs are those of a run that never had a retention."""
    batches = _batches(40 + KINDS.index(kind))
    end = _stream_time(batches)
    batches += [[("zz", 0, end + 400)], [("zz", 0, end + 401)]]
    cut = len(batches) // 2
    long, default = _topology(kind, retention=400), _topology(kind, retention=None)
    assert long.stores[0].fingerprint == default.stores[0].fingerprint
    ref = Task(default, 0, MemoryBackend())
    backend = MemoryBackend()
    task = Task(long, 0, backend)
    for i, b in enumerate(batches):
        if i == cut:
            assert any(v.get("closed") for v in task.snapshot("w").values())
            task = Task(default, 0, backend)
        assert _run(task, b, i * 10) == _run(ref, b, i * 10), f"batch {i}"
        _checkpoint(task)
        _checkpoint(ref)
    assert not any(v.get("closed") for v in task.snapshot("w").values())
    assert task.snapshot("w") == ref.snapshot("w")
    # and raised again: closed windows are kept from then on
    task = Task(long, 0, backend)
    _run(task, [("zz", 1, end + 900)], 99_990)
    _run(task, [("zz", 1, end + 950)], 99_991)
    assert any(v.get("closed") for v in task.snapshot("w").values())


# --------------------------------------------------------------------------- presentation

@pytest.mark.parametrize("kind", KINDS)
def test_http_queries_show_the_windows_the_driver_shows(kind):
    """``operators.present.presenter`` (HTTP ``/stores/<store>/<key>``, the SSE changes) presents the stored
    values as the operator does for ``TopologyTestDriver.state`` and ``streamproc state``: every window of
    the key by start, kept closed ones marked ``"closed": true``."""
    from streamproc.operators.present import presenter

    sub = _topology(kind, retention=45)
    task = Task(sub, 0, MemoryBackend())
    for i, b in enumerate(_batches(60 + KINDS.index(kind), n=120)):
        _run(task, b, i * 10)
        _checkpoint(task)
    spec = sub.stores[0]
    present = presenter(sub, spec)
    shown: dict = {}
    for k, v in task.state.backend.items("w"):
        if spec.kind == "window":                    # one stored value per window, listed by start
            shown.setdefault(k[0], []).append(present(k, v))
        else:                                        # one stored value per key: its windows
            shown[k] = present(k, v)
    snap: dict = {}
    for skey, w in sorted(task.snapshot("w").items(), key=lambda kv: (kv[1]["window_start"], kv[1]["window_end"])):
        snap.setdefault(skey[0], []).append(w)
    assert shown == snap
    assert any(w.get("closed") for ws in shown.values() for w in ws)
    assert any(not w.get("closed") for ws in shown.values() for w in ws)
