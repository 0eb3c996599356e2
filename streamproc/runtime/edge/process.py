"""The edge process of an instance: :func:`edge_main`, started and restarted by the supervisor like a
worker, when the topology has connectors. One thread per source bridge and per sink delivery; the main
thread reports their counters and waits for a stop signal or a thread's failure.

Exit codes are the workers' (``worker/process.py``): a ``ConnectorError`` (a queue that does not exist,
bad credentials) stops the instance with its paragraph; anything else is restarted with a backoff.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from ...errors import StreamprocError, UnrecoverableError
from ...kafka.config import consumer_config, producer_config
from ..options import RunOptions
from ..worker.process import EXIT_ERROR, EXIT_OK, EXIT_UNRECOVERABLE, _describe, _die_with_parent, _report
from .bridge import Bridge
from .delivery import Delivery
from .stats import EdgeStats

log = logging.getLogger("streamproc.connectors")

#: The index the edge process reports under (workers are 0..N-1).
EDGE_INDEX = -1


def edge_main(ref: str, app_id: str, options: RunOptions, process_id: str, errors,
              log_level: int = logging.WARNING, observe_queue=None) -> None:
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    _die_with_parent()
    report = None
    if observe_queue is not None:
        from ..instance.logs import worker_logging

        worker_logging(observe_queue, log_level, EDGE_INDEX)

        def report(snapshot):
            observe_queue.put_nowait(("edge", EDGE_INDEX, snapshot))
    else:
        logging.basicConfig(level=log_level)
    code = EXIT_ERROR
    try:
        from ...loader import load_topology
        from ...plan import compile_topology

        plan = compile_topology(load_topology(ref, app_id))
        run_edge(plan, options, process_id, stop, EdgeStats(report))
        code = EXIT_OK
    except KeyboardInterrupt:
        code = EXIT_OK
    except UnrecoverableError as e:
        _report(errors, EDGE_INDEX, str(e), "unrecoverable")
        code = EXIT_UNRECOVERABLE
    except StreamprocError as e:
        _report(errors, EDGE_INDEX, str(e))
    except Exception as e:  # noqa: BLE001 - one paragraph for people, the traceback at debug level
        log.debug("edge process crashed", exc_info=True)
        _report(errors, EDGE_INDEX, _describe(e))
    sys.stdout.flush()
    sys.stderr.flush()
    if observe_queue is not None:
        try:
            observe_queue.close()
            observe_queue.join_thread()
        except Exception:  # noqa: BLE001
            pass
    os._exit(code)


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
