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

from ..errors import BrokerError, StateError, StreamprocError
from ..kafka.config import (consumer_config, producer_config, restore_consumer_config,
                            transactional_producer_config)
from ..operators import RawBatch
from ..state import MemoryBackend
from . import checkpoint as cp
from ._config import RunOptions
from .restore import Restorer
from .task import Task

log = logging.getLogger("streamproc.worker")

#: Worker exit codes (the supervisor restarts on anything but 0 and EXIT_STATE).
#: EXIT_STATE: the local state cannot be used (fingerprint mismatch, format, damaged): restarting
#: cannot help, the instance stops with the worker's message.
EXIT_OK, EXIT_ERROR, EXIT_FENCED, EXIT_STATE = 0, 1, 75, 78

#: Seconds a worker waits for a task directory another worker of this instance is releasing.
TASK_LOCK_TIMEOUT_S = 15.0

_EOF = KafkaError._PARTITION_EOF

#: How often processed records are deleted from repartition topics.
PURGE_INTERVAL_S = 30.0


class ProcessingFailed(StreamprocError):
    """A record could not be processed (user function raised, bad record under on_error='fail')."""


class TaskDirBusy(StreamprocError):
    """A task directory is locked by another process (restartable, unlike other ``StateError``s)."""


def instance_id(app_id: str, process_id: str, index: int) -> str:
    return f"{app_id}-{process_id}-{index}"


