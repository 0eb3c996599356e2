"""What a worker writes, and how: :class:`Output`, the one way records reach its producer.

Every record a worker produces goes into its open checkpoint (``checkpoint.py``): a task's
outputs (sink and repartition records, late records), dead letters, and the checkpoint's own
changelog and watermark records. A full producer queue is waited out (the producer is polled,
which serves delivery reports), unless the worker has failed meanwhile. What a task produced is
counted as pending in ``WorkerStats`` (it counts once the checkpoint commits).
"""
from __future__ import annotations


class Output:
    """Produces records with the worker's ``producer`` and counts them in ``stats``; ``dlq_topic``: where dead
    letters go; ``check()``: raises the worker's fatal error, if it has one (called while waiting for room)."""

    def __init__(self, producer, stats, dlq_topic: str, check):
        self.producer = producer
        self.dlq_topic = dlq_topic
        self._stats = stats
        self._check = check

    def send(self, topic, value, key, partition=-1, timestamp=0, headers=None) -> None:
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

    def _send_fast(self, topic, value, key, ts) -> None:
        try:
            self.producer.produce(topic, value, key, timestamp=ts)
        except BufferError:
            self._wait_for_queue()
            self.producer.produce(topic, value, key, timestamp=ts)

    def _wait_for_queue(self) -> None:
        self.producer.poll(0.05)
        self._check()

    def outputs(self, produced: list) -> None:
        """Produce a task's output column groups ``(topic, keys, values, timestamps[, headers[, partitions]])``
        in the open checkpoint: per-record headers (late records, carried stream times) and partitions
        (placed by the plan) where given, else the producer's partitioner."""
        produce, stats = self._send_fast, self._stats
        for out in produced:
            out_topic, kb, vb, ts = out[:4]
            headers = out[4] if len(out) > 4 else None
            parts = out[5] if len(out) > 5 else None
            if headers is None and parts is None:
                for i in range(len(kb)):
                    produce(out_topic, vb[i], kb[i], ts[i])
            elif parts is None:                   # headers on some records (carried stream times, late records)
                slow = self.send
                for i, h in enumerate(headers):
                    if h is None:
                        produce(out_topic, vb[i], kb[i], ts[i])
                    else:
                        slow(out_topic, vb[i], kb[i], timestamp=ts[i], headers=h)
            else:
                for i in range(len(kb)):
                    self.send(out_topic, vb[i], kb[i], partition=-1 if parts is None else parts[i],
                              timestamp=ts[i], headers=None if headers is None else headers[i])
            stats.produce(out_topic, len(kb))

    def dead_letters(self, task) -> None:
        """The records ``task`` sent to the dead-letter topic, with headers saying where and why they failed."""
        for dl in task.ctx.dead_letters:
            headers = [("error", dl.error.encode("utf-8", "replace")), ("topic", dl.topic.encode()),
                       ("partition", str(dl.partition).encode()), ("offset", str(dl.offset).encode())]
            if dl.operator:
                headers.append(("operator", dl.operator.encode("utf-8", "replace")))
            self.send(self.dlq_topic, dl.value, dl.key, timestamp=max(int(dl.timestamp), 0), headers=headers)
        self._stats.produce(self.dlq_topic, len(task.ctx.dead_letters))
        task.ctx.dead_letters.clear()
