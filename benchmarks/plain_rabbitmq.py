"""Plain pika against streamproc's RabbitMQ connector clients: publish with confirms, consume with acks.

Run: ``.venv/bin/python benchmarks/plain_rabbitmq.py [--url amqp://guest:guest@127.0.0.1:5672/%2F]
[--n 100000] [--size 100] [--json]`` (without ``--url`` it starts a private node through
``tests/_server_rabbitmq.py`` and stops it at the end).

Measured, each over the same N messages of ``size`` bytes to a durable direct exchange bound to one
durable classic queue, persistent messages:

* ``plain publish``: pika, publisher confirms, the batch (1,000) sent then its confirms awaited;
* ``plain publish, confirm each``: pika's BlockingChannel in confirm mode (one round trip per message:
  what the connector avoids), over N/10 messages;
* ``plain consume``: pika ``basic_consume`` with prefetch 1,000, one multiple-ack per 1,000;
* ``plain basic_get``: one ``basic.get`` round trip per message, over N/10 messages;
* ``connector publish`` / ``connector fetch+ack``: ``_Sink.publish`` in batches of 1,000 and
  ``_Source.fetch(1000)`` + ``ack``.

``publish(url, exchange, routing_key, n, size)`` and ``consume(url, queue, n)`` return seconds and can be
reused by a suite.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import pika

BATCH = 1_000


def _connect(url: str):
    conn = pika.BlockingConnection(pika.URLParameters(url))
    return conn, conn.channel()


def publish(url: str, exchange: str, routing_key: str, n: int, size: int, batch: int = BATCH) -> float:
    """Seconds to publish ``n`` persistent messages with confirms, awaiting each batch's confirms."""
    conn, ch = _connect(url)
    impl = ch._impl                    # the asynchronous channel: BlockingChannel confirms per message
    state = {"acked": 0, "nacked": 0, "selected": False, "sent": 0}

    def on_confirm(frame):
        m = frame.method
        done = m.delivery_tag - state["acked"] if m.multiple else 1
        state["acked"] += done
        if isinstance(m, pika.spec.Basic.Nack):
            state["nacked"] += done
        if state["acked"] >= state["sent"]:
            conn.add_callback_threadsafe(lambda: None)   # wake process_data_events: batch confirmed

    impl.confirm_delivery(on_confirm, callback=lambda _f: state.update(selected=True))
    while not state["selected"]:
        conn.process_data_events(time_limit=1)
    body = b"x" * size
    props = pika.BasicProperties(delivery_mode=2)
    t0 = time.perf_counter()
    sent = 0
    while sent < n:
        k = min(batch, n - sent)
        for _ in range(k):
            impl.basic_publish(exchange, routing_key, body, props)
        sent += k
        state["sent"] = sent
        while state["acked"] < sent:
            conn.process_data_events(time_limit=1)
    elapsed = time.perf_counter() - t0
    conn.close()
    if state["nacked"]:
        raise RuntimeError(f"{state['nacked']} messages were nacked")
    return elapsed


def publish_each(url: str, exchange: str, routing_key: str, n: int, size: int) -> float:
    """Seconds to publish ``n`` messages through BlockingChannel confirm mode (waits per message)."""
    conn, ch = _connect(url)
    ch.confirm_delivery()
    body = b"x" * size
    props = pika.BasicProperties(delivery_mode=2)
    t0 = time.perf_counter()
    for _ in range(n):
        ch.basic_publish(exchange, routing_key, body, props)
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed


