"""A store's committed changes as a feed: the source of ``GET /stores/<store>/changes`` (SSE).

The changelog of a store is, by construction, its committed changes: a checkpoint writes one
record per changed key in its transaction, and a ``read_committed`` consumer sees a
transaction's records only once it committed - never a change that is later rolled back. So
the feed follows the changelog (all partitions: every instance's changes), from its end when
the first client subscribes, decodes each record with the internal codec (untrusted bytes: a
record that does not decode is skipped and logged; metadata records are not changes), and
presents the value as the operators emit it (``present.py``). A table's feed follows its source
topic, whose records become rows as the table's (``state.table_rows``).

Events get increasing ids; the last :data:`BUFFER` events are kept, each encoded once as its SSE
bytes (:class:`Change`), and shared by every client (``fanout.py`` decides what each client is sent:
everything when it keeps up, the newest per key when it is behind, a ``reset`` when it fell out of the
buffer). Subscribers are called once per batch of the changelog consumer, with the batch's events, not
once per event.

A feed ends when it is stopped (the instance stops) or when following the changelog fails
(logged once, as a warning): every subscriber is then called with :data:`END`, after the last
change it was given, so the streams built on it end rather than wait forever. A stopped or failed
feed takes no new subscribers (``subscribe`` answers ``[END]``); a failed one can be replaced by a
new feed that goes on with its ids (``first_id``).
"""
from __future__ import annotations

import collections
import itertools
import logging
import threading
import time

import orjson

from confluent_kafka import OFFSET_END, Consumer, KafkaError, TopicPartition

from ...errors import SerdeError
from ...kinds import StoreKind
from ...state.codec import decode_store_key, decode_value
from ...state.table_rows import read_row
from ..changelog.records import META_KEY
from ...operators.present import to_json_key

log = logging.getLogger("streamproc.changes")

BUFFER = 10_000
#: What a subscriber is called with when the feed ends (no change follows).
END = None


class Change:
    """One committed change: ``id``, ``data`` (the JSON object of the event), ``sse`` (its Server-Sent
    Events bytes, encoded once for every client), ``slot`` (what conflation keeps the newest of: the key,
    and the window start of a windowed store), ``key_text`` (the key as filters match it) and ``at`` (when
    the feed read it, monotonic seconds: how stale it is)."""

    __slots__ = ("id", "data", "sse", "slot", "key_text", "at")

    def __init__(self, id_: int, data: dict, at: float):
        self.id = id_
        self.data = data
        self.sse = sse_bytes(id_, "change", data)
        key = data["key"]
        self.key_text = key if isinstance(key, str) else orjson.dumps(key, default=repr).decode()
        self.slot = (self.key_text, data.get("window_start"))
        self.at = at


def sse_bytes(id_: int | None, event: str, data) -> bytes:
    head = f"id: {id_}\n" if id_ is not None else ""
    return (head + f"event: {event}\ndata: ").encode() + orjson.dumps(data, default=repr) + b"\n\n"


