"""Page views per user per minute.

Input: Avro page views keyed by session id. Re-keyed by user (a repartition topic), counted
and summed in 1-minute tumbling windows that accept records up to 10 s late; one final result
per user and minute, as JSON.
"""
from streamproc import Topology, agg, serdes, windows

topology = Topology("page-views")

views = topology.stream(
    "page-views",
    key=serdes.String(),
    value=serdes.Avro("schemas/page_view.avsc"),
    timestamp=lambda key, value, ts: value["ts"],
)
(views
    .filter(lambda k, v: v["duration_ms"] > 0)
    .group_by(lambda k, v: v["user_id"], name="views-by-user")
    .window(windows.Tumbling("1m", grace="10s"))
    .aggregate(views=agg.count(), seconds=agg.sum("duration_ms"), emit="final", name="views-per-user-1m")
    .to("page-views-per-user-1m", value=serdes.Json()))
