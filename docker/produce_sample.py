"""Sample page views for docker/compose.yaml, until stopped.

Avro per schemas/page_view.avsc (serialized with streamproc.serdes.Avro), keyed by session id,
event time in ``ts`` (wall-clock milliseconds, also the record timestamp), a few per second:

* most records are up to 5 s out of order, inside the topology's 10 s grace;
* ``--late-fraction`` of them are 90-180 s old, after their window closed: the app drops them
  and counts them (``streamproc_records_dropped_total{reason="late"}``);
* about one in ten has ``duration_ms == 0``, which the topology filters out.

    python produce_sample.py --bootstrap-servers kafka:9092 [--rate 5] [--late-fraction 0.05] [--count N]
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time
from typing import Iterator

from streamproc import serdes

USERS = ["ann", "bob", "cho", "dev", "eve", "fay", "gus", "hal"]
PAGES = ["/", "/pricing", "/docs", "/blog", "/signup", "/login"]
MAX_DISORDER_MS = 5_000                  # inside the topology's grace (10 s)
LATE_AGE_MS = (90_000, 180_000)          # older than a 1 min window + 10 s grace


def page_view(rng: random.Random, now_ms: int, late_fraction: float) -> tuple[str, dict]:
    """One ``(session id, page view)`` at wall-clock time ``now_ms``."""
    user = rng.choice(USERS)
    if rng.random() < late_fraction:
        ts = now_ms - rng.randint(*LATE_AGE_MS)
    else:
        ts = now_ms - rng.randint(0, MAX_DISORDER_MS)
    duration = 0 if rng.random() < 0.1 else rng.randint(200, 30_000)
    return f"session-{user}-{rng.randint(1, 3)}", {
        "user_id": user, "page": rng.choice(PAGES), "duration_ms": duration, "ts": max(ts, 0)}


def page_views(rng: random.Random, clock, late_fraction: float) -> Iterator[tuple[str, dict]]:
    """Endless page views stamped by ``clock()`` (epoch milliseconds)."""
    while True:
        yield page_view(rng, clock(), late_fraction)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap-servers", "-b",
                   default=os.environ.get("STREAMPROC_BOOTSTRAP_SERVERS", "kafka:9092"))
    p.add_argument("--topic", default="page-views")
    p.add_argument("--schema", default="schemas/page_view.avsc", help="Avro schema of the values")
    p.add_argument("--rate", type=float, default=5.0, help="records per second (default 5)")
    p.add_argument("--late-fraction", type=float, default=0.05,
                   help="share of records older than their window's end + grace (default 0.05)")
    p.add_argument("--count", type=int, default=0, help="stop after this many records (default: never)")
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args(argv)
    if args.rate <= 0:
        p.error("--rate must be > 0")
    if not 0 <= args.late_fraction <= 1:
        p.error("--late-fraction must be between 0 and 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    from confluent_kafka import KafkaException, Producer

    key_serde, value_serde = serdes.String(), serdes.Avro(args.schema)
    producer = Producer({
        "bootstrap.servers": args.bootstrap_servers,
        "partitioner": "murmur2_random",        # Java's default partitioner, as streamproc uses
        "enable.idempotence": True,
        "linger.ms": 20,
        "client.id": "streamproc-sample-producer",
    })
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    failed: list[str] = []

    def delivered(err, _msg):
        if err is not None:
            failed.append(str(err))

    rng = random.Random(args.seed)
    views = page_views(rng, lambda: int(time.time() * 1000), args.late_fraction)
    sent, last_report = 0, time.monotonic()
    print(f"producing {args.rate:g} page views/s to {args.topic} at {args.bootstrap_servers} "
          f"({args.late_fraction:.0%} late)", file=sys.stderr, flush=True)
    while not stop.is_set() and (args.count <= 0 or sent < args.count):
        key, view = next(views)
        try:
            producer.produce(args.topic, key=key_serde.serialize(key), value=value_serde.serialize(view),
                             timestamp=view["ts"], on_delivery=delivered)
        except BufferError:
            producer.poll(1.0)
            continue
        except KafkaException as e:
            print(f"produce failed: {e}", file=sys.stderr, flush=True)
            stop.wait(1.0)
            continue
        sent += 1
        producer.poll(0)
        if failed:
            print(f"delivery failed: {failed[-1]} ({len(failed)} so far)", file=sys.stderr, flush=True)
            failed.clear()
        if time.monotonic() - last_report >= 30:
            last_report = time.monotonic()
            print(f"{sent} page views sent", file=sys.stderr, flush=True)
        stop.wait(rng.expovariate(args.rate))
    left = producer.flush(10)
    print(f"{sent} page views sent{f', {left} undelivered' if left else ''}", file=sys.stderr, flush=True)
    return 0 if not left else 1


if __name__ == "__main__":
    sys.exit(main())
