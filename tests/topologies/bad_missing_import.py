"""Fixture: imports a module that does not exist."""
from streamproc import Topology
import streamproc_no_such_module_for_tests  # noqa: F401  # ERROR-LINE

topology = Topology("bad-import")
