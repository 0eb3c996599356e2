"""Re-keyed joins on a broker (issue 22, items 3 and 4; DESIGN.md sections 3 and 5).

A repartition that feeds a sub-topology reading a source topic places each record where that
topic's producers put its key (the key serialized with the topic's key serde, hashed with its
declared partitioner), so a re-keyed record meets the other side's records of the same key.

One app (``tests/topologies/rekey_joins.py``, one output topic per case) covers every case:
(a) re-keyed stream x table, with an aggregation of its results in the same sub-topology;
(b) re-keyed stream x a stream read from its topic; (c) the same with the re-keyed side on the
right; (d) re-keyed x re-keyed; (e) stream x global table with ``key=``; (f) re-keyed stream x a
table written by confluent-kafka's default partitioner (crc32), declared ``partitioner="crc32"``.
Two ``streamproc run`` instances (``--http-port``) share it; every input topic has 4 partitions and
is written like a Java client would (``murmur2_random``), except (f)'s table (the default
``consistent_random``). The expected results are computed here in plain Python from the input:

* no faults, exactly-once: every expected result arrives exactly once (read_committed), and the
  aggregations of (a)'s and (f)'s results (in the join's sub-topology, so behind the re-keying
  repartition) are read over HTTP from both instances for every customer (found, right value);
* one instance SIGKILLed mid-stream and restarted on a wiped state dir: under exactly-once every
  result exactly once and the aggregations exact (``real_kafka``: Tansu delivers records of aborted
  transactions to read_committed consumers); under at-least-once (any broker) every result at
  least once, nothing unexpected, and the aggregations at least the expected count per customer.

The no-fault test starts producing only once both instances run tasks, so no rebalance aborts a
transaction on Tansu either. Tables and the global table are written before the instances start,
each partition's last record alone in a batch (``produce_tracked``: Tansu's high watermark).
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import threading
import time

import pytest

import runtime_helpers as h
import test_http_queries as hq
from streamproc import serdes
from streamproc.partitioner import partition_for
from streamproc.runtime.instance.load import app_state_dir, process_id
from streamproc.state import codec, layout
from test_joins_runtime import T0, Tail, assert_same, produce_tracked, read_outputs

pytestmark = pytest.mark.broker

STR, JSON = serdes.String(), serdes.Json()
TOPOLOGY = os.path.join(h.HERE, "topologies", "rekey_joins.py")
PARTITIONS = 4
CASES = "abcdef"
STORES = ("a-per-cust", "f-per-cust")     # the same aggregation over (a) and over (f)
N_CUSTOMERS, N_PRODUCTS = 24, 10        # orders also name 2 customers and 2 products that do not exist


# ------------------------------------------------------------------------------------------ input

class Data:
    """The input (``[(key, value, ts)]`` per topic) and the results it must give."""

    def __init__(self, seed: int, n_orders: int):
        rnd = random.Random(seed)
        self.customers = [(f"c{i}", {"cust": f"c{i}", "tier": i % 3}, T0 - 60_000 + i) for i in range(N_CUSTOMERS)]
        self.products = [(f"p{i}", {"price": 10 + i}, T0 - 60_000 + i) for i in range(N_PRODUCTS)]
        self.orders, self.payments = [], []
        for i in range(n_orders):
            oid, ts = f"o{i}", T0 + 20 * i
            self.orders.append((oid, {"id": oid, "cust": f"c{rnd.randrange(N_CUSTOMERS + 2)}",
                                      "item": f"p{rnd.randrange(N_PRODUCTS + 2)}", "amount": rnd.randrange(1, 100)},
                                ts))
            for j in range(rnd.choice((0, 1, 1, 2))):       # a payment may come before its order (in the window)
                self.payments.append((oid, {"pid": f"{oid}-{j}", "order": oid}, ts + rnd.randrange(-500, 2000)))

    def chunks(self, size: int):
        """``(orders, their payments)`` by ``size`` orders, in order."""
        for i in range(0, len(self.orders), size):
            ids = {k for k, _, _ in self.orders[i:i + size]}
            yield self.orders[i:i + size], [p for p in self.payments if p[0] in ids]

    def expected(self) -> dict:
        """``{case: [(key, value, ts)]}`` and, under ``"per-cust"``, ``{customer: {"n", "total"}}``."""
        cust = {k: v for k, v, _ in self.customers}
        price = {k: v["price"] for k, v, _ in self.products}
        order = {k: (v, ts) for k, v, ts in self.orders}
        out: dict = {c: [] for c in CASES}
        per_cust: dict = {}
        for k, o, ts in self.orders:
            c = cust.get(o["cust"])
            if c is not None:
                r = (o["cust"], {"order": k, "cust": o["cust"], "tier": c["tier"], "amount": o["amount"]}, ts)
                out["a"].append(r)
                out["f"].append(r)
                agg = per_cust.setdefault(o["cust"], {"n": 0, "total": 0})
                agg["n"] += 1
                agg["total"] += o["amount"]
            if o["item"] in price:
                out["e"].append((k, {"order": k, "price": price[o["item"]]}, ts))
        for k, p, tp in self.payments:                      # every payment matches its order, in all three
            r = (k, {"order": k, "pid": p["pid"]}, max(tp, order[k][1]))
            for c in "bcd":
                out[c].append(r)
        out["per-cust"] = per_cust
        return out


def produce_crc32(bootstrap: str, topic: str, records) -> None:
    """``[(key, value, ts)]`` with confluent-kafka's default partitioner (``consistent_random``: crc32),
    each record alone in its batch (Tansu's high watermark of a multi-record batch is wrong)."""
    from confluent_kafka import Producer

    placed: list = []
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "enable.idempotence": True})
    for k, v, ts in records:
        p.produce(topic, JSON.serialize(v), STR.serialize(k), timestamp=ts,
                  on_delivery=lambda err, m: placed.append((err, m.key(), m.partition())))
        assert p.flush(30) == 0, "test records not delivered"
    assert all(err is None and part == partition_for(kb, PARTITIONS, "crc32") for err, kb, part in placed), \
        f"confluent-kafka's default partitioner is not crc32: {placed}"


