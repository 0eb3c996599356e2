"""Event time through repartition topics and joins of backlogs, on a broker (issue 16 item 5; DESIGN.md
section 4: watermarks through repartitions, idle inputs, KIP-695 ordering of a task's inputs).

Every test writes its whole input *before* the app starts (a backlog, as after a first deployment,
a reset or an outage), each partition in event-time order, then runs the app with two workers (two
``WorkerThread``s of one instance; ``streamproc run --workers 2`` for the SIGKILL test), so the
upstream tasks run at different speeds and a worker's first fetches cover far more event time than
the grace. The expected results are computed here in plain Python from the input (an oracle), not
by the TopologyTestDriver: the point is that the runtime's result depends on the data and the grace
only, not on how fetches, tasks and workers interleave.

The issue's numbers, scaled down to run in seconds on the development broker: 8 partitions x 3,000
page views over 5 minutes (issue: 600k), 1-minute tumbling windows, 10 s grace, 100 users; joins of
4 partitions x 1,500 records per side. One partition's 3,000 views weigh ~200 kB; a fetch
(``max.partition.fetch.bytes`` lowered to 64 kB, so that a partition takes several) covers ~90 s of
its event time, nine times the grace, and a worker works through its partitions more or less one
after the other: the upstream tasks of a repartition are minutes of event time apart.

Measured on the code before issue 16 (same tests, Tansu): (a) 17,399 of 24,000 views dropped as late
and none of the 500 window results right; (b) 12,000 of 18,000 late; (c) 0 of 4,847 matches; (d) 5,655
of 6,000 payments found no row; (e) 19,508 late; (f) 17,400 late instead of 3.

Topologies: ``tests/topologies/event_time_*.py``, factories reading the app id from
``EVENT_TIME_APP`` (a new app per test).

Tansu (the development broker) reports the high watermark of a multi-record batch as its first
offset + 1: ``produce_tracked`` writes each partition's last record alone, so "caught up" (the
end-of-partition event) means the real end.
"""
from __future__ import annotations

import os
import random
import re
import time
import urllib.request
from collections import Counter

import pytest

import runtime_helpers as h
from streamproc import serdes
from streamproc.kafka import create_topics, make_admin
from streamproc.kafka.admin import group_offsets
from streamproc.runtime.options import RunOptions
from streamproc.runtime.instance.load import process_id
from streamproc.runtime.instance.app import prepare_topics
from test_http_queries import free_port
from test_joins_runtime import Tail, alive, cli_run, keys_on, kill, produce_tracked, sigterm

pytestmark = pytest.mark.broker

STR, JSON = serdes.String(), serdes.Json()
TOPOLOGIES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "topologies")
MINUTE, GRACE = 60_000, 10_000
T0 = 1_700_000_040_000                   # a minute boundary: windows [T0 + k min, T0 + (k+1) min)
SPAN = 5 * MINUTE                        # event time covered by the backlog
PARTITIONS, PER_PARTITION, USERS = 8, 3_000, 100
#: fetches smaller than a partition's backlog (which a single fetch would otherwise bring whole)
FETCH_BYTES = 64 * 1024
FETCH = {"consumer.max.partition.fetch.bytes": FETCH_BYTES}
#: the SIGKILL test's re-keying delay per record (EVENT_TIME_DELAY_MS): a worker re-keys its 12,000
#: records in a fraction of a second otherwise (150k records a second), too fast to be killed in the
#: middle; with it, the backlog takes ~5 s per worker
SIGKILL_DELAY_MS = 0.4


# ------------------------------------------------------------------------------------------ running

