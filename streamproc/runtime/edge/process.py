"""The edge process of an instance: :func:`edge_main`, started and restarted by the supervisor like a
worker, when the topology has connectors. One thread per source bridge and per sink delivery; the main
thread reports their counters and waits for a stop signal or a thread's failure.

The process frame (signals, logs, exit codes) is the workers' (``worker/process.py``, ``child_main``): a
``ConnectorError`` (a queue that does not exist, bad credentials) stops the instance with its paragraph;
anything else is restarted with a backoff.
"""
from __future__ import annotations

import logging
import threading

from ...kafka.config import consumer_config, producer_config
from ..options import RunOptions
from ..worker.process import child_main
from .bridge import Bridge
from .delivery import Delivery
from .stats import EdgeStats

log = logging.getLogger("streamproc.connectors")

#: The index the edge process reports under (workers are 0..N-1).
EDGE_INDEX = -1


def edge_main(ref: str, app_id: str, options: RunOptions, process_id: str, errors,
              log_level: int = logging.WARNING, observe_queue=None) -> None:
    stop = threading.Event()

    def run(report) -> None:
        from ...loader import load_topology
        from ...plan import compile_topology

        plan = compile_topology(load_topology(ref, app_id))
        run_edge(plan, options, process_id, stop,
                 EdgeStats(None if report is None else (lambda snapshot: report("edge", snapshot))))

    def on_stop() -> bool:
        stop.set()
        return True

    child_main(EDGE_INDEX, errors, log_level, observe_queue, run, on_stop, what="the edge process")


def run_edge(plan, options: RunOptions, process_id: str, stop: threading.Event, stats: EdgeStats) -> None:
    """Run every bridge and delivery of ``plan`` until ``stop`` is set; re-raise the first failure of one
    of them (after stopping the others)."""
    app = plan.app_id
    runners = []
    for ct in plan.connector_sources:
        s = stats.connector(ct.topic.removeprefix(f"{app}-").removesuffix("-ingest"), ct.connector.kind, "source")
        runners.append(Bridge(ct, producer_config(options.bootstrap_servers, app, options.client("producer")),
                              f"{app}-{process_id}", s, stop))
    for ct in plan.connector_sinks:
        s = stats.connector(ct.topic.removeprefix(f"{app}-").removesuffix("-egress"), ct.connector.kind, "sink")
        runners.append(Delivery(ct, app, consumer_config(options.bootstrap_servers, app, options.client("consumer")),
                                s, stop))
    failures: list = []

    def guarded(r):
        try:
            r.run()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            failures.append(e)
            stop.set()

    threads = [threading.Thread(target=guarded, args=(r,), name=f"edge-{i}", daemon=True)
               for i, r in enumerate(runners)]
    for t in threads:
        t.start()
    log.info("edge: %d source bridge(s), %d sink delivery(ies)", len(plan.connector_sources),
             len(plan.connector_sinks))
    while not stop.wait(0.2):
        stats.maybe_report()
    for t in threads:
        t.join(options.shutdown_timeout_s)
    stats.maybe_report(force=True)
    if failures:
        raise failures[0]
