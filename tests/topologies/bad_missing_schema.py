"""Fixture: an Avro serde whose schema file does not exist (fails at import)."""
from streamproc import Topology, serdes

topology = Topology("bad-schema")
topology.stream("in", value=serdes.Avro("no/such/schema.avsc")).to("out")  # ERROR-LINE
