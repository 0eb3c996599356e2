"""Many browsers on one store's changes (DESIGN section 8): what each SSE client is sent, and when.

One :class:`Fanout` per change feed (``changes.py``) lives in the HTTP server's event loop. The feed calls
it once per consumer batch; it wakes every client waiting on the feed, once. Each client then takes, from
the feed's shared buffer, the changes after its cursor (each already encoded as SSE bytes, once for all
clients) and writes them in one write:

* a client that keeps up (its last write finished and what waits is recent and small) gets every change,
  in order: nothing committed is skipped;
* a client that is behind (more than :data:`CONFLATE_AFTER` changes wait, or the oldest waiting is older
  than :data:`BEHIND_S`) gets only the newest change per key (per key and window for a windowed store), in
  id order, each with its own id: per key the order is kept and what it shows is current;
* a client resuming with ``Last-Event-ID`` gets every buffered change it missed first, in one write;
* a client that fell out of the buffer (its cursor is older than the oldest buffered change) gets a
  ``reset`` event and goes on from the newest change (the page reloads the store); one whose write does
  not finish within :data:`STUCK_S` is disconnected (its browser reconnects, and gets the ``reset``).

The serving side's CPU is bounded: :class:`Pacer` measures the event loop thread's CPU each second and
widens the least interval between two writes to one client (up to :data:`MAX_INTERVAL_S`) while it is over
its share of a core, so it sheds load by conflating more, not by slowing processing.

Filters: ``?keys=a,b,c`` (exact keys, as text: a JSON key as its JSON) and ``?prefix=p``.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time

from .changes import END, sse_bytes

log = logging.getLogger("streamproc.http")

#: changes waiting for one client above which it gets only the newest per key
CONFLATE_AFTER = 1000
#: age of the oldest change waiting for a client above which it gets only the newest per key
BEHIND_S = 0.5
#: a write to a client taking longer than this disconnects it
STUCK_S = 30.0
KEEPALIVE_S = 15.0
MIN_INTERVAL_S = 0.02
MAX_INTERVAL_S = 1.0


class LiveStats:
    """Counters of the live change streams, for metrics and the status line (thread-safe reads)."""

    def __init__(self):
        self.serving = False            # an HTTP server of this instance serves change streams (--http-port)
        self.clients = 0
        self.sent = 0
        self.conflated = 0
        self.resets = 0
        self.interval_s = MIN_INTERVAL_S
        self.cpu_share = 0.0

    def status(self) -> str:
        if not (self.clients or self.sent):
            return ""
        return (f"; live: {self.clients} client(s), {self.sent:,} changes sent, {self.conflated:,} conflated, "
                f"{self.resets} reset")

    def families(self) -> list:
        """The Prometheus families (none without an HTTP server)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        if not self.serving:
            return []
        clients = GaugeMetricFamily("streamproc_live_clients", "Clients following a store's changes (SSE).")
        clients.add_metric([], self.clients)
        sent = CounterMetricFamily("streamproc_live_events_sent", "Change events sent to SSE clients.")
        sent.add_metric([], self.sent)
        conflated = CounterMetricFamily("streamproc_live_events_conflated",
                                        "Change events not sent to a client that was behind because a newer "
                                        "change of the same key replaced them.")
        conflated.add_metric([], self.conflated)
        resets = CounterMetricFamily("streamproc_live_client_resets",
                                     "Clients told to reload (they fell behind the buffer or stopped reading).")
        resets.add_metric([], self.resets)
        interval = GaugeMetricFamily("streamproc_live_write_interval_seconds",
                                     "Least time between two writes to one client (widened while serving "
                                     "is over its CPU share).")
        interval.add_metric([], self.interval_s)
        share = GaugeMetricFamily("streamproc_live_cpu_share", "CPU of the HTTP event loop, share of one core.")
        share.add_metric([], self.cpu_share)
        return [clients, sent, conflated, resets, interval, share]


class Pacer:
    """The least interval between two writes to one client, from the event loop thread's CPU share."""

    def __init__(self, stats: LiveStats, share: float):
        self.stats = stats
        self.share = share
        self._task = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        cpu, wall = time.thread_time(), time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            c, w = time.thread_time(), time.monotonic()
            used = (c - cpu) / max(1e-6, w - wall)
            cpu, wall = c, w
            s = self.stats
            s.cpu_share = used
            if used > self.share:
                s.interval_s = min(MAX_INTERVAL_S, s.interval_s * 1.5)
            elif used < self.share / 2:
                s.interval_s = max(MIN_INTERVAL_S, s.interval_s / 1.5)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


