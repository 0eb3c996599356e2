"""Fixture: two Topology objects; the CLI needs two_topologies.py:<name> to pick one."""
from streamproc import Topology, serdes

first = Topology("first-app")
first.stream("first-in", key=serdes.String(), value=serdes.Json()).to("first-out")

second = Topology("second-app")
second.stream("second-in", key=serdes.String(), value=serdes.Json()).group_by_key().count(name="second-counts") \
    .to("second-out")
