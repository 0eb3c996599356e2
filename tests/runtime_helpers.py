"""Helpers for the runtime tests: produce input, read topics, run workers in threads or subprocesses.

Also runnable: ``python tests/runtime_helpers.py run <topology-ref> <bootstrap> <state-dir> [workers]
[guarantee]`` runs ``run_app`` in this process (the subprocess crash tests use it until
``streamproc run`` exists).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

#: Client settings for tests: Tansu joins a group only after about half the session timeout.
CLIENT_CONFIG = {"consumer.session.timeout.ms": 6000}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# ------------------------------------------------------------------------------------------ topics

def create(bootstrap: str, topics, partitions: int) -> None:
    """Create test topics with ``retention.ms=-1``: on a real cluster a broker's time retention must never
    delete test input stamped in the past while a test still reads it."""
    from streamproc.kafka import create_topics, make_admin

    create_topics(make_admin(bootstrap), list(topics), partitions, config={"retention.ms": "-1"})


def produce(bootstrap: str, topic: str, records, *, key_serde=None, value_serde=None) -> None:
    """Produce ``[(key, value, ts), ...]`` serialized with the serdes, partitioned like Java clients."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 5,
                  "enable.idempotence": True})
    for k, v, ts in records:
        kb = key_serde.serialize(k) if key_serde is not None else k
        vb = value_serde.serialize(v) if value_serde is not None else v
        while True:
            try:
                p.produce(topic, vb, kb, timestamp=ts)
                break
            except BufferError:
                p.poll(0.1)
    left = p.flush(30)
    assert left == 0, f"{left} test records not delivered"


def read_topic(bootstrap: str, topic: str, *, quiet_s: float = 2.0, max_s: float = 60.0,
               read_committed: bool = True, expect: int | None = None) -> list:
    """Every record of ``topic`` (all partitions, from the start) until ``quiet_s`` without news.

    The quiet time counts from the first record (before it, up to ``max_s``).
    Returns ``[(partition, offset, key_bytes, value_bytes, timestamp, headers), ...]`` sorted by
    (partition, offset). With ``expect``, stops as soon as that many records were read.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("reader"),
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "isolation.level": "read_committed" if read_committed else "read_uncommitted"})
    try:
        md = c.list_topics(topic, timeout=10)
        parts = sorted(md.topics[topic].partitions)
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        out = []
        start = last = time.monotonic()
        while True:
            now = time.monotonic()
            if (expect is None and out and now - last > quiet_s) or now - start > max_s:
                break
            if expect is not None and len(out) >= expect:
                break
            for m in c.consume(5000, 0.2):
                if m.error() is not None:
                    continue
                out.append((m.partition(), m.offset(), m.key(), m.value(), m.timestamp()[1], m.headers()))
                last = time.monotonic()
        out.sort(key=lambda r: (r[0], r[1]))
        return out
    finally:
        c.close()


def read_to_end(bootstrap: str, topic: str, *, max_s: float = 60.0, read_committed: bool = True) -> list:
    """Every record of ``topic`` (all partitions, from the start) up to the end of each partition as the
    broker reports it (a partition-EOF event: for read_committed, the last stable offset), as
    :func:`read_topic` returns them. For a topic nobody writes to any more (its producers stopped): no
    quiet time to wait, and a slow fetch cannot cut the read short. Fails after ``max_s``."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("reader"),
                  "enable.auto.commit": False, "auto.offset.reset": "earliest", "enable.partition.eof": True,
                  "isolation.level": "read_committed" if read_committed else "read_uncommitted"})
    try:
        md = c.list_topics(topic, timeout=10)
        parts = sorted(md.topics[topic].partitions)
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        out, at_end = [], set()
        end = time.monotonic() + max_s
        while len(at_end) < len(parts):
            if time.monotonic() > end:
                raise AssertionError(f"reading {topic} to its end: partitions {sorted(set(parts) - at_end)} "
                                     f"not at their end after {max_s:g} s ({len(out)} records read)")
            for m in c.consume(5000, 0.2):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_end.add(m.partition())
                    continue
                at_end.discard(m.partition())
                out.append((m.partition(), m.offset(), m.key(), m.value(), m.timestamp()[1], m.headers()))
        out.sort(key=lambda r: (r[0], r[1]))
        return out
    finally:
        c.close()


def decode(records, key_serde, value_serde) -> list:
    return [(key_serde.deserialize(r[2]), value_serde.deserialize(r[3]), r[4]) for r in records]