class Worker:
    """Runs the tasks of one consumer-group member. ``run()`` blocks until ``stop()``."""

    def __init__(self, plan, options: RunOptions, index: int = 0, process_id: str = "local",
                 backend_factory=None):
        self.plan = plan
        self.options = options
        self.index = index
        self.app_id = plan.app_id
        self.eos = options.eos
        self.id = instance_id(self.app_id, process_id, index)
        self.timeout_s = 30.0
        self.batch_size = options.batch_size
        self.commit_interval_s = options.commit_interval_s
        self.dlq_topic = f"{self.app_id}-dlq"
        self._backend_factory = backend_factory or self._default_backend

        self._st_of_topic = {t: st for st in plan.subtopologies for t in st.input_topics}
        self.input_topics = list(self._st_of_topic)
        self._changelog_topics = {s.changelog for s in plan.stores}
        self._repartition_topics = set(plan.repartition_topics)
        self._purgeable: dict[tuple, int] = {}           # repartition (topic, partition) -> committed offset
        self._next_purge = time.monotonic() + PURGE_INTERVAL_S
        self._admin = None

        # task bookkeeping
        self.tasks: dict[tuple, Task] = {}               # active tasks
        self._restoring: dict[tuple, tuple] = {}         # key -> (subtopology, partition, backend)
        self._to_restore: list[tuple] = []               # keys whose restore is not started yet
        self._suspended: dict[tuple, object] = {}        # key -> backend of a revoked task
        self._tps_of: dict[tuple, set] = {}              # key -> {(topic, partition)} assigned
        self._dropped: set = set()                       # (topic, partition) whose fetched records were dropped

        # the open checkpoint (see checkpoint.py)
        self.open = False
        self.in_txn = False
        self.dirty: dict[tuple, Task] = {}
        self.positions: dict[tuple, int] = {}
        self.changelog_offsets: dict[tuple, int] = {}
        self.delivery_errors: list = []
        self.checkpoints = 0
        self._checkpoint_due = 0.0

        self._epoch = 0
        self._cooperative = False
        self._fatal: BaseException | None = None
        self._failed = False
        self._stop = threading.Event()
        self.started = threading.Event()
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.restorer: Restorer | None = None
        self.records_in = 0

    def _default_backend(self, st, partition: int):
        """``RocksDBBackend`` of task (st, partition) under the state dir (``state_backend="rocksdb"``),
        else a ``MemoryBackend``. Stateless sub-topologies get a MemoryBackend either way."""
        if self.options.state_backend == "memory" or not st.stores:
            return MemoryBackend()
        from ..state.rocksdb import RocksDBBackend, task_dir

        path = task_dir(self.options.state_dir, self.app_id, f"{st.id}_{partition}")
        try:
            return RocksDBBackend.for_task(path, st, lock_timeout=TASK_LOCK_TIMEOUT_S)
        except StateError as e:
            if "is in use by process" in str(e):     # the lock: transient (a worker releasing it, replay)
                raise TaskDirBusy(f"worker {self.id}: {e}") from None
            raise

    @staticmethod
    def _keep_when_revoked(backend) -> bool:
        """Memory backends of revoked tasks are kept (the state would be lost); anything on disk is
        closed so another worker may lock its task directory (reopening costs a few ms)."""
        return isinstance(backend, MemoryBackend)

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
        self.producer = Producer(pconf)
        if self.eos:
            try:
                cp._call("init_transactions", lambda: self.producer.init_transactions(self.timeout_s), 60.0)
            except cp._Abortable as e:
                raise BrokerError(f"worker {self.id} could not start its transactional producer: {e}") from None
        cconf = consumer_config(bootstrap, self.app_id, o.client("consumer"), group_instance_id=self.id)
        cconf["error_cb"] = self._on_error
        self._reset_policy = str(cconf.get("auto.offset.reset", "earliest"))
        self._cooperative = "cooperative" in str(cconf.get("partition.assignment.strategy", ""))
        self.consumer = Consumer(cconf)
        self.restorer = Restorer(restore_consumer_config(bootstrap, self.app_id, o.client("restore")),
                                 stall_timeout_s=o.restore_stall_timeout_s)
        self.consumer.subscribe(self.input_topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        log.info("worker %s started: %s, inputs %s", self.id, self.options.guarantee, ", ".join(self.input_topics))
        self.started.set()

    def _close(self, clean: bool) -> None:
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
        if self.producer is not None:
            try:
                self.producer.flush(5 if clean else 0)
                if hasattr(self.producer, "close"):      # recent confluent-kafka
                    with warnings.catch_warnings():        # "abort failed during close" once fenced
                        warnings.simplefilter("ignore", RuntimeWarning)
                        self.producer.close()
            except Exception:  # noqa: BLE001
                pass
        for b in list(self._suspended.values()):
            b.close()
        self._suspended.clear()
        for t in self.tasks.values():
            t.state.backend.close()
        self.tasks.clear()
        for entry in self._restoring.values():
            entry[2].close()
        self._restoring.clear()
        self._to_restore.clear()

    # ------------------------------------------------------------------ callbacks
    def _on_delivery(self, err, msg) -> None:
        if err is not None:
            self.delivery_errors.append((err, msg.topic()))
            return
        t = msg.topic()
        if t in self._changelog_topics:
            k = (t, msg.partition())
            o = msg.offset()
            if o > self.changelog_offsets.get(k, -1):
                self.changelog_offsets[k] = o

    def _on_error(self, err) -> None:
        if err.fatal():
            self._fatal = cp.fatal_error(err, "Kafka client")
        elif err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            log.warning("worker %s: %s", self.id, err.str())
        else:
            log.info("worker %s: Kafka client: %s", self.id, err.str())

    def _key(self, topic: str, partition: int) -> tuple:
        return (self._st_of_topic[topic].id, partition)

    def _on_assign(self, consumer, partitions) -> None:
        self._epoch += 1
        try:
            if self._cooperative:         # only if the user overrode the (eager) range assignor
                consumer.incremental_assign(partitions)
            else:
                consumer.assign(partitions)
            to_pause = []
            for tp in partitions:
                key = self._key(tp.topic, tp.partition)
                self._tps_of.setdefault(key, set()).add((tp.topic, tp.partition))
                if key in self.tasks or key in self._restoring:
                    if key in self._restoring:
                        to_pause.append(TopicPartition(tp.topic, tp.partition))
                    continue
                st = self._st_of_topic[tp.topic]
                backend = self._suspended.pop(key, None) or self._backend_factory(st, tp.partition)
                if st.stateful:
                    self._restoring[key] = (st, tp.partition, backend)
                    self._to_restore.append(key)
                    to_pause.append(TopicPartition(tp.topic, tp.partition))
                else:
                    self.tasks[key] = Task(st, tp.partition, backend)
            if to_pause:
                consumer.pause(to_pause)
            for b in self._suspended.values():
                b.close()
            self._suspended.clear()
            log.info("worker %s assigned %d partition(s): %d task(s) ready, %d restoring", self.id,
                     len(partitions), len(self.tasks), len(self._restoring))
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
        gone = {(tp.topic, tp.partition) for tp in partitions}
        keys = set()
        for key, tps in list(self._tps_of.items()):
            if tps & gone:
                tps -= gone
                if not tps:
                    keys.add(key)
                    del self._tps_of[key]
        revoked = []
        for key in keys:
            task = self.tasks.pop(key, None)
            if task is not None:
                revoked.append((key, task.state.backend))
            entry = self._restoring.pop(key, None)
            if entry is not None:
                revoked.append((key, entry[2]))
            if key in self._to_restore:
                self._to_restore.remove(key)
            self.dirty.pop(key, None)
        if self.restorer is not None:
            self.restorer.cancel(keys)
        for key, backend in revoked:
            if self._keep_when_revoked(backend):
                self._suspended[key] = backend
            else:
                backend.close()
        for tp in gone:
            self.positions.pop(tp, None)
            self._dropped.discard(tp)
        if not self.positions and not self.dirty:
            self.open = self.in_txn

    # ------------------------------------------------------------------ checkpoint hooks
    def rebuild_tasks(self, keys) -> None:
        """Recreate tasks from their backends (after ``state.discard()``): operators re-index state."""
        for key in keys:
            old = self.tasks.get(key)
            if old is None:
                continue
            new = Task(old.subtopology, old.partition, old.state.backend)
            new.ctx.metrics = old.ctx.metrics
            self.tasks[key] = new

    def reset_to_committed(self, tps=None) -> None:
        """Seek the given (default: all active) input partitions back to their committed offsets."""
        if tps is None:
            tps = [tp for key in self.tasks for tp in self._tps_of.get(key, ())]
        tps = [TopicPartition(t, p) for t, p in tps]
        if not tps:
            return
        try:
            committed = self.consumer.committed(tps, timeout=self.timeout_s)
        except KafkaException as e:
            err = cp.kafka_error(e)
            raise cp.FatalKafkaError(f"cannot read the committed offsets to resume from: "
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

    # ------------------------------------------------------------------ main loop
    def _tick(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        restoring = bool(self._to_restore) or self.restorer.pending
        if restoring:
            self._restore_step()
        if self.open:
            timeout = min(0.1, max(0.0, self._checkpoint_due - time.monotonic()))
        else:
            timeout = 0.1
        if restoring:
            timeout = 0.0
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
        if self.open and time.monotonic() >= self._checkpoint_due:
            done = {tp: o for tp, o in self.positions.items() if tp[0] in self._repartition_topics}
            if cp.checkpoint(self) and done:
                self._purgeable.update(done)
            if self._purgeable and time.monotonic() >= self._next_purge:
                self._purge_repartition_topics()

    def _purge_repartition_topics(self) -> None:
        """Delete repartition records below the committed offsets (as Kafka Streams does): the
        topics keep ``retention.ms=-1`` so unprocessed records never expire, and this keeps them small."""
        self._next_purge = time.monotonic() + PURGE_INTERVAL_S
        todo, self._purgeable = self._purgeable, {}
        try:
            if self._admin is None:
                from ..kafka.admin import make_admin
                self._admin = make_admin(self.options.bootstrap_servers, self.app_id, self.options.client("admin"))
            futures = self._admin.delete_records([TopicPartition(t, p, o) for (t, p), o in todo.items()],
                                                 request_timeout=10)
        except Exception as e:  # noqa: BLE001 - purging is housekeeping
            self._purge_failed(e)
            return
        for f in futures.values():
            f.add_done_callback(lambda fut: fut.exception() and self._purge_failed(fut.exception()))

    def _purge_failed(self, e) -> None:
        if self._next_purge != float("inf"):
            err = cp.kafka_error(e)
            denied = err is not None and "AUTHORIZATION" in err.name()
            log.log(logging.WARNING if denied else logging.INFO,
                    "worker %s: cannot purge processed repartition records (%s); repartition topics keep them "
                    "(retention.ms=-1)%s", self.id, err.str() if err is not None else e,
                    ": grant the app DeleteRecords (ALTER on the topics)" if denied else "")
        self._next_purge = float("inf")

    def _restore_step(self) -> None:
        while self._to_restore:
            key = self._to_restore.pop(0)
            st, p, backend = self._restoring[key]
            self.restorer.start(key, backend, st.stores, p)
        for key in self.restorer.step(0.01 if self.tasks else 0.05):
            entry = self._restoring.pop(key, None)
            if entry is None:
                continue
            st, p, backend = entry
            self.tasks[key] = Task(st, p, backend)
            tps = sorted(self._tps_of.get(key, ()))
            dropped = [tp for tp in tps if tp in self._dropped]
            if dropped:
                self.reset_to_committed(dropped)
            self.consumer.resume([TopicPartition(t, q) for t, q in tps])
            log.info("worker %s: task %s restored (stream time %s), processing", self.id, key,
                     self.tasks[key].state.stream_time)

    def _drop_stale(self, msgs) -> list:
        """A rebalance ran inside this consume(): records fetched before it may be stale. Drop them
        and re-read those partitions from their committed offsets."""
        tps = set()
        for m in msgs:
            if m.error() is None:
                tps.add((m.topic(), m.partition()))
        active = [tp for tp in tps if self._key(*tp) in self.tasks]
        self._dropped.update(tps)
        if active:
            self.reset_to_committed(active)
        return [m for m in msgs if m.error() is not None]

    def _process(self, msgs) -> None:
        groups = self._columns(msgs)
        if not groups:
            return
        if not self.open:
            self.open = True
            self._checkpoint_due = time.monotonic() + self.commit_interval_s
        if self.eos and not self.in_txn:
            cp._call("begin_transaction", self.producer.begin_transaction, self.timeout_s)
            self.in_txn = True
        produce = self._produce_fast
        for tp, (keys, values, tss, offs) in groups.items():
            topic, partition = tp
            key = self._key(topic, partition)
            task = self.tasks.get(key)
            if task is None:
                self._dropped.add(tp)        # restoring, or revoked: re-read from the committed offset
                continue
            try:
                produced = task.process(RawBatch(topic, partition, keys, values, tss, offs))
            except StreamprocError as e:
                raise ProcessingFailed(f"task {task.id} stopped on {topic}[{partition}] offsets "
                                       f"{offs[0]}..{offs[-1]}: {e}") from None
            except Exception as e:  # noqa: BLE001
                raise ProcessingFailed(f"task {task.id} stopped on {topic}[{partition}] offsets "
                                       f"{offs[0]}..{offs[-1]}: {type(e).__name__}: {e}") from e
            for out_topic, kb, vb, ts in produced:
                for i in range(len(kb)):
                    produce(out_topic, vb[i], kb[i], ts[i])
            if task.ctx.dead_letters:
                self._dead_letters(task)
            self.positions[tp] = offs[-1] + 1
            self.dirty[key] = task
            self.records_in += len(offs)

    def _columns(self, msgs) -> dict:
        """``{(topic, partition): (keys, values, timestamps, offsets)}`` in offset order.

        Column by column with comprehensions (one C-level loop per field); messages are only
        regrouped when a batch spans several partitions.
        """
        if any(m.error() is not None for m in msgs):
            for m in msgs:
                if m.error() is not None:
                    self._consumer_error(m)
            msgs = [m for m in msgs if m.error() is None]
            if not msgs:
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
        return {tp: ([m.key() for m in g], [m.value() for m in g], [m.timestamp()[1] for m in g],
                     [m.offset() for m in g]) for tp, g in by_tp.items()}

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
            self.produce(self.dlq_topic, dl.value, dl.key, timestamp=max(int(dl.timestamp), 0), headers=headers)
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
    def metrics(self) -> dict:
        total: dict = {}
        for t in self.tasks.values():
            for k, v in t.metrics.items():
                total[k] = total.get(k, 0) + v
        return total


# ------------------------------------------------------------------------------------------------
# worker process entry point (multiprocessing "spawn": the topology is imported again, not pickled)

def worker_main(ref: str, app_id: str, options: RunOptions, index: int, process_id: str, errors,
                log_level: int = logging.WARNING) -> None:
    worker: list[Worker] = []

    def on_signal(signum, frame):
        if worker:
            worker[0].stop()
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    _die_with_parent()
    logging.basicConfig(
        level=log_level,
        format='{"ts":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}')
    code = EXIT_ERROR
    try:
        from ..plan import compile_topology
        from ..loader import load_topology

        plan = compile_topology(load_topology(ref, app_id))
        w = Worker(plan, options, index, process_id)
        worker.append(w)
        w.run()
        code = EXIT_OK
    except KeyboardInterrupt:
        code = EXIT_OK
    except cp.WorkerFenced as e:
        _report(errors, index, str(e))
        code = EXIT_FENCED
    except StateError as e:
        _report(errors, index, str(e))
        code = EXIT_STATE
    except StreamprocError as e:
        _report(errors, index, str(e))
    except Exception as e:  # noqa: BLE001 - one paragraph for people, the traceback at debug level
        log.debug("worker %d crashed", index, exc_info=True)
        _report(errors, index, _describe(e))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _report(channel, index: int, message: str) -> None:
    try:
        channel.send((index, message))
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
