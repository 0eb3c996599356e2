"""The supervisor: ``--workers N`` worker processes, restarted when they crash.

Workers are started with the multiprocessing ``spawn`` context and given a *reference* to the
topology (``path.py[:name]`` or ``module:name``), never a pickled plan: topologies hold
lambdas, and each child imports the module and compiles it again.

* A worker that exits non-zero is restarted after an exponential backoff
  (0.5 s, 1 s, 2 s, ... up to 30 s, counted over the last 60 s).
* A worker that crashes :data:`MAX_CRASHES` times within :data:`CRASH_WINDOW_S` makes the whole
  instance stop and :meth:`Supervisor.run` raise :class:`WorkerCrashLoop`, whose message is the
  worker's last error (one paragraph, as the worker reported it).
* A worker that exits with :data:`EXIT_UNRECOVERABLE` (a failure restarting cannot fix: unusable
  local state, a store written by another definition, a record that fails under
  ``on_error="fail"``, a refused setting) is not restarted: the instance stops at once and
  :meth:`Supervisor.run` raises :class:`UnrecoverableError` with the worker's message.
* :meth:`Supervisor.stop` (SIGINT/SIGTERM in ``run_app``) sends SIGTERM to every worker: each
  finishes its open checkpoint (or aborts it), closes its clients and exits 0. Workers still
  alive after ``shutdown_timeout_s`` are killed.
"""
from __future__ import annotations

import collections
import logging
import multiprocessing
import os
import signal
import threading
import time

from ...errors import StateError, StreamprocError, UnrecoverableError
from ..options import RunOptions
from ..worker.process import EXIT_FENCED, EXIT_OK, EXIT_UNRECOVERABLE, worker_main

log = logging.getLogger("streamproc.supervisor")

MAX_CRASHES = 5
CRASH_WINDOW_S = 60.0
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0


class WorkerCrashLoop(StreamprocError):
    """A worker kept crashing; the instance gave up."""


class _Slot:
    def __init__(self, index: int, edge: bool = False):
        self.index = index
        self.edge = edge          # the edge process (connectors, ``runtime/edge``), not a worker
        self.proc = None
        self.crashes: collections.deque = collections.deque()
        self.restart_at: float | None = None
        self.last_error: str | None = None
        self.last_kind = "error"     # "state" for a StateError (raised again as one), "unrecoverable", "error"
        self.done = False
        self.starts = 0
        self.errors = None       # the read end of this worker's error pipe


