"""THE checkpoint protocol (DESIGN.md section 5), in one place: :func:`checkpoint`.

A worker processes input in batches inside one open checkpoint: outputs (sink and
repartition records, dead letters) are produced as they come, store writes collect in each
task's write cache, and the consumed positions collect in ``worker.positions``. Every
``commit_interval_ms`` (and on revocation and shutdown) :func:`checkpoint` closes it:

exactly-once (one transactional producer per worker; the transaction was begun before the
first record of this checkpoint was produced)
    1. for each task: ``state.changes()`` -> one changelog record per changed key to
       ``<app-id>-<store>-changelog``, partition = the task's partition (key and value in the
       internal codec, ``state.codec``; no value = tombstone), then the partition's metadata
       record (store definition and stream time, ``_changelog.META_KEY``) when anything was
       written or the stream time moved. A table read from a topic writes nothing: that topic
       is its changelog, and the offset its state reflects is the task's consumed position;
    2. ``send_offsets_to_transaction(positions, consumer_group_metadata())``;
    3. ``flush()`` (delivery reports give the changelog offsets), ``commit_transaction()``;
    4. only then, for each task: ``state.apply(changelog_offsets)``: the backend takes the
       write cache and the offsets it reflects in one write. Local state never runs ahead of
       the committed changelog.

at-least-once (idempotent producer): 1. as above; 2. ``flush()`` and check every delivery;
    3. ``consumer.commit(positions)`` synchronously; 4. ``state.apply(changelog_offsets)``
    (also when the offset commit fails: the changelog holds the state already, and the
    uncommitted input is reprocessed, which at-least-once allows).

Then, 5. counters: what the checkpoint consumed, produced and dropped becomes counted
(``WorkerStats.committed``; a rolled-back checkpoint's counts are forgotten with it).

Any failure before the commit is complete rolls the checkpoint back (:func:`rollback`):
``abort_transaction()``, ``state.discard()`` for every task that ran, the tasks rebuilt from
their backends (operators keep in-memory indexes derived from state), and the consumer
seeked back to the committed offsets, so the input is processed again.

Every blocking call made while a transaction is open is bounded by the time left before
:attr:`Checkpoint.deadline` (a share of ``transaction.timeout.ms``): a checkpoint that cannot
finish in time is aborted by us, rather than by the broker, which would fence the producer. A fatal error
(e.g. the producer was fenced by a newer instance with the same ``transactional.id``) raises
:class:`WorkerFenced`/:class:`FatalKafkaError`: the worker stops without committing.
"""
from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from ...errors import BrokerError, CodecError, StreamprocError
from ...state.codec import encode_value, key_encoder
from ..changelog.records import META_KEY, meta_value

log = logging.getLogger("streamproc.checkpoint")

_FENCED_CODES = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH,
                 KafkaError.FENCED_INSTANCE_ID, KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED}


class FatalKafkaError(StreamprocError):
    """A Kafka client hit an error it cannot recover from; the worker must stop without committing."""


class WorkerFenced(FatalKafkaError):
    """Another instance took over this worker's transactional.id or group.instance.id."""


class CheckpointRolledBack(Exception):
    """The open checkpoint was aborted; its input will be processed again."""


def kafka_error(exc: BaseException) -> KafkaError | None:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def is_fenced(err: KafkaError) -> bool:
    return err.code() in _FENCED_CODES or "fence" in (err.str() or "").lower()


