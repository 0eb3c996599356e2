"""What every physical operator shares: its plan node, its task context, drop accounting and the
processing-error policy.

Drops (DESIGN section 7: no record is dropped silently). An operator that drops a record says
why with :meth:`TaskContext.drop`: ``reason`` is one of :data:`DROP_REASONS`, ``operator`` the
operator's label, and ``seq`` (the record's position in the input batch) lets the task name an
example record (topic, partition, offset) in the rate-limited summary. Drops are *pending* until
the task's checkpoint commits them (:meth:`TaskContext.commit_counts`); a rolled-back
checkpoint rebuilds its tasks, so its drops are never counted twice.

Processing errors. A user function that raises while processing a record gets the topology's
policy (``Topology(app_id, on_processing_error=...)``), applied by :meth:`TaskContext.processing_error`:
``fail`` raises :class:`ProcessingError` (the task stops), ``skip`` drops and counts the record,
``dead-letter`` also writes the input record's raw bytes to ``<app-id>-dlq`` with headers
``error``, ``operator``, ``topic``, ``partition``, ``offset``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import StreamprocError
from ..kinds import SOURCE_KINDS
from .batch import Batch

#: Why a record was dropped, and the name of its counter in ``TopologyTestDriver.metrics()``.
DROP_REASONS = {
    "late": "late_records",
    "none_key": "dropped_none_key",
    "skipped": "skipped_records",
    "dead_letter": "dead_lettered_records",
    "processing_error": "processing_errors",
    "duplicate": "deduplicated_records",       # only a source connector with dedupe= drops for this reason
}
#: Counters present only once counted (the others are always there, zero included).
_COUNTED_WHEN_SEEN = frozenset({"deduplicated_records"})


def counts_by_name(*drops: dict, zeros: bool = True) -> dict:
    """Drop counts ``{(reason, operator): n}`` (several dicts summed) as counters named by ``DROP_REASONS``
    (``late_records``...), summed over operators; ``zeros``: every counter present."""
    out = dict.fromkeys((n for n in DROP_REASONS.values() if n not in _COUNTED_WHEN_SEEN), 0) if zeros else {}
    for d in drops:
        for (reason, _), n in d.items():
            name = DROP_REASONS[reason]
            out[name] = out.get(name, 0) + n
    return out


class ProcessingError(StreamprocError):
    """A user function raised while processing a record. Names the operator and the record's key."""


@dataclass
class DeadLetter:
    """A record sent to ``<app-id>-dlq``: the input record's raw bytes, and why."""

    topic: str
    partition: int
    offset: int | None
    key: bytes | None
    value: bytes | None
    timestamp: int
    error: str
    operator: str = ""          # the operator that failed, "name (file:line)"; empty: deserialization


