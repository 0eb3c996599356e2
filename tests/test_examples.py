"""The example topologies in topologies/ under TopologyTestDriver, with hand-computed results.

page_views.py      Avro input, filter, re-key by user, 1-minute tumbling windows, grace 10 s, emit final
user_sessions.py   session windows (gap 30 min, grace 1 min), emit final, pages collected in order
moving_average.py  hopping windows 5 min every 1 min, grace 30 s, emit update
orders_enriched.py stream-table (left), stream-global-table (inner) and stream-stream (left) joins
"""
from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import pytest

from streamproc import SerdeError
from streamproc.testing import TopologyTestDriver

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "topologies"
S, M = 1_000, 60_000
_ids = itertools.count()


def load_example(name: str):
    """Import topologies/<name>.py afresh (the current directory is left as the test set it)."""
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_streamproc_example_{name}_{next(_ids)}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.topology


@pytest.fixture
def at_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)


def view(user, duration_ms, ts, page="/home"):
    return {"user_id": user, "page": page, "duration_ms": duration_ms, "ts": ts}


def as_tuples(records):
    return sorted(((r.key, tuple(sorted(r.value.items())), r.timestamp) for r in records), key=repr)


def _tuple(key, value, ts):
    return key, tuple(sorted(value.items())), ts


# --------------------------------------------------------------------------- page views

PV_IN, PV_OUT = "page-views", "page-views-per-user-1m"


def test_page_views_final_counts_per_user_and_minute(at_repo_root):
    with TopologyTestDriver(load_example("page_views")) as d:
        store = d.plan.stores[0].name
        # keyed by session id; the timestamp argument is ignored: event time comes from value["ts"]
        d.pipe(PV_IN, "s1", view("alice", 1000, 0), timestamp=999_999_999)
        d.pipe(PV_IN, "s2", view("alice", 2000, 30 * S))
        d.pipe(PV_IN, "s3", view("bob", 0, 40 * S))             # duration 0: filtered out
        d.pipe(PV_IN, "s4", view("bob", 500, 59_999))
        d.pipe(PV_IN, "s9", view("erin", 0, 45 * S))            # only a filtered record: no result at all
        assert d.read_output(PV_OUT) == []
        assert d.state(store)[("alice", 0)]["views"] == 2

        d.pipe(PV_IN, "s5", view("carol", 100, 69_999))         # stream time 69.999 s < end + grace
        assert d.read_output(PV_OUT) == []
        d.pipe(PV_IN, "s6", view("alice", 300, 50 * S))         # out of order but within grace: counted
        assert d.read_output(PV_OUT) == []

        d.pipe(PV_IN, "s7", view("carol", 200, 70 * S))         # stream time 70 s = end + grace: closes [0, 60 s)
        assert as_tuples(d.read_output(PV_OUT)) == sorted([
            _tuple("alice", {"window_start": 0, "window_end": 60 * S, "views": 3, "seconds": 3300}, 50 * S),
            _tuple("bob", {"window_start": 0, "window_end": 60 * S, "views": 1, "seconds": 500}, 59_999),
        ], key=repr)
        assert d.metrics().get("late_records", 0) == 0

        d.pipe(PV_IN, "s8", view("alice", 999, 59 * S))         # late: its window is closed
        assert d.read_output(PV_OUT) == []
        assert d.metrics()["late_records"] == 1
        assert ("alice", 0) not in d.state(store)

        d.pipe(PV_IN, "s10", view("dave", 1, 130 * S))          # closes [60 s, 120 s)
        assert as_tuples(d.read_output(PV_OUT)) == [
            _tuple("carol", {"window_start": 60 * S, "window_end": 120 * S, "views": 2, "seconds": 300}, 70 * S),
        ]
        assert d.metrics()["late_records"] == 1


def test_page_views_window_closes_exactly_at_end_plus_grace(at_repo_root):
    with TopologyTestDriver(load_example("page_views")) as d:
        d.pipe(PV_IN, "s", view("u", 10, 59_999))
        d.pipe(PV_IN, "s", view("u", 10, 69_999))
        assert d.read_output(PV_OUT) == []
        d.pipe(PV_IN, "s", view("u", 10, 60 * S + 10 * S))
        out = d.read_output(PV_OUT)
        assert [(r.key, r.value, r.timestamp) for r in out] == [
            ("u", {"window_start": 0, "window_end": 60 * S, "views": 1, "seconds": 10}, 59_999)]