def fatal_error(err: KafkaError, what: str) -> FatalKafkaError:
    if is_fenced(err):
        return WorkerFenced(
            f"{what}: {err.str()}. Another instance with the same process id (state dir) took over this "
            f"worker's transactional.id / group.instance.id, so this one stops without committing.")
    return FatalKafkaError(f"{what}: fatal Kafka error {err.name()}: {err.str()}")


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
    """What the open checkpoint of one worker holds, and nothing else.

    ``open``: records were processed since the last commit; ``in_txn``: a transaction is open
    (exactly-once); ``dirty``: keys of the tasks that ran; ``positions``: ``{(topic, partition):
    next offset}`` consumed; ``changelog_offsets``: ``{(topic, partition): highest delivered
    offset}`` (filled by the delivery callback); ``delivery_errors``; ``due``: when it should be
    committed; ``deadline``: the latest moment a blocking call may still be made in the open
    transaction (well inside ``transaction.timeout.ms``, so the broker never aborts it under us).
    """

    def __init__(self, commit_interval_s: float, txn_budget_s: float):
        self.commit_interval_s = commit_interval_s
        self.txn_budget_s = txn_budget_s
        self.open = False
        self.in_txn = False
        self.dirty: set = set()
        self.positions: dict = {}
        self.changelog_offsets: dict = {}
        self.delivery_errors: list = []
        self.due = 0.0
        self.deadline = float("inf")
        self.commits = 0

    def opened(self) -> None:
        """Records are about to be processed: open the checkpoint if it is not."""
        if not self.open:
            self.open = True
            self.due = time.monotonic() + self.commit_interval_s

    def began_transaction(self) -> None:
        self.in_txn = True
        self.deadline = time.monotonic() + self.txn_budget_s

    def ran(self, key, tp, next_offset: int) -> None:
        self.dirty.add(key)
        self.positions[tp] = next_offset

    def time_left(self, cap: float) -> float:
        """Seconds a blocking call may take now: ``cap``, less inside an open transaction."""
        if not self.in_txn:
            return cap
        return max(0.1, min(cap, self.deadline - time.monotonic()))

    def forget_inputs(self, tps) -> None:
        for tp in tps:
            self.positions.pop(tp, None)

    def clear(self) -> None:
        self.dirty.clear()
        self.positions.clear()
        self.open = False
        self.in_txn = False
        self.deadline = float("inf")


def checkpoint(w) -> bool:
    """Commit everything worker ``w`` processed since the last checkpoint (see the module doc).

    Returns True when committed (or nothing was open), False when rolled back. ``w`` provides
    ``ckpt`` (:class:`Checkpoint`), ``eos``, ``producer``, ``consumer``, ``task_manager``
    (running tasks by key), ``produce(...)``, ``timeout_s`` and the rollback hook
    ``reset_to_committed()``.
    """
    c = w.ckpt
    if not c.open:
        return True
    started = time.monotonic()
    tasks = [t for t in (w.task_manager.running(k) for k in sorted(c.dirty)) if t is not None]
    offsets = [TopicPartition(t, p, o) for (t, p), o in c.positions.items()]
    try:
        # 1. write caches -> changelog records (in the transaction under EOS)
        c.changelog_offsets.clear()
        for task in tasks:
            _write_changelogs(w, task)
        publish = getattr(w, "publish_watermarks", None)
        if publish is not None:              # 1b. watermarks of the tasks feeding repartition topics
            publish()
        if w.eos:
            if time.monotonic() > c.deadline:
                raise _Abortable(f"the transaction was open for more than {c.txn_budget_s:g} s")
            # 2. the input positions join the transaction
            if offsets:
                t = c.time_left(w.timeout_s)
                _call("send_offsets_to_transaction",
                      lambda: w.producer.send_offsets_to_transaction(
                          offsets, w.consumer.consumer_group_metadata(), t), t)
            # 3. everything delivered (changelog offsets known), then commit
            _flush(w)
            t = c.time_left(w.timeout_s)
            _call("commit_transaction", lambda: w.producer.commit_transaction(t), t)
        else:
            _flush(w)
    except _Abortable as e:
        rollback(w, str(e))
        return False
    except FatalKafkaError:
        raise
    except Exception as e:  # noqa: BLE001 - anything else before the commit: roll back, then stop
        rollback(w, f"{type(e).__name__}: {e}")
        raise
    c.in_txn = False
    c.deadline = float("inf")
    committed = True
    if not w.eos and offsets:
        # at-least-once: 3. commit the input offsets synchronously
        try:
            w.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as e:
            err = kafka_error(e)
            if err is not None and err.fatal():
                raise fatal_error(err, "committing offsets") from None
            committed = False
            log.warning("committing input offsets failed (%s); they are retried at the next checkpoint and the "
                        "input since the last commit may be processed again (at-least-once)",
                        err.str() if err else e)
    # 4. the changelog is durable: apply the write caches with the offsets they reflect
    if publish is not None:
        w.watermarks_committed(True)
    for task in tasks:
        task.state.apply(_task_changelog_offsets(c, task))
    # 5. what this checkpoint consumed, produced and dropped counts now
    drops = [(task.ctx.commit_counts(), task.ctx.examples) for task in tasks]
    stats = getattr(w, "stats", None)
    if stats is not None:
        stats.committed(time.monotonic() - started, drops)
    for task in tasks:
        task.ctx.examples = {}
    c.dirty.clear()
    if committed:
        c.positions.clear()
    c.open = bool(c.positions)
    c.commits += 1
    return True


