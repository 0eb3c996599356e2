"""Re-keyed joins for tests/test_rekey_joins_runtime.py (issue 22: a repartition that meets a topic
in one task places each record like that topic).

The app id comes from the environment so each test is a new app: ``REKEY_APP`` (default
``rekey-joins``). Topics: ``<app>-orders`` (key order id, value ``{"id", "cust", "item", "amount"}``),
``<app>-payments`` (key order id, value ``{"pid", "order"}``), ``<app>-customers`` (a table, key
customer id, murmur2 like a Java producer), ``<app>-customers-crc`` (the same table written by
confluent-kafka's default partitioner: ``partitioner="crc32"``), ``<app>-products`` (a global table,
key item). One output topic per case, ``<app>-out-<case>``:

* ``a``: orders re-keyed by customer x the customers table (inner); then, in the same sub-topology,
  the results counted and summed per customer (store ``a-per-cust``, queried over HTTP);
* ``b``: orders re-keyed (to their own order id) x the payments stream read from its topic;
* ``c``: payments (read from their topic) x orders re-keyed: the re-keyed side on the right;
* ``d``: orders re-keyed x payments re-keyed (both by order id);
* ``e``: orders x the products global table with ``key=`` (the order's item);
* ``f``: orders re-keyed by customer x the crc32-partitioned customers table (inner), and its
  results aggregated like (a)'s (store ``f-per-cust``).

The stream-stream joins' windows (1 h each way, grace 1 h) hold every pair of the tests' input.
"""
import os

from streamproc import Topology, agg, serdes, windows

APP = os.environ.get("REKEY_APP", "rekey-joins")
S, J = serdes.String(), serdes.Json()
WINDOW = windows.JoinWindow("1h", grace="1h")

topology = Topology(APP)
orders = topology.stream(f"{APP}-orders", key=S, value=J)
payments = topology.stream(f"{APP}-payments", key=S, value=J)
customers = topology.table(f"{APP}-customers", key=S, value=J, name="customers")
customers_crc = topology.table(f"{APP}-customers-crc", key=S, value=J, name="customers-crc", partitioner="crc32")
products = topology.global_table(f"{APP}-products", key=S, value=J, name="products")


def by_cust(k, v):
    return v["cust"], v


def by_id(k, v):
    return v["id"], v


def by_order(k, v):
    return v["order"], v


def with_customer(o, c):
    return {"order": o["id"], "cust": c["cust"], "tier": c["tier"], "amount": o["amount"]}


def pair(o, p):
    return {"order": o["id"], "pid": p["pid"]}


def pair_rev(p, o):
    return {"order": o["id"], "pid": p["pid"]}


def with_price(o, p):
    return {"order": o["id"], "price": p["price"]}


def item_of(k, v):
    return v["item"]


def out(case):
    return f"{APP}-out-{case}"


# (a) re-keyed stream x table, and an aggregation over its results in the same sub-topology
a = orders.map(by_cust).join(customers, with_customer, name="a")
a.to(out("a"), key=S, value=J)
a.group_by_key().aggregate(n=agg.count(), total=agg.sum("amount"), name="a-per-cust")

# (b) re-keyed stream x stream read straight from its topic
orders.map(by_id).join(payments, pair, window=WINDOW, name="b").to(out("b"), key=S, value=J)

# (c) stream read from its topic x re-keyed stream
payments.join(orders.map(by_id), pair_rev, window=WINDOW, name="c").to(out("c"), key=S, value=J)

# (d) re-keyed x re-keyed
orders.map(by_id).join(payments.map(by_order), pair, window=WINDOW, name="d").to(out("d"), key=S, value=J)

# (e) stream x global table with key=
orders.join(products, with_price, key=item_of, name="e").to(out("e"), key=S, value=J)

# (f) re-keyed stream x a table written with confluent-kafka's default (crc32) partitioner
# and its results aggregated in the same sub-topology (store ``f-per-cust``, queried over HTTP)
f = orders.map(by_cust).join(customers_crc, with_customer, name="f")
f.to(out("f"), key=S, value=J)
f.group_by_key().aggregate(n=agg.count(), total=agg.sum("amount"), name="f-per-cust")
