"""The user-facing builder: records a logical graph, knows nothing of Kafka or RocksDB."""
from .graph import Node
from .stream import GroupedStream, Stream, WindowedStream
from .table import GlobalTable, Table
from .topology import Topology

__all__ = ["Topology", "Stream", "Table", "GlobalTable", "GroupedStream", "WindowedStream", "Node"]