def _write_changelogs(w, task) -> None:
    stores = task.subtopology.stores
    if not stores:
        task.state.changes()
        return
    state = task.state
    changes = state.changes()
    p = task.partition
    produce = w.produce
    stats = getattr(w, "stats", None)
    stream_time_moved = (state.stream_time != state.backend.get_meta("stream_time", -1)
                         or (state.watermarks or {}) != (state.backend.get_meta("watermarks", None) or {}))
    for spec in stores:
        if not spec.internal_changelog:      # a table: its source topic is its changelog, nothing to write
            continue
        topic = spec.changelog
        enc_key = key_encoder(spec.kind)
        records = changes.get(spec.name, ())
        try:
            encoded = [(enc_key(k), None if v is None else encode_value(v)) for k, v in records]
        except CodecError as e:
            raise CodecError(f"store {spec.name!r} of task {task.id}: {e.reason}") from None
        for kb, vb in encoded:
            produce(topic, vb, kb, p)
        if records or stream_time_moved:     # the partition's newest record: definition and stream time
            produce(topic, meta_value(spec, state.stream_time, state.watermarks), META_KEY, p)
        if stats is not None:
            stats.produce(topic, len(encoded) + (1 if records or stream_time_moved else 0))


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


def _flush(w) -> None:
    c = w.ckpt
    t = c.time_left(w.timeout_s)
    left = w.producer.flush(t)
    if left:
        raise _Abortable(f"{left} record(s) were not delivered within {t:g} s")
    if c.delivery_errors:
        errs, c.delivery_errors[:] = list(c.delivery_errors), []
        err, topic = errs[0]
        if err.fatal() or is_fenced(err):
            raise fatal_error(err, f"producing to {topic}")
        raise _Abortable(f"{len(errs)} record(s) failed delivery, first to {topic}: {err.str()}")


def rollback(w, reason: str) -> None:
    """Abort the open checkpoint: nothing of it is committed, its input is processed again."""
    log.warning("checkpoint aborted (%s); processing again from the last committed offsets", reason)
    if w.eos and w.ckpt.in_txn:
        abort_transaction(w)
    _forget(w)
    w.reset_to_committed()


def abort_open(w) -> None:
    """Drop the open checkpoint without committing or seeking (partitions lost or worker stopping)."""
    if w.eos and w.ckpt.in_txn:
        try:
            abort_transaction(w, timeout_s=5.0)
        except (FatalKafkaError, BrokerError) as e:
            log.debug("abort_transaction while dropping the checkpoint: %s", e)
    _forget(w)


def abort_transaction(w, timeout_s: float | None = None) -> None:
    w.ckpt.in_txn = False
    t = w.timeout_s if timeout_s is None else timeout_s
    try:
        _call("abort_transaction", lambda: w.producer.abort_transaction(t), t)
    except _Abortable as e:
        raise BrokerError(f"could not abort the open transaction: {e}") from None
    w.ckpt.delivery_errors[:] = []


def _forget(w) -> None:
    """Discard what the running tasks did since the last commit and rebuild them from their backends
    (their pending drop counts go with them)."""
    c = w.ckpt
    stats = getattr(w, "stats", None)
    if stats is not None and c.open:
        stats.rolled_back()
    keys = sorted(c.dirty)
    for key in keys:
        task = w.task_manager.running(key)
        if task is not None:
            task.state.discard()
    c.clear()
    if hasattr(w, "watermarks_committed"):     # watermarks written in the aborted transaction: again
        w.watermarks_committed(False)
    w.task_manager.rebuild(keys)
