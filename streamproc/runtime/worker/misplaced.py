"""Are a source topic's records where its declared partitioner says? A sampled, cheap check.

A topic read by a topology declares how its producers place keys (``partitioner="murmur2"`` by
default, or ``"crc32"``: confluent-kafka's default). Per-key state does not depend on it, but key
lookups (HTTP queries) and joins with other topics do: a CRC32-partitioned table read as murmur2
answers 404 for most keys and misses join partners, silently. So a worker checks the records it
fetches from source partitions: every record of the first :data:`FULL_CHECK` of each partition,
then the first record of each fetched batch. The first mismatch of a topic logs one WARNING (the
topic, an example key, its partition, the partition the declared partitioner gives, and the fix);
every mismatch found is counted (``streamproc_records_misplaced_total{topic}``: a lower bound, as
the check samples). Records are processed all the same.
"""
from __future__ import annotations

import logging

from ...partitioner import partition_for

log = logging.getLogger("streamproc.partitioning")

#: Records of each source partition checked one by one before the check samples one per batch.
FULL_CHECK = 256


class MisplacedCheck:
    """``check(topic, partition, keys)`` for each fetched batch; ``counts``: topic -> misplaced found."""

    def __init__(self, plan, partition_count, worker: str = ""):
        self._partitioner = {t: plan.placement(t).partitioner for t in plan.source_topics}
        self._partition_count = partition_count
        self._worker = worker
        self._checked: dict = {}                       # (topic, partition) -> records checked
        self._warned: set = set()
        self.counts: dict = {t: 0 for t in self._partitioner}

    def check(self, topic: str, partition: int, keys: list) -> None:
        partitioner = self._partitioner.get(topic)
        if partitioner is None or not keys:
            return
        done = self._checked.get((topic, partition), 0)
        sample = keys[:FULL_CHECK - done] if done < FULL_CHECK else keys[:1]
        self._checked[(topic, partition)] = done + len(sample)
        n = self._partition_count(topic)
        if n <= 1:
            return
        bad = 0
        for k in sample:
            if k is not None and (want := partition_for(k, n, partitioner)) != partition:
                bad += 1
                if topic not in self._warned:
                    self._warned.add(topic)
                    self._warn(topic, k, partition, want, partitioner)
        if bad:
            self.counts[topic] = self.counts.get(topic, 0) + bad

    def _warn(self, topic: str, key: bytes, partition: int, want: int, partitioner: str) -> None:
        other = "crc32" if partitioner == "murmur2" else "murmur2"
        fix = ('declare partitioner="crc32" on the topology\'s stream/table of this topic (confluent-kafka\'s '
               'default partitioner is CRC32-based), or produce with partitioner=murmur2_random'
               if partitioner == "murmur2" else
               'declare partitioner="murmur2" (the default) if its producers are Java clients or use '
               'partitioner=murmur2_random')
        log.warning("worker %s: topic %r: the record with key %r sits in partition %d, but partitioner=%r puts "
                    "that key in partition %d: the topic's producers place keys differently (%s?). Records are "
                    "still processed, but key lookups over HTTP and joins with other topics miss them. Fix: %s.",
                    self._worker, topic, _preview(key), partition, partitioner, want, other, fix)


def _preview(key: bytes) -> bytes:
    return key if len(key) <= 40 else key[:40] + b"..."