class Supervisor:
    def __init__(self, ref: str, app_id: str, options: RunOptions, process_id: str, *,
                 log_level: int | None = None, observer=None, edge: bool = False):
        self.ref = ref
        self.app_id = app_id
        self.options = options
        self.process_id = process_id
        self.log_level = logging.getLogger().getEffectiveLevel() if log_level is None else log_level
        self._ctx = multiprocessing.get_context("spawn")
        self._slots = [_Slot(i) for i in range(options.workers)]
        if edge:                    # the topology has connectors: one edge process, supervised like a worker
            self._slots.append(_Slot(-1, edge=True))
        self._stop = threading.Event()
        self._stop_sent = False
        self.observer = observer            # observe.Observer: worker logs and stats, metrics, status

    # ------------------------------------------------------------------ control
    def stop(self) -> None:
        """Ask every worker to finish its checkpoint and exit (safe from a signal handler)."""
        self._stop.set()

    def worker_pids(self) -> list[int]:
        return [s.proc.pid for s in self._slots if not s.edge and s.proc is not None and s.proc.is_alive()]

    def edge_pid(self) -> int | None:
        """The edge process's pid (connectors), if it runs."""
        return next((s.proc.pid for s in self._slots if s.edge and s.proc is not None and s.proc.is_alive()), None)

    def run(self) -> int:
        """Run until stopped (returns 0) or a worker crash-loops (raises WorkerCrashLoop)."""
        deadline = None if self.options.max_runtime_s is None else time.monotonic() + self.options.max_runtime_s
        for slot in self._slots:
            self._start(slot)
        stop_deadline = None
        while True:
            self._drain_errors()
            if self.observer is not None:
                self.observer.tick()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                self._stop.set()
            if self._stop.is_set() and not self._stop_sent:
                self._signal_all(signal.SIGTERM)
                self._stop_sent = True
                stop_deadline = now + self.options.shutdown_timeout_s
            failure = self._tend(now)
            if failure is not None:
                break
            if all(s.done for s in self._slots):
                return 0
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                log.warning("workers did not stop within %.0f s; killing them", self.options.shutdown_timeout_s)
                self._signal_all(signal.SIGKILL)
                stop_deadline = None
            time.sleep(0.05)
        # a worker crash-looped: stop the others, then report
        self._stop.set()
        self._signal_all(signal.SIGTERM)
        end = time.monotonic() + self.options.shutdown_timeout_s
        for slot in self._slots:
            if slot.proc is not None:
                slot.proc.join(max(0.1, end - time.monotonic()))
                if slot.proc.is_alive():
                    slot.proc.kill()
                    slot.proc.join()
                if self.observer is not None and not slot.edge:
                    self.observer.worker_exited(slot.index)
        raise failure

    def _tend(self, now: float) -> StreamprocError | None:
        """Start the workers due to (re)start and reap the ones that exited, in slot order. Returns the error
        the instance stops with (a worker crash-looped or failed unrecoverably), if one did."""
        for slot in self._slots:
            if slot.done:
                continue
            if slot.proc is None:
                if self._stop.is_set():
                    slot.done = True
                elif slot.restart_at is not None and now >= slot.restart_at:
                    self._start(slot)
                continue
            if slot.proc.is_alive():
                continue
            failure = self._exited(slot, now)
            if failure is not None:
                return failure
        return None

    def _exited(self, slot: _Slot, now: float) -> StreamprocError | None:
        """Worker ``slot`` exited: done (stopping, or exit 0), the instance's failure (unrecoverable, or a
        crash loop), or restarted after a backoff."""
        code = slot.proc.exitcode
        slot.proc.join()
        slot.proc = None
        if self.observer is not None and not slot.edge:   # its tasks and lag no longer count (its counters do)
            self.observer.worker_exited(slot.index)
        self._drain_errors()
        if self._stop.is_set() or code == EXIT_OK:
            slot.done = True
            return None
        if code == EXIT_UNRECOVERABLE:          # restarting cannot help
            failure = slot.last_error or f"{_what(slot)} stopped on a failure restarting cannot fix"
            return (StateError if slot.last_kind == "state" else UnrecoverableError)(failure)
        failure = self._crashed(slot, code, now)
        return WorkerCrashLoop(failure) if failure else None

    # ------------------------------------------------------------------ internals
    def _start(self, slot: _Slot) -> None:
        slot.restart_at = None
        slot.starts += 1
        # one pipe per worker process: a worker killed while reporting cannot block the others
        reader, writer = self._ctx.Pipe(duplex=False)
        queue = self.observer.queue if self.observer is not None else None
        if slot.edge:
            from ..edge.process import edge_main

            if self.observer is not None and slot.starts > 1:
                self.observer.edge.restarted()
            p = self._ctx.Process(target=edge_main, args=(self.ref, self.app_id, self.options, self.process_id,
                                                          writer, self.log_level, queue),
                                  name="streamproc-edge", daemon=False)
        else:
            if self.observer is not None:
                self.observer.worker_started(slot.index, restart=slot.starts > 1)
            p = self._ctx.Process(
                target=worker_main,
                args=(self.ref, self.app_id, self.options, slot.index, self.process_id, writer, self.log_level,
                      queue),
                name=f"streamproc-worker-{slot.index}", daemon=False)
        p.start()
        writer.close()
        slot.proc = p
        slot.errors = reader
        log.info("started %s (pid %d)", _what(slot), p.pid)

    def _crashed(self, slot: _Slot, code: int, now: float) -> str | None:
        slot.crashes.append(now)
        while slot.crashes and now - slot.crashes[0] > CRASH_WINDOW_S:
            slot.crashes.popleft()
        reason = slot.last_error or _exit_reason(code)
        slot.last_error = None
        n = len(slot.crashes)
        if n >= MAX_CRASHES:
            return (f"{_what(slot)} of {self.app_id!r} crashed {n} times within {CRASH_WINDOW_S:.0f} s, "
                    f"so the application stopped. Last error: {reason}")
        delay = min(BACKOFF_MAX_S, BACKOFF_START_S * (2 ** (n - 1)))
        if code == EXIT_FENCED:
            delay = BACKOFF_START_S
        slot.restart_at = now + delay
        log.warning("%s exited (%s): %s; restarting in %.1f s", _what(slot), _exit_reason(code), reason, delay)
        return None

    def _drain_errors(self) -> None:
        for slot in self._slots:
            r = slot.errors
            if r is None:
                continue
            try:
                while r.poll():
                    _, message, slot.last_kind = r.recv()
                    slot.last_error = message
            except (EOFError, OSError):
                r.close()
                slot.errors = None

    def _signal_all(self, signum: int) -> None:
        for slot in self._slots:
            if slot.proc is not None and slot.proc.is_alive():
                try:
                    os.kill(slot.proc.pid, signum)
                except ProcessLookupError:
                    pass


def _what(slot: _Slot) -> str:
    return "the edge process (connectors)" if slot.edge else f"worker {slot.index}"


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code == EXIT_FENCED:
        return "fenced by a newer instance"
    return f"exit code {code}"
