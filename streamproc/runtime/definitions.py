"""Start-up check: every existing changelog was written by the running definition of its store.

Before ``run`` creates or validates any internal topic, it reads the newest metadata record
(``_changelog.META_KEY``) of every partition of every existing changelog. Each checkpoint that
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

from ..errors import BrokerError
from ._changelog import META_KEY, check_meta, read_meta

log = logging.getLogger("streamproc.definitions")

#: How many offsets before a changelog partition's end are searched for its metadata record.
TAIL = 64


def check_changelog_definitions(consumer_config: dict, stores: list, timeout_s: float = 20.0) -> int:
    """Refuse (``StateError``) if an existing changelog of ``stores`` (``StoreSpec``s) holds another
    definition. Returns the number of partitions whose metadata record was checked."""
    conf = {**consumer_config, "enable.partition.eof": True, "isolation.level": "read_committed"}
    conf.setdefault("fetch.wait.max.ms", 50)
    c = Consumer(conf)
    try:
        return _check(c, stores, timeout_s)
    except KafkaException as e:
        raise BrokerError(f"cannot read the app's changelogs to check their store definitions: "
                          f"{e.args[0].str() if e.args else e}") from None
    finally:
        c.close()


def _check(c: Consumer, stores: list, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    topics = c.list_topics(timeout=max(1.0, timeout_s / 2)).topics
    spec_of = {s.changelog: s for s in stores}
    assign, ends = [], {}
    for topic, spec in spec_of.items():
        md = topics.get(topic)
        if md is None or md.error is not None:
            continue                                   # not created yet: nothing to check
        for p in sorted(md.partitions):
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=5.0, cached=False)
            if high > low:
                assign.append(TopicPartition(topic, p, max(low, high - TAIL)))
                ends[(topic, p)] = high
    if not assign:
        return 0
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
