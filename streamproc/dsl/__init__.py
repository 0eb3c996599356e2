"""The user-facing builder: records a logical graph, knows nothing of Kafka or RocksDB."""
from .graph import Node
from .stream import GroupedStream, Stream, WindowedStream
from .topology import Topology

__all__ = ["Topology", "Stream", "GroupedStream", "WindowedStream", "Node"]
