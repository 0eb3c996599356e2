"""Several internal topics for tests/test_startup_retries.py (instances of a new app started together).

Two re-keys (two repartition topics), a windowed aggregation and a table aggregation (two
changelogs: one ``compact,delete``, one ``compact``). The app id and topics come from the
environment so each round of the test is a new app: ``STARTUP_RACE_APP`` (the input topic is
``<app>-in``, the outputs ``<app>-windows`` and ``<app>-totals``).
"""
import os

from streamproc import Topology, agg, serdes, windows

APP = os.environ.get("STARTUP_RACE_APP", "startup-race")

topology = Topology(APP)
events = topology.stream(f"{APP}-in", key=serdes.String(), value=serdes.Json())

# re-key + windowed aggregation, emitting updates (a long grace: input produced beforehand is never late,
# whichever partition a worker reads first)
(events.group_by(lambda k, v: v["user"], name="by-user")
    .window(windows.Tumbling(10_000, grace=3_600_000))
    .aggregate(n=agg.count(), total=agg.sum("x"), emit="update", name="user-windows")
    .to(f"{APP}-windows", key=serdes.String(), value=serdes.Json()))

# re-key + table aggregation
(events.group_by(lambda k, v: v["region"], name="by-region")
    .aggregate(n=agg.count(), total=agg.sum("x"), name="region-totals")
    .to(f"{APP}-totals", key=serdes.String(), value=serdes.Json()))
