"""Two repartitions in a row for tests/test_event_time_runtime.py (issue 16): a windowed aggregation of
a re-keyed table's stream.

Factory ``event_time_two_repartitions.py:topology``; the app id comes from ``EVENT_TIME_APP`` (default
``event-time-two-repartitions``). ``<app>-views`` (as in ``event_time_counts.py``) is re-keyed by view
id (repartition 1) into a table of each view's user (``agg.last``: one change per view, since view ids
are unique); the table's stream of changes is re-keyed by user (repartition 2) and counted in 1-minute
tumbling windows (emit final, 10 s grace) into ``<app>-counts``: the same results as
``event_time_counts.py``, with time crossing two repartition topics.
"""
import os

from streamproc import Topology, agg, serdes, windows

S, J = serdes.String(), serdes.Json()
WINDOW = windows.Tumbling("1m", grace="10s")


def view_id(k, v):
    return v["id"]


def user_of(k, v):
    return v["user"]


def topology() -> Topology:
    app = os.environ.get("EVENT_TIME_APP", "event-time-two-repartitions")
    t = Topology(app)
    (t.stream(f"{app}-views", key=S, value=J)
        .group_by(view_id, name="by-view")
        .aggregate(user=agg.last("user"), name="view-user")
        .to_stream()
        .group_by(user_of, name="by-user")
        .window(WINDOW)
        .aggregate(n=agg.count(), emit="final", name="per-user-minute")
        .to(f"{app}-counts", key=S, value=J))
    return t
