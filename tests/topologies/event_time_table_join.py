"""A stream-table join of two backlogs for tests/test_event_time_runtime.py (issue 16, KIP-695 ordering).

Factory ``event_time_table_join.py:topology``; the app id comes from ``EVENT_TIME_APP`` (default
``event-time-table-join``). Topics: ``<app>-customers`` (a table: key customer id, value ``{"cust",
"v"}``, a version; a tombstone deletes), ``<app>-payments`` (key customer id, value ``{"pid"}``),
co-partitioned, and ``<app>-enriched`` (key customer id, value ``{"pid", "v"}``; ``v`` None: no row).
Each payment must see the customer's row as of its own timestamp: the task applies table updates and
joins payments in timestamp order, and does not run ahead of a table partition it has not fetched yet.
"""
import os

from streamproc import Topology, serdes

S, J = serdes.String(), serdes.Json()


def enrich(payment, customer):
    return {"pid": payment["pid"], "v": None if customer is None else customer["v"]}


def topology() -> Topology:
    app = os.environ.get("EVENT_TIME_APP", "event-time-table-join")
    t = Topology(app)
    payments = t.stream(f"{app}-payments", key=S, value=J)
    customers = t.table(f"{app}-customers", key=S, value=J, name="customers")
    payments.join(customers, enrich, how="left", name="enrich").to(f"{app}-enriched", key=S, value=J)
    return t
