"""Fixture: a Topology with no input stream (invalid at plan time)."""
from streamproc import Topology

topology = Topology("bad-empty")
