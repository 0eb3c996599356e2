"""Fixture: defines no Topology object (only imports the class)."""
from streamproc import Topology  # noqa: F401

NAME = "not a topology"
