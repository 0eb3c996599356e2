"""Messages/s through each connector's bridge and sink delivery, next to a plain client loop for the same
system, on this machine (DESIGN section 9; issue 19).

Run: ``.venv/bin/python benchmarks/connectors.py [-n 50000] [--size 100] [--only rabbitmq,nats,redis]``

It starts a dev broker (Tansu) and, per system, a throw-away server from Debian's packages (the test
suite's launchers; a system whose server is not installed is skipped, saying so), then measures:

* **plain publish / plain consume**: the system's own Python client in a loop (``plain_<system>.py``:
  batched publisher confirms / pipelined PubAcks / pipelined XADD; consume + ack);
* **bridge**: ``runtime/edge/bridge.py`` moving N messages from the system into a Kafka ingest topic
  (fetch, produce, wait for Kafka's confirmation, ack), in this process;
* **delivery**: ``runtime/edge/delivery.py`` moving N records of an egress topic to the system (read
  committed, publish, wait for the confirms, commit the offsets), in this process.

The bridge and the delivery pay for Kafka on top of the plain loops (a produce + flush per batch; a
consume + synchronous offset commit per batch): the ratio says what the guarantee costs.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)

from rich.console import Console            # noqa: E402
from rich.table import Table                # noqa: E402


def _topic(bootstrap: str, name: str) -> None:
    from streamproc.kafka.admin import create_topics, make_admin

    create_topics(make_admin(bootstrap), [name], 1)


def _bridge(bootstrap: str, connector, n: int) -> float:
    """Seconds for a Bridge to forward ``n`` messages of ``connector`` into a new ingest topic."""
    from streamproc import serdes
    from streamproc.kafka.config import producer_config
    from streamproc.plan.model import ConnectorTopic
    from streamproc.runtime.edge.bridge import Bridge
    from streamproc.runtime.edge.stats import ConnectorStats

    topic = f"bench-ingest-{uuid.uuid4().hex[:8]}"
    _topic(bootstrap, topic)
    ct = ConnectorTopic(connector, topic, 0, {"key_serde": serdes.String(), "value_serde": serdes.Bytes(),
                                               "partitioner": "murmur2", "on_error": "fail"})
    stats = ConnectorStats("bench", connector.kind, "source")
    b = Bridge(ct, producer_config(bootstrap, "bench"), "bench", stats, threading.Event())
    from confluent_kafka import Producer

    b.producer = Producer(b._producer_conf)
    b.client = connector.source_client("bench")
    b.client.open()
    try:
        t0 = time.perf_counter()
        while stats.counts["in"] < n:
            b.step(5.0)
        b.drain(30.0)
        return time.perf_counter() - t0
    finally:
        b.client.close()


def _delivery(bootstrap: str, connector, target: str, n: int, size: int) -> float:
    """Seconds for a Delivery to send ``n`` records of a new egress topic to ``connector``."""
    from confluent_kafka import Producer

    from streamproc.connectors import TARGET_HEADER
    from streamproc.kafka.config import consumer_config
    from streamproc.plan.model import ConnectorTopic
    from streamproc.runtime.edge.delivery import Delivery
    from streamproc.runtime.edge.stats import ConnectorStats

    topic = f"bench-egress-{uuid.uuid4().hex[:8]}"
    _topic(bootstrap, topic)
    ct = ConnectorTopic(connector, topic, 0, {})
    stats = ConnectorStats("bench", connector.kind, "sink")
    d = Delivery(ct, "bench", consumer_config(bootstrap, "bench"), stats, threading.Event())
    from confluent_kafka import Consumer

    d.consumer = Consumer(d._consumer_conf)
    d.consumer.subscribe([topic], on_assign=d._on_assign, on_revoke=d._on_revoke)
    while not d._assigned:                      # join the group before the records exist and the clock runs
        assert d.consumer.poll(0.2) is None
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    value, headers = b"x" * size, [(TARGET_HEADER, target.encode())]
    for i in range(n):
        while True:
            try:
                p.produce(topic, value, b"k%d" % (i % 100), headers=headers)
                break
            except BufferError:
                p.poll(0.1)
    assert p.flush(30) == 0
    try:
        t0 = time.perf_counter()
        while stats.counts["committed"] < n:
            d.step(5.0)
        return time.perf_counter() - t0
    finally:
        d._close_client()
        d.consumer.close()


# ------------------------------------------------------------------------------------------ systems

def _rabbitmq(tmp: str, bootstrap: str, n: int, size: int) -> dict | str:
    import _server_rabbitmq
    import plain_rabbitmq as plain
    from streamproc.connectors import RabbitMQ

    why = _server_rabbitmq.available()
    if why:
        return why
    srv = _server_rabbitmq.start_rabbitmq(tmp)
    try:
        ex, q = "bench-ex", "bench-q"
        plain._setup(srv.url, ex, q)
        out = {"plain publish": n / plain.publish(srv.url, ex, "bench", n, size),
               "plain consume": n / plain.consume(srv.url, q, n)}
        plain._setup(srv.url, ex, q)
        out["delivery (egress topic -> exchange)"] = n / _delivery(bootstrap, RabbitMQ(srv.url, exchange=ex,
                                                                                    routing_key="bench"),
                                                                  "bench", n, size)
        out["bridge (queue -> ingest topic)"] = n / _bridge(bootstrap, RabbitMQ(srv.url, queue=q), n)
        return out
    finally:
        srv.destroy()


def _nats(tmp: str, bootstrap: str, n: int, size: int) -> dict | str:
    import asyncio

    import _server_nats
    import plain_nats as plain
    from streamproc.connectors import NatsJetStream

    if _server_nats.nats_binary() is None:
        return "nats-server is not installed (apt-get install nats-server)"
    srv = _server_nats.start_nats(tmp)
    try:
        async def make_stream():
            import nats

            nc = await nats.connect(srv.url)
            await nc.jetstream().add_stream(name="BENCH", subjects=["bench.>"])
            await nc.close()

        asyncio.run(make_stream())
        out = {"plain publish": n / plain.publish(srv.url, "bench.plain", n, size),
               "plain consume": n / plain.consume(srv.url, "BENCH", "bench.plain", n)}
        out["delivery (egress topic -> subject)"] = n / _delivery(
            bootstrap, NatsJetStream(srv.url, "bench.sink"), "bench.sink", n, size)
        out["bridge (durable consumer -> ingest topic)"] = n / _bridge(
            bootstrap, NatsJetStream(srv.url, "bench.sink", stream="BENCH", durable="bench-bridge"), n)
        return out
    finally:
        srv.kill()


def _redis(tmp: str, bootstrap: str, n: int, size: int) -> dict | str:
    import _server_redis
    import plain_redis as plain
    from streamproc.connectors import RedisStream

    if _server_redis.redis_binary() is None:
        return "redis-server is not installed (apt-get install redis-server)"
    srv = _server_redis.start_redis(tmp)
    try:
        out = {"plain publish": n / plain.publish(srv.url, "bench-plain", n, size),
               "plain consume": n / plain.consume(srv.url, "bench-plain", "g", n)}
        out["delivery (egress topic -> stream)"] = n / _delivery(bootstrap, RedisStream(srv.url, "bench-sink"),
                                                                "bench-sink", n, size)
        out["bridge (consumer group -> ingest topic)"] = n / _bridge(
            bootstrap, RedisStream(srv.url, "bench-sink", group="bridge", field="value"), n)
        return out
    finally:
        srv.kill()


SYSTEMS = {"rabbitmq": _rabbitmq, "nats": _nats, "redis": _redis}


def run(n: int, size: int, only: list[str], bootstrap: str | None = None) -> dict:
    """``{system: {what: msgs/s} or "skipped: why"}``."""
    from streamproc.kafka.devbroker import DevBroker

    broker = None
    if bootstrap is None:
        broker = DevBroker().start()
        bootstrap = broker.bootstrap
    try:
        results = {}
        for name in only:
            with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
                r = SYSTEMS[name](tmp, bootstrap, n, size)
            results[name] = r if isinstance(r, dict) else f"skipped: {r}"
        return results
    finally:
        if broker is not None:
            broker.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=50_000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--only", default="rabbitmq,nats,redis")
    ap.add_argument("--bootstrap-servers", default=None)
    args = ap.parse_args(argv)
    results = run(args.n, args.size, args.only.split(","), args.bootstrap_servers)
    t = Table(title=f"connectors: {args.n:,} messages of {args.size} B, messages/s (dev broker unless given)")
    t.add_column("system")
    t.add_column("what")
    t.add_column("msgs/s", justify="right")
    for system, r in results.items():
        if isinstance(r, str):
            t.add_row(system, r, "")
            continue
        for what, rate in r.items():
            t.add_row(system, what, f"{rate:,.0f}")
    Console().print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
