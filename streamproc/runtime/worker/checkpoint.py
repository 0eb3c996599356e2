"""THE checkpoint protocol (DESIGN section 5), in one place: :class:`Checkpoint`.

A worker processes input in batches inside one open checkpoint: outputs (sink and
repartition records, dead letters) are produced as they come, store writes collect in each
task's write cache, and the consumed positions collect in the checkpoint (:meth:`Checkpoint.ran`).
Every ``commit_interval_ms`` (and on revocation and shutdown) :meth:`Checkpoint.commit` closes it:

exactly-once (one transactional producer per worker; the transaction was begun,
:meth:`Checkpoint.begin`, before the first record of this checkpoint was produced)
    1. for each task: ``state.changes()`` -> one changelog record per changed key to
       ``<app-id>-<store>-changelog``, partition = the task's partition (key and value in the
       internal codec, ``state.codec``; no value = tombstone), then the partition's metadata
       record (store definition and stream time, ``changelog/records.py`` ``META_KEY``) when anything
       was written or the stream time moved. A table read from a topic writes nothing: that topic
       is its changelog, and the offset its state reflects is the task's consumed position;
       then the tasks feeding repartition topics write their watermarks (the
       :class:`~.eventtime.WatermarkPublisher` the checkpoint is given);
    2. ``send_offsets_to_transaction(positions, consumer_group_metadata())``;
    3. ``flush()`` (delivery reports give the changelog offsets), ``commit_transaction()``;
    4. only then, for each task: ``state.apply(changelog_offsets)``: the backend takes the
       write cache and the offsets it reflects in one write (``engine/checkpointing.py``, the
       path the test driver takes too). Local state never runs ahead of the committed changelog.

at-least-once (idempotent producer): 1. as above; 2. ``flush()`` and check every delivery;
    3. ``consumer.commit(positions)`` synchronously; 4. ``state.apply(changelog_offsets)``
    (also when the offset commit fails: the changelog holds the state already, and the
    uncommitted input is reprocessed, which at-least-once allows).

Then, 5. counters: what the checkpoint consumed, produced and dropped becomes counted
(``WorkerStats.committed``; a rolled-back checkpoint's counts are forgotten with it).

Any failure before the commit is complete rolls the checkpoint back (:meth:`Checkpoint._rollback`):
``abort_transaction()``, ``state.discard()`` for every task that ran, the tasks rebuilt from
their backends (operators keep in-memory indexes derived from state), and the consumer
seeked back to the committed offsets (:meth:`Checkpoint.rewind`), so the input is processed again.

Every blocking call made while a transaction is open is bounded by the time left before
:attr:`Checkpoint.deadline` (a share of ``transaction.timeout.ms``): a checkpoint that cannot
finish in time is aborted by us, rather than by the broker, which would fence the producer. A fatal error
(e.g. the producer was fenced by a newer instance with the same ``transactional.id``) raises
:class:`~.errors.WorkerFenced`/:class:`~.errors.FatalKafkaError`: the worker stops without committing.

The checkpoint moves through explicit phases; every move goes through :meth:`Checkpoint._move`,
which refuses an illegal one (as ``engine/lifecycle.py`` does for tasks)::

    idle            --> open
    open            --> in transaction | committing | aborting | idle
    in transaction  --> committing | aborting
    committing      --> committed | aborting
    committed       --> idle | open | aborting
    aborting        --> idle

* ``idle``: nothing was processed since the last commit.
* ``open``: records were processed and no transaction is open: at-least-once (under exactly-once
  only until ``begin_transaction`` returned). Left with nothing (every input revoked): ``idle``.
* ``in transaction``: exactly-once: records were processed in the open transaction.
* ``committing``: steps 1-3 (under exactly-once still inside the transaction).
* ``committed``: the changelog is durable; steps 3 (at-least-once) to 5. It ends ``open`` when
  the at-least-once offset commit failed (its positions are committed with the next checkpoint).
* ``aborting``: rolled back or dropped: the transaction, if one was open, is aborted and what the
  tasks did since the last commit is forgotten.
"""
from __future__ import annotations

import logging
import time
from enum import Enum

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaError, KafkaException, TopicPartition

from ...errors import BrokerError, CodecError
from ...state.codec import encode_value, key_encoder
from ..changelog.records import META_KEY, meta_value
from ..engine.checkpointing import apply_committed, discard
from .errors import FatalKafkaError, fatal_error, is_fenced, kafka_error

log = logging.getLogger("streamproc.checkpoint")