def test_input_can_see_a_misplaced_repartition():
    """The keys of the input land in other partitions under the internal codec's bytes (the old
    placement of a repartition topic) than under their topic's placement, and crc32 differs from
    murmur2: a join that lost the placement would miss many results."""
    keys = [f"c{i}" for i in range(N_CUSTOMERS)] + [f"o{i}" for i in range(100)]
    moved = [k for k in keys if partition_for(codec.encode_key(k), PARTITIONS)
             != partition_for(STR.serialize(k), PARTITIONS)]
    assert len(moved) > len(keys) / 2
    custs = [f"c{i}" for i in range(N_CUSTOMERS)]
    assert sum(partition_for(STR.serialize(k), PARTITIONS, "crc32") != partition_for(STR.serialize(k), PARTITIONS)
               for k in custs) > len(custs) / 2


# ------------------------------------------------------------------------------------------ the app

class App:
    """Topics (4 partitions), tables written, and ``streamproc run`` instances of one new app."""

    def __init__(self, kafka, tmp_path, monkeypatch, guarantee: str):
        from streamproc.kafka import create_topics, make_admin

        self.bootstrap, self.kind = kafka
        self.tmp_path, self.guarantee = tmp_path, guarantee
        self.app = h.unique("rk")
        monkeypatch.setenv("REKEY_APP", self.app)          # read by the topology module the instances load
        t = {r: f"{self.app}-{r}" for r in ("orders", "payments", "customers", "customers-crc", "products")}
        self.topics = t
        self.outputs = {c: f"{self.app}-out-{c}" for c in CASES}
        h.create(self.bootstrap, [t["orders"], t["payments"], *self.outputs.values()], PARTITIONS)
        create_topics(make_admin(self.bootstrap), [t["customers"], t["customers-crc"], t["products"]], PARTITIONS,
                      config={"cleanup.policy": "compact"})
        self.instances: list[hq.Instance] = []

    def write_tables(self, data: Data) -> None:
        produce_tracked(self.bootstrap, self.topics["customers"], data.customers, PARTITIONS)
        produce_crc32(self.bootstrap, self.topics["customers-crc"], data.customers)
        produce_tracked(self.bootstrap, self.topics["products"], data.products, PARTITIONS)

    def produce(self, orders, payments) -> None:
        h.produce(self.bootstrap, self.topics["orders"], orders, key_serde=STR, value_serde=JSON)
        h.produce(self.bootstrap, self.topics["payments"], payments, key_serde=STR, value_serde=JSON)

    def start(self, name: str, identity: str | None = None) -> hq.Instance:
        """A new instance on state dir ``state-<name>`` (``identity``: the process id it takes)."""
        inst = hq.Instance(name, TOPOLOGY, self.bootstrap, self.tmp_path)
        inst.cmd += ["--guarantee", self.guarantee, "--workers", "1"]
        if self.guarantee == "at-least-once":
            inst.cmd += ["--commit-interval", "200"]
        if identity is not None:
            os.makedirs(app_state_dir(self.state_dir(inst), self.app), exist_ok=True)
            with open(layout.process_id_path(self.state_dir(inst), self.app), "w") as f:
                f.write(identity + "\n")
        self.instances.append(inst.start())
        return inst

    def state_dir(self, inst: hq.Instance) -> str:
        return inst.cmd[inst.cmd.index("--state-dir") + 1]

    def running(self) -> list[hq.Instance]:
        return [i for i in self.instances if i.alive()]

    def check_alive(self) -> None:
        dead = [i for i in self.instances if i.proc is not None and i.proc.poll() not in (None, -signal.SIGKILL)]
        assert not dead, f"instance(s) exited: {[(i.name, i.proc.returncode) for i in dead]}\n{self.logs()}"

    def wait_ready(self, timeout: float = 60) -> None:
        """Until every running instance runs tasks (so both hold partitions: the group settled)."""
        def ready():
            self.check_alive()
            try:
                return all(hq.get(f"{i.url}/ready", timeout=2).status == 200 for i in self.running())
            except OSError:
                return False
        try:
            h.wait_until(ready, timeout, interval=0.2, what="every instance to run tasks")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.logs()}") from None

    def kill(self, inst: hq.Instance) -> None:
        os.killpg(inst.proc.pid, signal.SIGKILL)
        inst.proc.wait(10)

    def close(self) -> None:
        for i in self.instances:
            if i.alive():
                i.proc.send_signal(signal.SIGTERM)
        for i in self.instances:
            i.stop()

    def logs(self) -> str:
        return "\n".join(i.log_tail() for i in self.instances)

    # -- results
    def wait_results(self, tail: Tail, want: dict, timeout: float = 60) -> None:
        """Until every expected result of every case arrived (at least once)."""
        got: dict = {}

        def done():
            self.check_alive()
            got.update(tail.poll())
            return all(not (h.multiset(want[c]) - h.multiset(got[t])) for c, t in self.outputs.items())
        try:
            h.wait_until(done, timeout, interval=0.2, what="every expected result")
        except AssertionError as e:
            raise AssertionError(f"{e}: " + "; ".join(
                f"({c}) {sum((h.multiset(want[c]) - h.multiset(got[t])).values())} of {len(want[c])} missing"
                for c, t in self.outputs.items()) + f"\n{self.logs()}") from None

    def read_results(self) -> dict:
        """``{case: [(key, value, ts)]}``, every committed output record."""
        got = read_outputs(self.bootstrap, list(self.outputs.values()), quiet_s=1.5)
        return {c: got[t] for c, t in self.outputs.items()}

    def query_mismatch(self, want: dict, exact: bool) -> str | None:
        """None when every running instance answers ``GET /stores/<store>/<key>`` (redirects followed)
        for both stores and every customer as expected: a customer without results is not found."""
        for inst, store in ((i, s) for i in self.running() for s in STORES):
            for key in [f"c{i}" for i in range(N_CUSTOMERS + 2)]:
                try:
                    a = hq.get(f"{inst.url}/stores/{store}/{hq.key_segment(key)}")
                except OSError as e:
                    return f"{inst.name} {store}/{key}: {e}"
                exp = want.get(key)
                if exp is None:
                    if a.status != 404:
                        return f"{inst.name} {store}/{key}: {a} (expected 404: no order of it joined)"
                elif a.status != 200 or a.json is None:
                    return f"{inst.name} {store}/{key}: {a} (expected {exp})"
                else:
                    v = a.json["value"]
                    ok = v == exp if exact else (isinstance(v, dict) and v.get("n", 0) >= exp["n"])
                    if not ok:
                        return f"{inst.name} {store}/{key}: {v} (expected {'' if exact else 'at least '}{exp})"
        return None

    def check_queries(self, want: dict, exact: bool, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while True:
            why = self.query_mismatch(want, exact)
            if why is None:
                return
            if time.monotonic() > end:
                raise AssertionError(f"interactive queries: {why}\n{self.logs()}")
            self.check_alive()
            time.sleep(0.3)


@pytest.fixture
def make_app(kafka, tmp_path, monkeypatch):
    apps: list[App] = []

    def make(guarantee: str) -> App:
        apps.append(App(kafka, tmp_path, monkeypatch, guarantee))
        return apps[-1]
    yield make
    for a in apps:
        a.close()


# ------------------------------------------------------------------------------------------ tests

def test_rekeyed_joins_every_result_exactly_once_and_queryable(make_app):
    """No faults, exactly-once, 2 instances: every expected result of (a)-(f) once; the aggregations
    over (a) and (f) found for every customer on both instances with the right count and total."""
    app = make_app("exactly-once")
    data = Data(seed=22, n_orders=240)
    want = data.expected()
    assert all(len(want[c]) > 150 for c in CASES), {c: len(want[c]) for c in CASES}
    app.write_tables(data)
    app.start("i0")
    app.start("i1")
    app.wait_ready()
    with Tail(app.bootstrap, list(app.outputs.values())) as tail:
        for orders, payments in data.chunks(60):
            app.produce(orders, payments)
        app.wait_results(tail, want)
    got = app.read_results()
    for c in CASES:
        assert_same(got[c], want[c], f"case ({c})")
    app.check_queries(want["per-cust"], exact=True)
    # both instances hold part of each store: each answers some customers itself and redirects others
    for inst, store in ((i, s) for i in app.running() for s in STORES):
        statuses = {hq.get(f"{inst.url}/stores/{store}/{k}", follow=False).status for k in want["per-cust"]}
        assert statuses == {200, 307}, f"{inst.name} {store}: {statuses}"


@pytest.mark.parametrize("guarantee", [
    pytest.param("exactly-once", marks=pytest.mark.real_kafka(
        "Tansu delivers records of aborted transactions to read_committed consumers")),
    "at-least-once",
])
def test_rekeyed_joins_through_a_sigkill_and_a_wiped_state_dir(make_app, guarantee):
    """Orders and payments stream in while one of two instances is SIGKILLed (with some results
    out), its state dir wiped and a new instance started on it: exactly-once, every expected result
    exactly once and the aggregations exact on both instances; at-least-once, every expected result
    at least once, nothing else, and every customer's counts at least the expected ones.

    The restarted instance has a new identity (a new process id), except on Tansu, which never
    assigns partitions to a new static member of a group another static member left: there it keeps
    the process id (the stores are wiped either way: what matters is the restore)."""
    exact = guarantee == "exactly-once"
    app = make_app(guarantee)
    data = Data(seed=23, n_orders=240)
    want = data.expected()
    app.write_tables(data)
    i0 = app.start("i0")
    victim = app.start("i1")
    app.wait_ready()
    chunks = list(data.chunks(10))
    sent = threading.Event()
    errors: list = []

    def feeder():
        try:
            for orders, payments in chunks:
                app.produce(orders, payments)
                time.sleep(0.1)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        finally:
            sent.set()

    with Tail(app.bootstrap, list(app.outputs.values())) as tail:
        t = threading.Thread(target=feeder, daemon=True, name="feeder")
        t.start()
        h.wait_until(lambda: app.check_alive() or sum(map(len, tail.poll().values())) >= 150, 60,
                     what="some results before the kill")
        assert not sent.is_set(), "the input was all sent before the kill: not mid-stream"
        identity = process_id(app.state_dir(victim), app.app) if app.kind == "tansu" else None
        app.kill(victim)
        shutil.rmtree(app.state_dir(victim))
        app.start("i1-wiped", identity)
        t.join(120)
        assert not t.is_alive() and not errors, errors
        app.wait_results(tail, want, timeout=120)
    assert i0.alive()
    got = app.read_results()
    for c in CASES:
        if exact:
            assert_same(got[c], want[c], f"case ({c}) across a SIGKILL and a wiped state dir")
        else:
            extra = set(h.multiset(got[c])) - set(h.multiset(want[c]))
            assert not extra, f"case ({c}): {len(extra)} unexpected results, e.g. {list(extra)[:3]}"
    app.wait_ready()
    app.check_queries(want["per-cust"], exact=exact)
