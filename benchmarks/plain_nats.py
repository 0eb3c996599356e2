"""Plain nats-py JetStream throughput, next to the streamproc NATS connector's clients.

Run: ``.venv/bin/python benchmarks/plain_nats.py [--url nats://host:4222] [-n 100000] [--size 100]``

Without ``--url`` it starts a throw-away ``nats-server -js`` on a free loopback port (file store in a
temporary directory) and stops it at the end. It prints messages per second for:

* plain publish: N publishes with a ``Nats-Msg-Id`` each, pipelined (publish without waiting, at most
  ``--window`` PubAcks outstanding), returning when every PubAck arrived;
* plain publish one round trip each (``js.publish`` awaiting its PubAck), over min(N, 10,000);
* plain consume: a durable pull consumer, ``fetch(1000)`` batches, each message acked (``msg.ack()``,
  no ack_sync), one flush at the end;
* ``_Sink.publish`` in batches of ``--batch`` (the connector's synchronous call, same pipelining);
* ``_Source.fetch(--batch)`` + ``ack`` over the same N messages.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from streamproc.connectors._base import Outgoing                      # noqa: E402
from streamproc.connectors.nats import NatsJetStream                  # noqa: E402


async def _publish(url: str, subject: str, n: int, size: int, window: int) -> float:
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream(timeout=10, publish_async_max_pending=window)
    payload = b"x" * size
    try:
        t0 = time.perf_counter()
        futures = [await js.publish_async(subject, payload, headers={"Nats-Msg-Id": f"plain-{t0}-{i}"})
                   for i in range(n)]
        await asyncio.wait_for(asyncio.gather(*futures), 60)
        return time.perf_counter() - t0
    finally:
        await nc.close()


async def _publish_sequential(url: str, subject: str, n: int, size: int) -> float:
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream(timeout=10)
    payload = b"x" * size
    try:
        t0 = time.perf_counter()
        for i in range(n):
            await js.publish(subject, payload, headers={"Nats-Msg-Id": f"seq-{t0}-{i}"})
        return time.perf_counter() - t0
    finally:
        await nc.close()


def publish_sequential(url: str, subject: str, n: int, size: int) -> float:
    """Seconds to publish ``n`` messages one round trip each (``js.publish`` awaits its PubAck)."""
    return asyncio.run(_publish_sequential(url, subject, n, size))


def publish(url: str, subject: str, n: int, size: int, window: int = 4000) -> float:
    """Seconds to publish ``n`` messages of ``size`` bytes to ``subject`` with every PubAck received."""
    return asyncio.run(_publish(url, subject, n, size, window))


async def _consume(url: str, stream: str, subject: str, n: int) -> float:
    import nats
    import nats.errors

    nc = await nats.connect(url)
    js = nc.jetstream(timeout=10)
    durable = f"plain-{int(time.time() * 1000)}"
    sub = await js.pull_subscribe(subject, durable=durable, stream=stream)
    try:
        t0 = time.perf_counter()
        got = 0
        while got < n:
            try:
                msgs = await sub.fetch(1000, timeout=5)
            except nats.errors.TimeoutError:
                raise RuntimeError(f"only {got} of {n} messages arrived") from None
            for m in msgs:
                await m.ack()
            got += len(msgs)
        await nc.flush(10)
        return time.perf_counter() - t0
    finally:
        await js.delete_consumer(stream, durable)
        await nc.close()


def consume(url: str, stream: str, subject: str, n: int) -> float:
    """Seconds to pull-consume and ack ``n`` messages of ``subject`` from ``stream`` (a new durable)."""
    return asyncio.run(_consume(url, stream, subject, n))


def connector_publish(url: str, subject: str, n: int, size: int, batch: int) -> float:
    """Seconds for ``_Sink.publish`` to deliver ``n`` messages in batches of ``batch``."""
    sink = NatsJetStream(url, subject).sink_client()
    sink.open()
    value = b"x" * size
    try:
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            sink.publish([Outgoing(id=f"bench/egress/0/{i}-{t0}", position=("egress", 0, i), target=subject,
                                   key=b"key-%d" % (i % 100), value=value)
                          for i in range(start, min(n, start + batch))])
        return time.perf_counter() - t0
    finally:
        sink.close()


def connector_consume(url: str, stream: str, subject: str, n: int, batch: int) -> float:
    """Seconds for ``_Source.fetch`` + ``ack`` to read ``n`` messages (a new durable)."""
    source = NatsJetStream(url, subject, stream=stream, durable=f"conn-{int(time.time() * 1000)}") \
        .source_client("bench")
    source.open()
    try:
        t0 = time.perf_counter()
        got = 0
        while got < n:
            msgs = source.fetch(batch, 5.0)
            if not msgs:
                raise RuntimeError(f"only {got} of {n} messages arrived")
            source.ack(msgs)
            got += len(msgs)
        return time.perf_counter() - t0
    finally:
        source.close()


async def _make_stream(url: str, stream: str, subject: str) -> None:
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        try:
            await js.delete_stream(stream)
        except Exception:   # noqa: BLE001 - not there yet
            pass
        await js.add_stream(name=stream, subjects=[subject])
    finally:
        await nc.close()


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>10,.0f} msgs/s  ({seconds:.2f} s for {n:,})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running JetStream server (default: start one)")
    ap.add_argument("-n", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--batch", type=int, default=1000, help="connector batch size")
    ap.add_argument("--window", type=int, default=4000, help="plain publish: PubAcks outstanding")
    args = ap.parse_args(argv)

    server = None
    if args.url is None:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
        from _server_nats import start_nats
        server = start_nats(tempfile.mkdtemp(prefix="bench-nats-"))
        args.url = server.url
    try:
        n, size = args.n, args.size
        asyncio.run(_make_stream(args.url, "BENCH", "bench.>"))
        print(f"NATS JetStream {args.url}, {n:,} messages of {size} bytes (file store)")
        seconds = publish(args.url, "bench.plain", n, size, args.window)
        print(f"plain publish (window {args.window}):  {_rate(n, seconds)}")
        n_seq = min(n, 10_000)
        print(f"plain publish, one round trip each: "
              f"{_rate(n_seq, publish_sequential(args.url, 'bench.seq', n_seq, size))}")
        print(f"plain consume (fetch 1000 + ack):  {_rate(n, consume(args.url, 'BENCH', 'bench.plain', n))}")
        print(f"_Sink.publish (batch {args.batch}):       "
              f"{_rate(n, connector_publish(args.url, 'bench.conn', n, size, args.batch))}")
        print(f"_Source.fetch+ack (batch {args.batch}):   "
              f"{_rate(n, connector_consume(args.url, 'BENCH', 'bench.conn', n, args.batch))}")
    finally:
        if server is not None:
            server.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
