"""Restore scheduling (DESIGN section 5, "On assignment"): :class:`RestoreSchedule`.

A stateful task assigned to a worker restores its stores from their changelogs
(``changelog/restore.py``, the restore loop) before it runs, its input partitions paused
meanwhile (``engine/lifecycle.py``: the task is ``restoring``). The worker starts the restores of
newly assigned tasks between two batches, outside any open transaction (starting one reads end
offsets), steps them, and resumes the inputs of each task whose restore finished.
"""
from __future__ import annotations

from confluent_kafka import KafkaException, TopicPartition

from ...errors import BrokerError
from ..changelog.restore import table_ends, table_partitions
from .errors import kafka_error


class RestoreSchedule:
    """The restores of worker ``worker_id``'s tasks (``tasks``: its ``TaskManager``) not started yet, and the
    step that starts them and reports those that finished. ``timeout_s``: the bound of a blocking call."""

    def __init__(self, tasks, worker_id: str, timeout_s: float):
        self._tasks = tasks
        self._worker_id = worker_id
        self._timeout_s = timeout_s
        self._waiting: list = []                  # ManagedTasks whose restore is not started yet

    @property
    def waiting(self) -> bool:
        return bool(self._waiting)

    def assigned(self, mts: list) -> None:
        """``mts`` (``ManagedTask``s) must restore before they run."""
        self._waiting += mts

    def revoked(self, keys) -> None:
        self._waiting = [mt for mt in self._waiting if mt.key not in keys]

    def clear(self) -> None:
        self._waiting.clear()

    def start(self, restorer, consumer) -> None:
        """Start the restore of every waiting task still assigned (``consumer``: the group's, for the offsets
        where the restore of a table read from a topic ends)."""
        while self._waiting:
            mt = self._waiting.pop(0)
            if self._tasks.get(mt.key) is mt:        # not revoked meanwhile
                restorer.start(mt.key, mt.backend, mt.subtopology.stores, mt.partition,
                               self._table_ends(mt, consumer))

    def finished(self, restorer):
        """Step the restores; yields each ``ManagedTask`` whose restore finished, built (running)."""
        for key in restorer.step(0.01 if self._tasks.running_tasks() else 0.05):
            mt = self._tasks.restored(key)
            if mt is not None:
                yield mt

    def _table_ends(self, mt, consumer) -> dict:
        """Where the restore of each table read from a topic ends (``changelog/restore.table_ends``), from the
        group's committed offsets of those topics' partitions."""
        tps = [TopicPartition(t, p) for t, p in table_partitions(mt.subtopology.stores, mt.partition)]
        if not tps:
            return {}
        try:
            committed = consumer.committed(tps, timeout=self._timeout_s)
        except KafkaException as e:
            err = kafka_error(e)
            raise BrokerError(f"worker {self._worker_id} cannot read the committed offsets of its tables' topics: "
                              f"{err.str() if err else e}") from None
        return table_ends(mt.subtopology.stores, mt.partition,
                          {(tp.topic, tp.partition): tp.offset for tp in committed})