class CheckpointRolledBack(Exception):
    """The open checkpoint was aborted; its input will be processed again."""


class IllegalTransition(RuntimeError):
    """The checkpoint was asked to move between phases that are not connected (a bug in the caller)."""


class Phase(Enum):
    IDLE = "idle"
    OPEN = "open"
    IN_TRANSACTION = "in transaction"
    COMMITTING = "committing"
    COMMITTED = "committed"
    ABORTING = "aborting"


_LEGAL = {
    Phase.IDLE: {Phase.OPEN},
    Phase.OPEN: {Phase.IN_TRANSACTION, Phase.COMMITTING, Phase.ABORTING,
                 Phase.IDLE},                                 # idle: its inputs were all revoked
    Phase.IN_TRANSACTION: {Phase.COMMITTING, Phase.ABORTING},
    Phase.COMMITTING: {Phase.COMMITTED, Phase.ABORTING},
    Phase.COMMITTED: {Phase.IDLE, Phase.OPEN, Phase.ABORTING},  # open: at-least-once offsets not committed
    Phase.ABORTING: {Phase.IDLE},
}

_EARLIEST = ("earliest", "smallest", "beginning")


def _call(what: str, fn, timeout_s: float):
    """Call a transactional API, retrying retriable errors until ``timeout_s``.

    Raises ``CheckpointRolledBack``-worthy ``_Abortable`` or a fatal error.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except KafkaException as e:
            err = kafka_error(e)
            if err is None:
                raise
            if err.fatal() or is_fenced(err):
                raise fatal_error(err, what) from None
            if err.txn_requires_abort():
                raise _Abortable(f"{what}: {err.str()}") from None
            if err.retriable() and time.monotonic() < deadline:
                log.debug("%s: retriable error %s, retrying", what, err.str())
                time.sleep(0.05)
                continue
            raise _Abortable(f"{what}: {err.str()}") from None


class _Abortable(Exception):
    pass


# ------------------------------------------------------------------------------------------------
class Checkpoint:
    """The open checkpoint of one worker: the only code that begins, commits or aborts its transaction.

    ``producer``/``consumer``: the worker's clients; ``tasks``: its ``TaskManager`` (running tasks
    by key, their inputs, ``rebuild``); ``eos``: exactly-once (else at-least-once);
    ``commit_interval_s``: how long a checkpoint stays open; ``txn_budget_s``: how long a
    transaction may stay open (well inside ``transaction.timeout.ms``); ``timeout_s``: the bound of
    a blocking call outside a transaction. Collaborators: ``stats`` (``WorkerStats``: what counts
    once committed), ``watermarks`` (a ``WatermarkPublisher``: step 1b, and told whether what it
    wrote committed), ``send(topic, value, key, partition)`` (produces one record, waiting while
    the producer's queue is full; default ``producer.produce``), ``send_reported`` (the same, with a delivery
    report to :meth:`delivered`, for the last changelog record of each partition: its offset is the one the
    state reflects; default ``send``), ``send_many(topic, values, keys, partition)`` (``send`` for the
    changelog records of one partition; default: one ``send`` each), ``changelog_topics`` (whose delivery reports give changelog offsets),
    ``reset_policy`` (``auto.offset.reset``: where a
    partition without a committed offset is read again from), ``on_rewind((topic, partition))``
    (told of every partition :meth:`rewind` seeked back).

    Read-only views: ``phase``, ``open``, ``in_txn``; ``dirty``: keys of the tasks that ran;
    ``positions``: ``{(topic, partition): next offset}`` consumed; ``changelog_offsets``:
    ``{(topic, partition): highest delivered offset}``; ``due``: when it should be committed;
    ``deadline``: the latest moment a blocking call may still be made in the open transaction;
    ``commits``: how many checkpoints committed.
    """

    def __init__(self, producer, consumer, tasks, *, eos: bool, commit_interval_s: float, txn_budget_s: float,
                 timeout_s: float = 30.0, stats=None, watermarks=None, send=None, send_reported=None,
                 send_many=None, changelog_topics=(), reset_policy: str = "earliest", on_rewind=None,
                 worker_id: str = ""):
        self.producer = producer
        self.consumer = consumer
        self.tasks = tasks
        self.eos = eos
        self.commit_interval_s = commit_interval_s
        self.txn_budget_s = txn_budget_s
        self.timeout_s = timeout_s
        self.worker_id = worker_id
        self._phase = Phase.IDLE
        self.dirty: set = set()
        self.positions: dict = {}
        self.changelog_offsets: dict = {}
        self.delivery_errors: list = []
        self.due = 0.0
        self.deadline = float("inf")
        self.commits = 0
        self.offsets_committed: dict = {}     # {(topic, partition): offset} the last commit() committed
        self._stats = stats
        self._watermarks = watermarks
        self._send = send if send is not None else self._produce
        self._send_reported = send_reported or (self._produce_reported if send is None else send)
        self._send_many = send_many
        self._changelog_topics = frozenset(changelog_topics)
        self._earliest = reset_policy in _EARLIEST
        self._on_rewind = on_rewind

    # ------------------------------------------------------------------ views
    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def open(self) -> bool:
        """Records were processed since the last commit (or a commit or abort is under way)."""
        return self._phase is not Phase.IDLE

    @property
    def in_txn(self) -> bool:
        """A transaction is open (exactly-once)."""
        return self._phase is Phase.IN_TRANSACTION or (self.eos and self._phase is Phase.COMMITTING)

    def time_left(self, cap: float) -> float:
        """Seconds a blocking call may take now: ``cap``, less inside an open transaction."""
        if not self.in_txn:
            return cap
        return max(0.1, min(cap, self.deadline - time.monotonic()))

    def _move(self, to: Phase) -> None:
        if to not in _LEGAL[self._phase]:
            raise IllegalTransition(f"checkpoint: {self._phase.value} -> {to.value} is not a legal transition")
        self._phase = to

    # ------------------------------------------------------------------ while it is open
    def init_transactions(self) -> None:
        """Exactly-once, once before anything is produced: the producer fences a predecessor with the same
        ``transactional.id`` and aborts the transaction it left open."""
        try:
            _call("init_transactions", lambda: self.producer.init_transactions(self.timeout_s), 60.0)
        except _Abortable as e:
            raise BrokerError(f"worker {self.worker_id} could not start its transactional producer: {e}") from None

    def begin(self) -> None:
        """Records are about to be processed: open the checkpoint if it is not, and under exactly-once
        begin its transaction if none is open."""
        if self._phase is Phase.IDLE:
            self._open()
        if self.eos and self._phase is Phase.OPEN:
            _call("begin_transaction", self.producer.begin_transaction, self.timeout_s)
            self._move(Phase.IN_TRANSACTION)
            self.deadline = time.monotonic() + self.txn_budget_s

    def _open(self) -> None:
        self._move(Phase.OPEN)
        self.due = time.monotonic() + self.commit_interval_s

    def ran(self, key, tp, next_offset: int) -> None:
        """Task ``key`` processed input partition ``tp`` up to ``next_offset`` (the position to commit)."""
        self.dirty.add(key)
        self.positions[tp] = next_offset

    def touched(self, key) -> None:
        """Task ``key`` changed without consuming anything (its stream time advanced: ``idle_close``)."""
        self.dirty.add(key)

    def delivered(self, err, msg) -> None:
        """The producer's delivery report of one record (its ``on_delivery``)."""
        if err is not None:
            self.delivery_errors.append((err, msg.topic()))
            return
        t = msg.topic()
        if t in self._changelog_topics:
            k = (t, msg.partition())
            o = msg.offset()
            offsets = self.changelog_offsets
            if o > offsets.get(k, -1):
                offsets[k] = o

    def revoked(self, partitions, task_keys) -> None:
        """Input ``partitions`` and the tasks ``task_keys`` that left with them are gone: nothing of them is
        committed. An at-least-once checkpoint left with nothing is closed."""
        for tp in partitions:
            self.positions.pop(tp, None)
        self.dirty.difference_update(task_keys)
        if self._phase is Phase.OPEN and not self.positions and not self.dirty:
            self._move(Phase.IDLE)

    def _produce(self, topic, value, key, partition=-1) -> None:
        self.producer.produce(topic, value, key, partition=partition)

    def _produce_reported(self, topic, value, key, partition=-1) -> None:
        self.producer.produce(topic, value, key, partition=partition, on_delivery=self.delivered)

    # ------------------------------------------------------------------ commit
    def commit(self) -> bool:
        """Commit everything processed since the last checkpoint (see the module doc).

        Returns True when committed (or nothing was open), False when rolled back."""
        if self._phase is Phase.IDLE:
            return True
        if self.eos and self._phase is Phase.OPEN:        # begin_transaction failed: there is nothing to commit in
            self._rollback("no transaction is open")
            return False
        started = time.monotonic()
        self.offsets_committed = {}
        tasks = [t for t in (self.tasks.running(k) for k in sorted(self.dirty)) if t is not None]
        offsets = [TopicPartition(t, p, o) for (t, p), o in self.positions.items()]
        self._move(Phase.COMMITTING)
        try:
            self._write(tasks)                                    # 1.
            if self.eos:
                self._commit_transaction(offsets)                 # 2., 3.
            else:
                self._flush()
        except _Abortable as e:
            self._rollback(str(e))
            return False
        except FatalKafkaError:
            raise
        except Exception as e:  # noqa: BLE001 - anything else before the commit: roll back, then stop
            self._rollback(f"{type(e).__name__}: {e}")
            raise
        self._move(Phase.COMMITTED)
        self.deadline = float("inf")
        committed = self.eos or self._commit_offsets(offsets)    # at-least-once: 3.
        # 4. the changelog is durable: apply the write caches with the offsets they reflect
        if self._watermarks is not None:
            self._watermarks.settled(True)
        drops = apply_committed(tasks, lambda task: _task_changelog_offsets(self, task))
        # 5. what this checkpoint consumed, produced and dropped counts now
        if self._stats is not None:
            self._stats.committed(time.monotonic() - started, drops)
        self.dirty.clear()
        if committed:
            self.offsets_committed = dict(self.positions)
            self.positions.clear()
        self._move(Phase.OPEN if self.positions else Phase.IDLE)
        self.commits += 1
        return True

    def _write(self, tasks) -> None:
        """1. write caches -> changelog records (in the transaction under EOS); 1b. watermarks of the tasks
        feeding repartition topics."""
        self.changelog_offsets.clear()
        for task in tasks:
            _write_changelogs(task, self._send, self._stats, self._send_reported, self._send_many)
        if self._watermarks is not None:
            self._watermarks.publish()

    def _commit_transaction(self, offsets: list) -> None:
        if time.monotonic() > self.deadline:
            raise _Abortable(f"the transaction was open for more than {self.txn_budget_s:g} s")
        # 2. the input positions join the transaction
        if offsets:
            t = self.time_left(self.timeout_s)
            _call("send_offsets_to_transaction",
                  lambda: self.producer.send_offsets_to_transaction(
                      offsets, self.consumer.consumer_group_metadata(), t), t)
        # 3. everything delivered (changelog offsets known), then commit
        self._flush()
        t = self.time_left(self.timeout_s)
        _call("commit_transaction", lambda: self.producer.commit_transaction(t), t)

    def _flush(self) -> None:
        t = self.time_left(self.timeout_s)
        left = self.producer.flush(t)
        if left:
            raise _Abortable(f"{left} record(s) were not delivered within {t:g} s")
        if self.delivery_errors:
            errs, self.delivery_errors[:] = list(self.delivery_errors), []
            err, topic = errs[0]
            if err.fatal() or is_fenced(err):
                raise fatal_error(err, f"producing to {topic}")
            raise _Abortable(f"{len(errs)} record(s) failed delivery, first to {topic}: {err.str()}")

    def _commit_offsets(self, offsets: list) -> bool:
        """At-least-once: commit the input offsets synchronously. False when that failed (not fatally)."""
        if not offsets:
            return True
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as e:
            err = kafka_error(e)
            if err is not None and err.fatal():
                raise fatal_error(err, "committing offsets") from None
            log.warning("committing input offsets failed (%s); they are retried at the next checkpoint and the "
                        "input since the last commit may be processed again (at-least-once)",
                        err.str() if err else e)
            return False
        return True

    # ------------------------------------------------------------------ rollback
    def _rollback(self, reason: str) -> None:
        """Abort the open checkpoint: nothing of it is committed, its input is processed again."""
        log.warning("checkpoint aborted (%s); processing again from the last committed offsets", reason)
        if self._aborting():
            self._abort_transaction(self.timeout_s)
        self._forget()
        self.rewind()

    def abort(self) -> None:
        """Drop the open checkpoint without committing or seeking (partitions lost or worker stopping)."""
        if self._aborting():
            try:
                self._abort_transaction(5.0)
            except (FatalKafkaError, BrokerError) as e:
                log.debug("abort_transaction while dropping the checkpoint: %s", e)
        self._forget()

    def _aborting(self) -> bool:
        """Move to ``aborting``. True when a transaction is open (it must be aborted)."""
        in_txn = self.in_txn
        if self._phase not in (Phase.IDLE, Phase.ABORTING):
            self._move(Phase.ABORTING)
        return in_txn

    def _abort_transaction(self, timeout_s: float) -> None:
        try:
            _call("abort_transaction", lambda: self.producer.abort_transaction(timeout_s), timeout_s)
        except _Abortable as e:
            raise BrokerError(f"could not abort the open transaction: {e}") from None
        self.delivery_errors[:] = []

    def _forget(self) -> None:
        """Discard what the running tasks did since the last commit and rebuild them from their backends
        (their pending drop counts go with them)."""
        if self._stats is not None and self.open:
            self._stats.rolled_back()
        keys = sorted(self.dirty)
        discard([t for t in (self.tasks.running(k) for k in keys) if t is not None])
        self.dirty.clear()
        self.positions.clear()
        self.deadline = float("inf")
        if self._phase is Phase.ABORTING:
            self._move(Phase.IDLE)
        if self._watermarks is not None:     # watermarks written in the aborted transaction: again
            self._watermarks.settled(False)
        self.tasks.rebuild(keys)

    def rewind(self, tps=None) -> None:
        """Seek the given (default: all running tasks') input partitions back to their committed offsets, so
        what was read after them is read again; what the tasks hold back of them (KIP-695) is forgotten."""
        if tps is None:
            tps = self.tasks.active_inputs()
        tps = [TopicPartition(t, p) for t, p in tps]
        if not tps:
            return
        for task in self.tasks.running_tasks().values():     # what waited is read again
            task.forget_held([(tp.topic, tp.partition) for tp in tps])
        try:
            committed = self.consumer.committed(tps, timeout=self.time_left(10.0))
        except KafkaException as e:
            err = kafka_error(e)
            raise BrokerError(f"worker {self.worker_id} cannot read the committed offsets to resume from: "
                              f"{err.str() if err else e}") from None
        for tp in committed:
            off = tp.offset if tp.offset >= 0 else (OFFSET_BEGINNING if self._earliest else OFFSET_END)
            try:
                self.consumer.seek(TopicPartition(tp.topic, tp.partition, off))
            except KafkaException as e:
                err = kafka_error(e)
                if err is not None and err.code() == KafkaError._STATE:
                    continue          # not fetching yet: it will start from the committed offset anyway
                raise
            if self._on_rewind is not None:
                self._on_rewind((tp.topic, tp.partition))


