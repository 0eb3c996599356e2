"""What every physical operator shares: its plan node, its task context, and error wrapping."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import StreamprocError


class ProcessingError(StreamprocError):
    """A user function raised while processing a record. Names the operator and the record's key."""


@dataclass
class TaskContext:
    """Per-task facts operators may use: identity, state, counters and dead-letter output."""

    task_id: str
    partition: int
    state: object                       # streamproc.state.TaskState
    metrics: dict = field(default_factory=dict)
    dead_letters: list = field(default_factory=list)   # DeadLetter records (dead-letter policy)
    outputs: list = field(default_factory=list)        # (topic, key_bytes, value_bytes, timestamps)
    views: dict = field(default_factory=dict)          # table node id -> TableView (operators.table)
    globals: dict = field(default_factory=dict)        # global table name -> GlobalStore (lookups)

    def count(self, name: str, n: int = 1) -> None:
        if n:
            self.metrics[name] = self.metrics.get(name, 0) + n


class Operator:
    """One node of a compiled sub-topology, run on batches."""

    def __init__(self, node, ctx: TaskContext):
        self.node = node
        self.ctx = ctx

    def process(self, batch):
        """Consume a batch, return the output batch (``branch``: a list of batches)."""
        raise NotImplementedError

    def _fail(self, exc: Exception, key) -> ProcessingError:
        where = f" (defined at {self.node.where})" if self.node.where else ""
        return ProcessingError(
            f"{self.node.kind} {self.node.label}{where} failed on the record with key {key!r}: "
            f"{type(exc).__name__}: {exc}")