def free_port() -> int:
    """A free TCP port for a server a test starts (``--http-port``, ``--metrics-port``). Chosen below the
    ephemeral range (Linux: from 32768), so neither an outgoing connection nor a dev broker of another
    test process takes it between this check and the server's bind (which made tests flaky in parallel)."""
    import random
    import socket

    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(500):
        port = rng.randint(max(1025, low - 12000), low - 1)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout: float, interval: float = 0.2, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


# ------------------------------------------------------------------------------------------ running

class WorkerThread:
    """A ``Worker`` running in a thread of the test process (no spawn cost)."""

    def __init__(self, plan, options, index: int = 0, process_id: str | None = None):
        from streamproc.runtime.worker.loop import Worker

        self.worker = Worker(plan, options, index, process_id or uuid.uuid4().hex[:8])
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"worker-{index}")

    def _run(self):
        try:
            self.worker.run()
        except BaseException as e:  # noqa: BLE001
            self.error = e

    def start(self) -> "WorkerThread":
        self.thread.start()
        return self

    def stop(self, timeout: float = 60) -> None:
        self.worker.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "worker did not stop"
        if self.error is not None:
            raise self.error

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


def write_topology(path, source: str) -> str:
    """Write a topology module and return its path (the reference run_app's workers import)."""
    with open(path, "w") as f:
        f.write(textwrap.dedent(source))
    return str(path)


def load_plan(ref: str):
    from streamproc.plan import compile_topology
    from streamproc.loader import load_topology

    return compile_topology(load_topology(ref))


def app_subprocess(ref: str, bootstrap: str, state_dir: str, *, workers: int = 1,
                   guarantee: str = "exactly-once", log_path: str | None = None) -> subprocess.Popen:
    """``run_app`` in a child process of its own session (``os.killpg`` kills it with its workers)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, os.path.join(HERE, "runtime_helpers.py"), "run", ref, bootstrap, state_dir,
         str(workers), guarantee],
        env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def driver_output(plan_ref_or_topology, inputs: dict, partitions: dict, outputs: list[str]) -> dict:
    """Run the TopologyTestDriver on ``{topic: [(k, v, ts), ...]}``; ``{output topic: [Record]}``."""
    from streamproc.testing import TopologyTestDriver

    topo = plan_ref_or_topology
    if isinstance(topo, str):
        from streamproc.loader import load_topology
        topo = load_topology(topo)
    with TopologyTestDriver(topo, partitions=partitions) as d:
        for topic, recs in inputs.items():
            d.pipe_many(topic, recs)
        return {t: d.read_output(t) for t in outputs}


def multiset(records) -> Counter:
    return Counter(_freeze(r) for r in records)


def _freeze(x):
    if isinstance(x, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in x.items()))
    if isinstance(x, (list, tuple)):
        return tuple(_freeze(v) for v in x)
    return x


def _main(argv) -> int:
    if argv[:1] != ["run"]:
        print(__doc__, file=sys.stderr)
        return 2
    import logging

    from streamproc.runtime.instance.app import RunOptions, run_app

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    ref, bootstrap, state_dir = argv[1:4]
    workers = int(argv[4]) if len(argv) > 4 else 1
    guarantee = argv[5] if len(argv) > 5 else "exactly-once"
    plan = load_plan(ref)
    opts = RunOptions(bootstrap, workers=workers, guarantee=guarantee, state_dir=state_dir,
                      client_config=dict(CLIENT_CONFIG), topology=ref)
    return run_app(plan, opts)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))


# ------------------------------------------------------------------------------------------ broker

_FALLBACK: dict = {}


def broker(request) -> tuple[str, str]:
    """``(bootstrap, kind)`` from the shared conftest fixtures, else a broker of our own.

    kind is "external" (STREAMPROC_TEST_BOOTSTRAP), "container" or "tansu".
    """
    import pytest

    try:
        return request.getfixturevalue("kafka_bootstrap"), request.getfixturevalue("kafka_kind")
    except pytest.FixtureLookupError:
        pass
    if "bootstrap" not in _FALLBACK:
        ext = os.environ.get("STREAMPROC_TEST_BOOTSTRAP")
        if ext:
            _FALLBACK.update(bootstrap=ext, kind="external")
        else:
            from streamproc.kafka.devbroker import DevBroker

            try:
                b = DevBroker().start()
            except Exception as e:  # noqa: BLE001
                pytest.skip(f"no broker for the runtime tests: {e}")
            _FALLBACK.update(bootstrap=b.bootstrap, kind="tansu", broker=b)
    return _FALLBACK["bootstrap"], _FALLBACK["kind"]
