"""Fixture: a syntax error (the CLI must report this file and the marked line)."""
from streamproc import Topology

topology = Topology("bad-syntax")


def broken(:  # ERROR-LINE
    pass
