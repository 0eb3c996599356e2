"""What each SSE client of a store's changes is sent (``runtime/serve/fanout.py``): every change when it
keeps up, the newest per key when it is behind (per-key order kept), a ``reset`` when it fell out of the
buffer, only what its filter selects. The feed here is the real buffer and encoding of ``changes.py``
(``Change``, ``since``/``missed`` semantics) fed by hand instead of by a changelog consumer."""
from __future__ import annotations

import asyncio
import collections
import itertools
import time

import orjson
import pytest

from streamproc.runtime.serve import fanout as F
from streamproc.runtime.serve.changes import END, Change


class Feed:
    """The part of ``ChangeFeed`` a Fanout uses, with its buffer rules, fed by :meth:`publish`."""

    def __init__(self, buffer: int = 10_000):
        self.events = collections.deque(maxlen=buffer)
        self.next_id = 1
        self.subs = set()
        self.ended = False

    def subscribe(self, cb, last_id=None):
        self.subs.add(cb)
        return self.missed(last_id)

    def unsubscribe(self, cb):
        self.subs.discard(cb)

    def missed(self, last_id):
        return [] if last_id is None else [e for e in self.events if e.id > last_id]

    def since(self, cursor):
        if cursor >= self.next_id:
            return []
        if not self.events or cursor < self.events[0].id:
            return None
        return list(itertools.islice(self.events, cursor - self.events[0].id, None))

    def publish(self, pairs, at=None):
        at = time.monotonic() if at is None else at
        changes = []
        for k, v in pairs:
            changes.append(Change(self.next_id, {"key": k, "value": v}, at))
            self.next_id += 1
        self.events.extend(changes)
        for cb in list(self.subs):
            cb(changes)

    def end(self):
        self.ended = True
        for cb in list(self.subs):
            cb(END)


def _events(chunks: list[bytes]) -> list[tuple]:
    """(event name, id, data) of the SSE bytes written."""
    out = []
    for block in b"".join(chunks).split(b"\n\n"):
        if not block or block.startswith(b":"):
            continue
        fields = dict(line.split(b": ", 1) for line in block.split(b"\n"))
        out.append((fields[b"event"].decode(), int(fields[b"id"]) if b"id" in fields else None,
                    orjson.loads(fields[b"data"])))
    return out


class Client:
    def __init__(self, delay_s: float = 0.0):
        self.chunks: list[bytes] = []
        self.delay_s = delay_s

    async def write(self, b: bytes):
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.chunks.append(b)


def _run(scenario):
    return asyncio.run(scenario())


def test_a_client_that_keeps_up_gets_every_change_in_order():
    async def scenario():
        feed, stats = Feed(), F.LiveStats()
        fan = F.Fanout(feed, stats, asyncio.get_running_loop())
        c = Client()
        task = asyncio.create_task(fan.serve(c.write, None, F.Filter()))
        await asyncio.sleep(0.05)
        for i in range(20):
            feed.publish([("a", i), ("b", i)])
            await asyncio.sleep(0.03)
        feed.end()
        await asyncio.wait_for(task, 5)
        return c, stats

    c, stats = _run(scenario)
    got = [(e[2]["key"], e[2]["value"]) for e in _events(c.chunks)]
    assert got == [(k, i) for i in range(20) for k in ("a", "b")]
    assert stats.sent == 40 and stats.conflated == 0 and stats.clients == 0


def test_a_slow_client_gets_the_newest_per_key_with_order_per_key_kept():
    async def scenario():
        feed, stats = Feed(), F.LiveStats()
        fan = F.Fanout(feed, stats, asyncio.get_running_loop())
        slow, fast = Client(delay_s=0.7), Client()          # the slow one: staler than BEHIND_S
        t1 = asyncio.create_task(fan.serve(slow.write, None, F.Filter()))
        t2 = asyncio.create_task(fan.serve(fast.write, None, F.Filter()))
        await asyncio.sleep(0.05)
        for i in range(60):
            feed.publish([(f"k{j}", i) for j in range(5)])
            await asyncio.sleep(0.04)
        await asyncio.sleep(2.0)
        feed.end()
        await asyncio.wait_for(asyncio.gather(t1, t2), 10)
        return slow, fast, stats

    slow, fast, stats = _run(scenario)
    fast_got = _events(fast.chunks)
    assert len(fast_got) == 300                                   # the fast one missed nothing
    got = _events(slow.chunks)
    assert len(got) < 150, len(got)                              # the slow one got far fewer...
    ids = [e[1] for e in got]
    assert ids == sorted(ids)
    last = {}
    for _, _, d in got:                                          # ... per key in order ...
        assert d["value"] >= last.get(d["key"], -1)
        last[d["key"]] = d["value"]
    assert last == {f"k{j}": 59 for j in range(5)}               # ... ending at the newest of every key
    assert stats.conflated > 0


