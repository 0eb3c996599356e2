"""A valid topology for the CLI tests: counts per key, re-keyed by user (one repartition)."""
from streamproc import Topology, agg, serdes, windows

topology = Topology("good-counts")

(topology.stream("clicks", key=serdes.String(), value=serdes.Json())
    .group_by(lambda k, v: v["user"])
    .window(windows.Tumbling("1m"))
    .aggregate(clicks=agg.count(), name="clicks-per-user")
    .to("clicks-per-user", value=serdes.Json()))
