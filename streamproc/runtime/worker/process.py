"""A worker process: :func:`worker_main`, its entry point, and the exit codes the supervisor reads.

Worker processes are started with multiprocessing "spawn" (``instance/supervisor.py``): the
topology is imported again from its reference, not pickled. A worker reports its last error
through a pipe, one paragraph for people (the traceback goes to the log at debug level), and
exits with a code saying whether restarting it can help.
"""
from __future__ import annotations

import logging
import os
import signal
import sys

from ...errors import StateError, StreamprocError, UnrecoverableError
from ..options import RunOptions
from .errors import WorkerFenced
from .loop import Worker

log = logging.getLogger("streamproc.worker")

#: Worker exit codes (the supervisor restarts on anything but 0 and EXIT_UNRECOVERABLE).
#: EXIT_UNRECOVERABLE: a failure restarting cannot fix (``UnrecoverableError``: unusable state, a
#: changed store definition, a record that fails under ``on_error="fail"``, a configuration the
#: runtime refuses): the instance stops at once with the worker's message.
EXIT_OK, EXIT_ERROR, EXIT_FENCED, EXIT_UNRECOVERABLE = 0, 1, 75, 78


def worker_main(ref: str, app_id: str, options: RunOptions, index: int, process_id: str, errors,
                log_level: int = logging.WARNING, observe_queue=None) -> None:
    worker: list[Worker] = []

    def stop() -> bool:
        if worker:
            worker[0].stop()
            return True
        return False

    def run(report) -> None:
        from ...plan import compile_topology
        from ...loader import load_topology

        plan = compile_topology(load_topology(ref, app_id))
        w = Worker(plan, options, index, process_id, report=None if report is None else
                   (lambda snapshot: report("stats", snapshot)))
        worker.append(w)
        w.run()

    child_main(index, errors, log_level, observe_queue, run, stop, what=f"worker {index}")


def child_main(index: int, errors, log_level: int, observe_queue, run, stop, *, what: str) -> None:
    """The frame of a process the supervisor runs (a worker, the edge process): SIGINT/SIGTERM call
    ``stop()`` (False: nothing to stop yet, the process ends at once), logs and stats go to the supervisor
    through ``observe_queue`` (``run(report)``: ``report(kind, payload)``, None without a queue), the last
    error goes through ``errors`` as one paragraph, and the exit code says whether a restart can help.
    Never returns."""
    def on_signal(signum, frame):
        if not stop():
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    _die_with_parent()
    report = None
    if observe_queue is not None:
        from ..instance.logs import worker_logging

        worker_logging(observe_queue, log_level, index)

        def report(kind, payload):
            observe_queue.put_nowait((kind, index, payload))
    else:
        logging.basicConfig(level=log_level)
    code = EXIT_ERROR
    try:
        run(report)
        code = EXIT_OK
    except KeyboardInterrupt:
        code = EXIT_OK
    except WorkerFenced as e:
        _report(errors, index, str(e))
        code = EXIT_FENCED
    except UnrecoverableError as e:
        _report(errors, index, str(e), "state" if isinstance(e, StateError) else "unrecoverable")
        code = EXIT_UNRECOVERABLE
    except StreamprocError as e:
        _report(errors, index, str(e))
    except Exception as e:  # noqa: BLE001 - one paragraph for people, the traceback at debug level
        log.debug("%s crashed", what, exc_info=True)
        _report(errors, index, _describe(e))
    sys.stdout.flush()
    sys.stderr.flush()
    if observe_queue is not None:          # the last log records and stats reach the supervisor
        try:
            observe_queue.close()
            observe_queue.join_thread()
        except Exception:  # noqa: BLE001
            pass
    os._exit(code)


def _report(channel, index: int, message: str, kind: str = "error") -> None:
    try:
        channel.send((index, message, kind))
    except Exception:  # noqa: BLE001 - the supervisor may be gone
        pass


def _describe(e: BaseException) -> str:
    import traceback

    where = ""
    tb = traceback.extract_tb(e.__traceback__)
    if tb:
        f = tb[-1]
        where = f" (at {os.path.relpath(f.filename) if not f.filename.startswith('<') else f.filename}:{f.lineno})"
    return f"{type(e).__name__}: {e}{where}"


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when the supervisor dies, so no worker outlives its instance."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)     # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001
        pass
