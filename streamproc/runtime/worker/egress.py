"""Backpressure from sink connectors (DESIGN section 9): a task whose results wait too long for their
external system stops taking input.

Task N of a sub-topology writing a sink connector produces to partition N of its egress topic
(``operators/io.py``); the edge process delivers that partition and commits its group's offset once the
system confirmed (``runtime/edge/delivery.py``). The backlog of task N is the partition's end offset
minus that committed offset. Above the connector's ``buffer=``, the task's input partitions are paused
(the records wait in Kafka, not in memory); below half of it they are resumed. Checked about once a
second per task, only for sub-topologies that write a sink connector.
"""
from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, KafkaException, TopicPartition

from ..edge.delivery import delivery_group

log = logging.getLogger("streamproc.worker")

CHECK_INTERVAL_S = 1.0
_NO_OFFSET = -1001            # librdkafka's OFFSET_INVALID: the group has committed nothing yet


class EgressWatch:
    def __init__(self, plan, consumer_conf: dict, worker_id: str):
        self.worker_id = worker_id
        self._sinks: dict[int, list] = {}            # sub-topology id -> [(egress topic, buffer)]
        for ct in plan.connector_sinks:
            self._sinks.setdefault(ct.subtopology, []).append((ct.topic, ct.connector.buffer or 10_000))
        self._conf = consumer_conf
        self._readers: dict[str, Consumer] = {}      # egress topic -> a consumer of its delivery group (no join)
        self.paused: dict[tuple, list] = {}          # task key -> its input partitions paused here
        self._next = 0.0

    @property
    def active(self) -> bool:
        return bool(self._sinks)

    def step(self, tasks: dict, consumer, busy: set) -> None:
        """Pause/resume the running ``tasks`` ({key: Task}) by their backlogs. ``busy``: input partitions
        paused by someone else (event-time pacing): never resumed here."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + CHECK_INTERVAL_S
        for key in [k for k in self.paused if k not in tasks]:     # revoked while paused
            del self.paused[key]
        for key, task in tasks.items():
            sinks = self._sinks.get(key[0])
            if not sinks:
                continue
            over = self._over(sinks, key[1])
            if over is None:
                continue
            if over or (over is None and key in self.paused):
                # paused again each time (idempotent): pacing or a new assignment may have resumed it meanwhile
                tps = list(task.input_partitions)
                consumer.pause([TopicPartition(t, p) for t, p in tps])
                if key not in self.paused:
                    log.warning("worker %s: task %s paused: its results wait for a slow or unavailable sink "
                                "(%s)", self.worker_id, task.id, over)
                self.paused[key] = tps
            elif not over and key in self.paused:
                tps = [tp for tp in self.paused.pop(key) if tp not in busy]
                if tps:
                    consumer.resume([TopicPartition(t, p) for t, p in tps])
                log.warning("worker %s: task %s resumed: its sink caught up", self.worker_id, task.id)

    def _over(self, sinks: list, partition: int) -> str | bool | None:
        """What to do with the task writing partition ``partition`` of ``sinks``: a description of the first
        backlog over its buffer (pause), False when every backlog is under half of its buffer (resume), None
        in between or when a backlog cannot be measured now (leave it as it is)."""
        verdict: bool | None = False
        for topic, buffer in sinks:
            backlog = self._backlog(topic, partition)
            if backlog is None:
                return None
            if backlog > buffer:
                return f"{backlog:,} results of {topic}[{partition}] not yet confirmed, buffer={buffer:,}"
            if backlog > buffer // 2:
                verdict = None
        return verdict

    def _backlog(self, topic: str, partition: int) -> int | None:
        reader = self._readers.get(topic)
        if reader is None:
            conf = dict(self._conf)
            conf.update({"group.id": delivery_group(topic), "enable.auto.commit": False})
            conf.pop("group.instance.id", None)
            reader = self._readers[topic] = Consumer(conf)
        tp = TopicPartition(topic, partition)
        try:
            low, high = reader.get_watermark_offsets(tp, timeout=2.0, cached=False)
            committed = reader.committed([tp], timeout=2.0)[0].offset
        except KafkaException as e:
            log.debug("worker %s: egress backlog of %s[%d] not known: %s", self.worker_id, topic, partition, e)
            return None
        return high - (low if committed == _NO_OFFSET or committed < low else committed)

    def close(self) -> None:
        for r in self._readers.values():
            try:
                r.close()
            except Exception:  # noqa: BLE001
                pass
        self._readers.clear()