def test_page_views_regroups_sessions_from_many_input_partitions(at_repo_root):
    with TopologyTestDriver(load_example("page_views"), partitions={PV_IN: 4}) as d:
        for i in range(12):                                     # 12 session keys spread over 4 partitions
            d.pipe(PV_IN, f"session-{i}", view("alice", i + 1, i * S))
        assert d.read_output(PV_OUT) == []
        d.pipe(PV_IN, "session-x", view("alice", 5, 70 * S))
        out = d.read_output(PV_OUT)
        assert [(r.key, r.value, r.timestamp) for r in out] == [
            ("alice", {"window_start": 0, "window_end": 60 * S, "views": 12, "seconds": sum(range(1, 13))}, 11 * S)]


def test_page_views_input_is_avro(at_repo_root):
    with TopologyTestDriver(load_example("page_views")) as d:
        with pytest.raises(SerdeError):
            d.pipe(PV_IN, "s1", {"user_id": "alice", "page": "/", "duration_ms": "long", "ts": 0})
        with pytest.raises(SerdeError):
            d.pipe(PV_IN, "s1", {"user_id": "alice"})           # missing fields without defaults


# --------------------------------------------------------------------------- user sessions

US_IN, US_OUT = "page-views-by-user", "user-sessions"


def test_user_sessions_split_merge_and_collect(at_repo_root):
    with TopologyTestDriver(load_example("user_sessions")) as d:
        store = d.plan.stores[0].name
        d.pipe(US_IN, "alice", view("alice", 10, 0, "/a"))
        d.pipe(US_IN, "alice", view("alice", 20, 10 * M, "/b"))
        d.pipe(US_IN, "alice", view("alice", 30, 40 * M + 30 * S, "/c"))   # 30.5 min after /b: a new session
        assert d.read_output(US_OUT) == []
        sessions = d.state(store)
        assert sorted(k for k in sessions if k[0] == "alice") == [("alice", 0), ("alice", 40 * M + 30 * S)]
        assert sessions[("alice", 0)] == {"window_start": 0, "window_end": 10 * M, "views": 2,
                                          "duration_ms": 30, "pages": ["/a", "/b"]}

        d.pipe(US_IN, "alice", view("alice", 40, 20 * M, "/d"))            # within 30 min of both: merges them
        assert d.read_output(US_OUT) == []
        sessions = d.state(store)
        assert sessions == {("alice", 0): {"window_start": 0, "window_end": 40 * M + 30 * S, "views": 4,
                                           "duration_ms": 100, "pages": ["/a", "/b", "/c", "/d"]}}

        d.pipe(US_IN, "bob", view("bob", 1, 50 * M, "/p"))
        assert d.read_output(US_OUT) == []                                  # alice closes after 71.5 min
        d.pipe(US_IN, "bob", view("bob", 2, 85 * M, "/q"))                 # 35 min after /p: bob's 2nd session
        assert as_tuples(d.read_output(US_OUT)) == sorted([
            _tuple("alice", {"window_start": 0, "window_end": 40 * M + 30 * S, "views": 4, "duration_ms": 100,
                             "pages": ["/a", "/b", "/c", "/d"]}, 40 * M + 30 * S),
            _tuple("bob", {"window_start": 50 * M, "window_end": 50 * M, "views": 1, "duration_ms": 1,
                           "pages": ["/p"]}, 50 * M),
        ], key=repr)

        d.pipe(US_IN, "alice", view("alice", 5, 10 * M, "/late"))          # its session closed long ago
        assert d.read_output(US_OUT) == []
        assert d.metrics()["late_records"] == 1

        d.pipe(US_IN, "carol", view("carol", 3, 200 * M, "/z"))
        assert [(r.key, r.value, r.timestamp) for r in d.read_output(US_OUT)] == [
            ("bob", {"window_start": 85 * M, "window_end": 85 * M, "views": 1, "duration_ms": 2,
                     "pages": ["/q"]}, 85 * M)]


def test_user_session_closes_only_after_gap_plus_grace(at_repo_root):
    # a session [t, t] closes when stream time > t + 30 min + 1 min
    with TopologyTestDriver(load_example("user_sessions")) as d:
        d.pipe(US_IN, "u", view("u", 1, 0, "/x"))
        d.pipe(US_IN, "v", view("v", 1, 31 * M))
        assert d.read_output(US_OUT) == []
        d.pipe(US_IN, "v", view("v", 1, 31 * M + 1))
        assert [(r.key, r.value["pages"]) for r in d.read_output(US_OUT)] == [("u", ["/x"])]


# --------------------------------------------------------------------------- moving average

