"""The topology `benchmarks/e2e.py` runs: 10 s tumbling count + sum per user, JSON in and out.

App id and output topic come from the environment so every benchmark run starts a fresh group.
"""
import os

from streamproc import Topology, agg, serdes, windows

topology = Topology(os.environ.get("E2E_APP_ID", "e2e-bench"))

_events = topology.stream(os.environ.get("E2E_INPUT", "e2e-input"), key=serdes.String(), value=serdes.Json(),
                          timestamp=lambda k, v, ts: v["ts"])
# E2E_REKEY=1: the same aggregation behind a repartition topic (re-keyed to the same user), to measure
# what a repartition with its watermarks costs
_grouped = (_events.group_by(lambda k, v: k, name="by-user") if os.environ.get("E2E_REKEY")
            else _events.group_by_key())
(_grouped
    .window(windows.Tumbling("10s"))
    .aggregate(count=agg.count(), sum=agg.sum("amount"), emit="final", name="counts")
    .to(os.environ.get("E2E_OUTPUT", "e2e-out"), value=serdes.Json()))
