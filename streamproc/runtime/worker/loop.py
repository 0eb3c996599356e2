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
    open checkpoint (transaction); every commit interval :meth:`.checkpoint.Checkpoint.commit`.
    Stateful tasks restore first (``changelog/restore.py``) with their input partitions paused.

This module is the loop and the Kafka callbacks. The rest of a worker, by what it owns::

    checkpoint.py            the open checkpoint: its transaction, commit and rollback (THE order)
    fetch.py                 what a consume() returned, as columns and batches
    produce.py               records out: task outputs, dead letters
    eventtime.py             caught-up inputs, KIP-695 readiness and pacing, idle_close, watermarks
    restoring.py             when assigned tasks restore
    purge.py                 deleting processed repartition records
    group.py                 the assignor check, the no-partitions warning
    clients.py, backends.py  the Kafka clients and the state backends a worker opens
    gauges.py, stats.py      what a worker reports
    errors.py                what stops a worker
    process.py               the worker process: entry point, exit codes
"""
from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from ...errors import StreamprocError
from ...kafka.config import consumer_config, restore_consumer_config
from ...operators.base import counts_by_name
from ..changelog.restore import Restorer
from ..engine.lifecycle import Phase, TaskManager
from ..options import RunOptions
from . import gauges
from .checkpoint import Checkpoint
from .backends import keep_when_revoked, open_global_tables, task_backend
from .clients import DEFAULT_TXN_BUDGET_S, close_producer, open_consumer, open_producer, partition_count
from .egress import EgressWatch
from .errors import ProcessingFailed, consumer_error, fatal_error, loop_failure
from .eventtime import EventTime, WatermarkPublisher
from .fetch import columns, next_offset, positions, split_watermarks
from .group import IdleWatch
from .misplaced import MisplacedCheck
from .produce import Output
from .purge import Purger
from .restoring import RestoreSchedule
from .stats import WorkerStats

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Producer

log = logging.getLogger("streamproc.worker")


def instance_id(app_id: str, process_id: str, index: int) -> str:
    return f"{app_id}-{process_id}-{index}"


class Worker:
    """Runs the tasks of one consumer-group member. ``run()`` blocks until ``stop()``.

    The worker is the loop and the Kafka callbacks only: the tasks and their phases live in
    :class:`~..engine.lifecycle.TaskManager`, the open checkpoint and its transaction in
    :class:`~.checkpoint.Checkpoint`, the restore loop in :class:`~..changelog.restore.Restorer`,
    event time in :class:`~.eventtime.EventTime`, output in :class:`~.produce.Output`, repartition
    purging in :class:`~.purge.Purger`.
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
        self._only_topic = self.input_topics[0] if len(self.input_topics) == 1 else None
        self._changelog_topics = {s.changelog for s in plan.stores if s.internal_changelog}
        self._repartition_topics = set(plan.repartition_topics)
        self.global_stores: dict = {}                   # name -> GlobalStore, filled when the worker opens
        self.globals = None                             # GlobalTables, when the topology has global tables
        self.task_manager = TaskManager(st_of_topic, backend_factory or self._default_backend,
                                        self._keep_when_revoked, self.global_stores, self.partition_count)
        self._partition_counts: dict[str, int] = {}
        self._marks_checked_at = 0.0
        self.event_time = EventTime(plan, self.id, options.commit_interval_s, self.partition_count)
        self.stats = WorkerStats(self.id, self._repartition_topics | self._changelog_topics)
        self.stats.track(topics=list(plan.sink_topics) + sorted(self._repartition_topics | self._changelog_topics))
        self.misplaced = MisplacedCheck(plan, self.partition_count, self.id)
        self.stats.misplaced = self.misplaced.counts          # the same dict: counted as checked
        self._report = report                            # callable(snapshot): to the supervisor
        self._observe_at = 0.0
        self._observed_epoch = 0
        self._restores = RestoreSchedule(self.task_manager, self.id, self.timeout_s)
        self._dropped: set = set()                       # (topic, partition) whose fetched records were dropped
        self._purger: Purger | None = None
        self._idle = IdleWatch(options, self.app_id, self.id)
        self._egress = EgressWatch(plan, consumer_config(options.bootstrap_servers, self.app_id,
                                                         options.client("consumer")), self.id)

        self._epoch = 0
        self._fatal: BaseException | None = None
        self._failed = False
        self._stop = threading.Event()
        self.started = threading.Event()
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.restorer: Restorer | None = None
        self.output: Output | None = None
        self.watermarks: WatermarkPublisher | None = None
        self.ckpt = self._checkpoint(DEFAULT_TXN_BUDGET_S)   # no clients yet: never opened
        self.records_in = 0
        self._transport_warned_at = -60.0

    def _default_backend(self, st, partition: int):
        return task_backend(self.options, self.app_id, self.id, st, partition)

    _keep_when_revoked = staticmethod(keep_when_revoked)

    def _checkpoint(self, txn_budget_s: float, reset_policy: str = "earliest") -> Checkpoint:
        """The worker's checkpoint over its clients (as they are now) and collaborators."""
        return Checkpoint(self.producer, self.consumer, self.task_manager, eos=self.eos,
                          commit_interval_s=self.options.commit_interval_s, txn_budget_s=txn_budget_s,
                          timeout_s=self.timeout_s, stats=self.stats, watermarks=self.watermarks,
                          send=None if self.output is None else self.output.send,
                          send_reported=None if self.output is None else self.output.send_reported,
                          send_many=None if self.output is None else self.output.send_many,
                          changelog_topics=self._changelog_topics, reset_policy=reset_policy,
                          on_rewind=self._rewound, worker_id=self.id)

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
            self.ckpt.commit()
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
        return loop_failure(e, self.id, self._fatal)

    def _raise_fatal(self) -> None:
        """Raise what a Kafka callback recorded as fatal, if anything."""
        if self._fatal is not None:
            raise self._fatal

    def _open(self) -> None:
        o = self.options
        self.producer, txn_budget_s = open_producer(o, self.app_id, self.id, self._on_delivery, self._on_error)
        self.consumer, reset_policy = open_consumer(o, self.app_id, self.id, self._on_error)
        self.output = Output(self.producer, self.stats, self.dlq_topic, self._raise_fatal, self._on_delivery)
        self.watermarks = WatermarkPublisher(self.task_manager, self.event_time, self.partition_count,
                                             self.output.send)
        self.ckpt = self._checkpoint(txn_budget_s, reset_policy)
        if self.eos:
            self.ckpt.init_transactions()
        self.restorer = Restorer(restore_consumer_config(o.bootstrap_servers, self.app_id, o.client("restore")),
                                 stall_timeout_s=o.restore_stall_timeout_s)
        if self._repartition_topics:
            self._purger = Purger(o, self.app_id, self.id)
        if self.plan.global_tables:
            self._open_globals()
        self.consumer.subscribe(self.input_topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        log.info("worker %s started: %s, inputs %s", self.id, self.options.guarantee, ", ".join(self.input_topics))
        self.started.set()

    def _open_globals(self) -> None:
        """Restore the global tables to their end before joining the group (DESIGN: before processing)."""
        self.globals = open_global_tables(self.options, self.app_id, self.id, self.index, self.plan.global_tables)
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
                self.ckpt.abort()
            except Exception as e:  # noqa: BLE001 - we are failing already
                log.debug("abort while stopping failed: %s", e)
        if self.consumer is not None:
            try:
                self.consumer.close()      # on_revoke: commits nothing more (clean: nothing is open)
            except Exception as e:  # noqa: BLE001
                log.debug("consumer close: %s", e)
        if self.restorer is not None:
            self.restorer.close()
        self._egress.close()
        if self.globals is not None:
            self.globals.close()
            self.globals = None
            self.global_stores.clear()
        if self.producer is not None:
            close_producer(self.producer, clean)
        self.task_manager.close_all()
        self._restores.clear()

    # ------------------------------------------------------------------ callbacks
    def _on_delivery(self, err, msg) -> None:
        self.ckpt.delivered(err, msg)

    def _on_error(self, err) -> None:
        if err.fatal():
            self._fatal = fatal_error(err, "Kafka client")
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
            self._restores.assigned(to_restore)
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
                self.ckpt.commit()
            else:
                self.ckpt.abort()
        except BaseException as e:  # noqa: BLE001
            self._fatal = self._fatal or e
            try:
                self.ckpt.abort()
            except BaseException:  # noqa: BLE001
                pass
        self._drop(partitions)

    def _on_lost(self, consumer, partitions) -> None:
        self._epoch += 1
        log.warning("worker %s lost %d partition(s) (session timed out?): dropping the open checkpoint",
                    self.id, len(partitions))
        try:
            self.ckpt.abort()
            self._drop(partitions)
            self.ckpt.rewind()     # partitions still held (if any) re-read what was dropped
        except BaseException as e:  # noqa: BLE001
            self._fatal = self._fatal or e

    def _drop(self, partitions) -> None:
        gone = [(tp.topic, tp.partition) for tp in partitions]
        self.event_time.revoked(gone)
        left = self.task_manager.revoke(gone)
        if self.restorer is not None:
            self.restorer.cancel(left)
        self._restores.revoked(left)
        self._dropped.difference_update(gone)
        self.ckpt.revoked(gone, left)

    def _rewound(self, tp) -> None:
        """The checkpoint seeked ``tp`` back to its committed offset: its records are read again."""
        self._dropped.discard(tp)
        self.event_time.rewound(tp)

    # ------------------------------------------------------------------ main loop
    def _tick(self) -> None:
        self._raise_fatal()
        restoring = self._restores.waiting or self.restorer.pending
        if restoring:
            self._restore_step()
        if self.globals is not None:
            self.globals.poll()               # between batches: a batch sees one consistent global table
        c = self.ckpt
        timeout = 0.0 if restoring else (min(0.1, max(0.0, c.due - time.monotonic())) if c.open else 0.1)
        epoch = self._epoch
        msgs = self.consumer.consume(self.batch_size, timeout)
        self._raise_fatal()
        if self._epoch != epoch and msgs:
            msgs = self._drop_stale(msgs)
        if msgs:
            self._process(msgs)
        else:
            self.producer.poll(0)
        if self.event_time.gated:
            self._drain_held()
        if self.plan.idle_close is not None:
            self._idle_close()
        self._commit_when_due()
        if self._egress.active:
            self._egress.step(self.task_manager.running_tasks(), self.consumer, self.event_time.paused)
            self.stats.egress_paused = len(self._egress.paused)
        self._idle.tick(self.task_manager.counts(), self.consumer)
        if time.monotonic() >= self._observe_at or self._epoch != self._observed_epoch:
            self.observe()                  # also at once after a rebalance: the status follows it
            self.stats.log_drops()          # summaries held back by the 30 s limit, also when idle

    def _commit_when_due(self) -> None:
        """Commit the open checkpoint once its interval is over (then purge what it committed of the
        repartition topics); open one when a watermark is due (idle now, or due again)."""
        c = self.ckpt
        if not c.open and self._repartition_topics and time.monotonic() >= self._marks_checked_at:
            self._marks_checked_at = time.monotonic() + self.options.commit_interval_s
            if self.watermarks.due():
                c.begin()
        if c.open and time.monotonic() >= c.due and c.commit() and self._purger is not None:
            # only what the group's offsets now say was processed (at-least-once: a failed offset commit
            # leaves its records to be read again, so they must stay)
            done = {tp: o for tp, o in c.offsets_committed.items() if tp[0] in self._repartition_topics}
            if done:
                self._purger.committed(done)
        if self._purger is not None:
            self._purger.tick()

    def observe(self, final: bool = False) -> dict:
        """Refresh the gauges of ``stats`` (lag, assignment, tasks, restore progress, store sizes) and send
        the snapshot to the supervisor. About once a second, from the loop, and after a rebalance;
        ``final``: the last report of a stopping worker (the supervisor then drops its gauges)."""
        self._observe_at = time.monotonic() + gauges.OBSERVE_INTERVAL_S
        self._observed_epoch = self._epoch
        gauges.refresh(self.stats, self.task_manager, self.consumer, self.restorer, self.event_time, self.id)
        snap = self.stats.snapshot(final)
        if self._report is not None:
            try:
                self._report(snap)
            except Exception as e:  # noqa: BLE001 - reporting must never stop processing
                log.debug("worker %s: stats not reported: %s", self.id, e)
        return snap

    def _restore_step(self) -> None:
        if self._restores.waiting:
            # starting a restore reads end offsets (blocking calls): never inside an open transaction
            if self.ckpt.in_txn:
                self.ckpt.commit()
            self._restores.start(self.restorer, self.consumer)
        for mt in self._restores.finished(self.restorer):
            tps = sorted(mt.inputs)
            dropped = [tp for tp in tps if tp in self._dropped]
            if dropped:
                self.ckpt.rewind(dropped)
            self.consumer.resume([TopicPartition(t, q) for t, q in tps])
            log.info("worker %s: task %s restored (stream time %s), processing", self.id, mt.key,
                     mt.task.state.stream_time)

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
            self.ckpt.rewind(active)
        return [m for m in msgs if m.error() is not None]

    # ------------------------------------------------------------------ processing
    def _process(self, msgs) -> None:
        groups = self._columns(msgs)
        if not groups:
            return
        self.ckpt.begin()
        mgr = self.task_manager
        by_task: dict = {}
        for tp, cols in groups.items():
            key = mgr.key_of(*tp)
            if mgr.running(key) is None:
                self._dropped.add(tp)        # restoring, or revoked: re-read from the committed offset
                continue
            self.misplaced.check(tp[0], tp[1], cols[0])
            by_task.setdefault(key, []).append((tp, cols))
        for key, items in by_task.items():
            self._process_task(key, mgr.running(key), items)

    def _process_task(self, key, task, items: list) -> None:
        """Run the fetched ``items`` ``[((topic, partition), columns)]`` of one task in the open checkpoint."""
        raws, marks = [], []
        for tp, cols in items:
            raw, wms = split_watermarks(tp, cols)
            if raw is not None:
                raws.append(raw)
            if wms:
                marks.append((tp[0], wms))
        gated = len(task.input_partitions) > 1
        # where each input held before ends: records of an input not in this fetch may go now too
        ends = _held_ends(task)
        try:
            if raws or (gated and task.holding):
                self.output.outputs(task.process_many(raws, self.event_time.ready(key, task) if gated else None))
            # a watermark follows the records before it: while some of them wait in the task, it is
            # dropped (the upstream task writes a newer one within REPUBLISH_S)
            marks = [(t, w) for t, w in marks if task.held_from((t, task.partition)) is None]
            if marks:
                for topic, wms in marks:
                    task.watermarks(topic, wms, self.event_time.upstreams(topic))
                self.output.outputs(task.advance())
        except StreamprocError as e:
            raise ProcessingFailed(f"task {task.id} stopped on {positions(raws)}: {e}") from None
        except Exception as e:  # noqa: BLE001
            raise ProcessingFailed(f"task {task.id} stopped on {positions(raws)}: "
                                   f"{type(e).__name__}: {e}") from e
        if task.ctx.dead_letters:
            self.output.dead_letters(task)
        for raw in raws:             # counted when fetched; a held record is committed with its checkpoint
            self.records_in += len(raw.keys)
            self.stats.consume((raw.topic, raw.partition), len(raw.keys))
        for tp, cols in items:
            ends[tp] = next_offset(cols)
        self._ran(key, task, ends)
        if gated:
            self.event_time.pace(task, self.consumer)

    def _ran(self, key, task, ends: dict) -> None:
        """The positions to commit of what ``task`` ran: the first record still held, else past them."""
        for tp, end in ends.items():
            held = task.held_from(tp)
            self.ckpt.ran(key, tp, end if held is None else held)

    def _drain_held(self) -> None:
        """Give tasks holding records back a chance to go on (an input caught up or was fetched since)."""
        for key, task in self.task_manager.running_tasks().items():
            if task.holding:
                ready = self.event_time.ready(key, task)
                if task.can_go(ready):
                    self._process_held(key, task, ready)

    def _process_held(self, key, task, ready: set) -> None:
        self.ckpt.begin()
        ends = _held_ends(task)
        try:
            self.output.outputs(task.process_many([], ready))
        except StreamprocError as e:
            raise ProcessingFailed(f"task {task.id} stopped: {e}") from None
        if task.ctx.dead_letters:
            self.output.dead_letters(task)
        self._ran(key, task, ends)
        self.event_time.pace(task, self.consumer)

    def _idle_close(self) -> None:
        """``Topology(idle_close=...)``: advance the stream time of the tasks idle for that long
        (``EventTime.idle_close``) in the open checkpoint."""
        for key, task, target in self.event_time.idle_close(self.task_manager.running_tasks()):
            self.ckpt.begin()
            self.output.outputs(task.advance(target))
            self.ckpt.touched(key)

    def _columns(self, msgs) -> dict:
        """``{(topic, partition): columns}`` of a fetch (``fetch.columns``); what it says of the inputs' ends
        goes to ``event_time``."""
        groups, ends = columns(msgs, self._repartition_topics, self._consumer_error, self._only_topic)
        self.event_time.fetched(groups)        # records arrived: not at the end any more
        if ends:
            self.event_time.ended(ends)
        return groups

    def _consumer_error(self, m) -> None:
        consumer_error(m, self.id)

    def partition_count(self, topic: str) -> int:
        """How many partitions ``topic`` (an output of this worker's tasks) has, from the cluster's metadata
        (asked once per topic: ``run`` created or checked every internal topic before the workers started)."""
        n = self._partition_counts.get(topic)
        if n is None:
            n = self._partition_counts[topic] = partition_count(self.producer, topic, self.timeout_s)
        return n

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


def _held_ends(task) -> dict:
    """Where what ``task`` holds of each input ends (next offset), for the inputs it holds records of."""
    return {tp: task.held_until(tp) for tp in task.input_partitions if task.held_until(tp) is not None}