def consume(url: str, queue: str, n: int, prefetch: int = BATCH) -> float:
    """Seconds to consume and ack ``n`` messages (basic_consume, one multiple-ack per ``prefetch``)."""
    conn, ch = _connect(url)
    ch.basic_qos(prefetch_count=prefetch)
    got = 0
    t0 = time.perf_counter()
    for method, _props, _body in ch.consume(queue, inactivity_timeout=10):
        if method is None:
            raise RuntimeError(f"only {got} of {n} messages arrived")
        got += 1
        if got % (prefetch // 2 or 1) == 0 or got == n:
            ch.basic_ack(method.delivery_tag, multiple=True)
        if got == n:
            break
    elapsed = time.perf_counter() - t0
    ch.cancel()
    conn.close()
    return elapsed


def consume_get(url: str, queue: str, n: int) -> float:
    """Seconds to take ``n`` messages with basic.get (a round trip each) and ack them."""
    conn, ch = _connect(url)
    t0 = time.perf_counter()
    for i in range(n):
        method, _props, _body = ch.basic_get(queue)
        if method is None:
            raise RuntimeError(f"only {i} of {n} messages arrived")
        ch.basic_ack(method.delivery_tag)
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed


def connector_publish(url: str, exchange: str, routing_key: str, n: int, size: int,
                      batch: int = BATCH) -> float:
    """Seconds for streamproc's ``_Sink.publish`` to deliver ``n`` messages in batches of ``batch``."""
    from streamproc.connectors._base import Outgoing
    from streamproc.connectors.rabbitmq import RabbitMQ

    sink = RabbitMQ(url, exchange, routing_key=routing_key).sink_client()
    sink.open()
    value = b"x" * size
    batches = [[Outgoing(f"bench/t/0/{i}", ("t", 0, i), routing_key, b"key", value)
                for i in range(s, min(s + batch, n))] for s in range(0, n, batch)]
    t0 = time.perf_counter()
    for b in batches:
        sink.publish(b)
    elapsed = time.perf_counter() - t0
    sink.close()
    return elapsed


def connector_consume(url: str, queue: str, n: int, batch: int = BATCH) -> float:
    """Seconds for streamproc's ``_Source`` to fetch and ack ``n`` messages, ``batch`` per fetch."""
    from streamproc.connectors.rabbitmq import RabbitMQ

    src = RabbitMQ(url, queue, prefetch=batch).source_client("bench")
    src.open()
    got = 0
    t0 = time.perf_counter()
    while got < n:
        msgs = src.fetch(min(batch, n - got), 10.0)
        if not msgs:
            raise RuntimeError(f"only {got} of {n} messages arrived")
        src.ack(msgs)
        got += len(msgs)
    elapsed = time.perf_counter() - t0
    src.close()
    return elapsed


def _setup(url: str, exchange: str, queue: str) -> None:
    conn, ch = _connect(url)
    ch.exchange_declare(exchange, "direct", durable=True)
    ch.queue_declare(queue, durable=True)
    ch.queue_bind(queue, exchange, "bench")
    ch.queue_purge(queue)
    conn.close()


def run(url: str, n: int, size: int) -> dict:
    ex, q = "streamproc-bench", "streamproc-bench"
    _setup(url, ex, q)
    small = max(n // 10, 1)
    res = {}
    res["plain publish"] = n / publish(url, ex, "bench", n, size)
    res["plain consume"] = n / consume(url, q, n)
    res["plain publish, confirm each"] = small / publish_each(url, ex, "bench", small, size)
    res["plain basic_get"] = small / consume_get(url, q, small)
    res["connector publish"] = n / connector_publish(url, ex, "bench", n, size)
    res["connector fetch+ack"] = n / connector_consume(url, q, n)
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="broker url (default: start a private node)")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    if args.url is not None:
        res = run(args.url, args.n, args.size)
    else:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
        from _server_rabbitmq import start_rabbitmq

        with tempfile.TemporaryDirectory(prefix="bench-rabbitmq-") as tmp:
            server = start_rabbitmq(tmp)
            print(f"started a private RabbitMQ in {server.startup_s:.1f} s", file=sys.stderr)
            try:
                res = run(server.url, args.n, args.size)
            finally:
                server.destroy()
    if args.json:
        print(json.dumps({k: round(v) for k, v in res.items()}))
        return
    print(f"{args.n} messages of {args.size} bytes (confirm-each and basic_get over {max(args.n // 10, 1)})")
    for k, v in res.items():
        print(f"  {k:<30} {v:>10,.0f} msgs/s")


if __name__ == "__main__":
    main()
