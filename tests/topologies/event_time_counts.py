"""Re-key + 1-minute tumbling count (emit="final", 10 s grace) for tests/test_event_time_runtime.py
(issue 16: event time through repartition topics).

A factory (``event_time_counts.py:topology``) so that each test gets an app of its own: the app id
comes from ``EVENT_TIME_APP`` when the factory is called (default ``event-time-counts``). Topics:
``<app>-views`` (key page, value ``{"user", "page", "id"}``, any partition count) and ``<app>-counts``
(key user, value ``{"window_start", "window_end", "n"}``).

``EVENT_TIME_DELAY_MS`` (default 0): the re-keying function sleeps that long per record, so that a test
can kill the app in the middle of a backlog it would otherwise re-key in a fraction of a second.
"""
import os
import time

from streamproc import Topology, agg, serdes, windows

S, J = serdes.String(), serdes.Json()
WINDOW = windows.Tumbling("1m", grace="10s")


def user_of(k, v):
    return v["user"]


def slow_user_of(delay_s: float):
    def user_of_slowly(k, v):
        time.sleep(delay_s)
        return v["user"]
    return user_of_slowly


def topology() -> Topology:
    app = os.environ.get("EVENT_TIME_APP", "event-time-counts")
    delay_ms = float(os.environ.get("EVENT_TIME_DELAY_MS", "0"))
    t = Topology(app)
    (t.stream(f"{app}-views", key=S, value=J)
        .group_by(slow_user_of(delay_ms / 1000) if delay_ms else user_of, name="by-user")
        .window(WINDOW)
        .aggregate(n=agg.count(), emit="final", name="per-user-minute")
        .to(f"{app}-counts", key=S, value=J))
    return t
