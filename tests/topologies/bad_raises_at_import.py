"""Fixture: raises while being imported; the reported line is the line of the raise."""
from streamproc import Topology

topology = Topology("bad-raise")


def load_settings():
    raise RuntimeError("settings file is missing")  # ERROR-LINE


SETTINGS = load_settings()