# ------------------------------------------------------------------------------------------------
def _write_changelogs(task, send, stats=None, send_reported=None, send_many=None) -> None:
    """Step 1 for one task: its write cache as changelog records, then each partition's metadata record,
    through ``send(topic, value, key, partition)``: the records through ``send_many(topic, values, keys,
    partition)`` if given, the metadata record, the partition's last, through ``send_reported`` if given
    (its delivery report gives the offset the state reflects)."""
    send_reported = send_reported or send
    if send_many is None:
        def send_many(topic, values, keys, partition):
            for v, k in zip(values, keys):
                send(topic, v, k, partition)
    stores = task.subtopology.stores
    if not stores:
        task.state.changes()
        return
    state = task.state
    changes = state.changes()
    p = task.partition
    stream_time_moved = (state.stream_time != state.backend.get_meta("stream_time", -1)
                         or (state.watermarks or {}) != (state.backend.get_meta("watermarks", None) or {}))
    for spec in stores:
        if not spec.internal_changelog:      # a table: its source topic is its changelog, nothing to write
            continue
        topic = spec.changelog
        enc_key = key_encoder(spec.kind)
        records = changes.get(spec.name, ())
        try:
            keys = [enc_key(k) for k, _ in records]
            values = [None if v is None else encode_value(v) for _, v in records]
        except CodecError as e:
            raise CodecError(f"store {spec.name!r} of task {task.id}: {e.reason}") from None
        send_many(topic, values, keys, p)
        if records or stream_time_moved:     # the partition's newest record: definition and stream time
            send_reported(topic, meta_value(spec, state.stream_time, state.watermarks), META_KEY, p)
        if stats is not None:
            stats.produce(topic, len(keys) + (1 if records or stream_time_moved else 0))


def _task_changelog_offsets(c: Checkpoint, task) -> dict:
    """``{store: last changelog offset the state reflects}``: delivered changelog records, and for a
    table read from a topic, the last offset of that topic the task consumed."""
    out = {}
    for spec in task.subtopology.stores:
        if not spec.internal_changelog:
            pos = c.positions.get((spec.changelog, task.partition))
            if pos is not None:
                out[spec.name] = pos - 1
            continue
        off = c.changelog_offsets.get((spec.changelog, task.partition))
        if off is not None:
            out[spec.name] = off
    return out
