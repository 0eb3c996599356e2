"""The topology `benchmarks/e2e.py` runs: 10 s tumbling count + sum per user, JSON in and out.

App id and output topic come from the environment so every benchmark run starts a fresh group.
"""
import os

from streamproc import Topology, agg, serdes, windows

topology = Topology(os.environ.get("E2E_APP_ID", "e2e-bench"))

(topology.stream(os.environ.get("E2E_INPUT", "e2e-input"), key=serdes.String(), value=serdes.Json(),
                 timestamp=lambda k, v, ts: v["ts"])
    .group_by_key()
    .window(windows.Tumbling("10s"))
    .aggregate(count=agg.count(), sum=agg.sum("amount"), emit="final", name="counts")
    .to(os.environ.get("E2E_OUTPUT", "e2e-out"), value=serdes.Json()))
