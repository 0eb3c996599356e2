"""User sessions: activity separated by more than 30 minutes of silence.

Input: the same Avro page views, keyed by user id. One final record per session with its
bounds, number of views, total time and the pages in order.
"""
from streamproc import Topology, agg, serdes, windows

topology = Topology("user-sessions")

(topology.stream(
    "page-views-by-user",
    key=serdes.String(),
    value=serdes.Avro("schemas/page_view.avsc"),
    timestamp=lambda key, value, ts: value["ts"],
)
    .group_by_key()
    .window(windows.Session("30m", grace="1m"))
    .aggregate(views=agg.count(), duration_ms=agg.sum("duration_ms"), pages=agg.collect("page"),
               emit="final", name="user-sessions")
    .to("user-sessions", value=serdes.Json()))