class App:
    """One app of ``tests/topologies/<module>.py`` with unique names, run by two worker threads.

    ``inputs``: ``{role: partitions}`` of the input topics (``<app>-<role>``, created; those in ``tables``
    compacted); ``outputs``: roles of the output topics (4 partitions)."""

    def __init__(self, tmp_path, bootstrap: str, module: str, monkeypatch, inputs: dict, outputs: list,
                 *, guarantee: str = "exactly-once", config: dict | None = None, tables: tuple = ()):
        self.bootstrap = bootstrap
        self.id = h.unique("et")
        monkeypatch.setenv("EVENT_TIME_APP", self.id)          # read by the topology factory
        self.ref = f"{os.path.join(TOPOLOGIES, module)}.py:topology"
        self.topics = {role: f"{self.id}-{role}" for role in (*inputs, *outputs)}
        for role, n in inputs.items():         # a table's topic compacted (else run warns)
            create_topics(make_admin(bootstrap), [self.topics[role]], n,
                          config={"cleanup.policy": "compact"} if role in tables else None)
        h.create(bootstrap, [self.topics[o] for o in outputs], 4)
        self.outputs = [self.topics[o] for o in outputs]
        self.ends: dict = {}                 # (source topic, partition) -> next offset written
        self.tmp_path = tmp_path
        self.guarantee = guarantee
        self.config = {**h.CLIENT_CONFIG, **FETCH, **(config or {})}
        self.workers: list[h.WorkerThread] = []

    def produce(self, role: str, records, partitions: int) -> None:
        """``[(key, value, ts)]`` to the topic of ``role`` (String keys, Json values, murmur2), in list order."""
        for tp, end in produce_tracked(self.bootstrap, self.topics[role], list(records), partitions).items():
            self.ends[tp] = max(self.ends.get(tp, 0), end)

    def plan_and_options(self):
        plan = h.load_plan(self.ref)
        assert plan.app_id == self.id
        opts = RunOptions(self.bootstrap, workers=2, guarantee=self.guarantee,
                          state_dir=str(self.tmp_path / "state"), client_config=dict(self.config),
                          topology=self.ref)
        return plan, opts

    def start(self, workers: int = 2) -> "App":
        plan, opts = self.plan_and_options()
        prepare_topics(plan, opts)
        pid = process_id(opts.state_dir, plan.app_id)
        self.workers = [h.WorkerThread(plan, opts, index=i, process_id=pid).start() for i in range(workers)]
        return self

    def alive(self) -> None:
        for w in self.workers:
            if w.error is not None or not w.thread.is_alive():
                raise AssertionError(f"worker {w.worker.id} stopped: {w.error!r}")

    def committed_all(self) -> bool:
        """Whether the group committed every source offset written."""
        got = group_offsets(make_admin(self.bootstrap), self.id, list(self.ends))
        return all(got.get(tp, -1) >= o for tp, o in self.ends.items())

    def metrics(self) -> Counter:
        """The committed drop counters of both workers, summed (``late_records``...)."""
        total: Counter = Counter()
        for w in self.workers:
            total.update(w.worker.metrics())
        return total

    def stop(self) -> None:
        errors = []
        for w in self.workers:
            try:
                w.stop()
            except BaseException as e:  # noqa: BLE001 - stop them all, then report
                errors.append(e)
        if errors:
            raise errors[0]

    def run_until(self, want_counts: dict, timeout: float = 90.0) -> dict:
        """Until each output holds at least ``want_counts[topic]`` records (or ``timeout``: the assertions
        on the outputs then say what is missing) and the group committed every source offset written
        (at most 15 s more: :meth:`assert_committed` says which are behind); then stop the workers (a
        clean stop) and return every committed output record, ``{topic: [(key, value, ts)]}``, read
        to the topics' ends."""
        t0 = time.monotonic()
        with Tail(self.bootstrap, self.outputs) as tail:
            try:
                h.wait_until(lambda: self.alive() or all(len(tail.poll()[t]) >= n for t, n in want_counts.items()),
                             timeout, interval=0.2, what="the outputs")
            except AssertionError as e:
                if "timed out" not in str(e):
                    raise
            self.took = time.monotonic() - t0
        try:
            h.wait_until(lambda: self.alive() or self.committed_all(), 15, interval=0.2, what="the offsets")
        except AssertionError as e:
            if "timed out" not in str(e):
                raise
        committed = group_offsets(make_admin(self.bootstrap), self.id, list(self.ends))
        self.uncommitted = {tp: (committed.get(tp), o) for tp, o in self.ends.items() if committed.get(tp, -1) < o}
        self.stop()
        self.final_metrics = self.metrics()
        return {t: [(STR.deserialize(r[2]), JSON.deserialize(r[3]), r[4]) for r in h.read_to_end(self.bootstrap, t)]
                for t in self.outputs}

    def assert_committed(self) -> None:
        """Every source record was processed, so the group's committed offsets are at the ends (a
        restart or a rebalance would process again whatever is behind: duplicates)."""
        assert not self.uncommitted, (
            f"committed offsets behind the processed records 15 s after the last output, "
            f"{{(topic, partition): (committed, end)}}: {self.uncommitted}")


