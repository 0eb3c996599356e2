"""Fixture: the DSL rejects a bad duration while the module is imported."""
from streamproc import Topology, serdes, windows

topology = Topology("bad-dsl")
(topology.stream("in", key=serdes.String(), value=serdes.Json())
    .group_by_key()
    .window(windows.Tumbling("10x"))  # ERROR-LINE
    .count())
