"""What a worker writes, and how: :class:`Output`, the one way records reach its producer.

Every record a worker produces goes into its open checkpoint (``checkpoint.py``): a task's
outputs (sink and repartition records, late records), dead letters, and the checkpoint's own
changelog and watermark records. A full producer queue is waited out (the producer is polled,
which serves delivery reports), unless the worker has failed meanwhile. What a task produced is
counted as pending in ``WorkerStats`` (it counts once the checkpoint commits).

Delivery reports: :meth:`Output.send_reported` asks for one (``on_delivery``); the other records get
one only when the producer has a default ``on_delivery`` (at-least-once: every delivery is checked,
``clients.open_producer``). Under exactly-once a record that fails makes the transaction fail to
commit, so only the records whose offset the checkpoint needs are reported.
"""
from __future__ import annotations


class Output:
    """Produces records with the worker's ``producer`` and counts them in ``stats``; ``dlq_topic``: where dead
    letters go; ``check()``: raises the worker's fatal error, if it has one (called while waiting for room);
    ``on_delivery(err, msg)``: the delivery report of a record sent with :meth:`send_reported`."""

    def __init__(self, producer, stats, dlq_topic: str, check, on_delivery=None):
        self.producer = producer
        self.dlq_topic = dlq_topic
        self._stats = stats
        self._check = check
        self._on_delivery = on_delivery

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

    def send_many(self, topic, values: list, keys: list, partition=-1) -> None:
        """:meth:`send` for many records to one partition (no timestamps, no headers: changelog records)."""
        produce = self.producer.produce
        i, n = 0, len(keys)
        while i < n:
            try:
                for i in range(i, n):
                    produce(topic, values[i], keys[i], partition=partition)
                return
            except BufferError:
                self._wait_for_queue()

    def send_reported(self, topic, value, key, partition=-1) -> None:
        """:meth:`send`, with a delivery report to ``on_delivery`` (what the checkpoint needs the offset of)."""
        while True:
            try:
                if self._on_delivery is None:
                    self.producer.produce(topic, value, key, partition=partition)
                else:
                    self.producer.produce(topic, value, key, partition=partition, on_delivery=self._on_delivery)
                return
            except BufferError:
                self._wait_for_queue()

    def _wait_for_queue(self) -> None:
        self.producer.poll(0.05)
        self._check()

    def outputs(self, produced: list) -> None:
        """Produce a task's output column groups ``(topic, keys, values, timestamps[, headers[, partitions]])``
        in the open checkpoint: per-record headers (late records, carried stream times) and partitions
        (placed by the plan) where given, else the producer's partitioner."""
        for out in produced:
            out_topic, kb = out[0], out[1]
            self._produce_all(out_topic, kb, out[2], out[3], out[4] if len(out) > 4 else None,
                              out[5] if len(out) > 5 else None)
            self._stats.produce(out_topic, len(kb))

    def _produce_all(self, topic, kb: list, vb: list, ts: list, headers, parts) -> None:
        """Every record of one column group, in order; a full queue is waited out and the record retried."""
        produce = self.producer.produce
        i, n = 0, len(kb)
        while i < n:
            try:
                if parts is not None:
                    for i in range(i, n):
                        produce(topic, vb[i], kb[i], partition=parts[i], timestamp=ts[i],
                                headers=None if headers is None else headers[i])
                elif headers is not None:             # (headers=None costs as much as a header)
                    for i in range(i, n):
                        h = headers[i]
                        if h is None:
                            produce(topic, vb[i], kb[i], timestamp=ts[i])
                        else:
                            produce(topic, vb[i], kb[i], timestamp=ts[i], headers=h)
                else:
                    for i in range(i, n):
                        produce(topic, vb[i], kb[i], timestamp=ts[i])
                return
            except BufferError:
                self._wait_for_queue()

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
