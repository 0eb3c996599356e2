"""Physical operators: batch in, batch out. They see records and a state API, never Kafka."""
from __future__ import annotations

from ..kinds import JoinKind, NodeKind
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
    NodeKind.SOURCE: SourceOp, NodeKind.REPARTITION_SOURCE: SourceOp,
    NodeKind.SINK: SinkOp, NodeKind.REPARTITION_SINK: SinkOp,
    NodeKind.MAP: MapOp, NodeKind.MAP_VALUES: MapValuesOp, NodeKind.SELECT_KEY: SelectKeyOp,
    NodeKind.FILTER: FilterOp, NodeKind.FLAT_MAP: FlatMapOp, NodeKind.PEEK: PeekOp, NodeKind.BRANCH: BranchOp,
    NodeKind.BRANCH_OUT: BranchOutOp, NodeKind.MERGE: MergeOp,
    NodeKind.TABLE_SOURCE: TableSourceOp, NodeKind.TABLE_FILTER: TableFilterOp,
    NodeKind.TABLE_MAP_VALUES: TableMapValuesOp, NodeKind.TO_STREAM: ToStreamOp,
}
_JOIN_BY_KIND = {JoinKind.STREAM_STREAM: StreamStreamJoinOp, JoinKind.STREAM_TABLE: StreamTableJoinOp,
                 JoinKind.STREAM_GLOBAL: StreamGlobalJoinOp, JoinKind.TABLE_TABLE: TableTableJoinOp}
# by the window's kind (``WindowSpec.kind``; None: not windowed)
_AGGREGATE_BY_WINDOW = {None: TableAggregateOp, "tumbling": TimeWindowAggregateOp,
                        "hopping": TimeWindowAggregateOp, "sliding": SlidingAggregateOp,
                        "session": SessionAggregateOp}


def make_operator(node, ctx: TaskContext) -> Operator:
    """The physical operator for a plan node."""
    if node.kind == NodeKind.AGGREGATE:
        w = node.params["window"]
        return _AGGREGATE_BY_WINDOW[None if w is None else w.kind](node, ctx)
    if node.kind == NodeKind.JOIN:
        return _JOIN_BY_KIND[node.params["join"]](node, ctx)
    return _BY_KIND[node.kind](node, ctx)


__all__ = ["Batch", "RawBatch", "DeadLetter", "Operator", "TaskContext", "ProcessingError", "TableView",
           "make_operator"]
