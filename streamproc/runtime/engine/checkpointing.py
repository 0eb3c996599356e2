"""What a checkpoint does to its tasks once it is decided, broker-free: one path for every feeder.

The Kafka worker's checkpoint (``runtime/worker/checkpoint.py``, where the checkpoint order lives)
and the test driver (``streamproc.testing``, one pipe = one checkpoint) both end a checkpoint
through these functions, so a task's state and counts are kept the same way under both:

* committed (:func:`apply_committed`): each task's taken write cache goes to its backend in one
  write, with the changelog offsets it reflects (``TaskState.apply``); then the drops the task
  counted in the checkpoint become committed (``TaskContext.commit_counts``);
* rolled back (:func:`discard`): each task's uncommitted changes, stream time and watermarks are
  dropped (``TaskState.discard``); the caller then rebuilds the tasks over their backends
  (:func:`rebuilt`, or ``TaskManager.rebuild``), since operators keep in-memory indexes derived
  from state, and the pending drop counts go with the old task contexts.
"""
from __future__ import annotations

from .task import Task


def apply_committed(tasks, changelog_offsets=None) -> list[tuple[dict, dict]]:
    """The checkpoint of ``tasks`` committed: apply their write caches, then commit their drop counts.

    ``changelog_offsets(task)``: ``{store: last changelog offset}`` the task's state reflects (None:
    no offsets, as under the test driver). Returns each task's ``(committed drops, examples)``, what
    ``WorkerStats.committed`` takes."""
    for task in tasks:
        task.state.apply(changelog_offsets(task) if changelog_offsets is not None else None)
    drops = [(task.ctx.commit_counts(), task.ctx.examples) for task in tasks]
    for task in tasks:
        task.ctx.examples = {}
    return drops


def discard(tasks) -> None:
    """The checkpoint of ``tasks`` rolled back: their state goes back to what their backends hold."""
    for task in tasks:
        task.state.discard()


def rebuilt(task: Task, globals: dict | None = None, partition_count=None) -> Task:
    """A new task over ``task``'s backend (after :func:`discard`), keeping its committed drop counts."""
    fresh = Task(task.subtopology, task.partition, task.state.backend, globals=globals,
                 partition_count=partition_count)
    fresh.ctx.metrics = task.ctx.metrics
    return fresh
