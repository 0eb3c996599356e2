"""Which instance runs which task: the compacted topic ``<app-id>-instances``.

Every instance with an HTTP port records, under its process id, its advertised URL and the
tasks its workers run (``{"url", "tasks": [[sub-topology, partition], ...], "time"}``). The
supervisor publishes it (for all its workers, one producer) whenever that set changes - within
about a second of an assignment, as worker stats arrive - and a tombstone when it stops. Every
instance reads the topic from the beginning and keeps following it (a group-less
``read_committed`` consumer), so :meth:`InstanceDirectory.owner` can route a key to the
instance that runs its task: the newest record claiming a task wins (after a rebalance the new
owner publishes later than the old one).

Bytes of this topic are untrusted like any input: a record that is not such a JSON object is
ignored (and logged once); nothing in it can run code, and a URL must be ``http(s)://``.
"""
from __future__ import annotations

import logging
import threading
import time

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from ...errors import BrokerError
from ...kafka.retry import Pending, is_retriable_error, retrying

log = logging.getLogger("streamproc.directory")

#: How long :meth:`InstanceDirectory.start` waits out a transient refusal (the topic, created just
#: before by ``run``, not yet in every broker's metadata; a timeout) before start-up fails.
DEADLINE_S = 30.0


def instances_topic(app_id: str) -> str:
    return f"{app_id}-instances"


class InstanceDirectory:
    def __init__(self, bootstrap: str, app_id: str, instance: str, url: str, client_config: dict | None = None,
                 deadline_s: float = DEADLINE_S):
        self.topic = instances_topic(app_id)
        self.bootstrap = bootstrap
        self.deadline_s = deadline_s
        self.instance = instance
        self.url = url.rstrip("/")
        conf = {"bootstrap.servers": bootstrap, **(client_config or {})}
        self._producer = Producer({**conf, "enable.idempotence": True, "linger.ms": 0})
        self._consumer = Consumer({**conf, "group.id": f"{app_id}-instances-reader", "enable.auto.commit": False,
                                   "isolation.level": "read_committed", "enable.partition.eof": False})
        self._entries: dict[str, tuple[int, str, set]] = {}     # instance -> (offset, url, tasks)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._published: set | None = None
        self._withdrawn = False
        self._bad = 0
        self._thread = threading.Thread(target=self._follow, name="streamproc-directory", daemon=True)

    def start(self) -> "InstanceDirectory":
        try:
            parts = retrying(f"list the partitions of topic {self.topic!r}", self._partitions, self.deadline_s,
                             where=self.bootstrap)
        except KafkaException as e:            # not transient (e.g. not authorized)
            raise BrokerError(f"cannot read the metadata of topic {self.topic!r} (the directory of instances) "
                              f"from Kafka at {self.bootstrap}: {e.args[0].str() if e.args else e}") from None
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts])
        self._thread.start()
        return self

    def _partitions(self) -> list[int]:
        """The topic's partitions (``run`` created it just before: ``Pending`` until every broker lists it)."""
        md = self._consumer.list_topics(self.topic, timeout=max(1.0, min(10.0, self.deadline_s / 3))).topics.get(
            self.topic)
        if md is None or (md.error is not None and md.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
            raise Pending(f"topic {self.topic!r} not in the metadata yet")
        if md.error is not None:
            if is_retriable_error(md.error):
                raise Pending(f"topic {self.topic!r} reported as {md.error.name()}")
            raise KafkaException(md.error)
        if not md.partitions:
            raise Pending(f"topic {self.topic!r} listed without partitions")
        return sorted(md.partitions)

    # ------------------------------------------------------------------ writing
    def publish(self, tasks: set) -> None:
        """Record this instance's URL and tasks (only when they changed)."""
        if tasks == self._published or self._withdrawn:
            return
        value = orjson.dumps({"url": self.url, "tasks": sorted([list(t) for t in tasks]), "time": int(time.time() * 1000)})
        self._producer.produce(self.topic, value, self.instance.encode())
        self._producer.poll(0)
        self._published = set(tasks)

    def withdraw(self) -> None:
        """This instance is leaving: a tombstone, so no one routes to it any more (once)."""
        if self._withdrawn:
            return
        self._withdrawn = True
        try:
            self._producer.produce(self.topic, None, self.instance.encode())
            self._producer.flush(5)
        except Exception as e:  # noqa: BLE001 - best effort on the way out
            log.debug("directory tombstone: %s", e)

    def close(self) -> None:
        self.withdraw()
        self._stop.set()
        self._thread.join(3)
        try:
            self._consumer.close()
        except Exception:  # noqa: BLE001
            pass

    # ------------------------------------------------------------------ reading
    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                msgs = self._consumer.consume(500, 0.2)
            except Exception as e:  # noqa: BLE001 - keep following; routing uses what it has
                log.debug("directory consume: %s", e)
                time.sleep(0.5)
                continue
            for m in msgs:
                if m.error() is not None:
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        log.debug("directory: %s", m.error().str())
                    continue
                self._apply(m.key(), m.value(), m.offset())

    def _apply(self, key: bytes | None, value: bytes | None, offset: int) -> None:
        try:
            inst = key.decode() if key is not None else None
            if inst is None:
                raise ValueError("no key")
            if value is None:
                with self._lock:
                    self._entries.pop(inst, None)
                return
            rec = orjson.loads(value)
            url = rec["url"]
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ValueError(f"bad url {url!r}")
            tasks = {(int(t[0]), int(t[1])) for t in rec["tasks"]}
        except Exception as e:  # noqa: BLE001 - untrusted bytes: ignore, say so once
            self._bad += 1
            if self._bad == 1:
                log.warning("ignoring a record of %s at offset %d that is not an instance entry (%s)", self.topic,
                            offset, e)
            return
        with self._lock:
            self._entries[inst] = (offset, url.rstrip("/"), tasks)

    def owner(self, task: tuple) -> str | None:
        """The URL of the instance running ``task`` (the newest claim), or None if no instance claims it."""
        best = None
        with self._lock:
            for offset, url, tasks in self._entries.values():
                if task in tasks and (best is None or offset > best[0]):
                    best = (offset, url)
        return best[1] if best else None

    def urls(self) -> list[str]:
        """Every instance's URL (this one included once it has read its own record)."""
        with self._lock:
            urls = {url for _, url, _ in self._entries.values()}
        urls.add(self.url)
        return sorted(urls)
