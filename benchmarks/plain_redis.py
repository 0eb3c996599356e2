"""Throughput of Redis Streams: plain redis-py loops against the streamproc connector's clients.

Run: ``.venv/bin/python benchmarks/plain_redis.py [--url redis://127.0.0.1:6379/0] [-n 100000] [--size 100]``
(without ``--url`` a throw-away redis-server is started, as the tests do).

Prints msgs/s for:

* ``publish``: plain pipelined ``XADD`` of ``n`` entries (batches of 1,000, one round trip each);
* ``consume``: plain ``XREADGROUP COUNT 1000`` + one ``XACK`` per batch until ``n`` were read;
* the connector's ``_Sink.publish`` (the idempotent Lua script: XADD + the delivered-offset hash per
  entry, batches of 1,000) and a re-publish of the same batches (writes nothing);
* the connector's ``_Source.fetch`` + ``ack`` (batches of 1,000).

The gap between the plain loops and the connector is the price of the exactly-once write and of
building :class:`Incoming` objects.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid

import redis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from streamproc.connectors._base import Outgoing  # noqa: E402
from streamproc.connectors.redis import RedisStream  # noqa: E402

BATCH = 1_000


def publish(url: str, stream: str, n: int, size: int) -> float:
    """Seconds to XADD ``n`` entries of a ``size``-byte value, pipelined in batches of 1,000."""
    c = redis.Redis.from_url(url)
    value = b"x" * size
    t0 = time.perf_counter()
    for start in range(0, n, BATCH):
        with c.pipeline(transaction=False) as p:
            for i in range(start, min(n, start + BATCH)):
                p.xadd(stream, {"id": str(i), "value": value})
            p.execute()
    dt = time.perf_counter() - t0
    c.close()
    return dt


def consume(url: str, stream: str, group: str, n: int) -> float:
    """Seconds to read ``n`` entries with XREADGROUP (COUNT 1,000) and XACK each batch."""
    c = redis.Redis.from_url(url)
    try:
        c.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError:
        pass
    got = 0
    t0 = time.perf_counter()
    while got < n:
        reply = c.xreadgroup(group, "bench", {stream: ">"}, count=BATCH, block=1000)
        if not reply:
            break
        entries = reply[0][1]
        c.xack(stream, group, *[eid for eid, _ in entries])
        got += len(entries)
    dt = time.perf_counter() - t0
    c.close()
    return dt


def connector_publish(url: str, stream: str, n: int, size: int) -> float:
    """Seconds for the connector's idempotent publish of ``n`` results in batches of 1,000."""
    sink = RedisStream(url, stream).sink_client()
    sink.open()
    batches = _outgoing(stream, n, size)
    t0 = time.perf_counter()
    for b in batches:
        sink.publish(b)
    dt = time.perf_counter() - t0
    sink.close()
    return dt


def connector_republish(url: str, stream: str, n: int, size: int) -> float:
    """Seconds for publishing the same ``n`` results again (every one is skipped by the script)."""
    return connector_publish(url, stream, n, size)


def connector_consume(url: str, stream: str, group: str, n: int) -> float:
    """Seconds for the connector's fetch + ack of ``n`` entries in batches of 1,000."""
    src = RedisStream(url, stream, group=group, prefetch=BATCH).source_client("bench")
    src.open()
    got = 0
    t0 = time.perf_counter()
    while got < n:
        ms = src.fetch(BATCH, 1.0)
        if not ms:
            break
        src.ack(ms)
        got += len(ms)
    dt = time.perf_counter() - t0
    src.close()
    return dt


def _outgoing(stream: str, n: int, size: int) -> list[list[Outgoing]]:
    value = b"x" * size
    out = [Outgoing(id=f"bench/t/0/{i}", position=("t", 0, i), target=stream, key=str(i).encode(),
                    value=value) for i in range(n)]
    return [out[i:i + BATCH] for i in range(0, n, BATCH)]


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>12,.0f} msgs/s  ({seconds:.3f} s for {n:,})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=None, help="a running server (default: start one)")
    ap.add_argument("-n", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=100, help="value bytes")
    a = ap.parse_args()
    server = None
    if a.url is None:
        import _server_redis
        server = _server_redis.start_redis(tempfile.mkdtemp(prefix="plain-redis-"))
        a.url = server.url
    try:
        tag = uuid.uuid4().hex[:6]
        plain, conn = f"bench-plain-{tag}", f"bench-conn-{tag}"
        print(f"Redis Streams, n={a.n:,}, value {a.size} B, batches of {BATCH:,}")
        print(f"  plain XADD (pipelined)          {_rate(a.n, publish(a.url, plain, a.n, a.size))}")
        print(f"  plain XREADGROUP + XACK         {_rate(a.n, consume(a.url, plain, 'g', a.n))}")
        print(f"  connector publish (idempotent)  {_rate(a.n, connector_publish(a.url, conn, a.n, a.size))}")
        print(f"  connector re-publish (skipped)  {_rate(a.n, connector_republish(a.url, conn, a.n, a.size))}")
        print(f"  connector fetch + ack           {_rate(a.n, connector_consume(a.url, conn, 'g', a.n))}")
    finally:
        if server is not None:
            server.kill()


if __name__ == "__main__":
    main()