# ------------------------------------------------------------------------------------------ page views

def views_backlog(partitions=range(PARTITIONS), seed: int = 16, after: dict | None = None) -> list:
    """``[(page, {"user", "page", "id"}, ts)]`` in event-time order: PER_PARTITION views per source
    partition (its pages are keys murmur2 puts there), one every 100 ms over SPAN, partition p
    offset by p ms. ``after``: ``{(partition, i): (user, ts)}``, one more view (id ``x<p>-<i>``) written
    to that partition right after its i-th view, whatever its timestamp."""
    rnd = random.Random(seed)
    pages = {p: keys_on(p, 20, "page", PARTITIONS) for p in partitions}
    out = []
    for i in range(PER_PARTITION):
        for p in partitions:
            page = rnd.choice(pages[p])
            out.append((page, {"user": f"u{rnd.randrange(USERS)}", "page": page, "id": f"{p}-{i}"},
                        T0 + i * SPAN // PER_PARTITION + p))
            if after and (p, i) in after:
                user, ts = after[(p, i)]
                out.append((pages[p][0], {"user": user, "page": pages[p][0], "id": f"x{p}-{i}"}, ts))
    return out


def flush_records(prefix: str, ts: int, partitions=range(PARTITIONS)) -> list:
    """One record per source partition at ``ts`` (its user ``<prefix>``), at the end of the backlog."""
    return [(keys_on(p, 1, "flush", PARTITIONS)[0], {"user": prefix, "page": "-", "id": f"flush-{p}"}, ts)
            for p in partitions]


def window_counts(records, closed_by: int | None = None) -> Counter:
    """The oracle: ``{(user, window start, count, max ts)}`` of the 1-minute windows of ``records``
    closed at stream time ``closed_by`` (every window if None), one each."""
    n: Counter = Counter()
    last: dict = {}
    for _, v, ts in records:
        w = (v["user"], ts - ts % MINUTE)
        n[w] += 1
        last[w] = max(last.get(w, ts), ts)
    return Counter({(u, ws, c, last[(u, ws)]) for (u, ws), c in n.items()
                    if closed_by is None or closed_by >= ws + MINUTE + GRACE})


def as_window_results(records) -> Counter:
    """Output records ``(user, {"window_start", "window_end", "n"}, ts)`` as oracle entries (a multiset)."""
    out: Counter = Counter()
    for k, v, ts in records:
        assert v["window_end"] == v["window_start"] + MINUTE, v
        out[(k, v["window_start"], v["n"], ts)] += 1
    return out


def assert_windows(got: Counter, want: Counter, what: str) -> None:
    extra, missing = got - want, want - got
    assert not extra and not missing, (
        f"{what}: {sum(extra.values())} unexpected/duplicate, {sum(missing.values())} missing of "
        f"{sum(want.values())} (user, window) results; unexpected e.g. {sorted(extra)[:3]}, "
        f"missing e.g. {sorted(missing)[:3]}")


# ------------------------------------------------------------------------------------------ (a)

def test_rekeyed_window_counts_of_a_backlog_lose_nothing(tmp_path, kafka, monkeypatch):
    """(a) 8 partitions x 3,000 views over 5 minutes already in the topic, re-keyed by user, counted in
    1-minute windows (emit final, 10 s grace), two workers: no record is late, and every (user, window)
    count equals the oracle, exactly once (a flush record at +7 min on every partition closes every
    window of the backlog)."""
    app = App(tmp_path, kafka[0], "event_time_counts", monkeypatch, {"views": PARTITIONS}, ["counts"])
    data = views_backlog()
    flush = flush_records("flush", T0 + SPAN + 2 * MINUTE)
    app.produce("views", data + flush, PARTITIONS)
    want = window_counts(data)
    got = app.start().run_until({app.topics["counts"]: sum(want.values())})
    print(f"(a) {len(data)} views, {sum(want.values())} windows; took {app.took:.1f} s; metrics {app.final_metrics}")
    assert app.final_metrics["late_records"] == 0
    assert_windows(as_window_results(got[app.topics["counts"]]), want, "re-keyed window counts of a backlog")
    app.assert_committed()


# ------------------------------------------------------------------------------------------ (b)

def test_empty_source_partitions_do_not_stall_windows(tmp_path, kafka, monkeypatch):
    """(b) As (a) with partitions 6 and 7 of the source empty and no flush record: the upstream tasks of
    the empty partitions are idle (caught up) from the start and must not hold the downstream time
    back, nor must the others once they are caught up (all idle: the largest time). Every window but
    the last (which needs stream time T0 + 5 min 10 s, past the data) closes and equals the oracle; the
    last is not emitted; nothing is late."""
    app = App(tmp_path, kafka[0], "event_time_counts", monkeypatch, {"views": PARTITIONS}, ["counts"])
    data = views_backlog(partitions=range(PARTITIONS - 2))
    app.produce("views", data, PARTITIONS)
    newest = max(ts for _, _, ts in data)
    want = window_counts(data, closed_by=newest)
    assert {ws for _, ws, _, _ in want} == {T0 + k * MINUTE for k in range(4)}
    got = app.start().run_until({app.topics["counts"]: sum(want.values())})
    print(f"(b) {len(data)} views, {sum(want.values())} windows; took {app.took:.1f} s; metrics {app.final_metrics}")
    assert app.final_metrics["late_records"] == 0
    assert_windows(as_window_results(got[app.topics["counts"]]), want, "window counts with two empty partitions")
    app.assert_committed()


# ------------------------------------------------------------------------------------------ (c)

JOIN_PARTITIONS, ORDERS = 4, 6_000


def orders_and_payments(seed: int = 17) -> tuple[list, list, list]:
    """``(orders, payments, matches)``: ORDERS orders (key and id ``o<i>``) one every 50 ms over SPAN,
    and their payments in event-time order: mostly one within ``[tl, tl + 10 s]`` (the window's edges
    included), some two, some none, some just outside (``tl - 1``, ``tl + 10 s + 1``: no match).
    ``matches``: the oracle, ``[(order id, {"order", "pid"}, max(tl, tr))]``."""
    rnd = random.Random(seed)
    orders = [(f"o{i}", {"id": f"o{i}"}, T0 + 50 * i) for i in range(ORDERS)]
    payments = []
    for k, _, tl in orders:
        kind = rnd.randrange(10)
        offsets = ([] if kind == 0 else [10_001] if kind == 1 else [-1] if kind == 2
                   else [rnd.randrange(10_001), rnd.randrange(10_001)] if kind == 3
                   else [rnd.choice([0, 10_000, rnd.randrange(10_001)])])
        payments += [(k, {"pid": f"p{k[1:]}-{j}"}, tl + d) for j, d in enumerate(offsets)]
    payments.sort(key=lambda r: r[2])
    tl_of = {k: tl for k, _, tl in orders}
    matches = [(k, {"order": k, "pid": v["pid"]}, max(tl_of[k], tr)) for k, v, tr in payments
               if tl_of[k] <= tr <= tl_of[k] + 10_000]
    return orders, payments, matches


def test_stream_stream_join_of_two_backlogs_emits_every_match(tmp_path, kafka, monkeypatch):
    """(c) Orders and their payments (4 partitions each) both already in their topics; a stream-stream
    join with JoinWindow(0, after=10 s, grace=0), two workers: every match is emitted exactly once and
    nothing is late - each task merges its two inputs in timestamp order and does not run ahead of an
    input whose records are not fetched yet (KIP-695)."""
    app = App(tmp_path, kafka[0], "event_time_stream_join", monkeypatch,
              {"orders": JOIN_PARTITIONS, "payments": JOIN_PARTITIONS}, ["matches"])
    orders, payments, matches = orders_and_payments()
    app.produce("orders", orders, JOIN_PARTITIONS)
    app.produce("payments", payments, JOIN_PARTITIONS)
    got = app.start().run_until({app.topics["matches"]: len(matches)})
    print(f"(c) {len(orders)} orders, {len(payments)} payments, {len(matches)} matches; took {app.took:.1f} s; "
          f"metrics {app.final_metrics}")
    assert app.final_metrics["late_records"] == 0
    assert_windows(Counter(h._freeze(r) for r in got[app.topics["matches"]]), Counter(h._freeze(r) for r in matches),
                   "matches of a stream-stream join of two backlogs")
    app.assert_committed()


# ------------------------------------------------------------------------------------------ (d)

CUSTOMERS = 400


def customers_and_payments(seed: int = 18) -> tuple[list, list, list]:
    """``(rows, payments, enriched)``: a version-1 row per customer in the first 800 ms, then, every
    minute, a new version (one in twenty a tombstone) for about half of them, at even milliseconds;
    ORDERS payments at odd milliseconds from T0 + 1 s, one every 50 ms, of random customers.
    ``enriched``: the oracle, each payment with the version of its customer's row as of its timestamp
    (None: deleted then)."""
    rnd = random.Random(seed)
    custs = [f"c{j}" for j in range(CUSTOMERS)]
    rows = [(c, {"cust": c, "v": 1}, T0 + 2 * j) for j, c in enumerate(custs)]
    version = dict.fromkeys(custs, 1)
    for m in range(SPAN // MINUTE):
        for c in custs:
            if rnd.random() < 0.5:
                version[c] += 1
                ts = T0 + m * MINUTE + 1000 + 2 * rnd.randrange((MINUTE - 1000) // 2)
                rows.append((c, None if rnd.random() < 0.05 else {"cust": c, "v": version[c]}, ts))
    rows.sort(key=lambda r: r[2])
    payments = [(rnd.choice(custs), {"pid": f"p{i}"}, T0 + 1001 + 50 * i) for i in range(ORDERS)]
    history: dict = {}
    for c, v, ts in rows:
        history.setdefault(c, []).append((ts, None if v is None else v["v"]))
    enriched = [(c, {"pid": v["pid"], "v": [ver for t, ver in history[c] if t < ts][-1]}, ts) for c, v, ts in payments]
    return rows, payments, enriched


def test_stream_table_join_of_two_backlogs_sees_the_table_as_of_each_record(tmp_path, kafka, monkeypatch):
    """(d) A customers table topic (versions over the 5 minutes, some tombstones) and a payments stream
    (4 partitions each), both already written, the rows' timestamps earlier than the payments that
    need them; a left stream-table join, two workers: every payment sees its customer's row as of
    its own timestamp (the version, or None after a tombstone) - none joins a row from its future or
    misses one from its past because the other input was fetched first."""
    app = App(tmp_path, kafka[0], "event_time_table_join", monkeypatch,
              {"customers": JOIN_PARTITIONS, "payments": JOIN_PARTITIONS}, ["enriched"], tables=("customers",))
    rows, payments, enriched = customers_and_payments()
    assert any(v["v"] is None for _, v, _ in enriched) and len({v["v"] for _, v, _ in enriched}) > 4
    app.produce("customers", rows, JOIN_PARTITIONS)
    app.produce("payments", payments, JOIN_PARTITIONS)
    got = app.start().run_until({app.topics["enriched"]: len(enriched)})
    print(f"(d) {len(rows)} rows, {len(payments)} payments; took {app.took:.1f} s; metrics {app.final_metrics}")
    out = got[app.topics["enriched"]]
    want_v = {v["pid"]: v["v"] for _, v, _ in enriched}
    wrong = Counter("no row" if v["v"] is None else "a deleted row" if want_v.get(v["pid"]) is None
                    else "an older row" if v["v"] < want_v[v["pid"]] else "a newer row"
                    for _, v, _ in out if v["v"] != want_v.get(v["pid"]))
    assert not wrong, f"payments joined with the wrong row: {dict(wrong)}"
    assert_windows(Counter(h._freeze(r) for r in out), Counter(h._freeze(r) for r in enriched),
                   "payments enriched from a table, both backlogs")
    app.assert_committed()


# ------------------------------------------------------------------------------------------ (e)

def test_two_repartitions_in_a_row(tmp_path, kafka, monkeypatch):
    """(e) The backlog of (a) through two repartitions: re-keyed by view id into a table (one change per
    view), the table's stream re-keyed by user and counted in 1-minute windows: time crosses two
    repartition topics (watermarks of the middle sub-topology's tasks, from their own inputs'
    watermarks); the counts equal the oracle, exactly once, nothing late."""
    app = App(tmp_path, kafka[0], "event_time_two_repartitions", monkeypatch, {"views": PARTITIONS}, ["counts"])
    data = views_backlog()
    app.produce("views", data + flush_records("flush", T0 + SPAN + 2 * MINUTE), PARTITIONS)
    want = window_counts(data)
    got = app.start().run_until({app.topics["counts"]: sum(want.values())}, timeout=120)
    print(f"(e) {len(data)} views, {sum(want.values())} windows; took {app.took:.1f} s; metrics {app.final_metrics}")
    assert app.final_metrics["late_records"] == 0
    assert_windows(as_window_results(got[app.topics["counts"]]), want, "window counts behind two repartitions")
    app.assert_committed()


# ------------------------------------------------------------------------------------------ (f)

def test_records_late_in_their_own_partition_are_still_dropped(tmp_path, kafka, monkeypatch):
    """(f) The backlog of (a) with six records out of order in their own source partition: three a little
    (written when their partition is at 65 s, at 59 s: their window [0, 1 min) closes at 70 s) are
    counted; three really late (written when their partition is at 200 s, at 100 s: their window
    [1, 2 min) closed at 130 s) are dropped and counted as late - whatever the interleaving of the
    upstream tasks (a repartition record carries its upstream's stream time)."""
    app = App(tmp_path, kafka[0], "event_time_counts", monkeypatch, {"views": PARTITIONS}, ["counts"])
    step = SPAN // PER_PARTITION
    on_time = {(p, 650): (f"u{p}", T0 + 59_000 + p) for p in (1, 2, 4)}
    late = {(p, 2000): (f"late{p}", T0 + 100_000 + p) for p in (0, 3, 5)}
    assert all(T0 + i * step - ts > GRACE for (_, i), (_, ts) in late.items())
    data = views_backlog(after={**on_time, **late})
    app.produce("views", data + flush_records("flush", T0 + SPAN + 2 * MINUTE), PARTITIONS)
    want = window_counts([r for r in data if not r[1]["user"].startswith("late")])
    got = app.start().run_until({app.topics["counts"]: sum(want.values())})
    print(f"(f) {len(data)} views, {sum(want.values())} windows; took {app.took:.1f} s; metrics {app.final_metrics}")
    assert app.final_metrics["late_records"] == len(late)
    assert_windows(as_window_results(got[app.topics["counts"]]), want, "window counts, really late records dropped")
    app.assert_committed()


# ------------------------------------------------------------------------------------------ SIGKILL

def scrape(metrics_port: int, name: str, **labels) -> int:
    """The sum of a counter's samples on an instance's /metrics whose labels include ``labels`` (-1: no
    answer)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    except OSError:                     # not serving yet
        return -1
    total = 0.0
    for m in re.finditer(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.M):
        if all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            total += float(m.group(2))
    return int(total)


@pytest.mark.real_kafka("Tansu delivers records of aborted transactions to read_committed consumers")
def test_sigkill_mid_backlog_exactly_once(tmp_path, kafka, monkeypatch):
    """The backlog of (a) under ``streamproc run --workers 2`` (exactly-once), SIGKILLed (with its workers)
    once half of the backlog is committed (the re-keying slowed down so that the backlog takes seconds;
    the downstream tasks then hold part of the repartitioned records in open windows), restarted on the
    same state dir: the read_committed output is exactly the oracle - every (user, window) count once,
    none lost to the restart (the downstream tasks' input clocks come back with their state) - and the
    restarted instance drops nothing as late (/metrics)."""
    bootstrap = kafka[0]
    app = App(tmp_path, bootstrap, "event_time_counts", monkeypatch, {"views": PARTITIONS}, ["counts"])
    monkeypatch.setenv("EVENT_TIME_DELAY_MS", str(SIGKILL_DELAY_MS))      # read by the instances' topology
    data = views_backlog()
    app.produce("views", data + flush_records("flush", T0 + SPAN + 2 * MINUTE), PARTITIONS)
    want = window_counts(data)
    out, total = app.topics["counts"], sum(app.ends.values())
    admin = make_admin(bootstrap)
    log_path = tmp_path / "run.log"
    port = free_port()
    # a small prefetch queue: the repartition topic's records are consumed along with the backlog's,
    # not after all of it (librdkafka prefetches 100k records per partition by default)
    args = ("--workers", "2", "--config", f"consumer.max.partition.fetch.bytes={FETCH_BYTES}",
            "--config", "consumer.queued.min.messages=200", "--config", "consumer.queued.max.messages.kbytes=64")
    n = sum(want.values())
    p = cli_run(app.ref, bootstrap, tmp_path / "state", log_path, *args)
    check = alive(p, log_path)

    def committed() -> int:
        check()
        return sum(group_offsets(admin, app.id, list(app.ends)).values())
    try:
        with Tail(bootstrap, [out]) as tail:
            h.wait_until(lambda: committed() >= total // 2, 90, interval=0.02,
                         what="half of the backlog committed before the kill")
            kill(p)
            at_kill = (len(tail.poll()[out]), sum(group_offsets(admin, app.id, list(app.ends)).values()))
        assert at_kill[1] < total, "the whole backlog was committed before the kill: make it bigger"
        p = cli_run(app.ref, bootstrap, tmp_path / "state", log_path, *args, "--metrics-port", str(port))
        check = alive(p, log_path)
        with Tail(bootstrap, [out]) as tail:
            h.wait_until(lambda: check() or len(tail.poll()[out]) >= n, 120, interval=0.2,
                         what=f"{n} window results (killed at {at_kill[0]} results)")
        h.wait_until(lambda: committed() >= total, 30, interval=0.2, what="every source offset committed")
        # the instance's counters reach /metrics about once a second: wait for the records consumed since
        h.wait_until(lambda: scrape(port, "streamproc_records_consumed_total") >= total - at_kill[1], 30,
                     what="the restarted instance's counters on /metrics")
        late = scrape(port, "streamproc_records_dropped_total", reason="late")
        print(f"SIGKILL: killed with {at_kill[0]} of {n} results out, {at_kill[1]} of {total} records committed; "
              f"the restarted instance dropped {late} as late")
        sigterm(p, log_path)
    finally:
        kill(p)
    got = [(STR.deserialize(r[2]), JSON.deserialize(r[3]), r[4]) for r in h.read_to_end(bootstrap, out)]
    assert_windows(as_window_results(got), want, f"window counts across a SIGKILL with {at_kill[0]} of {n} results out "
                   f"({at_kill[1]} of {total} source records committed; the restarted instance dropped {late} "
                   f"records as late)")
    assert late == 0, f"the restarted instance dropped {late} records as late"
