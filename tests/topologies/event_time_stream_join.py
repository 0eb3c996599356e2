"""A stream-stream join of two backlogs for tests/test_event_time_runtime.py (issue 16, KIP-695 ordering).

Factory ``event_time_stream_join.py:topology``; the app id comes from ``EVENT_TIME_APP`` (default
``event-time-stream-join``). Topics: ``<app>-orders`` (key order id, value ``{"id"}``), ``<app>-payments``
(key order id, value ``{"pid"}``), co-partitioned, and ``<app>-matches`` (key order id, value
``{"order", "pid"}``). An order at ``tl`` matches the payments at ``tl <= tr <= tl + 10 s``; grace 0, so
a record is late as soon as the task's stream time passed its own window: only a task that merges its
two inputs in timestamp order (and waits for an input not fetched yet) emits every match.
"""
import os

from streamproc import Topology, serdes, windows

S, J = serdes.String(), serdes.Json()
WINDOW = windows.JoinWindow(0, after="10s", grace=0)


def pair(order, payment):
    return {"order": order["id"], "pid": payment["pid"]}


def topology() -> Topology:
    app = os.environ.get("EVENT_TIME_APP", "event-time-stream-join")
    t = Topology(app)
    orders = t.stream(f"{app}-orders", key=S, value=J)
    payments = t.stream(f"{app}-payments", key=S, value=J)
    orders.join(payments, pair, window=WINDOW, name="paid").to(f"{app}-matches", key=S, value=J)
    return t
