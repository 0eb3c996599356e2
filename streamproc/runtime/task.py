"""``Task``: one sub-topology instance for one partition number.

A task owns its operators and its state. It knows nothing about where records come from:
the test driver and the Kafka worker both hand it ``RawBatch``es and take back what it
produced, then run the checkpoint (``state.changes()`` ... ``state.apply()``).
"""
from __future__ import annotations

from ..operators import Batch, RawBatch, TaskContext, make_operator
from ..state import Backend, TaskState


class Task:
    def __init__(self, subtopology, partition: int, backend: Backend):
        self.subtopology = subtopology
        self.partition = partition
        self.id = f"{subtopology.id}_{partition}"
        self.state = TaskState(backend, [s.name for s in subtopology.stores])
        self.ctx = TaskContext(self.id, partition, self.state)
        self._nodes = subtopology.nodes
        self._ops = {n.id: make_operator(n, self.ctx) for n in self._nodes}
        self._source_of = {n.params["topic"]: n.id for n in self._nodes
                           if n.kind in ("source", "repartition_source")}

    @property
    def input_topics(self) -> list[str]:
        return list(self._source_of)

    def process(self, raw: RawBatch) -> list[tuple]:
        """Run one input batch through the sub-topology.

        Returns the produced records as ``(topic, keys, values, timestamps)`` column groups
        (keys/values serialized). Dead-letter records collect in ``ctx.dead_letters``.
        """
        out: dict[int, object] = {self._source_of[raw.topic]: self._ops[self._source_of[raw.topic]].process(raw)}
        for n in self._nodes:
            if n.id in out or n.kind in ("source", "repartition_source"):
                continue
            if n.kind == "branch_out":
                outs = out.get(n.parents[0].id)
                if outs is not None:
                    out[n.id] = self._ops[n.id].process(outs)
                continue
            inputs = [out[p.id] for p in n.parents if p.id in out and out[p.id] is not None]
            if n.kind == "aggregate":
                # always run: stream time may have advanced and closed windows
                out[n.id] = self._ops[n.id].process(Batch.concat(inputs))
            elif inputs and any(len(b) for b in inputs):
                out[n.id] = self._ops[n.id].process(Batch.concat(inputs))
        produced, self.ctx.outputs = self.ctx.outputs, []
        return produced

    def operator(self, store_name: str):
        for n in self._nodes:
            if n.kind == "aggregate" and n.params["store"].name == store_name:
                return self._ops[n.id]
        raise KeyError(store_name)

    @property
    def metrics(self) -> dict:
        return self.ctx.metrics
