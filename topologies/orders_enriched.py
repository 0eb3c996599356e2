"""Orders enriched with their customer, their product and their payment.

Inputs (JSON, keyed by customer id unless said otherwise):

* ``orders``: ``{"order_id", "product_id", "qty"}``;
* ``customers`` (compacted): the latest ``{"name", "tier"}`` per customer - a table;
* ``products`` (compacted, keyed by product id): ``{"name", "price"}`` - a global table, so
  orders need not be partitioned by product;
* ``payments``: ``{"order_id", "amount"}``, keyed by customer like the orders.

Each order is joined with its customer's current row (left join: an unknown customer gives
``"tier": None``), then with its product (inner: an order of an unknown product is dropped),
then re-keyed by order id and joined with its payment within 10 minutes either way (left:
an order unpaid after 10 minutes + 1 minute of grace goes out with ``"paid": None``).
"""
from streamproc import Topology, serdes, windows

topology = Topology("orders-enriched")

orders = topology.stream("orders", key=serdes.String(), value=serdes.Json())
customers = topology.table("customers", key=serdes.String(), value=serdes.Json(), name="customers")
products = topology.global_table("products", key=serdes.String(), value=serdes.Json(), name="products")
payments = topology.stream("payments", key=serdes.String(), value=serdes.Json())

enriched = (orders
    .join(customers, lambda o, c: {**o, "customer": c and c["name"], "tier": c and c["tier"]}, how="left")
    .join(products, lambda o, p: {**o, "product": p["name"], "total": p["price"] * o["qty"]},
          key=lambda customer_id, o: o["product_id"]))

by_order = enriched.map(lambda customer_id, o: (o["order_id"], {**o, "customer_id": customer_id}))
paid = by_order.join(
    payments.map(lambda customer_id, p: (p["order_id"], p)),
    lambda o, p: {**o, "paid": p and p["amount"]},
    how="left", window=windows.JoinWindow("10m", grace="1m"), name="order-payment")
paid.to("orders-enriched", key=serdes.String(), value=serdes.Json())
