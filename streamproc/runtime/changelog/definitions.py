"""Start-up check: every existing changelog was written by the running definition of its store.

Before ``run`` creates or validates any internal topic, it reads the newest metadata record
(``records.META_KEY``) of every partition of every existing changelog. Each checkpoint that
writes to a changelog partition ends with that record, so it sits among the last offsets of the
partition: reading a short tail finds it. A record naming another fingerprint refuses the start
with the changed-definition paragraph - before a topic-config check could report a symptom of
the same change (a grown window needs a longer changelog retention) as the problem.

This is the early, cheap check; the authoritative one is the restore loop, which checks every
metadata record it reads, whatever the backend. A partition whose tail holds no metadata
record (only possible when its newest transactions were aborted) is left to the restore.
"""
from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from ...errors import BrokerError
from ...kafka.retry import Pending, is_retriable_error, retrying
from .records import META_KEY, check_meta, read_meta

log = logging.getLogger("streamproc.definitions")

#: How many offsets before a changelog partition's end are searched for its metadata record.
TAIL = 64

#: How long each broker call of the check retries a transient refusal (a leader not yet elected
#: for a changelog another instance has just created, a timeout) before start-up fails.
DEADLINE_S = 30.0


def check_changelog_definitions(consumer_config: dict, stores: list, timeout_s: float = 20.0,
                                deadline_s: float = DEADLINE_S) -> int:
    """Refuse (``StateError``) if an existing changelog of ``stores`` (``StoreSpec``s) holds another
    definition. Returns the number of partitions whose metadata record was checked.

    ``timeout_s`` bounds the reading of the changelogs' tails (what is not read by then is left to the
    restore); ``deadline_s`` how long each metadata or offsets request retries a transient error."""
    conf = {**consumer_config, "enable.partition.eof": True, "isolation.level": "read_committed"}
    conf.setdefault("fetch.wait.max.ms", 50)
    c = Consumer(conf)
    try:
        return _check(c, stores, timeout_s, deadline_s, conf.get("bootstrap.servers"))
    except KafkaException as e:                        # not transient (e.g. not authorized)
        raise BrokerError(f"cannot read the app's changelogs to check their store definitions: "
                          f"{e.args[0].str() if e.args else e}") from None
    finally:
        c.close()


def _changelogs(c: Consumer, names, deadline_s: float, bootstrap: str | None) -> dict:
    """``{changelog: TopicMetadata}`` of the changelogs that exist (a full listing); waits while one is
    listed with a transient error (e.g. its leader not yet elected)."""
    def attempt() -> dict:
        topics = c.list_topics(timeout=max(1.0, min(10.0, deadline_s / 3))).topics
        out, pending = {}, []
        for name in names:
            md = topics.get(name)
            if md is None or (md.error is not None and md.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
                continue                               # not created yet: nothing to check
            if md.error is not None:
                if not is_retriable_error(md.error):
                    raise KafkaException(md.error)
                pending.append(f"changelog {name!r} reported as {md.error.name()}")
                continue
            out[name] = md
        if pending:
            raise Pending("; ".join(pending))
        return out

    return retrying("list the app's changelogs", attempt, deadline_s, where=bootstrap)


def _offsets(c: Consumer, tp: TopicPartition, deadline_s: float, bootstrap: str | None) -> tuple[int, int]:
    """A changelog partition's (low, high) watermarks. A retry first refreshes this client's metadata of the
    topic: the leader it knows may be the one that just answered "not leader"."""
    attempts = []
    request_s = max(1.0, min(5.0, deadline_s / 3))

    def attempt() -> tuple[int, int]:
        if attempts:
            c.list_topics(tp.topic, timeout=request_s)
        attempts.append(1)
        return c.get_watermark_offsets(tp, timeout=request_s, cached=False)

    return retrying(f"report the offsets of changelog {tp.topic!r} partition {tp.partition} (start-up check of the "
                    f"store definitions)", attempt, deadline_s, where=bootstrap)


def _check(c: Consumer, stores: list, timeout_s: float, deadline_s: float = DEADLINE_S,
           bootstrap: str | None = None) -> int:
    spec_of = {s.changelog: s for s in stores}
    topics = _changelogs(c, spec_of, deadline_s, bootstrap)
    assign, ends = [], {}
    for topic in spec_of:
        md = topics.get(topic)
        if md is None:
            continue
        for p in sorted(md.partitions):
            low, high = _offsets(c, TopicPartition(topic, p), deadline_s, bootstrap)
            if high > low:
                assign.append(TopicPartition(topic, p, max(low, high - TAIL)))
                ends[(topic, p)] = high
    if not assign:
        return 0
    deadline = time.monotonic() + timeout_s
    c.assign(assign)
    newest: dict[tuple, tuple] = {}                    # (topic, partition) -> (offset, value)
    pending = set(ends)
    while pending and time.monotonic() < deadline:
        for m in c.consume(1000, 0.2):
            tp = (m.topic(), m.partition())
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(tp)
                    continue
                if is_retriable_error(err):            # the consumer fetches again by itself
                    log.debug("start-up definition check: %s", err.str())
                    continue
                raise KafkaException(err)
            if m.key() == META_KEY:
                newest[tp] = (m.offset(), m.value())
            if m.offset() + 1 >= ends[tp]:
                pending.discard(tp)
    if pending:
        log.info("start-up definition check: %d changelog partition(s) not read within %.0f s; "
                 "their restore checks them", len(pending), timeout_s)
    for (topic, p), (offset, value) in sorted(newest.items()):
        check_meta(read_meta(value, topic, p, offset), spec_of[topic], topic, p)
    return len(newest)