MA_IN, MA_OUT = "sensor-readings", "sensor-averages-5m"


def _by_start(records):
    return {r.value["window_start"]: (r.key, r.value, r.timestamp) for r in records}


def _ma(key, start, values, ts):
    return key, {"window_start": start, "window_end": start + 5 * M, "avg": pytest.approx(sum(values) / len(values)),
                 "low": min(values), "high": max(values), "n": len(values)}, ts


def test_moving_average_emits_one_update_per_window_the_record_falls_into(at_repo_root):
    with TopologyTestDriver(load_example("moving_average")) as d:
        d.pipe(MA_IN, "s1", {"value": 10.0, "ts": 7 * M + 30 * S})
        out = d.read_output(MA_OUT)
        assert len(out) == 5
        assert _by_start(out) == {st: _ma("s1", st, [10.0], 450 * S) for st in (3 * M, 4 * M, 5 * M, 6 * M, 7 * M)}

        d.pipe(MA_IN, "s1", {"value": 20.0, "ts": 8 * M})          # not in [3m, 8m): half-open
        assert _by_start(d.read_output(MA_OUT)) == {
            4 * M: _ma("s1", 4 * M, [10.0, 20.0], 8 * M),
            5 * M: _ma("s1", 5 * M, [10.0, 20.0], 8 * M),
            6 * M: _ma("s1", 6 * M, [10.0, 20.0], 8 * M),
            7 * M: _ma("s1", 7 * M, [10.0, 20.0], 8 * M),
            8 * M: _ma("s1", 8 * M, [20.0], 8 * M),
        }

        d.pipe(MA_IN, "s2", {"value": 4, "ts": 8 * M + 10 * S})    # another sensor: its own windows
        out = d.read_output(MA_OUT)
        assert {r.key for r in out} == {"s2"} and len(out) == 5
        assert _by_start(out)[8 * M] == _ma("s2", 8 * M, [4], 490 * S)

        d.pipe(MA_IN, "s1", {"value": 3.0, "ts": 9 * M})           # [3m, 8m) closed at 8m30s: no update for it
        assert _by_start(d.read_output(MA_OUT)) == {
            5 * M: _ma("s1", 5 * M, [10.0, 20.0, 3.0], 9 * M),
            6 * M: _ma("s1", 6 * M, [10.0, 20.0, 3.0], 9 * M),
            7 * M: _ma("s1", 7 * M, [10.0, 20.0, 3.0], 9 * M),
            8 * M: _ma("s1", 8 * M, [20.0, 3.0], 9 * M),
            9 * M: _ma("s1", 9 * M, [3.0], 9 * M),
        }
        assert d.metrics().get("late_records", 0) == 0

        d.pipe(MA_IN, "s1", {"value": 99.0, "ts": 3 * M + 59 * S})  # every window of 3m59s is closed
        assert d.read_output(MA_OUT) == []
        assert d.metrics()["late_records"] == 1

        d.pipe(MA_IN, "s1", {"value": 100.0, "ts": 4 * M})         # only [4m, 9m) is still open (closes 9m30s)
        assert _by_start(d.read_output(MA_OUT)) == {4 * M: _ma("s1", 4 * M, [10.0, 20.0, 100.0], 8 * M)}


def test_moving_average_near_epoch_has_only_windows_starting_at_or_after_zero(at_repo_root):
    with TopologyTestDriver(load_example("moving_average")) as d:
        d.pipe(MA_IN, "s", {"value": 1, "ts": 90 * S})
        assert sorted(r.value["window_start"] for r in d.read_output(MA_OUT)) == [0, M]


# --------------------------------------------------------------------------- from another directory

SMOKE = {
    "page_views": (PV_IN, PV_OUT, [("s", view("u", 10, 0)), ("s", view("u", 10, 70 * S))], 1),
    "user_sessions": (US_IN, US_OUT, [("u", view("u", 10, 0)), ("u", view("u", 10, 40 * M))], 1),
    "moving_average": (MA_IN, MA_OUT, [("s", {"value": 1, "ts": 7 * M})], 5),
}


