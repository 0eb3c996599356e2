"""Fixture: one Topology object bound to two names is not ambiguous."""
from streamproc import Topology, serdes

topology = Topology("aliased")
topology.stream("in", key=serdes.String(), value=serdes.Json()).to("out")
app = topology
