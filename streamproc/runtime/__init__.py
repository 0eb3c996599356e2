"""Running compiled sub-topologies, split by concern (docs/design.md, "Layers" and "Where each rule lives"):

``engine/``     a task (one sub-topology for one partition), its lifecycle, its input clocks (watermarks)
                and what a committed or rolled-back checkpoint does to it; no Kafka client.
``changelog/``  the changelog record format, the restore loop, global tables, definition checks.
``worker/``     one consumer-group member: the consume-process-produce loop, rebalances, THE checkpoint,
                event time across partitions, purging, the worker process entry point.
``instance/``   one ``streamproc run``: topic preparation, the supervisor of the worker processes, logs,
                metrics and the status line.
``serve/``      HTTP: store queries, the change feed, the instances directory, the live page.
``options.py``  ``RunOptions``, shared by the instance and its workers.
"""
from .engine.task import Task

__all__ = ["Task"]
