"""5-minute moving average of each sensor, advancing every minute.

Input: JSON sensor readings keyed by sensor id. Hopping windows of 5 minutes every minute;
every batch emits the current average, min and max of each window it changed.
"""
from streamproc import Topology, agg, serdes, windows

topology = Topology("sensor-averages")

(topology.stream(
    "sensor-readings",
    key=serdes.String(),
    value=serdes.Json(),
    timestamp=lambda key, value, ts: value["ts"],
)
    .group_by_key()
    .window(windows.Hopping("5m", advance="1m", grace="30s"))
    .aggregate(avg=agg.mean("value"), low=agg.min("value"), high=agg.max("value"), n=agg.count(),
               emit="update", name="sensor-averages-5m")
    .to("sensor-averages-5m", value=serdes.Json()))
