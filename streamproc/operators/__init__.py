"""Physical operators: batch in, batch out. They see records and a state API, never Kafka."""
from __future__ import annotations

from .aggregate import TableAggregateOp, TimeWindowAggregateOp
from .base import Operator, ProcessingError, TaskContext
from .batch import Batch
from .io import DeadLetter, RawBatch, SinkOp, SourceOp
from .join import StreamGlobalJoinOp, StreamStreamJoinOp, StreamTableJoinOp, TableTableJoinOp
from .record_windows import SessionAggregateOp, SlidingAggregateOp
from .stateless import (BranchOp, BranchOutOp, FilterOp, FlatMapOp, MapOp, MapValuesOp, MergeOp, PeekOp,
                        SelectKeyOp)
from .table import TableFilterOp, TableMapValuesOp, TableSourceOp, TableView, ToStreamOp

_BY_KIND = {
    "source": SourceOp, "repartition_source": SourceOp,
    "sink": SinkOp, "repartition_sink": SinkOp,
    "map": MapOp, "map_values": MapValuesOp, "select_key": SelectKeyOp, "filter": FilterOp,
    "flat_map": FlatMapOp, "peek": PeekOp, "branch": BranchOp, "branch_out": BranchOutOp, "merge": MergeOp,
    "table_source": TableSourceOp, "table_filter": TableFilterOp, "table_map_values": TableMapValuesOp,
    "to_stream": ToStreamOp,
}
_JOIN_BY_KIND = {"stream_stream": StreamStreamJoinOp, "stream_table": StreamTableJoinOp,
                 "stream_global": StreamGlobalJoinOp, "table_table": TableTableJoinOp}
_AGGREGATE_BY_WINDOW = {None: TableAggregateOp, "tumbling": TimeWindowAggregateOp,
                        "hopping": TimeWindowAggregateOp, "sliding": SlidingAggregateOp,
                        "session": SessionAggregateOp}


def make_operator(node, ctx: TaskContext) -> Operator:
    """The physical operator for a plan node."""
    if node.kind == "aggregate":
        w = node.params["window"]
        return _AGGREGATE_BY_WINDOW[None if w is None else w.kind](node, ctx)
    if node.kind == "join":
        return _JOIN_BY_KIND[node.params["join"]](node, ctx)
    return _BY_KIND[node.kind](node, ctx)


__all__ = ["Batch", "RawBatch", "DeadLetter", "Operator", "TaskContext", "ProcessingError", "TableView",
           "make_operator"]
