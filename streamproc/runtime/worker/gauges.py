"""The gauges a worker reports besides its counters (``stats.py``): lag, assignment, tasks, restore
progress, store sizes, event-time lag. :func:`refresh` sets them on ``WorkerStats`` from what the
worker's clients and tasks know, without asking the broker; the worker calls it about once a second
(:data:`OBSERVE_INTERVAL_S`) and after a rebalance, then sends the snapshot to its supervisor.
"""
from __future__ import annotations

import logging

from confluent_kafka import KafkaException, TopicPartition

from ..engine.lifecycle import Phase

log = logging.getLogger("streamproc.worker")

#: Seconds between two refreshes of the worker's gauges and snapshots sent to the supervisor.
OBSERVE_INTERVAL_S = 1.0


def refresh(stats, mgr, consumer, restorer, event_time, worker_id: str) -> None:
    """Set the gauges of ``stats`` from the task manager ``mgr``, the group ``consumer``, the ``restorer`` and
    the worker's :class:`~.eventtime.EventTime`."""
    counts = mgr.counts()
    stats.tasks = {"running": counts["running"], "restoring": counts["restoring"]}
    stats.task_keys = sorted(mgr.running_tasks())
    stats.restoring_keys = sorted(mt.key for mt in mgr.in_phase(Phase.RESTORING))
    assigned: list = []
    if consumer is not None:
        try:
            assigned = sorted((tp.topic, tp.partition) for tp in consumer.assignment())
        except (KafkaException, RuntimeError) as e:
            log.debug("worker %s: assignment not read: %s", worker_id, e)
    stats.assigned = len(assigned)
    stats.track(assigned)                 # every assigned partition's counter exists, at 0 until counted
    stats.lag = _lag(stats.lag, consumer, assigned, mgr.active_inputs(), event_time.caught_up, worker_id)
    if restorer is not None:
        left = restorer.remaining()
        stats.restore = {s: [n, left.get(s, 0)] for s, n in restorer.restored_by_store.items()}
    keys: dict = {}
    unknown: set = set()
    for task in mgr.running_tasks().values():
        backend = task.state.backend
        count = getattr(backend, "live_keys", None) or backend.estimate_keys
        for name in task.state.stores:
            n = count(name)
            if n is None:
                unknown.add(name)           # a large store's first count is still under way
            else:
                keys[name] = keys.get(name, 0) + n
    stats.store_keys = {k: n for k, n in keys.items() if k not in unknown}
    event_time.gauges(mgr.running_tasks(), stats)


def _lag(prev: dict, c, assigned: list, active_inputs, at_end, worker_id: str) -> dict:
    """Records behind the end of every assigned ``(topic, partition)``: the high watermark (as last fetched)
    minus the position. A partition of a running task whose position is unknown although it was fetched
    (nothing returned since its assignment: it starts at its end) is 0 behind; one not fetched yet (just
    assigned, or paused while its task restores) keeps its last measured lag (``prev``), 0 at first.
    ``at_end``: the partitions whose end the consumer reported."""
    if not assigned:
        return {}
    running = set(active_inputs)
    try:
        positions = {(tp.topic, tp.partition): tp.offset
                     for tp in c.position([TopicPartition(t, p) for t, p in assigned])}
    except KafkaException as e:
        log.debug("worker %s: positions not read: %s", worker_id, e)
        positions = {}
    lag = {}
    for tp in assigned:
        try:
            _, high = c.get_watermark_offsets(TopicPartition(*tp), cached=True)
        except KafkaException:
            high = -1
        pos = positions.get(tp, -1)
        if pos >= 0 and high >= 0:
            lag[tp] = max(0, high - pos)
        elif tp in running and (high >= 0 or tp in at_end):
            lag[tp] = 0
        else:
            lag[tp] = prev.get(tp, 0)
    return lag
