"""One worker: one consumer and one producer running the tasks of the partitions it is assigned.

Partitions and tasks
    The consumer joins group ``<app-id>`` and subscribes to every input topic of every
    sub-topology (sources and repartition topics). A task is (sub-topology, partition number);
    it is created when the worker is assigned that partition of one of the sub-topology's
    input topics. The assignor is ``range`` (``streamproc.kafka.ASSIGNMENT_STRATEGY``): it
    assigns each topic separately, members sorted the same way, so partition N of topics with
    the same partition count - the co-partitioned inputs of one task - always lands on the same
    member. A task's changelog partitions are numbered like the task (changelog partition N
    belongs to task N), so state follows its input wherever the assignor puts it.

Identity
    ``group.instance.id`` and ``transactional.id`` are ``<app-id>-<process-id>-<worker>``, the
    process id being a uuid persisted in ``<state-dir>/<app-id>/process-id``. A worker
    restarted after a crash rejoins as the same static member (same partitions, no rebalance)
    and its producer fences the crashed one and aborts its open transaction.

Main loop
    ``consume(num_messages=batch_size)``; messages grouped per (topic, partition) into a
    ``RawBatch`` each (offset order kept) and run through the task; outputs produced in the
    open checkpoint (transaction); every commit interval :func:`checkpoint.checkpoint`.
    Stateful tasks restore first (:mod:`restore`) with their input partitions paused.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import warnings

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from ...errors import BrokerError, StateBusyError, StateError, StreamprocError, UnrecoverableError
from ...kafka.config import (ASSIGNMENT_STRATEGY, DEFAULT_TRANSACTION_TIMEOUT_MS, consumer_config, producer_config,
                            restore_consumer_config, transactional_producer_config)
from ...kafka.retry import Pending, retrying
from ...operators import RawBatch
from ...operators.io import carried_times
from ...operators.base import counts_by_name
from ...state import MemoryBackend
from . import checkpoint as cp
from ..options import RunOptions
from .misplaced import MisplacedCheck
from ..engine.watermarks import WATERMARK_KEY
from ..engine.watermarks import encode as watermark_encode
from .checkpoint import Checkpoint
from ..changelog.globals import GlobalTables
from ..changelog.restore import Restorer
from .stats import WorkerStats
from ..engine.lifecycle import Phase, TaskManager

log = logging.getLogger("streamproc.worker")

#: Worker exit codes (the supervisor restarts on anything but 0 and EXIT_UNRECOVERABLE).
#: EXIT_UNRECOVERABLE: a failure restarting cannot fix (``UnrecoverableError``: unusable state, a
#: changed store definition, a record that fails under ``on_error="fail"``, a configuration the
#: runtime refuses): the instance stops at once with the worker's message.
EXIT_OK, EXIT_ERROR, EXIT_FENCED, EXIT_UNRECOVERABLE = 0, 1, 75, 78

#: Seconds a worker waits for a task directory another worker of this instance is releasing.
TASK_LOCK_TIMEOUT_S = 15.0

_EOF = KafkaError._PARTITION_EOF

#: Seconds between two refreshes of the worker's gauges and snapshots sent to the supervisor.
OBSERVE_INTERVAL_S = 1.0

#: A task's watermark is written again after this many seconds even when unchanged (a downstream task
#: that restarted without it learns it again; runtime/watermarks.py).
REPUBLISH_S = 5.0
#: A task holding records back (KIP-695) for this long without progress processes them anyway, with a warning.
ENFORCE_S = 10.0
#: An input partition whose task holds more of its records than this is paused until it has taken half.
HOLD_LIMIT = 20_000
#: How often processed records are deleted from repartition topics (and the longest retry backoff).
PURGE_INTERVAL_S = 30.0
PURGE_MAX_BACKOFF_S = 600.0


class ProcessingFailed(UnrecoverableError):
    """A record could not be processed (user function raised, bad record under on_error='fail')."""


class ConfigError(UnrecoverableError):
    """A client setting the runtime cannot run with."""


class TaskDirBusy(StreamprocError):
    """A task directory is locked by another process (restartable, unlike other ``StateError``s)."""


def instance_id(app_id: str, process_id: str, index: int) -> str:
    return f"{app_id}-{process_id}-{index}"


class Worker:
    """Runs the tasks of one consumer-group member. ``run()`` blocks until ``stop()``.

    The worker is the loop and the Kafka callbacks only: the tasks and their phases live in
    :class:`~.tasks.TaskManager`, the open checkpoint in :class:`~.checkpoint.Checkpoint` (its
    order in :func:`~.checkpoint.checkpoint`), the restore loop in :class:`~.restore.Restorer`,
    repartition purging in :class:`_Purger`.
    """

    def __init__(self, plan, options: RunOptions, index: int = 0, process_id: str = "local",
                 backend_factory=None, report=None):
        self.plan = plan
        self.options = options
        self.index = index
        self.app_id = plan.app_id
        self.eos = options.eos
        self.id = instance_id(self.app_id, process_id, index)
        self.timeout_s = 30.0             # bound of a blocking call outside a transaction
        self.batch_size = options.batch_size
        self.dlq_topic = f"{self.app_id}-dlq"

        st_of_topic = {t: st for st in plan.subtopologies for t in st.input_topics}
        self.input_topics = list(st_of_topic)
        self._changelog_topics = {s.changelog for s in plan.stores if s.internal_changelog}
        self._repartition_topics = set(plan.repartition_topics)
        self.global_stores: dict = {}                   # name -> GlobalStore, filled when the worker opens
        self.globals: GlobalTables | None = None
        self.task_manager = TaskManager(st_of_topic, backend_factory or self._default_backend,
                                        self._keep_when_revoked, self.global_stores, self.partition_count)
        self._partition_counts: dict[str, int] = {}
        self._upstream_counts: dict[str, int] = {}
        self._marks_checked_at = 0.0
        self._caught_up: dict = {}                      # input (topic, partition) at its end -> since (EOF seen)
        self._gated = any(len(st.input_topics) > 1 for st in plan.subtopologies)
        self._idle_base: dict = {}                      # task key -> (stream time, since) when all inputs idle
        self._idle_checked_at = 0.0
        self._blocked_since: dict = {}                  # task key -> (since, task.progress): held without progress
        self._paused_ahead: set = set()                 # input partitions paused: their task holds enough
        self._published: dict = {}                      # task key -> ((stream time, idle), monotonic) committed
        self._publishing: dict = {}                     # the same, written in the open checkpoint
        self.ckpt = Checkpoint(options.commit_interval_s, txn_budget_s=DEFAULT_TRANSACTION_TIMEOUT_MS / 2000)
        self.stats = WorkerStats(self.id, self._repartition_topics | self._changelog_topics)
        self.stats.track(topics=list(plan.sink_topics) + sorted(self._repartition_topics | self._changelog_topics))
        self.misplaced = MisplacedCheck(plan, self.partition_count, self.id)
        self.stats.misplaced = self.misplaced.counts          # the same dict: counted as checked
        self._report = report                            # callable(snapshot): to the supervisor
        self._observe_at = 0.0
        self._to_restore: list = []                      # ManagedTasks whose restore is not started yet
        self._dropped: set = set()                       # (topic, partition) whose fetched records were dropped
        self._purger: _Purger | None = None

        self._epoch = 0
        self._fatal: BaseException | None = None
        self._failed = False
        self._stop = threading.Event()
        self.started = threading.Event()
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.restorer: Restorer | None = None
        self.records_in = 0
        self._idle_since: float | None = time.monotonic()
        self._idle_warned_at = 0.0
        self._transport_warned_at = -60.0

    def _default_backend(self, st, partition: int):
        """``RocksDBBackend`` of task (st, partition) under the state dir (``state_backend="rocksdb"``),
        else a ``MemoryBackend``. Stateless sub-topologies get a MemoryBackend either way."""
        if self.options.state_backend == "memory" or not st.stores:
            return MemoryBackend()
        from ...state import layout
        from ...state.rocksdb import RocksDBBackend

        path = layout.task_dir(self.options.state_dir, self.app_id, layout.task_id(st.id, partition))
        try:
            return RocksDBBackend.for_task(path, st, lock_timeout=TASK_LOCK_TIMEOUT_S)
        except StateBusyError as e:                  # transient: a worker releasing it, a replay
            raise TaskDirBusy(f"worker {self.id}: {e}") from None

    @staticmethod
    def _keep_when_revoked(backend) -> bool:
        """Memory backends of revoked tasks are kept (the state would be lost); anything on disk is
        closed so another worker may lock its task directory (reopening costs a few ms)."""
        return isinstance(backend, MemoryBackend)

    # ------------------------------------------------------------------ views (tests, status)
    @property
    def tasks(self) -> dict:
        """``{key: Task}`` of the running tasks."""
        return self.task_manager.running_tasks()

    @property
    def restoring(self) -> list:
        """Keys of the tasks being restored (or waiting to start their restore)."""
        return sorted(mt.key for mt in self.task_manager.in_phase(Phase.RESTORING))

    @property
    def open(self) -> bool:
        return self.ckpt.open

    @property
    def checkpoints(self) -> int:
        return self.ckpt.commits

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        """Ask the worker to finish its open checkpoint, leave and return from ``run()``."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        deadline = None if self.options.max_runtime_s is None else time.monotonic() + self.options.max_runtime_s
        try:
            self._open()
            while not self._stop.is_set():
                self._tick()
                if deadline is not None and time.monotonic() >= deadline:
                    break
            cp.checkpoint(self)
            self._close(clean=True)
        except KafkaException as e:
            self._failed = True
            error = self._kafka_failure(e)
            self._close(clean=False)
            raise error from None
        except BaseException:
            self._failed = True
            self._close(clean=False)
            raise

    def _kafka_failure(self, e: KafkaException) -> StreamprocError:
        """A one-paragraph error for a Kafka client exception that reached the loop."""
        try:
            self.producer.poll(0)            # serve error_cb: it carries the cause of a fatal error
        except Exception:  # noqa: BLE001
            pass
        if isinstance(self._fatal, StreamprocError):
            return self._fatal
        err = cp.kafka_error(e)
        if err is None:
            return BrokerError(f"worker {self.id}: Kafka client error: {e}")
        if err.fatal() or cp.is_fenced(err) or err.code() == KafkaError._FATAL:
            return cp.fatal_error(err, f"worker {self.id}")
        return BrokerError(f"worker {self.id}: Kafka error {err.name()}: {err.str()}")

    def _open(self) -> None:
        o = self.options
        bootstrap = o.bootstrap_servers
        pconf = (transactional_producer_config(bootstrap, self.app_id, self.id, o.client("producer")) if self.eos
                 else producer_config(bootstrap, self.app_id, o.client("producer")))
        pconf["on_delivery"] = self._on_delivery
        pconf["error_cb"] = self._on_error
        pconf.setdefault("queue.buffering.max.messages", 500_000)
        if self.eos:     # blocking calls inside a transaction stay well within its timeout
            self.ckpt.txn_budget_s = int(pconf.get("transaction.timeout.ms", DEFAULT_TRANSACTION_TIMEOUT_MS)) / 2000
        self.producer = Producer(pconf)
        if self.eos:
            try:
                cp._call("init_transactions", lambda: self.producer.init_transactions(self.timeout_s), 60.0)
            except cp._Abortable as e:
                raise BrokerError(f"worker {self.id} could not start its transactional producer: {e}") from None
        cconf = consumer_config(bootstrap, self.app_id, o.client("consumer"), group_instance_id=self.id)
        cconf["error_cb"] = self._on_error
        check_assignor(cconf)
        self._reset_policy = str(cconf.get("auto.offset.reset", "earliest"))
        self.consumer = Consumer(cconf)
        self.restorer = Restorer(restore_consumer_config(bootstrap, self.app_id, o.client("restore")),
                                 stall_timeout_s=o.restore_stall_timeout_s)
        if self._repartition_topics:
            self._purger = _Purger(self)
        if self.plan.global_tables:
            self._open_globals()
        self.consumer.subscribe(self.input_topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        log.info("worker %s started: %s, inputs %s", self.id, self.options.guarantee, ", ".join(self.input_topics))
        self.started.set()

    def _open_globals(self) -> None:
        """Restore the global tables to their end before joining the group (DESIGN: before processing)."""
        o = self.options
        specs = self.plan.global_tables
        if o.state_backend == "memory":
            backend = MemoryBackend()
        else:
            from ...state import layout
            from ...state.rocksdb import RocksDBBackend

            try:
                backend = RocksDBBackend(layout.global_dir(o.state_dir, self.app_id, self.index), specs,
                                         lock_timeout=TASK_LOCK_TIMEOUT_S)
            except StateBusyError as e:
                raise TaskDirBusy(f"worker {self.id}: {e}") from None
        self.globals = GlobalTables(specs, backend, restore_consumer_config(o.bootstrap_servers, self.app_id,
                                                                            o.client("restore")),
                                    stall_timeout_s=o.restore_stall_timeout_s)
        self.global_stores.update(self.globals.stores)
        n = self.globals.restore(self._stop.is_set)
        log.info("worker %s: global tables %s ready (%d records restored)", self.id,
                 ", ".join(self.globals.stores), n)

    def _close(self, clean: bool) -> None:
        try:
            self.stats.log_drops(force=True)
            self.observe(final=True)              # the counts of the last checkpoint reach the supervisor
        except Exception as e:  # noqa: BLE001
            log.debug("final observe: %s", e)
        if not clean:
            try:
                cp.abort_open(self)
            except Exception as e:  # noqa: BLE001 - we are failing already
                log.debug("abort while stopping failed: %s", e)
        if self.consumer is not None:
            try:
                self.consumer.close()      # on_revoke: commits nothing more (clean: nothing is open)
            except Exception as e:  # noqa: BLE001
                log.debug("consumer close: %s", e)
        if self.restorer is not None:
            self.restorer.close()
        if self.globals is not None:
            self.globals.close()
            self.globals = None
            self.global_stores.clear()
        if self.producer is not None:
            try:
                self.producer.flush(5 if clean else 0)
                if hasattr(self.producer, "close"):      # recent confluent-kafka
                    with warnings.catch_warnings():        # "abort failed during close" once fenced
                        warnings.simplefilter("ignore", RuntimeWarning)
                        self.producer.close()
            except Exception:  # noqa: BLE001
                pass
        self.task_manager.close_all()
        self._to_restore.clear()

    # ------------------------------------------------------------------ callbacks
    def _on_delivery(self, err, msg) -> None:
        if err is not None:
            self.ckpt.delivery_errors.append((err, msg.topic()))
            return
        t = msg.topic()
        if t in self._changelog_topics:
            k = (t, msg.partition())
            o = msg.offset()
            offsets = self.ckpt.changelog_offsets
            if o > offsets.get(k, -1):
                offsets[k] = o

    def _on_error(self, err) -> None:
        if err.fatal():
            self._fatal = cp.fatal_error(err, "Kafka client")
        elif err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            now = time.monotonic()               # a broker that is down says so many times a second
            if now - self._transport_warned_at >= 30.0:
                self._transport_warned_at = now
                log.warning("worker %s: %s", self.id, err.str())
        else:
            log.info("worker %s: Kafka client: %s", self.id, err.str())

    def _on_assign(self, consumer, partitions) -> None:
        self._epoch += 1
        try:
            consumer.assign(partitions)         # eager protocol: this is the whole assignment
            to_restore, to_pause = self.task_manager.assign([(tp.topic, tp.partition) for tp in partitions])
            self._to_restore += to_restore
            if to_pause:
                consumer.pause([TopicPartition(t, p) for t, p in to_pause])
            counts = self.task_manager.counts()
            log.info("worker %s assigned %d partition(s): %d task(s) running, %d restoring", self.id,
                     len(partitions), counts["running"], counts["restoring"])
        except BaseException as e:  # noqa: BLE001 - re-raised from the main loop
            self._fatal = e

    def _on_revoke(self, consumer, partitions) -> None:
        self._epoch += 1
        try:
            if not self._failed and self._fatal is None:
                cp.checkpoint(self)
            else:
                cp.abort_open(self)
        except BaseException as e:  # noqa: BLE001
            self._fatal = self._fatal or e
            try:
                cp.abort_open(self)
            except BaseException:  # noqa: BLE001
                pass
        self._drop(partitions)

    def _on_lost(self, consumer, partitions) -> None:
        self._epoch += 1
        log.warning("worker %s lost %d partition(s) (session timed out?): dropping the open checkpoint",
                    self.id, len(partitions))
        try:
            cp.abort_open(self)
            self._drop(partitions)
            self.reset_to_committed()     # partitions still held (if any) re-read what was dropped
        except BaseException as e:  # noqa: BLE001
            self._fatal = self._fatal or e

    def _drop(self, partitions) -> None:
        gone = [(tp.topic, tp.partition) for tp in partitions]
        for tp in gone:
            self._caught_up.pop(tp, None)
        self._paused_ahead.difference_update(gone)
        left = self.task_manager.revoke(gone)
        if self.restorer is not None:
            self.restorer.cancel(left)
        self._to_restore = [mt for mt in self._to_restore if mt.key not in left]
        self.ckpt.forget_inputs(gone)
        self.ckpt.dirty.difference_update(left)
        self._dropped.difference_update(gone)
        if not self.ckpt.positions and not self.ckpt.dirty:
            self.ckpt.open = self.ckpt.in_txn

    # ------------------------------------------------------------------ checkpoint hooks
    def reset_to_committed(self, tps=None) -> None:
        """Seek the given (default: all running tasks') input partitions back to their committed offsets."""
        if tps is None:
            tps = self.task_manager.active_inputs()
        tps = [TopicPartition(t, p) for t, p in tps]
        if not tps:
            return
        for task in self.task_manager.running_tasks().values():     # what waited is read again
            task.forget_held([(tp.topic, tp.partition) for tp in tps])
        try:
            committed = self.consumer.committed(tps, timeout=self.ckpt.time_left(10.0))
        except KafkaException as e:
            err = cp.kafka_error(e)
            raise BrokerError(f"worker {self.id} cannot read the committed offsets to resume from: "
                              f"{err.str() if err else e}") from None
        earliest = self._reset_policy in ("earliest", "smallest", "beginning")
        for tp in committed:
            off = tp.offset if tp.offset >= 0 else (OFFSET_BEGINNING if earliest else OFFSET_END)
            try:
                self.consumer.seek(TopicPartition(tp.topic, tp.partition, off))
            except KafkaException as e:
                err = cp.kafka_error(e)
                if err is not None and err.code() == KafkaError._STATE:
                    continue          # not fetching yet: it will start from the committed offset anyway
                raise
            self._dropped.discard((tp.topic, tp.partition))
            self._caught_up.pop((tp.topic, tp.partition), None)

    # ------------------------------------------------------------------ main loop
    def _tick(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        restoring = bool(self._to_restore) or self.restorer.pending
        if restoring:
            self._restore_step()
        if self.globals is not None:
            self.globals.poll()               # between batches: a batch sees one consistent global table
        c = self.ckpt
        timeout = 0.0 if restoring else (min(0.1, max(0.0, c.due - time.monotonic())) if c.open else 0.1)
        epoch = self._epoch
        msgs = self.consumer.consume(self.batch_size, timeout)
        if self._fatal is not None:
            raise self._fatal
        if self._epoch != epoch and msgs:
            msgs = self._drop_stale(msgs)
        if msgs:
            self._process(msgs)
        else:
            self.producer.poll(0)
        if self._gated:
            self._drain_held()
        if self.plan.idle_close is not None:
            self._idle_close()
        if not c.open and self._repartition_topics and time.monotonic() >= self._marks_checked_at:
            self._marks_checked_at = time.monotonic() + self.options.commit_interval_s
            if self._marks_due():               # a watermark to write (idle now, or due again): a checkpoint
                self._open_checkpoint()
        if c.open and time.monotonic() >= c.due:
            done = {tp: o for tp, o in c.positions.items() if tp[0] in self._repartition_topics}
            if cp.checkpoint(self) and done and self._purger is not None:
                self._purger.committed(done)
        if self._purger is not None:
            self._purger.tick()
        self._watch_idle()
        if time.monotonic() >= self._observe_at or self._epoch != getattr(self, "_observed_epoch", 0):
            self.observe()                  # also at once after a rebalance: the status follows it
            self.stats.log_drops()          # summaries held back by the 30 s limit, also when idle

    def observe(self, final: bool = False) -> dict:
        """Refresh the gauges of ``stats`` (lag, assignment, tasks, restore progress, store sizes) and send
        the snapshot to the supervisor. About once a second, from the loop, and after a rebalance;
        ``final``: the last report of a stopping worker (the supervisor then drops its gauges)."""
        self._observe_at = time.monotonic() + OBSERVE_INTERVAL_S
        self._observed_epoch = self._epoch
        st = self.stats
        mgr = self.task_manager
        counts = mgr.counts()
        st.tasks = {"running": counts["running"], "restoring": counts["restoring"]}
        st.task_keys = sorted(mgr.running_tasks())
        st.restoring_keys = sorted(mt.key for mt in mgr.in_phase(Phase.RESTORING))
        assigned: list = []
        if self.consumer is not None:
            try:
                assigned = sorted((tp.topic, tp.partition) for tp in self.consumer.assignment())
            except (KafkaException, RuntimeError) as e:
                log.debug("worker %s: assignment not read: %s", self.id, e)
        st.assigned = len(assigned)
        st.track(assigned)                 # every assigned partition's counter exists, at 0 until counted
        st.lag = self._lag(assigned)
        if self.restorer is not None:
            left = self.restorer.remaining()
            st.restore = {s: [n, left.get(s, 0)] for s, n in self.restorer.restored_by_store.items()}
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
        st.store_keys = {k: n for k, n in keys.items() if k not in unknown}
        self._event_time_gauges(mgr.running_tasks())
        snap = st.snapshot(final)
        if self._report is not None:
            try:
                self._report(snap)
            except Exception as e:  # noqa: BLE001 - reporting must never stop processing
                log.debug("worker %s: stats not reported: %s", self.id, e)
        return snap

    def _event_time_gauges(self, tasks: dict) -> None:
        """Watermark lag per sub-topology, paused partitions, and which upstream task holds windows back."""
        st = self.stats
        lag: dict = {}
        held: dict = {}
        for task in tasks.values():
            sub = task.subtopology.id
            if task.newest >= 0:
                behind = max(0, task.newest - max(task.state.stream_time, 0)) / 1000.0
                lag[sub] = max(lag.get(sub, 0.0), behind)
            who = task.held_back_by()
            if who is not None:
                held[sub] = f"{who[0]} from sub-topology {who[1][0]} partition {who[1][1]}"
        st.watermark_lag, st.held_back, st.paused = lag, held, len(self._paused_ahead)

    def _lag(self, assigned: list) -> dict:
        """Records behind the end of every assigned ``(topic, partition)``: the high watermark (as last fetched)
        minus the position. A partition of a running task whose position is unknown although it was fetched
        (nothing returned since its assignment: it starts at its end) is 0 behind; one not fetched yet (just
        assigned, or paused while its task restores) keeps its last measured lag, 0 at first."""
        if not assigned:
            return {}
        c = self.consumer
        prev = self.stats.lag
        running = set(self.task_manager.active_inputs())
        at_end = getattr(self, "_caught_up", ())          # partitions whose end the consumer reported
        try:
            positions = {(tp.topic, tp.partition): tp.offset
                         for tp in c.position([TopicPartition(t, p) for t, p in assigned])}
        except KafkaException as e:
            log.debug("worker %s: positions not read: %s", self.id, e)
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

    def _restore_step(self) -> None:
        if self._to_restore:
            # starting a restore reads end offsets (blocking calls): never inside an open transaction
            if self.ckpt.in_txn:
                cp.checkpoint(self)
            while self._to_restore:
                mt = self._to_restore.pop(0)
                if self.task_manager.get(mt.key) is mt:        # not revoked meanwhile
                    self.restorer.start(mt.key, mt.backend, mt.subtopology.stores, mt.partition,
                                        self._table_ends(mt))
        for key in self.restorer.step(0.01 if self.task_manager.running_tasks() else 0.05):
            mt = self.task_manager.restored(key)
            if mt is None:
                continue
            tps = sorted(mt.inputs)
            dropped = [tp for tp in tps if tp in self._dropped]
            if dropped:
                self.reset_to_committed(dropped)
            self.consumer.resume([TopicPartition(t, q) for t, q in tps])
            log.info("worker %s: task %s restored (stream time %s), processing", self.id, key,
                     mt.task.state.stream_time)

    def _table_ends(self, mt) -> dict:
        """Where the restore of each table read from a topic ends: the group's committed offset of that
        topic's partition (processing resumes there); missing when nothing is committed."""
        tables = [s for s in mt.subtopology.stores if s.source is not None]
        if not tables:
            return {}
        tps = [TopicPartition(s.changelog, mt.partition) for s in tables]
        try:
            committed = self.consumer.committed(tps, timeout=self.timeout_s)
        except KafkaException as e:
            err = cp.kafka_error(e)
            raise BrokerError(f"worker {self.id} cannot read the committed offsets of its tables' topics: "
                              f"{err.str() if err else e}") from None
        offs = {(tp.topic, tp.partition): tp.offset for tp in committed if tp.offset >= 0}
        return {s.name: offs[(s.changelog, mt.partition)] for s in tables if (s.changelog, mt.partition) in offs}

    def _watch_idle(self) -> None:
        """An instance with no partitions for long says so (DESIGN section 7), with the group state it sees."""
        now = time.monotonic()
        if self.task_manager.counts()["running"] or self.task_manager.counts()["restoring"]:
            self._idle_since = None
            return
        if self._idle_since is None:
            self._idle_since = now
            return
        limit = self.options.no_partitions_warning_s
        idle = now - self._idle_since
        if idle < limit or now - self._idle_warned_at < limit:
            return
        self._idle_warned_at = now
        log.warning("worker %s has had no partitions for %.0f s; consumer group %r: %s", self.id, idle,
                    self.app_id, self._group_state())

    def _group_state(self) -> str:
        """The consumer group's state as the broker reports it, checked against what this worker knows: it is
        a member of the group (``describe_group``)."""
        try:
            member_id = self.consumer.memberid() if self.consumer is not None else None
        except Exception:  # noqa: BLE001 - RuntimeError on a closed consumer
            member_id = None
        return describe_group(self.options, self.app_id, instance_id=self.id, member_id=member_id)

    def _drop_stale(self, msgs) -> list:
        """A rebalance ran inside this consume(): records fetched before it may be stale. Drop them
        and re-read those partitions from their committed offsets."""
        tps = set()
        for m in msgs:
            if m.error() is None:
                tps.add((m.topic(), m.partition()))
        mgr = self.task_manager
        active = [tp for tp in tps if mgr.running(mgr.key_of(*tp)) is not None]
        self._dropped.update(tps)
        if active:
            self.reset_to_committed(active)
        return [m for m in msgs if m.error() is not None]

    def _process(self, msgs) -> None:
        groups = self._columns(msgs)
        if not groups:
            return
        c = self._open_checkpoint()
        mgr = self.task_manager
        by_task: dict = {}
        for tp, cols in groups.items():
            key = mgr.key_of(*tp)
            if mgr.running(key) is None:
                self._dropped.add(tp)        # restoring, or revoked: re-read from the committed offset
                continue
            self.misplaced.check(tp[0], tp[1], cols[0])
            by_task.setdefault(key, []).append((tp, cols))
        stats = self.stats
        for key, items in by_task.items():
            task = mgr.running(key)
            raws, marks = [], []
            for tp, cols in items:
                raw, wms = _split_watermarks(tp, cols)
                if raw is not None:
                    raws.append(raw)
                if wms:
                    marks.append((tp[0], wms))
            gated = len(task.input_partitions) > 1
            # where each input held before ends: records of an input not in this fetch may go now too
            ends = {tp: task.held_until(tp) for tp in task.input_partitions if task.held_until(tp) is not None}
            try:
                if raws or (gated and task.holding):
                    self._produce_outputs(task.process_many(raws, self._ready(key, task) if gated else None))
                # a watermark follows the records before it: while some of them wait in the task, it is
                # dropped (the upstream task writes a newer one within REPUBLISH_S)
                marks = [(t, w) for t, w in marks if task.held_from((t, task.partition)) is None]
                if marks:
                    for topic, wms in marks:
                        task.watermarks(topic, wms, self._upstreams(topic))
                    self._produce_outputs(task.advance())
            except StreamprocError as e:
                raise ProcessingFailed(f"task {task.id} stopped on {_positions(raws)}: {e}") from None
            except Exception as e:  # noqa: BLE001
                raise ProcessingFailed(f"task {task.id} stopped on {_positions(raws)}: "
                                       f"{type(e).__name__}: {e}") from e
            if task.ctx.dead_letters:
                self._dead_letters(task)
            for raw in raws:             # counted when fetched; a held record is committed with its checkpoint
                self.records_in += len(raw.offsets)
                stats.consume((raw.topic, raw.partition), len(raw.offsets))
            for tp, cols in items:
                ends[tp] = cols[3][-1] + 1
            for tp, end in ends.items():          # the position: the first record still held, else past them
                held = task.held_from(tp)
                c.ran(key, tp, end if held is None else held)
            if gated:
                self._pace(task)

    # ------------------------------------------------------------------ watermarks (runtime/watermarks.py)
    def _marks_due(self) -> list:
        """``[(task, (stream time, idle))]`` of the running tasks feeding repartition topics whose watermark
        changed since it was last written (or was written more than REPUBLISH_S ago)."""
        now = time.monotonic()
        out = []
        for key, task in self.task_manager.running_tasks().items():
            if not task.subtopology.repartition_sinks or key in self._publishing:
                continue
            mt = self.task_manager.get(key)
            idle = bool(mt.inputs) and all(tp in self._caught_up for tp in mt.inputs) and not task.holding
            mark = (task.state.stream_time, idle)
            last = self._published.get(key)
            if last is None or last[0] != mark or now - last[1] >= REPUBLISH_S:
                out.append((task, mark))
        return out

    def publish_watermarks(self) -> None:
        """Checkpoint step 1: write each due watermark to every partition of the repartition topics its task
        feeds, in the open transaction (``checkpoint.py``)."""
        now = time.monotonic()
        for task, mark in self._marks_due():
            value = watermark_encode(task.subtopology.id, task.partition, *mark)
            for topic in task.subtopology.repartition_sinks:
                for p in range(self.partition_count(topic)):
                    self.produce(topic, value, WATERMARK_KEY, partition=p)
            self._publishing[(task.subtopology.id, task.partition)] = (mark, now)

    def watermarks_committed(self, committed: bool) -> None:
        if committed:
            self._published.update(self._publishing)
        self._publishing.clear()

    def _open_checkpoint(self):
        c = self.ckpt
        c.opened()
        if self.eos and not c.in_txn:
            cp._call("begin_transaction", self.producer.begin_transaction, self.timeout_s)
            c.began_transaction()
        return c

    # ------------------------------------------------------------------ KIP-695 (DESIGN section 4)
    def _ready(self, key, task) -> set:
        """The input partitions of ``task`` caught up for at least ``max_task_idle``: records of the others
        go only while they have buffered records. A task that has held records back for ENFORCE_S without
        processing anything processes them anyway (a broker that never reports an end), saying so."""
        now = time.monotonic()
        idle_s = self.plan.max_task_idle / 1000.0
        ready = {tp for tp in task.input_partitions if now - self._caught_up.get(tp, now + 1) >= idle_s}
        if not task.holding:
            self._blocked_since.pop(key, None)
            return ready
        since, progress = self._blocked_since.get(key, (now, task.progress))
        if progress != task.progress:               # it processed something since: not stuck
            since = now
        self._blocked_since[key] = (since, task.progress)
        if now - since >= ENFORCE_S:
            waiting = [f"{t}[{p}]" for t, p in task.input_partitions if (t, p) not in ready]
            log.warning("worker %s: task %s waited %.0f s for %s to be fetched or caught up; processing what it "
                        "holds in event-time order without them", self.id, task.id, now - since, ", ".join(waiting))
            self._blocked_since[key] = (now, task.progress)
            return set(task.input_partitions)
        return ready

    def _pace(self, task) -> None:
        """Pause an input whose task holds more than HOLD_LIMIT of its records (it is ahead of the others);
        resume it once the task has taken most of them."""
        for tp in task.input_partitions:
            n = task.held_count(tp)
            if n > HOLD_LIMIT and tp not in self._paused_ahead:
                self._paused_ahead.add(tp)
                self.consumer.pause([TopicPartition(*tp)])
            elif n <= HOLD_LIMIT // 2 and tp in self._paused_ahead:
                self._paused_ahead.discard(tp)
                self.consumer.resume([TopicPartition(*tp)])
        if not task.holding:
            self._blocked_since.pop((task.subtopology.id, task.partition), None)

    def _drain_held(self) -> None:
        """Give tasks holding records back a chance to go on (an input caught up or was fetched since)."""
        for key, task in self.task_manager.running_tasks().items():
            if task.holding:
                ready = self._ready(key, task)
                if task.can_go(ready):
                    self._process_held(key, task, ready)

    def _process_held(self, key, task, ready: set) -> None:
        c = self._open_checkpoint()
        ends = {tp: task.held_until(tp) for tp in task.input_partitions if task.held_until(tp) is not None}
        try:
            self._produce_outputs(task.process_many([], ready))
        except StreamprocError as e:
            raise ProcessingFailed(f"task {task.id} stopped: {e}") from None
        if task.ctx.dead_letters:
            self._dead_letters(task)
        for tp, end in ends.items():
            first = task.held_from(tp)
            c.ran(key, tp, end if first is None else first)
        self._pace(task)

    def _idle_close(self) -> None:
        """``Topology(idle_close=...)``: the stream time of a task whose inputs have all been caught up for
        that long advances with the wall clock - from the largest event time it had seen, by the idle time
        elapsed - so the last windows of a stream that stopped close and emit (DESIGN section 4)."""
        now = time.monotonic()
        if now < self._idle_checked_at:
            return
        self._idle_checked_at = now + self.options.commit_interval_s
        limit_s = self.plan.idle_close / 1000.0
        for key, task in self.task_manager.running_tasks().items():
            since = [self._caught_up.get(tp) for tp in task.input_partitions]
            if not task.subtopology.stores or None in since or task.holding:
                self._idle_base.pop(key, None)
                continue
            start = max(since)
            base = self._idle_base.get(key)
            if base is None or base[1] != start:
                base = self._idle_base[key] = (task.state.stream_time, start)
            idle_s = now - start
            if idle_s < limit_s or base[0] < 0:
                continue
            target = base[0] + int(idle_s * 1000)
            if target > task.state.stream_time:
                c = self._open_checkpoint()
                self._produce_outputs(task.advance(target))
                c.dirty.add(key)

    def _upstreams(self, topic: str) -> int:
        """How many tasks write repartition topic ``topic``: the task count of the sub-topology feeding it."""
        n = self._upstream_counts.get(topic)
        if n is None:
            writer = next(st for st in self.plan.subtopologies if topic in st.repartition_sinks)
            n = self._upstream_counts[topic] = max(self.partition_count(t) for t in writer.input_topics)
        return n

    def _columns(self, msgs) -> dict:
        """``{(topic, partition): (keys, values, timestamps, offsets)}`` in offset order.

        Column by column with comprehensions (one C-level loop per field); messages are only
        regrouped when a batch spans several partitions.
        """
        ends = None
        if any(m.error() is not None for m in msgs):
            ends = []
            for m in msgs:
                if m.error() is not None:
                    if m.error().code() == _EOF:
                        ends.append((m.topic(), m.partition()))
                    self._consumer_error(m)
            msgs = [m for m in msgs if m.error() is None]
            if not msgs:
                self._ended(ends)
                return {}
        topics = [m.topic() for m in msgs]
        parts = [m.partition() for m in msgs]
        t0, p0 = topics[0], parts[0]
        if topics.count(t0) == len(topics) and parts.count(p0) == len(parts):
            by_tp = {(t0, p0): msgs}
        else:
            by_tp = {}
            for tp, m in zip(zip(topics, parts), msgs):
                g = by_tp.get(tp)
                if g is None:
                    by_tp[tp] = [m]
                else:
                    g.append(m)
        if self._caught_up:                  # records arrived: not at the end any more (per partition, not per record)
            for tp in by_tp:
                self._caught_up.pop(tp, None)
        if ends:
            self._ended(ends)
        internal = self._repartition_topics
        return {tp: ([m.key() for m in g], [m.value() for m in g], [m.timestamp()[1] for m in g],
                     [m.offset() for m in g]) + ((_headers(g),) if tp[0] in internal else ())
                for tp, g in by_tp.items()}

    def _ended(self, ends: list) -> None:
        """End-of-partition events (each comes after its partition's last record): caught up since now."""
        now = time.monotonic()
        for tp in ends:
            self._caught_up.setdefault(tp, now)

    def _produce_outputs(self, produced: list) -> None:
        """Produce a task's output column groups ``(topic, keys, values, timestamps[, headers[, partitions]])``
        in the open checkpoint: per-record headers (late records, carried stream times) and partitions
        (placed by the plan) where given, else the producer's partitioner."""
        produce, stats = self._produce_fast, self.stats
        for out in produced:
            out_topic, kb, vb, ts = out[:4]
            headers = out[4] if len(out) > 4 else None
            parts = out[5] if len(out) > 5 else None
            if headers is None and parts is None:
                for i in range(len(kb)):
                    produce(out_topic, vb[i], kb[i], ts[i])
            elif parts is None:                   # headers on some records (carried stream times, late records)
                slow = self.produce
                for i, h in enumerate(headers):
                    if h is None:
                        produce(out_topic, vb[i], kb[i], ts[i])
                    else:
                        slow(out_topic, vb[i], kb[i], timestamp=ts[i], headers=h)
            else:
                for i in range(len(kb)):
                    self.produce(out_topic, vb[i], kb[i], partition=-1 if parts is None else parts[i],
                                 timestamp=ts[i], headers=None if headers is None else headers[i])
            stats.produce(out_topic, len(kb))

    def partition_count(self, topic: str) -> int:
        """How many partitions ``topic`` (an output of this worker's tasks) has, from the cluster's metadata
        (asked once per topic: ``run`` created or checked every internal topic before the workers started)."""
        n = self._partition_counts.get(topic)
        if n is None:
            def partitions():
                t = self.producer.list_topics(topic, timeout=10.0).topics.get(topic)
                if t is None or not t.partitions:
                    raise Pending(f"topic {topic!r} in the metadata ({t.error if t is not None else 'not listed'})")
                return len(t.partitions)

            n = self._partition_counts[topic] = retrying(f"list the partitions of {topic!r}", partitions,
                                                         self.timeout_s)
        return n

    def _produce_fast(self, topic, value, key, ts) -> None:
        try:
            self.producer.produce(topic, value, key, timestamp=ts)
        except BufferError:
            self._wait_for_queue()
            self.producer.produce(topic, value, key, timestamp=ts)

    def produce(self, topic, value, key, partition=-1, timestamp=0, headers=None) -> None:
        """Produce one record in the open checkpoint (waits while the producer queue is full)."""
        while True:
            try:
                if headers is None:
                    self.producer.produce(topic, value, key, partition=partition, timestamp=timestamp)
                else:
                    self.producer.produce(topic, value, key, partition=partition, timestamp=timestamp,
                                          headers=headers)
                return
            except BufferError:
                self._wait_for_queue()

    def _wait_for_queue(self) -> None:
        self.producer.poll(0.05)
        if self._fatal is not None:
            raise self._fatal

    def _dead_letters(self, task) -> None:
        for dl in task.ctx.dead_letters:
            headers = [("error", dl.error.encode("utf-8", "replace")), ("topic", dl.topic.encode()),
                       ("partition", str(dl.partition).encode()), ("offset", str(dl.offset).encode())]
            if dl.operator:
                headers.append(("operator", dl.operator.encode("utf-8", "replace")))
            self.produce(self.dlq_topic, dl.value, dl.key, timestamp=max(int(dl.timestamp), 0), headers=headers)
        self.stats.produce(self.dlq_topic, len(task.ctx.dead_letters))
        task.ctx.dead_letters.clear()

    def _consumer_error(self, m) -> None:
        err = m.error()
        if err.code() == _EOF:
            return
        if err.fatal() or err.code() == KafkaError._FATAL:
            raise cp.fatal_error(err, f"consumer of {self.id}")
        if err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.TOPIC_AUTHORIZATION_FAILED,
                          KafkaError.GROUP_AUTHORIZATION_FAILED):
            raise cp.FatalKafkaError(f"consumer of {self.id}: {err.str()} (topic {m.topic()!r}); "
                                     f"check that the topic exists and the client may read it")
        log.warning("worker %s: consumer error: %s", self.id, err.str())

    # ------------------------------------------------------------------ introspection
    def drops(self) -> dict:
        """Committed drops of this worker by ``(reason, operator)``."""
        total = self.task_manager.metrics()
        if self.globals is not None:
            for k, v in self.globals.metrics().items():
                total[k] = total.get(k, 0) + v
        return total

    def metrics(self) -> dict:
        """Committed drop counters by name (``late_records``, ``dropped_none_key``, ``skipped_records``,
        ``dead_lettered_records``, ``processing_errors``), zeros included, as the test driver names them."""
        return counts_by_name(self.drops())


class _Purger:
    """Deletes repartition records below the committed offsets (as Kafka Streams does): the topics
    keep ``retention.ms=-1`` so unprocessed records never expire, and this keeps them small.

    Requests run on the admin client's thread; their results are read here, on the worker's
    loop, which alone touches this state. A failed request is retried with exponential backoff
    (purging is housekeeping: it never stops the worker)."""

    def __init__(self, worker: "Worker"):
        self._w = worker
        self._admin = None
        self._todo: dict = {}               # (topic, partition) -> committed offset to purge below
        self._inflight: dict = {}           # (topic, partition) -> (future, offset)
        self._next = time.monotonic() + PURGE_INTERVAL_S
        self._backoff = PURGE_INTERVAL_S
        self._warned = False

    def committed(self, positions: dict) -> None:
        self._todo.update(positions)

    def tick(self) -> None:
        failures, succeeded = [], False
        for tp, (fut, off) in list(self._inflight.items()):
            if not fut.done():
                continue
            del self._inflight[tp]
            exc = fut.exception()
            if exc is None:
                succeeded = True
            else:
                failures.append(exc)
                if off > self._todo.get(tp, -1):
                    self._todo[tp] = off          # try again later
        if failures:
            self._failed(failures[0])
        elif succeeded:
            self._backoff = PURGE_INTERVAL_S
        now = time.monotonic()
        if not self._todo or self._inflight or now < self._next:
            return
        self._next = now + self._backoff
        todo, self._todo = self._todo, {}
        try:
            if self._admin is None:
                from ...kafka.admin import make_admin
                o = self._w.options
                self._admin = make_admin(o.bootstrap_servers, self._w.app_id, o.client("admin"))
            futures = self._admin.delete_records([TopicPartition(t, p, o) for (t, p), o in todo.items()],
                                                 request_timeout=10)
        except Exception as e:  # noqa: BLE001 - housekeeping
            for tp, off in todo.items():
                self._todo[tp] = max(off, self._todo.get(tp, -1))
            self._failed(e)
            return
        for tp_obj, fut in futures.items():
            tp = (tp_obj.topic, tp_obj.partition)
            self._inflight[tp] = (fut, todo.get(tp, -1))

    def _failed(self, e) -> None:
        self._backoff = min(PURGE_MAX_BACKOFF_S, self._backoff * 2)
        self._next = time.monotonic() + self._backoff
        err = cp.kafka_error(e)
        denied = err is not None and "AUTHORIZATION" in err.name()
        log.log(logging.WARNING if denied or not self._warned else logging.INFO,
                "worker %s: cannot purge processed repartition records (%s); retrying in %.0f s%s", self._w.id,
                err.str() if err is not None else e, self._backoff,
                ": grant the app DeleteRecords (ALTER on the topics)" if denied else "")
        self._warned = True


def _headers(msgs) -> list:
    return [m.headers() for m in msgs]


def _split_watermarks(tp, cols) -> tuple:
    """``(RawBatch or None, watermark values)`` of one fetched partition's columns: a repartition topic's
    watermark records (``runtime/watermarks.py``) are taken out, its records' carried stream times read."""
    keys, values, tss, offs = cols[:4]
    wms: list = []
    if len(cols) > 4:
        headers = cols[4]
        if WATERMARK_KEY in keys:
            keep = [i for i, k in enumerate(keys) if k != WATERMARK_KEY]
            wms = [values[i] for i, k in enumerate(keys) if k == WATERMARK_KEY]
            keys, values = [keys[i] for i in keep], [values[i] for i in keep]
            tss, offs, headers = [tss[i] for i in keep], [offs[i] for i in keep], [headers[i] for i in keep]
        if not keys:
            return None, wms
        return RawBatch(tp[0], tp[1], keys, values, tss, offs, carried_times(headers)), wms
    return RawBatch(tp[0], tp[1], keys, values, tss, offs), wms


def _positions(raws) -> str:
    return ", ".join(f"{r.topic}[{r.partition}] offsets {r.offsets[0]}..{r.offsets[-1]}" for r in raws)


def check_assignor(consumer_conf: dict) -> None:
    """Refuse an assignment strategy that would break co-partitioning or exactly-once.

    Tasks need partition N of every co-partitioned input on one member, which the eager
    ``range`` assignor guarantees; the cooperative protocol keeps partitions flowing while a
    rebalance moves others, which this runtime's revocation checkpoint does not cover."""
    strategy = str(consumer_conf.get("partition.assignment.strategy", ASSIGNMENT_STRATEGY))
    names = [x.strip() for x in strategy.split(",") if x.strip()]
    if names != [ASSIGNMENT_STRATEGY]:
        raise ConfigError(
            f"partition.assignment.strategy={strategy!r} is not supported: streamproc needs the eager "
            f"{ASSIGNMENT_STRATEGY!r} assignor, which puts partition N of co-partitioned inputs on one worker and "
            f"revokes everything before a rebalance moves it (the cooperative protocol would leave an "
            f"exactly-once hole). Remove the setting from --config.")


_MEMBER_STATES = {"STABLE", "PREPARING_REBALANCING", "COMPLETING_REBALANCING", "PREPARING_REBALANCE",
                  "COMPLETING_REBALANCE"}


def describe_group(options, group: str, *, instance_id: str | None = None, member_id: str | None = None,
                   describe=None) -> str:
    """The consumer group's state and members as the broker reports them (best effort, bounded), for the
    no-partitions warning. The asking worker knows two things the answer must agree with: it is a member
    (``member_id``, given once it joined; ``instance_id``, its ``group.instance.id``), and a group whose
    state says it has members has some. An answer that contradicts them (e.g. "STABLE, 0 members" from a
    broker that does not implement DescribeGroups faithfully) is not repeated as the group's state: the
    text says the state cannot be told. ``describe(group)``: the ``ConsumerGroupDescription`` (tests)."""
    try:
        if describe is None:
            from ...kafka.admin import make_admin

            admin = make_admin(options.bootstrap_servers, group, options.client("admin"))
            desc = admin.describe_consumer_groups([group], request_timeout=5)[group].result(timeout=6)
        else:
            desc = describe(group)
    except Exception as e:  # noqa: BLE001 - a diagnostic only
        return f"the group's state cannot be told: the broker could not describe it ({e})"
    state = str(getattr(desc.state, "name", desc.state)).upper()
    members = list(desc.members or ())
    ids = {m.member_id for m in members} | {m.group_instance_id for m in members if m.group_instance_id}

    def owned(m) -> str:
        tps = getattr(getattr(m, "assignment", None), "topic_partitions", None)
        return f" with {len(tps)} partition(s)" if tps is not None else ""

    shown = sorted(f"{m.group_instance_id or m.member_id}{owned(m)}" for m in members)
    listed = f"{len(members)} member(s)" + (f" ({', '.join(shown[:8])}{', ...' if len(shown) > 8 else ''})"
                                            if shown else "")
    me = (f"this worker ({instance_id}) is a member, member id {member_id}" if member_id
          else f"this worker ({instance_id}) has not been given a member id yet (still joining)")
    wrong = None
    if member_id and not ({member_id, instance_id} & ids):
        wrong = "it does not list this worker"
    elif state in _MEMBER_STATES and not members:
        wrong = f"a group in state {state} has members"
    elif state in ("EMPTY", "DEAD") and member_id:
        wrong = f"this worker is a member of it, so it is not {state}"
    if wrong is not None:
        return (f"its state cannot be told: the broker describes it as {state} with {listed}, which cannot be "
                f"right ({wrong}; {me}). The broker does not report group membership faithfully (the "
                f"development broker does not); ask the cluster's own tools "
                f"(kafka-consumer-groups --describe --members --group {group})")
    return (f"state {state} (as the broker reports it), {listed}; {me}: every partition may be owned by other "
            f"members (a group with more members than input partitions leaves some without any), and a "
            f"restarted instance waits for its static members' session timeout")


# ------------------------------------------------------------------------------------------------
# worker process entry point (multiprocessing "spawn": the topology is imported again, not pickled)

def worker_main(ref: str, app_id: str, options: RunOptions, index: int, process_id: str, errors,
                log_level: int = logging.WARNING, observe_queue=None) -> None:
    worker: list[Worker] = []

    def on_signal(signum, frame):
        if worker:
            worker[0].stop()
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    _die_with_parent()
    report = None
    if observe_queue is not None:
        from ..instance.logs import worker_logging

        worker_logging(observe_queue, log_level, index)

        def report(snapshot):
            observe_queue.put_nowait(("stats", index, snapshot))
    else:
        logging.basicConfig(level=log_level)
    code = EXIT_ERROR
    try:
        from ...plan import compile_topology
        from ...loader import load_topology

        plan = compile_topology(load_topology(ref, app_id))
        w = Worker(plan, options, index, process_id, report=report)
        worker.append(w)
        w.run()
        code = EXIT_OK
    except KeyboardInterrupt:
        code = EXIT_OK
    except cp.WorkerFenced as e:
        _report(errors, index, str(e))
        code = EXIT_FENCED
    except UnrecoverableError as e:
        _report(errors, index, str(e), "state" if isinstance(e, StateError) else "unrecoverable")
        code = EXIT_UNRECOVERABLE
    except StreamprocError as e:
        _report(errors, index, str(e))
    except Exception as e:  # noqa: BLE001 - one paragraph for people, the traceback at debug level
        log.debug("worker %d crashed", index, exc_info=True)
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