@pytest.mark.parametrize("name", ["page_views", "user_sessions", "moving_average"])
def test_examples_run_from_another_directory(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    topic, out_topic, records, n_out = SMOKE[name]
    with TopologyTestDriver(load_example(name)) as d:
        for k, v in records:
            d.pipe(topic, k, v)
        assert len(d.read_output(out_topic)) == n_out


@pytest.mark.parametrize("name", ["page_views", "user_sessions", "moving_average"])
def test_examples_run_from_the_repo_root(name, at_repo_root):
    topic, out_topic, records, n_out = SMOKE[name]
    with TopologyTestDriver(load_example(name)) as d:
        for k, v in records:
            d.pipe(topic, k, v)
        assert len(d.read_output(out_topic)) == n_out


# --------------------------------------------------------------------------- orders enriched

def test_orders_enriched_joins_customer_product_and_payment(at_repo_root):
    with TopologyTestDriver(load_example("orders_enriched")) as d:
        d.pipe("customers", "c1", {"name": "Ann", "tier": "gold"}, timestamp=0)
        d.pipe("products", "p1", {"name": "pen", "price": 2}, timestamp=0)
        d.pipe("orders", "c1", {"order_id": "o1", "product_id": "p1", "qty": 3}, timestamp=1 * S)
        d.pipe("orders", "c2", {"order_id": "o2", "product_id": "p1", "qty": 1}, timestamp=2 * S)   # unknown customer
        d.pipe("orders", "c1", {"order_id": "o3", "product_id": "nope", "qty": 1}, timestamp=3 * S)  # unknown product
        assert d.read_output("orders-enriched") == []          # nothing paid, no window closed yet
        d.pipe("payments", "c1", {"order_id": "o1", "amount": 6}, timestamp=4 * S)
        (paid,) = d.read_output("orders-enriched")
        assert (paid.key, paid.timestamp) == ("o1", 4 * S)
        assert paid.value == {"order_id": "o1", "product_id": "p1", "qty": 3, "customer": "Ann", "tier": "gold",
                              "product": "pen", "total": 6, "customer_id": "c1", "paid": 6}
        # the customer's tier changes: later orders see the new row
        d.pipe("customers", "c1", {"name": "Ann", "tier": "platinum"}, timestamp=5 * S)
        d.pipe("orders", "c1", {"order_id": "o4", "product_id": "p1", "qty": 1}, timestamp=6 * S)
        # o2 (2 s) and o4 (6 s) stay unpaid: their windows close at stream time > t + 10 min + 1 min
        d.pipe("orders", "c1", {"order_id": "o5", "product_id": "p1", "qty": 1}, timestamp=2 * S + 11 * M)
        assert d.read_output("orders-enriched") == []
        d.pipe("orders", "c1", {"order_id": "o6", "product_id": "p1", "qty": 1}, timestamp=6 * S + 11 * M + 1)
        unpaid = {r.key: r for r in d.read_output("orders-enriched")}
        assert set(unpaid) == {"o2", "o4"}
        assert unpaid["o2"].value["customer"] is None and unpaid["o2"].value["paid"] is None
        assert unpaid["o2"].timestamp == 2 * S
        assert unpaid["o4"].value["tier"] == "platinum"
        assert d.state("customers")["c1"]["tier"] == "platinum"
        assert d.state("products") == {"p1": {"name": "pen", "price": 2}}


# --------------------------------------------------------------------------- rabbitmq orders (connectors)

def test_rabbitmq_orders_joins_dedupes_and_totals(at_repo_root):
    """The connector example under the driver: the ingest topic is piped as the bridge would write it (the
    RabbitMQ message_id in a header); the egress topic holds what the delivery sends to NATS."""
    ingest, egress = "rabbitmq-orders-orders-ingest", "rabbitmq-orders-enriched-egress"
    with TopologyTestDriver(load_example("rabbitmq_orders")) as d:
        d.pipe("customers", "c1", {"name": "Ada", "tier": "gold"}, timestamp=1)
        for mid, (cust, amount) in enumerate([("c1", 10), ("c2", 5), ("c1", 7)]):
            d.pipe(ingest, cust, {"order_id": mid, "customer_id": cust, "amount": amount}, timestamp=10 + mid,
                   headers=[("streamproc-message-id", f"m{mid}".encode())])
        d.pipe(ingest, "c1", {"order_id": 0, "customer_id": "c1", "amount": 10}, timestamp=20,
               headers=[("streamproc-message-id", b"m0")])          # RabbitMQ re-delivered m0
        out = [(r.key, r.value["customer"], r.value["tier"], r.value["amount"]) for r in d.read_output(egress)]
        assert out == [("c1", "Ada", "gold", 10), ("c2", None, "unknown", 5), ("c1", "Ada", "gold", 7)]
        assert d.state("spend") == {"c1": {"orders": 2, "total": 17}, "c2": {"orders": 1, "total": 5}}
        assert d.metrics()["deduplicated_records"] == 1
