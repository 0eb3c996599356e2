"""streamproc: stateful stream processing on Apache Kafka, in Python."""
from . import agg, connectors, serdes, windows
from .dsl import Topology
from .errors import SerdeError, StreamprocError, TopologyError

__version__ = "0.1.0"
__all__ = ["Topology", "agg", "serdes", "windows", "StreamprocError", "TopologyError", "SerdeError"]