def test_a_client_behind_the_buffer_gets_a_reset_then_goes_on():
    async def scenario():
        feed, stats = Feed(buffer=50), F.LiveStats()
        fan = F.Fanout(feed, stats, asyncio.get_running_loop())
        c = Client(delay_s=0.4)
        task = asyncio.create_task(fan.serve(c.write, None, F.Filter()))
        await asyncio.sleep(0.05)
        feed.publish([("a", 0)])
        await asyncio.sleep(0.1)                                  # its write of change 1 is under way
        for i in range(1, 200):
            feed.publish([(f"k{i}", i)])                          # 199 more: the buffer holds 50
        await asyncio.sleep(0.1)
        feed.publish([("z", 1)])
        await asyncio.sleep(1.5)
        feed.end()
        await asyncio.wait_for(task, 5)
        return c, stats

    c, stats = _run(scenario)
    names = [e[0] for e in _events(c.chunks)]
    assert "reset" in names and names[0] == "change"
    after = _events(c.chunks)[names.index("reset") + 1:]
    assert stats.resets == 1 and all(e[0] == "change" for e in after)


def test_filters_by_keys_and_by_prefix():
    async def scenario():
        feed, stats = Feed(), F.LiveStats()
        fan = F.Fanout(feed, stats, asyncio.get_running_loop())
        by_keys, by_prefix = Client(), Client()
        tasks = [asyncio.create_task(fan.serve(by_keys.write, None, F.Filter(keys="user-1,user-7"))),
                 asyncio.create_task(fan.serve(by_prefix.write, None, F.Filter(prefix="admin-")))]
        await asyncio.sleep(0.05)
        feed.publish([("user-1", 1), ("user-2", 2), ("admin-x", 3), ("user-7", 4), ("admin-y", 5)])
        await asyncio.sleep(0.2)
        feed.end()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        return by_keys, by_prefix

    by_keys, by_prefix = _run(scenario)
    assert [e[2]["key"] for e in _events(by_keys.chunks)] == ["user-1", "user-7"]
    assert [e[2]["key"] for e in _events(by_prefix.chunks)] == ["admin-x", "admin-y"]


def test_last_event_id_resumes_from_the_buffer():
    async def scenario():
        feed, stats = Feed(), F.LiveStats()
        fan = F.Fanout(feed, stats, asyncio.get_running_loop())
        first = Client()
        t = asyncio.create_task(fan.serve(first.write, None, F.Filter()))
        await asyncio.sleep(0.05)
        feed.publish([("a", 1), ("b", 2), ("c", 3)])
        await asyncio.sleep(0.1)
        again = Client()                                          # reconnects having seen id 1
        t2 = asyncio.create_task(fan.serve(again.write, 1, F.Filter()))
        await asyncio.sleep(0.1)
        feed.publish([("d", 4)])
        await asyncio.sleep(0.1)
        feed.end()
        await asyncio.wait_for(asyncio.gather(t, t2), 5)
        return again

    again = _run(scenario)
    assert [e[1] for e in _events(again.chunks)] == [2, 3, 4]


def test_the_pacer_widens_the_interval_over_the_cpu_share_and_narrows_it_after():
    async def scenario():
        stats = F.LiveStats()
        pacer = F.Pacer(stats, share=0.2)
        pacer.start()
        end = time.monotonic() + 2.2
        while time.monotonic() < end:                             # the loop thread busy: over its share
            sum(range(20000))
            await asyncio.sleep(0)
        widened = stats.interval_s
        await asyncio.sleep(3.2)                                  # idle: it narrows again
        pacer.stop()
        return widened, stats.interval_s

    widened, after = _run(scenario)
    assert widened > F.MIN_INTERVAL_S * 1.4
    assert after < widened
