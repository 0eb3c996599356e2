"""THE task lifecycle of a worker: which tasks it has, in which phase, with which backend.

A task is one sub-topology for one partition number, keyed ``(subtopology id, partition)``.
It moves through explicit phases; every move goes through :meth:`TaskManager._move`, which
refuses an illegal one::

    assigned --> restoring --> running --> closed
        |            |            |
        |            +--> closed  +--> suspended --> restoring | running | closed
        +--> running (stateless)       (memory backend kept)

* ``assigned``: the worker was given one of the task's input partitions; its backend is open.
* ``restoring``: a stateful task whose stores are being rebuilt from their changelogs; its input
  partitions are paused and it processes nothing.
* ``running``: built (operators over the restored state); the loop feeds it records.
* ``suspended``: revoked, its in-memory state kept (``MemoryBackend`` only: a state that cannot be
  rebuilt cheaply from disk); reassigned, it restores only what it missed.
* ``closed``: revoked or lost; its backend is closed and the task is gone from every map, so no
  one can reach a closed backend: callers get tasks only through this manager, by phase.

The manager owns the task map, the input partitions of each task and the backends. It knows
nothing about Kafka clients: the worker turns rebalance callbacks into :meth:`assign` /
:meth:`revoke` and restore results into :meth:`restored`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum

from .task import Task

log = logging.getLogger("streamproc.tasks")


class Phase(Enum):
    ASSIGNED = "assigned"
    RESTORING = "restoring"
    RUNNING = "running"
    SUSPENDED = "suspended"
    CLOSED = "closed"


_LEGAL = {
    Phase.ASSIGNED: {Phase.RESTORING, Phase.RUNNING, Phase.CLOSED},
    Phase.RESTORING: {Phase.RUNNING, Phase.CLOSED, Phase.SUSPENDED},
    Phase.RUNNING: {Phase.RUNNING, Phase.SUSPENDED, Phase.CLOSED},        # running -> running: rebuilt
    Phase.SUSPENDED: {Phase.RESTORING, Phase.RUNNING, Phase.CLOSED},
    Phase.CLOSED: set(),
}


class IllegalTransition(RuntimeError):
    """A task was asked to move between phases that are not connected (a bug in the caller)."""


@dataclass(eq=False)
class ManagedTask:
    key: tuple
    subtopology: object
    partition: int
    backend: object
    phase: Phase = Phase.ASSIGNED
    inputs: set = field(default_factory=set)          # assigned input (topic, partition)s
    task: Task | None = None                          # built while running

    @property
    def stateful(self) -> bool:
        return bool(self.subtopology.stores)


class TaskManager:
    """The tasks of one worker. ``backend_factory(subtopology, partition)`` opens a backend;
    ``keep_suspended(backend)`` says whether a revoked task's backend is kept open (memory);
    ``global_stores``: the worker's global tables by name, handed to every task it builds;
    ``partition_count(topic)``: the partition count of an output topic, handed to every task."""

    def __init__(self, subtopology_of_topic: dict, backend_factory, keep_suspended, global_stores: dict | None = None,
                 partition_count=None):
        self._st_of_topic = subtopology_of_topic
        self._partition_count = partition_count
        self._open_backend = backend_factory
        self._keep = keep_suspended
        self._globals = global_stores if global_stores is not None else {}   # shared by every task
        self._tasks: dict[tuple, ManagedTask] = {}
        self._metrics: dict[tuple, dict] = {}            # counters survive rebuilds

    # ------------------------------------------------------------------ lookups
    def key_of(self, topic: str, partition: int) -> tuple:
        return (self._st_of_topic[topic].id, partition)

    def running(self, key) -> Task | None:
        mt = self._tasks.get(key)
        return mt.task if mt is not None and mt.phase is Phase.RUNNING else None

    def running_tasks(self) -> dict:
        """``{key: Task}`` of the running tasks."""
        return {k: mt.task for k, mt in self._tasks.items() if mt.phase is Phase.RUNNING}

    def in_phase(self, phase: Phase) -> list[ManagedTask]:
        return [mt for mt in self._tasks.values() if mt.phase is phase]

    def get(self, key) -> ManagedTask | None:
        mt = self._tasks.get(key)
        return None if mt is None or mt.phase in (Phase.SUSPENDED, Phase.CLOSED) else mt

    def inputs(self, key) -> set:
        mt = self.get(key)
        return set(mt.inputs) if mt is not None else set()

    def active_inputs(self) -> list:
        """Input partitions of running tasks."""
        return sorted(tp for mt in self._tasks.values() if mt.phase is Phase.RUNNING for tp in mt.inputs)

    def counts(self) -> dict:
        out = {p.value: 0 for p in Phase}
        for mt in self._tasks.values():
            out[mt.phase.value] += 1
        return out

    # ------------------------------------------------------------------ transitions
    def _move(self, mt: ManagedTask, to: Phase) -> None:
        if to not in _LEGAL[mt.phase]:
            raise IllegalTransition(f"task {mt.key}: {mt.phase.value} -> {to.value} is not a legal transition")
        log.debug("task %s: %s -> %s", mt.key, mt.phase.value, to.value)
        mt.phase = to

    def assign(self, partitions) -> tuple[list, list]:
        """Take input partitions ``[(topic, partition)]``. Returns ``(to_restore, to_pause)``: the
        ``ManagedTask``s that must restore now, and the partitions to pause meanwhile."""
        to_restore, to_pause = [], []
        for tp in partitions:
            key = self.key_of(*tp)
            mt = self._tasks.get(key)
            if mt is not None and mt.phase is Phase.SUSPENDED:
                mt.inputs = set()
                self._start(mt, to_restore)
            elif mt is None:
                st = self._st_of_topic[tp[0]]
                mt = self._tasks[key] = ManagedTask(key, st, tp[1], self._open_backend(st, tp[1]))
                self._start(mt, to_restore)
            mt.inputs.add(tp)
            if mt.phase is Phase.RESTORING:
                to_pause.append(tp)
        for mt in self.in_phase(Phase.SUSPENDED):        # not given back in this assignment
            self._close(mt)
        return to_restore, to_pause

    def _start(self, mt: ManagedTask, to_restore: list) -> None:
        if mt.stateful:
            self._move(mt, Phase.RESTORING)
            to_restore.append(mt)
        else:
            self._build(mt)

    def restored(self, key) -> ManagedTask | None:
        """A restore finished: build the task. None if the task is no longer restoring (revoked)."""
        mt = self._tasks.get(key)
        if mt is None or mt.phase is not Phase.RESTORING:
            return None
        self._build(mt)
        return mt

    def _build(self, mt: ManagedTask) -> None:
        self._move(mt, Phase.RUNNING)
        mt.task = Task(mt.subtopology, mt.partition, mt.backend, self._globals, self._partition_count)
        mt.task.ctx.metrics = self._metrics.setdefault(mt.key, {})

    def rebuild(self, keys) -> None:
        """Recreate running tasks from their backends (after a rollback discarded their write caches)."""
        for key in keys:
            mt = self._tasks.get(key)
            if mt is not None and mt.phase is Phase.RUNNING:
                self._build(mt)

    def revoke(self, partitions) -> list[tuple]:
        """Give up input partitions. Tasks left without inputs are suspended (memory backend) or
        closed. Returns the keys of the tasks that left (restores of those must be cancelled)."""
        gone = set(partitions)
        left = []
        for key, mt in list(self._tasks.items()):
            if mt.phase in (Phase.SUSPENDED, Phase.CLOSED) or not (mt.inputs & gone):
                continue
            mt.inputs -= gone
            if mt.inputs:
                continue
            left.append(key)
            mt.task = None
            if self._keep(mt.backend):
                self._move(mt, Phase.SUSPENDED)
            else:
                self._close(mt)
        return left

    def _close(self, mt: ManagedTask) -> None:
        self._move(mt, Phase.CLOSED)
        self._tasks.pop(mt.key, None)
        mt.task = None
        backend, mt.backend = mt.backend, None
        if backend is not None:
            backend.close()

    def close_all(self) -> None:
        for mt in list(self._tasks.values()):
            self._close(mt)

    def metrics(self) -> dict:
        """Committed drops of every task this worker ran: ``{(reason, operator): count}``."""
        total: dict = {}
        for m in self._metrics.values():
            for k, v in m.items():
                total[k] = total.get(k, 0) + v
        return total