class ChangeFeed:
    """The committed changes of one store, fanned out to subscribers (callables taking a list of
    :class:`Change`, or :data:`END`)."""

    def __init__(self, consumer_config: dict, spec, present, partitions: int, *, first_id: int = 1):
        self.spec = spec
        self._present = present
        self._partitions = partitions
        self._conf = {**consumer_config, "isolation.level": "read_committed", "enable.partition.eof": False}
        self.events: collections.deque = collections.deque(maxlen=BUFFER)
        self.next_id = first_id
        self._subs: set = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._ended = False         # no subscriber is called any more (under _lock)
        self.failed = False         # ended because following the changelog failed (not stopped)

    def subscribe(self, callback, last_id: int | None = None) -> list:
        """Add ``callback(changes)``; returns :meth:`missed` ``(last_id)``. ``[END]`` if the feed has ended:
        ``callback`` is never called."""
        self._ensure_started()
        with self._lock:
            if self._ended:
                return [END]
            self._subs.add(callback)
        return self.missed(last_id)

    def missed(self, last_id: int | None) -> list:
        """The buffered changes after ``last_id`` (None: none), preceded by a ``reset`` event (a dict) when
        changes after it are no longer buffered; ``[END]`` if the feed has ended."""
        with self._lock:
            if self._ended:
                return [END]
            if last_id is None:
                return []
            missed = [e for e in self.events if e.id > last_id]
            first = self.events[0].id if self.events else self.next_id
            if first > last_id + 1:
                missed.insert(0, {"id": None, "event": "reset",
                                  "data": {"reason": "changes older than the buffer were not kept"}})
            return missed

    def since(self, cursor: int) -> list | None:
        """The buffered changes with id >= ``cursor`` (in order); None when some of them are no longer
        buffered (the client fell behind the buffer: it must reload)."""
        with self._lock:
            events = self.events
            if cursor >= self.next_id:
                return []
            if not events or cursor < events[0].id:
                return None
            return list(itertools.islice(events, cursor - events[0].id, None))

    @property
    def ended(self) -> bool:
        return self._ended

    def unsubscribe(self, callback) -> None:
        with self._lock:
            self._subs.discard(callback)

    def _ensure_started(self) -> None:
        with self._lock:
            if self._ended:
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._follow, daemon=True,
                                                name=f"streamproc-changes-{self.spec.name}")
                self._thread.start()
        self._ready.wait(10)

    def _follow(self) -> None:
        c = None
        try:
            c = Consumer(self._conf)
            c.assign([TopicPartition(self.spec.changelog, p, OFFSET_END) for p in range(self._partitions)])
            self._ready.set()
            while not self._stop.is_set():
                batch = []
                for m in c.consume(500, 0.2):
                    if m.error() is not None:
                        if m.error().code() != KafkaError._PARTITION_EOF:
                            log.debug("changes of %s: %s", self.spec.name, m.error().str())
                        continue
                    data = self._data(m)
                    if data is not None:
                        batch.append(data)
                if batch:
                    self._publish(batch)
        except Exception as e:  # noqa: BLE001 - the streams end; a new client starts a new feed
            self.failed = True
            log.warning("changes of store %s: cannot follow %s any more: %s; its change streams end",
                        self.spec.name, self.spec.changelog, e)
        finally:
            self._end()
            self._ready.set()
            if c is not None:
                try:
                    c.close()
                except Exception as e:  # noqa: BLE001 - on the way out
                    log.debug("changes of %s: closing the consumer: %s", self.spec.name, e)

    def _end(self) -> None:
        """Tell every subscriber the feed ended (from the feed's thread: after the last change it was given)."""
        with self._lock:
            self._ended = True
            subs = list(self._subs)
            self._subs.clear()
        for cb in subs:
            try:
                cb(END)
            except Exception as e:  # noqa: BLE001 - a gone client (or a closed loop) must not stop the others
                log.debug("change subscriber: %s", e)

    def _read(self, m) -> tuple:
        """``(store key, stored value or None)`` of a changelog record, ``(None, None)`` for one that is no
        change (a metadata record; a table's record without a key). A record that cannot be read is
        passed over and logged: a feed only shows changes, it never stops on one."""
        kb, vb = m.key(), m.value()
        try:
            if self.spec.source is not None:          # a table: its source topic, the table's rows
                return read_row(self.spec.source, kb, vb, m.timestamp()[1])
            if kb == META_KEY:
                return None, None
            return decode_store_key(self.spec.kind, kb), (None if vb is None else decode_value(vb))
        except SerdeError as e:
            log.warning("changes of store %s: skipping the record of %s[%d] at offset %d: %s", self.spec.name,
                        m.topic(), m.partition(), m.offset(), e)
            return None, None

    def _data(self, m) -> dict | None:
        """The event data of one changelog record (None: not a change)."""
        key, value = self._read(m)
        if key is None:
            return None
        shown = None if value is None else self._present(key, value)
        windowed = self.spec.kind == StoreKind.WINDOW        # store keys (key, window start)
        data = {"key": to_json_key(key[0] if windowed else key), "value": shown,
                "partition": m.partition(), "offset": m.offset(), "timestamp": m.timestamp()[1]}
        if windowed:
            data["window_start"] = key[1]
        return data

    def _publish(self, batch: list[dict]) -> None:
        """Number, encode and buffer one consumer batch of changes, then call each subscriber once."""
        now = time.monotonic()
        with self._lock:
            first = self.next_id
            changes = [Change(first + i, data, now) for i, data in enumerate(batch)]
            self.next_id = first + len(changes)
            self.events.extend(changes)
            subs = list(self._subs)
        for cb in subs:
            try:
                cb(changes)
            except Exception as e:  # noqa: BLE001 - a gone client must not stop the feed
                log.debug("change subscriber: %s", e)

    def stop(self) -> None:
        """End the feed without waiting: its thread stops within a poll (0.2 s) and tells the subscribers."""
        self._stop.set()
        with self._lock:
            if self._thread is None:        # never started: no subscriber, nothing to follow
                self._ended = True

    def close(self) -> None:
        """:meth:`stop`, and wait for the feed's thread (its consumer closed)."""
        self.stop()
        if self._thread is not None:
            self._thread.join(3)
