"""Fixture: imports fine but is invalid at plan time (two stores named 'counts')."""
from streamproc import Topology, serdes

topology = Topology("bad-dup")
views = topology.stream("views", key=serdes.String(), value=serdes.Json())
views.group_by_key().count(name="counts").to("out-1")  # FIRST-STORE
views.group_by_key().count(name="counts").to("out-2")  # SECOND-STORE