class Filter:
    """Which changes a client follows: ``keys`` (a set of key texts) and/or ``prefix`` (None: all)."""

    __slots__ = ("keys", "prefix")

    def __init__(self, keys: str | None = None, prefix: str | None = None):
        self.keys = None if keys is None else frozenset(k for k in keys.split(",") if k)
        self.prefix = prefix or None

    @property
    def everything(self) -> bool:
        return self.keys is None and self.prefix is None

    def select(self, changes: list) -> list:
        if self.everything:
            return changes
        keys, prefix = self.keys, self.prefix
        return [c for c in changes if (keys is None or c.key_text in keys)
                and (prefix is None or c.key_text.startswith(prefix))]


class Fanout:
    """The clients of one change feed (in the event loop); :meth:`serve` runs one client's stream."""

    def __init__(self, feed, stats: LiveStats, loop):
        self.feed = feed
        self.stats = stats
        self._loop = loop
        self._new = asyncio.Event()
        self._ended = False
        self._subscribed = False
        self._lock = threading.Lock()
        self._joined: tuple = (None, None, b"")        # (first id, last id, bytes): shared by unfiltered clients

    def _on_changes(self, changes) -> None:          # the feed's thread, once per consumer batch
        self._loop.call_soon_threadsafe(self._wake, changes is END)

    def _wake(self, ended: bool) -> None:
        if ended:
            self._ended = True
        self._new.set()
        self._new = asyncio.Event()

    async def serve(self, write, last_id: int | None, flt: Filter) -> None:
        """Write this client's stream with ``write(bytes)`` until the feed ends (or the client goes:
        ``ConnectionError``). ``last_id``: the client's Last-Event-ID (None: from now on)."""
        if not self._subscribed:             # one subscription for every client of the feed
            self._subscribed = True
            missed = await asyncio.to_thread(self.feed.subscribe, self._on_changes, last_id)
        else:
            missed = self.feed.missed(last_id)
        stats = self.stats
        stats.clients += 1
        try:
            if END in missed:
                return
            cursor = self.feed.next_id
            replay = [e for e in missed if not isinstance(e, dict)]
            if any(isinstance(e, dict) for e in missed):      # the reset of a Last-Event-ID older than the buffer
                await write(sse_bytes(None, "reset", {"reason": "changes older than the buffer were not kept"}))
                stats.resets += 1
            if replay:                            # a resumed stream gets what it missed, all of it, in one write
                sel = flt.select(replay)
                if sel:
                    await write(b"".join([c.sse for c in sel]))
                    stats.sent += len(sel)
                cursor = replay[-1].id + 1
            last_write = 0.0
            while True:
                if cursor >= self.feed.next_id:
                    if self._ended or self.feed.ended:
                        return
                    try:
                        await asyncio.wait_for(self._new.wait(), KEEPALIVE_S)
                    except asyncio.TimeoutError:
                        await write(b": keep-alive\n\n")
                        continue
                wait = last_write + stats.interval_s - time.monotonic()
                if wait > 0:                      # paced: what arrives meanwhile goes in the same write
                    await asyncio.sleep(wait)
                changes = self.feed.since(cursor)
                if changes is None:               # fell out of the buffer
                    cursor = self.feed.next_id
                    stats.resets += 1
                    await write(sse_bytes(None, "reset", {"reason": "this client fell behind the change buffer"}))
                    continue
                if not changes:
                    continue
                cursor = changes[-1].id + 1
                payload, n = self._payload(changes, flt)
                if not n:
                    continue
                last_write = time.monotonic()
                try:
                    await asyncio.wait_for(write(payload), STUCK_S)
                except asyncio.TimeoutError:
                    stats.resets += 1
                    log.info("a change stream client did not read for %.0f s: disconnected", STUCK_S)
                    raise ConnectionResetError("client stuck") from None
                stats.sent += n
        finally:
            stats.clients -= 1

    def _payload(self, changes: list, flt: Filter) -> tuple[bytes, int]:
        """The bytes of one write and how many changes they hold: every change, or the newest per key when
        the client is behind."""
        sel = flt.select(changes)
        if not sel:
            return b"", 0
        if len(sel) > CONFLATE_AFTER or time.monotonic() - sel[0].at > BEHIND_S:
            newest = {}
            for c in sel:
                newest[c.slot] = c
            if len(newest) < len(sel):
                self.stats.conflated += len(sel) - len(newest)
                sel = sorted(newest.values(), key=_id)
        first, last = sel[0].id, sel[-1].id
        if flt.everything and len(sel) == last - first + 1:
            j = self._joined
            if j[0] == first and j[1] == last:        # the same changes as another client: already joined
                return j[2], len(sel)
            data = b"".join([c.sse for c in sel])
            self._joined = (first, last, data)
            return data, len(sel)
        return b"".join([c.sse for c in sel]), len(sel)

    def close(self) -> None:
        if self._subscribed:
            self.feed.unsubscribe(self._on_changes)


def _id(c) -> int:
    return c.id