@dataclass
class TaskContext:
    """Per-task facts operators may use: identity, state, drop counters and dead-letter output."""

    task_id: str
    partition: int
    state: object                       # streamproc.state.TaskState
    metrics: dict = field(default_factory=dict)        # committed drops: (reason, operator) -> count
    pending: dict = field(default_factory=dict)        # drops of the open checkpoint
    examples: dict = field(default_factory=dict)       # (reason, operator) -> "topic[p]@offset" of one drop
    dead_letters: list = field(default_factory=list)   # DeadLetter records (dead-letter policy)
    outputs: list = field(default_factory=list)        # (topic, keys, values, timestamps[, headers[, partitions]])
    views: dict = field(default_factory=dict)          # table node id -> TableView (operators.table)
    globals: dict = field(default_factory=dict)        # global table name -> GlobalStore (lookups)
    on_processing_error: str = "fail"
    partition_count: object = None     # callable(topic) -> its number of partitions (the feeder knows)
    source: object = None      # the input being processed: (RawBatch, kept raw indices or None), or an object
                               # whose locate(seq) gives (RawBatch, index) (several inputs merged)

    def drop(self, reason: str, operator: str, n: int = 1, seq=None) -> None:
        """Count ``n`` records dropped by ``operator`` for ``reason`` (one of ``DROP_REASONS``)."""
        if not n:
            return
        key = (reason, operator)
        self.pending[key] = self.pending.get(key, 0) + n
        if key not in self.examples and seq is not None:
            pos = self.position(seq)
            if pos is not None:
                self.examples[key] = f"{pos[0]}[{pos[1]}]@{pos[2]}"

    def position(self, seq) -> tuple | None:
        """``(topic, partition, offset, raw index)`` of the input record at position ``seq`` of the batch
        being processed (None for records an aggregation produced)."""
        if self.source is None or seq is None:
            return None
        if not isinstance(self.source, tuple):          # several inputs merged into one batch
            found = self.source.locate(int(seq))
            if found is None:
                return None
            raw, i = found
        else:
            raw, kept = self.source
            i = int(seq)
            if kept is not None:
                if not 0 <= i < len(kept):
                    return None
                i = kept[i]
        if not 0 <= i < len(raw.keys):
            return None
        return raw.topic, raw.partition, (raw.offsets[i] if raw.offsets is not None else None), i

    def _raw_at(self, seq):
        return self.source[0] if isinstance(self.source, tuple) else self.source.locate(int(seq))[0]

    def commit_counts(self) -> dict:
        """The open checkpoint committed: its drops join the committed counts. Returns them."""
        pending, self.pending = self.pending, {}
        for k, n in pending.items():
            self.metrics[k] = self.metrics.get(k, 0) + n
        return pending

    def processing_error(self, operator: "Operator", exc: Exception, key, seq) -> None:
        """A user function raised on the record at ``seq``: apply the processing-error policy."""
        policy = self.on_processing_error
        err = exc if isinstance(exc, ProcessingError) else operator._fail(exc, key)
        pos = self.position(seq)
        if policy == "fail":
            if pos is not None:
                raise ProcessingError(f"{err}; the input record is {pos[0]}[{pos[1]}] at offset {pos[2]} "
                                      f"(on_processing_error='fail': skip or dead-letter such records with "
                                      f"Topology(..., on_processing_error='skip'|'dead-letter'))") from exc
            raise err
        label = operator.metric_label
        if policy == "dead-letter":
            self.drop("dead_letter", label, 1, seq)
            if pos is not None:
                raw = self._raw_at(seq)
                i = pos[3]
                self.dead_letters.append(DeadLetter(raw.topic, raw.partition, pos[2], raw.keys[i], raw.values[i],
                                                    int(raw.timestamps[i]), str(err), operator.where_label))
            else:               # a record an aggregation produced: no input record to keep, keep the key
                self.dead_letters.append(DeadLetter("", self.partition, None, repr(key).encode(), None, 0,
                                                    str(err), operator.where_label))
        else:
            self.drop("processing_error", label, 1, seq)


class Operator:
    """One node of a compiled sub-topology, run on batches.

    How the task drives an operator is the operator's to say, not the task's: :meth:`step` takes its
    parents' outputs of the batch, :attr:`runs_every_batch` says whether it runs without input,
    :meth:`nothing` and :meth:`combine` say what its output is when the processing-error policy had to
    process a batch record by record (``runtime/engine/task.py``, ``Task._process``).
    """

    #: Run at the end of every batch, also without input: stream time may have closed windows
    #: (aggregations, stream-stream joins).
    runs_every_batch = False

    def __init__(self, node, ctx: TaskContext):
        self.node = node
        self.ctx = ctx

    def process(self, batch):
        """Consume a batch, return the output batch (``branch``: a list of batches)."""
        raise NotImplementedError

    def step(self, inputs: list, process):
        """This operator's part of a batch: ``inputs`` are its parents' outputs (None: a parent produced
        nothing), ``process(op, batch)`` runs :meth:`process` under the processing-error policy. Returns the
        output, or None when there was nothing to do."""
        present = [b for b in inputs if b is not None]
        if self.runs_every_batch or any(len(b) for b in present):
            return process(self, Batch.concat(present))
        return None

    def nothing(self):
        """The output of a batch whose only record failed under ``skip``/``dead-letter``."""
        return Batch.empty()

    def combine(self, outs: list):
        """One output from the outputs of a batch processed again record by record (error policy)."""
        return Batch.concat([o for o in outs if o is not None])

    @property
    def metric_label(self) -> str:
        """The operator in metrics and logs: its name, else ``kind-id``; a source by its topic."""
        if self.node.kind in SOURCE_KINDS:
            return f"source {self.node.params['topic']}"
        return self.node.label

    @property
    def where_label(self) -> str:
        return f"{self.node.label} ({self.node.where})" if self.node.where else self.node.label

    def _drop(self, reason: str, b, mask=None, seqs=None) -> None:
        """Count the records of ``b`` dropped for ``reason`` (``mask``: the kept ones)."""
        if mask is not None:
            dropped = [s for s, keep in zip(b.seq.tolist(), mask) if not keep]
            self.ctx.drop(reason, self.metric_label, len(dropped), dropped[0] if dropped else None)

    def _fail(self, exc: Exception, key) -> ProcessingError:
        where = f" (defined at {self.node.where})" if self.node.where else ""
        return ProcessingError(
            f"{self.node.kind} {self.node.label}{where} failed on the record with key {key!r}: "
            f"{type(exc).__name__}: {exc}")
