"""Interactive queries over HTTP (`streamproc run --http-port`): query latency, and what serving queries costs.

One topology: a non-windowed count per key (``group_by_key().aggregate(count=agg.count(),
name="counts")``, String keys, JSON values in and out) over a 4-partition input topic with
10,000 keys (``user-0`` .. ``user-9999``), run by ``streamproc run --http-port P
--advertised-url http://127.0.0.1:P`` (``--guarantee``, default exactly-once, 1 worker per
instance).

1. **Query latency under load.** Two instances, A and B, share the 4 partitions while a
   background producer keeps feeding the input at ``--rate`` records/s (every key is written
   once before the instances start, so every key has a count). Once both are ready (``/ready``
   200, the 4 tasks running between them, the app's committed offsets past the seed records),
   the client asks A for random keys and sorts them by A's answer: 200 = local to A, 307 to B
   = owned by B. Then one client thread issues ``--queries`` queries of each kind, interleaved,
   paced at ``--query-rate`` queries/s in all, each on a keep-alive ``http.client`` connection
   (one to A, one to B):

   * local: ``GET A/stores/counts/<key>`` -> 200;
   * forwarded: ``GET A/stores/counts/<key>`` -> 307, then the ``Location``
     (``B/stores/counts?key=...``) -> 200, followed by hand to time both hops: the total is
     what ``curl -L`` costs (on reused connections), and hop 1 (A's redirect) and hop 2 (B's
     answer) are shown too.

   p50/p99 in ms; a query that answered anything else (a 503 during a rebalance, a 404) is
   counted as an error and left out of the latencies. The table's caption says what the app
   processed meanwhile (committed records/s of the app's group against the producer's rate,
   and the lag at the end) and how many connections the client had to open.

2. **The processing cost of serving 100 queries/s.** A prepared backlog of ``--messages``
   records (same keys; written before any run by an idempotent producer, checked for delivery
   errors) is processed by one instance, in a fresh consumer group each run, with its HTTP
   server on in every run: once with no client, once with a client thread issuing ``--qps``
   (100) queries/s for random keys (all local: one instance) from the moment the instance
   starts until the backlog is done. As in ``e2e.py``, records/s is measured between two
   samples of the group's committed offsets (every 0.25 s): the first with progress once the
   instance answers ``/ready`` with 200 (both runs poll it until then; before it, and until
   the instance directory knows who runs a task, a query only gets a 503) and the one that
   reaches the end of the backlog. CPU µs/record is the CPU time of the instance's whole
   process tree (supervisor, where the HTTP server runs, and workers) over the same span,
   from /proc, also split into the supervisor process alone (all its threads: the HTTP
   server, the directory, the status observer) and the rest (the workers); the client's own
   CPU (in this process) is not counted. The two runs alternate ``--rounds`` times (ABBA
   order: without/with, then with/without) and the table shows every run, the medians and the
   ratio with/without (target: < 5% cost). "CPU per query" is the extra CPU of the run with
   queries divided by the queries it answered in the span. A query for a key whose partition
   the instance has not reached yet answers 404 (librdkafka hands the worker one partition's
   backlog before another's); it is served all the same and counted.

Everything it creates is removed at the end, also on failure, Ctrl-C or SIGTERM: the instances
are stopped first, then the consumer groups (each app id, ``<app>-restore`` and
``<app>-instances-reader``; ``streamproc run`` workers are static members that do not leave on
close, so deletion is retried until their session timeout has passed), then the topics (inputs,
outputs, and each app's ``-changelog``, ``-repartition``, ``-dlq`` and ``-instances`` topics),
then the temp dir (topology file, state dirs, logs). Topics get unique names and
``retention.ms=-1``. With exactly-once the transactional ids cannot be deleted; a broker expires
them after ``transactional.id.expiration.ms``.

    python benchmarks/queries.py [--bootstrap-servers host:9092] [--messages 1000000] [--quick] [--json PATH]

``--json PATH`` also writes the figures as JSON (what ``benchmarks/suite.py`` reads).
"""
from __future__ import annotations

import argparse
import http.client
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from urllib.parse import quote, urlsplit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import orjson  # noqa: E402
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from rich.console import Console  # noqa: E402
from e2e import _err, _tree, _unsupported, create_topic, stop_process  # noqa: E402,F401 - shared with e2e.py
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

PARTITIONS = 4
KEYS = 10_000
STORE = "counts"
SESSION_TIMEOUT_MS = 6000
#: every topic the benchmark creates: no time retention (real Kafka deletes by record timestamp)
TOPIC_CONFIG = {"retention.ms": "-1"}
#: the internal topics `streamproc run` creates for an application id (``-instances``: --http-port)
INTERNAL_SUFFIXES = ("-changelog", "-repartition", "-dlq", "-instances")
_TICK = os.sysconf("SC_CLK_TCK")

TOPOLOGY = '''\
"""Written by benchmarks/queries.py: a non-windowed count per key, store "counts", JSON in and out."""
import os

from streamproc import Topology, agg, serdes

topology = Topology(os.environ["QUERIES_APP_ID"])

(topology.stream(os.environ["QUERIES_INPUT"], key=serdes.String(), value=serdes.Json())
    .group_by_key()
    .aggregate(count=agg.count(), name="counts")
    .to(os.environ["QUERIES_OUTPUT"], value=serdes.Json()))
'''


def _key(i: int) -> str:
    return f"user-{i}"



def _producer(bootstrap: str, **extra) -> Producer:
    # idempotent: a retried batch is not written twice
    return Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 20,
                     "log_level": 3, "batch.num.messages": 10000, "queue.buffering.max.messages": 500000,
                     "enable.idempotence": True, **extra})


def _value(user: str, amount: int) -> bytes:
    return orjson.dumps({"user": user, "amount": amount})


# --------------------------------------------------------------------------- input
def prepare(bootstrap: str, topic: str, n: int, console: Console) -> None:
    """``n`` records with random keys of the :data:`KEYS` keys (the backlog of part 2)."""
    p = _producer(bootstrap)
    failed: list = []

    def on_delivery(err, _msg):
        if err is not None:
            failed.append(err)

    rng = np.random.default_rng(1)
    users = rng.integers(0, KEYS, n)
    amounts = rng.integers(1, 1000, n)
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task(f"producing {n:,} records to {topic}", total=n)
        for i in range(n):
            u = _key(int(users[i]))
            while True:
                try:
                    p.produce(topic, key=u.encode(), value=_value(u, int(amounts[i])), on_delivery=on_delivery)
                    break
                except BufferError:
                    p.poll(0.05)
            if i % 20000 == 0:
                p.poll(0)
                prog.update(task, completed=i)
        left = p.flush(120)
        prog.update(task, completed=n)
    if left or failed:
        raise SystemExit(f"preparing {topic}: {left} record(s) still queued after 120 s, {len(failed)} "
                         f"failed{f' (first: {failed[0]})' if failed else ''}")


def seed(bootstrap: str, topic: str) -> list[int]:
    """Every key once (so each has a count); returns the end offset of each partition after it."""
    p = _producer(bootstrap)
    ends = [0] * PARTITIONS
    failed: list = []

    def on_delivery(err, msg):
        if err is not None:
            failed.append(err)
        else:
            ends[msg.partition()] = max(ends[msg.partition()], msg.offset() + 1)

    order = list(range(KEYS))
    random.Random(2).shuffle(order)
    for i in order:
        u = _key(i)
        while True:
            try:
                p.produce(topic, key=u.encode(), value=_value(u, 1), on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
    left = p.flush(60)
    if left or failed:
        raise SystemExit(f"seeding {topic}: {left} record(s) still queued after 60 s, {len(failed)} failed"
                         f"{f' (first: {failed[0]})' if failed else ''}")
    return ends


class LoadProducer(threading.Thread):
    """Produces ``rate`` records/s with random keys until stopped; idempotent, delivery checked."""

    def __init__(self, bootstrap: str, topic: str, rate: int):
        super().__init__(daemon=True, name="load-producer")
        self.bootstrap, self.topic, self.rate = bootstrap, topic, rate
        self.delivered = 0
        self.failed: list = []
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(60)

    def _on_delivery(self, err, _msg) -> None:
        if err is not None:
            self.failed.append(err)
        else:
            self.delivered += 1

    def run(self) -> None:
        try:
            p = _producer(self.bootstrap, **{"linger.ms": 5})
            rng = random.Random(1)
            t0 = time.monotonic()
            n = 0
            while not self._halt.is_set():
                target = int((time.monotonic() - t0) * self.rate)
                while n < target:
                    u = _key(rng.randrange(KEYS))
                    try:
                        p.produce(self.topic, key=u.encode(), value=_value(u, rng.randrange(1, 1000)),
                                  on_delivery=self._on_delivery)
                    except BufferError:
                        p.poll(0.05)
                        continue
                    n += 1
                p.poll(0)
                self._halt.wait(0.01)
            p.flush(30)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            self.error = e


# --------------------------------------------------------------------------- measuring

def _cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds of ``pid``'s whole process tree, and of ``pid`` itself (all its threads)."""
    total = own = 0
    for q in _tree(pid):
        try:
            with open(f"/proc/{q}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks = int(fields[11]) + int(fields[12])       # utime, stime
        except OSError:
            continue
        total += ticks
        if q == pid:
            own = ticks
    return total / _TICK, own / _TICK


class _Monitor:
    """Reads a group's committed offsets on the input topic (one consumer, never joins the group).

    read_uncommitted: with read_committed librdkafka asks for stable offsets only (KIP-447), and a
    broker answers UNSTABLE_OFFSET_COMMIT while an exactly-once app has offsets pending in an open
    transaction; read_uncommitted returns the last committed (stable) offsets right away.
    """

    def __init__(self, bootstrap: str, topic: str, group: str):
        self.parts = [TopicPartition(topic, i) for i in range(PARTITIONS)]
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                           "isolation.level": "read_uncommitted", "log_level": 3})
        self.last_error: str | None = None

    def offsets(self) -> list[int] | None:
        try:
            offs = self.c.committed(self.parts, timeout=10)
        except KafkaException as e:
            self.last_error = str(e)
            return None                     # a slow coordinator: try again on the next tick
        return [max(tp.offset, 0) for tp in offs]

    def committed(self) -> int | None:
        offs = self.offsets()
        return None if offs is None else sum(offs)

    def close(self) -> None:
        self.c.close()


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


class HttpClient:
    """Keep-alive HTTP/1.1 connections (``http.client``), one per base URL.

    A request on a connection the server closed in the meantime is retried once on a new one
    (``opened`` counts every connection made, so the report shows whether keep-alive held)."""

    def __init__(self, timeout_s: float = 10):
        self.timeout_s = timeout_s
        self.conns: dict[str, http.client.HTTPConnection] = {}
        self.opened = 0

    def get(self, base: str, path: str) -> tuple[int, str | None, bytes]:
        """``(status, Location header, body)``; the body is read whole (the connection stays usable)."""
        for attempt in (0, 1):
            conn = self.conns.get(base)
            if conn is None:
                u = urlsplit(base)
                conn = self.conns[base] = http.client.HTTPConnection(u.hostname, u.port, timeout=self.timeout_s)
                self.opened += 1
            try:
                conn.request("GET", path)
                r = conn.getresponse()
                body = r.read()
                if r.will_close:
                    conn.close()
                    del self.conns[base]
                return r.status, r.getheader("Location"), body
            except (http.client.HTTPException, OSError):
                conn.close()
                self.conns.pop(base, None)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        for c in self.conns.values():
            c.close()
        self.conns.clear()


def _split(url: str) -> tuple[str, str]:
    """``http://host:port/p?q`` -> (``http://host:port``, ``/p?q``)."""
    u = urlsplit(url)
    return f"{u.scheme}://{u.netloc}", u.path + (f"?{u.query}" if u.query else "")


def _key_path(key: str) -> str:
    return f"/stores/{STORE}/{quote(key, safe='')}"


def _get_json(url: str, timeout_s: float = 5) -> tuple[int | None, dict]:
    """One-off GET (no keep-alive) for /ready and /status; (None, {}) while the server is not up."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            return e.code, orjson.loads(e.read() or b"{}")
        except orjson.JSONDecodeError:
            return e.code, {}
    except (OSError, http.client.HTTPException, orjson.JSONDecodeError):
        return None, {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- instances

class Instance:
    """One ``streamproc run --http-port`` process tree; stderr in a log file."""

    def __init__(self, name: str, topology_path: str, bootstrap: str, app_id: str, topic: str, out: str,
                 tmp: str, guarantee: str, cleanup: "Cleanup"):
        self.name = name
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state_dir = os.path.join(tmp, f"state-{name}")
        self.log_path = os.path.join(tmp, f"{name}.log")
        cmd = [sys.executable, "-m", "streamproc", "run", topology_path, "--bootstrap-servers", bootstrap,
               "--guarantee", guarantee, "--state-dir", self.state_dir, "--batch-size", "2000",
               "--http-port", str(self.port), "--advertised-url", self.url, "--log-format", "text",
               "--config", f"consumer.session.timeout.ms={SESSION_TIMEOUT_MS}"]
        env = {**os.environ, "QUERIES_APP_ID": app_id, "QUERIES_INPUT": topic, "QUERIES_OUTPUT": out}
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self._log)
        cleanup.procs.append(self)

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise SystemExit(f"instance {self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        self._log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")[-chars:]

    def stop(self, timeout_s: float = 60) -> None:
        try:
            stop_process(self.proc, timeout_s)
        finally:
            self._log.close()


# --------------------------------------------------------------------------- part 1: latency
def _wait_ready(a: Instance, b: Instance, producer: LoadProducer, monitor: _Monitor, ends: list[int],
                timeout_s: float, console: Console) -> tuple[int, int]:
    """Until both instances answer /ready, run the 4 tasks between them and the seed is committed;
    returns the tasks each runs."""
    deadline = time.monotonic() + timeout_s
    with console.status("starting instances A and B") as st:
        while True:
            for inst in (a, b):
                inst.check()
            if producer.error is not None:
                raise SystemExit(f"load producer failed: {producer.error!r}")
            ra, sa = _get_json(f"{a.url}/status")
            rb, sb = _get_json(f"{b.url}/status")
            offs = monitor.offsets()
            running = (sa.get("running", 0), sb.get("running", 0))
            seeded = offs is not None and all(o >= e for o, e in zip(offs, ends))
            st.update(f"starting instances A and B: tasks running {running[0]} + {running[1]} of {PARTITIONS}, "
                      f"seed {'committed' if seeded else 'not committed yet'}")
            if (ra == rb == 200 and sum(running) == PARTITIONS and min(running) > 0 and seeded
                    and _get_json(f"{a.url}/ready")[0] == 200 and _get_json(f"{b.url}/ready")[0] == 200):
                return running
            if time.monotonic() > deadline:
                raise SystemExit(f"the instances were not ready within {timeout_s:.0f} s (tasks running "
                                 f"A {running[0]}, B {running[1]}; seed committed: {seeded}"
                                 f"{'; ' + monitor.last_error if monitor.last_error else ''})\n"
                                 f"A:\n{a.tail(1500)}\nB:\n{b.tail(1500)}")
            time.sleep(0.5)


def _sort_keys(client: HttpClient, a: Instance, b: Instance, want: int, timeout_s: float,
               console: Console) -> tuple[list[str], list[str]]:
    """``want`` keys local to A and ``want`` owned by B, by A's answer (200 here, 307 to B)."""
    local: list[str] = []
    remote: list[str] = []
    other: dict = {}
    order = list(range(KEYS))
    random.Random(3).shuffle(order)
    deadline = time.monotonic() + timeout_s
    for i in order:
        if len(local) >= want and len(remote) >= want:
            break
        k = _key(i)
        status, loc, _ = client.get(a.url, _key_path(k))
        if status == 200:
            local.append(k)
        elif status == 307 and loc and loc.startswith(b.url + "/"):
            remote.append(k)
        else:
            other[status] = other.get(status, 0) + 1
            if time.monotonic() > deadline:
                raise SystemExit(f"sorting keys: {other} answers other than 200 / 307 to B")
    if len(local) < want or len(remote) < want:
        raise SystemExit(f"sorting keys: only {len(local)} local and {len(remote)} forwarded keys "
                         f"({other or 'no'} other answers)")
    console.print(f"keys sorted by A's answer: {len(local)} local, {len(remote)} owned by B"
                  + (f" (other answers: {other})" if other else ""))
    return local, remote


class _Latencies:
    """Queries to A, local (200) or forwarded (307, then B's 200, followed by hand), timed."""

    def __init__(self, client: HttpClient, a: Instance, b: Instance):
        self.client, self.a, self.b = client, a, b
        self.lat: dict[str, list[float]] = {"local": [], "forwarded": [], "hop1": [], "hop2": []}
        self.errors: dict = {"local": {}, "forwarded": {}}
        self.wrong_instance = 0

    def query(self, kind: str, key: str, record: bool) -> None:
        client, lat = self.client, self.lat
        t0 = time.perf_counter()
        status, loc, body = client.get(self.a.url, _key_path(key))
        t1 = time.perf_counter()
        if kind == "local":
            ok = status == 200
            if ok and record:
                lat["local"].append((t1 - t0) * 1000)
                self.wrong_instance += orjson.loads(body).get("instance") != self.a.url
        else:
            ok = status == 307 and loc is not None
            if ok:
                base, path = _split(loc)
                status, _, body = client.get(base, path)
                t2 = time.perf_counter()
                ok = status == 200
                if ok and record:
                    lat["forwarded"].append((t2 - t0) * 1000)
                    lat["hop1"].append((t1 - t0) * 1000)
                    lat["hop2"].append((t2 - t1) * 1000)
                    self.wrong_instance += orjson.loads(body).get("instance") != self.b.url
        if not ok and record:
            self.errors[kind][status] = self.errors[kind].get(status, 0) + 1


def _paced_queries(q: _Latencies, rng: random.Random, local: list[str], remote: list[str], args,
                   console: Console) -> None:
    """``args.queries`` queries of each kind, interleaved, at ``args.query_rate``/s in all."""
    total = 2 * args.queries
    interval = 1.0 / args.query_rate
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task(f"{total:,} queries at {args.query_rate}/s", total=total)
        nxt = time.monotonic()
        for i in range(total):
            now = time.monotonic()
            if nxt > now:
                time.sleep(nxt - now)
            elif now - nxt > 1.0:
                nxt = now                # fell behind by a second (a stall): do not burst to catch up
            nxt += interval
            kind = "local" if i % 2 == 0 else "forwarded"
            q.query(kind, rng.choice(local if kind == "local" else remote), True)
            if i % 200 == 0:
                prog.update(task, completed=i)
                for inst in (q.a, q.b):
                    inst.check()


def part_latency(args, bootstrap: str, admin: AdminClient, tmp: str, topology_path: str, run_id: str,
                 console: Console, cleanup: "Cleanup") -> dict:
    topic, out, app_id = f"queries-input-{run_id}", f"queries-out-{run_id}", f"queries-latency-{run_id}"
    cleanup.topics += [topic, out]
    cleanup.app_ids.append(app_id)
    create_topic(admin, topic, PARTITIONS)
    create_topic(admin, out, PARTITIONS)
    ends = seed(bootstrap, topic)
    producer = LoadProducer(bootstrap, topic, args.rate)
    cleanup.threads.append(producer)
    producer.start()
    a = Instance("A", topology_path, bootstrap, app_id, topic, out, tmp, args.guarantee, cleanup)
    b = Instance("B", topology_path, bootstrap, app_id, topic, out, tmp, args.guarantee, cleanup)
    monitor = _Monitor(bootstrap, topic, app_id)
    client = HttpClient()
    try:
        # ---- ready: both /ready, the 4 tasks split between them, the seed committed
        running = _wait_ready(a, b, producer, monitor, ends, args.timeout, console)
        console.print(f"instances ready: A {a.url} runs {running[0]} task(s), B {b.url} runs {running[1]}")
        # ---- which keys are local to A: A's answer (200 here, 307 to B)
        local, remote = _sort_keys(client, a, b, min(args.distinct, KEYS // 4), args.timeout, console)
        # ---- the measured queries, local and forwarded interleaved, paced
        q = _Latencies(client, a, b)
        rng = random.Random(4)
        for i in range(args.warmup):          # not measured: connections, caches, the secondaries
            q.query("local", rng.choice(local), False)
            q.query("forwarded", rng.choice(remote), False)
        c0, p0, t0 = monitor.committed(), producer.delivered, time.monotonic()
        _paced_queries(q, rng, local, remote, args, console)
        t1 = time.monotonic()
        c1, p1 = monitor.committed(), producer.delivered
        if producer.error is not None or producer.failed:
            raise SystemExit(f"load producer: {producer.error!r}, {len(producer.failed)} delivery failure(s)")
        span = t1 - t0
        return {
            "lat": q.lat, "errors": q.errors, "wrong_instance": q.wrong_instance, "opened": client.opened,
            "seconds": span, "produced_rate": (p1 - p0) / span,
            "committed_rate": (c1 - c0) / span if c0 is not None and c1 is not None else None,
            "lag": (sum(ends) + p1 - c1) if c1 is not None else None, "tasks": running,
        }
    finally:
        client.close()
        monitor.close()
        producer.stop()
        for inst in (a, b):
            inst.stop()


# --------------------------------------------------------------------------- part 2: cost
class QueryLoad(threading.Thread):
    """``qps`` queries/s for random keys on one keep-alive connection, until stopped.

    Every query is recorded as ``(start time, status, seconds)`` (status None: no answer, e.g.
    the server is not up yet)."""

    def __init__(self, url: str, qps: float):
        super().__init__(daemon=True, name="query-load")
        self.url, self.qps = url, qps
        self.done: list[tuple[float, int | None, float]] = []
        self.client = HttpClient(timeout_s=5)
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
        self.client.close()

    def run(self) -> None:
        rng = random.Random(5)
        interval = 1.0 / self.qps
        nxt = time.monotonic()
        while not self._halt.is_set():
            now = time.monotonic()
            if nxt > now:
                if self._halt.wait(nxt - now):
                    break
            elif now - nxt > 1.0:
                nxt = now
            nxt += interval
            t0 = time.monotonic()
            try:
                status = self.client.get(self.url, _key_path(_key(rng.randrange(KEYS))))[0]
            except (OSError, http.client.HTTPException):
                status = None
            self.done.append((t0, status, time.monotonic() - t0))


def measure_backlog(name: str, inst: Instance, bootstrap: str, topic: str, app_id: str, total: int,
                    qps: float | None, console: Console, timeout_s: float) -> dict:
    loader = QueryLoad(inst.url, qps) if qps else None
    if loader is not None:
        loader.start()
    monitor = _Monitor(bootstrap, topic, app_id)
    t_first = cpu_first = None
    done_first = 0
    ready = False
    deadline = time.monotonic() + timeout_s
    try:
        with Progress(console=console, transient=True) as prog:
            task = prog.add_task(name, total=total)
            while True:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{name}: did not finish within {timeout_s:.0f} s"
                                     + (f" (last offset fetch error: {monitor.last_error})" if monitor.last_error else ""))
                exited = inst.proc.poll() is not None
                done = monitor.committed()
                if done is None:
                    if exited:
                        done = 0
                    else:
                        time.sleep(0.25)
                        continue
                if exited and done < total:
                    raise SystemExit(f"{name}: exited with {inst.proc.returncode} after {done:,} records:\n{inst.tail(2000)}")
                if not ready:               # both runs poll /ready (4/s) until it answers 200
                    ready = _get_json(f"{inst.url}/ready", 1)[0] == 200
                now, cpu = time.monotonic(), _cpu_seconds(inst.proc.pid)
                if done > 0 and ready and t_first is None:
                    if done >= total:
                        raise SystemExit(f"{name}: the backlog was done before the instance was ready: "
                                         f"nothing to measure (more --messages)")
                    t_first, cpu_first, done_first = now, cpu, done
                prog.update(task, completed=done)
                if done >= total and t_first is not None:
                    t_last, cpu_last = now, cpu
                    break
                time.sleep(0.25)
    finally:
        if loader is not None:
            loader.stop()
        monitor.close()
        inst.stop()
    n = total - done_first
    secs = max(t_last - t_first, 1e-9)
    r = {"name": name, "queries": qps is not None, "records": n, "seconds": secs, "rate": n / secs,
         "cpu_us": (cpu_last[0] - cpu_first[0]) * 1e6 / max(n, 1),
         "sup_us": (cpu_last[1] - cpu_first[1]) * 1e6 / max(n, 1)}
    if loader is not None:
        span = [(s, d) for t, s, d in loader.done if t_first <= t <= t_last]
        statuses: dict = {}
        for s, _ in span:
            statuses[s] = statuses.get(s, 0) + 1
        ok = [d * 1000 for s, d in span if s in (200, 404)]
        r.update(n_queries=len(span), qps=len(span) / secs, statuses=statuses,
                 q_p50=_pct(ok, 50), q_p99=_pct(ok, 99), opened=loader.client.opened)
    return r


def part_cost(args, bootstrap: str, admin: AdminClient, tmp: str, topology_path: str, run_id: str,
              console: Console, cleanup: "Cleanup") -> list[dict]:
    topic, out = f"queries-backlog-{run_id}", f"queries-backlog-out-{run_id}"
    cleanup.topics += [topic, out]
    create_topic(admin, topic, PARTITIONS)
    create_topic(admin, out, PARTITIONS)
    prepare(bootstrap, topic, args.messages, console)
    runs = []
    for r in range(args.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)        # ABBA: drift cancels out
        for with_queries in order:
            i = len(runs) + 1
            app_id = f"queries-cost-{run_id}-{i}"
            cleanup.app_ids.append(app_id)
            name = f"run {i}: {'with ' + str(args.qps) + ' queries/s' if with_queries else 'without queries'}"
            inst = Instance(f"cost-{i}", topology_path, bootstrap, app_id, topic, out, tmp, args.guarantee, cleanup)
            res = measure_backlog(name, inst, bootstrap, topic, app_id, args.messages,
                                  args.qps if with_queries else None, console, args.timeout)
            console.print(f"  {name}: {res['rate']:,.0f} records/s, {res['cpu_us']:.2f} CPU µs/record "
                          f"({res['sup_us']:.2f} in the supervisor)"
                          + (f", {res['n_queries']:,} queries in the span ({res['qps']:.0f}/s, "
                             f"answers {res['statuses']})" if with_queries else ""))
            runs.append(res)
            shutil.rmtree(inst.state_dir, ignore_errors=True)
    return runs


# --------------------------------------------------------------------------- cleaning up
class Cleanup:
    """Everything one run created, removed in :meth:`run` (called from ``finally``)."""

    def __init__(self, admin: AdminClient, console: Console):
        self.admin = admin
        self.console = console
        self.procs: list[Instance] = []
        self.threads: list[LoadProducer] = []
        self.topics: list[str] = []         # exact names
        self.app_ids: list[str] = []        # group, <app>-restore, <app>-instances-reader, internal topics

    def _warn(self, what: str) -> None:
        self.console.print(f"[yellow]cleanup: {what}[/]")

    def _groups(self) -> list[str]:
        return [g for a in self.app_ids for g in (a, f"{a}-restore", f"{a}-instances-reader")]

    def run(self, group_wait_s: float = 3 * SESSION_TIMEOUT_MS / 1000 + 10) -> None:
        for inst in self.procs:             # groups are deletable only once their members are gone
            try:
                inst.stop()
            except Exception as e:  # noqa: BLE001 - go on cleaning
                self._warn(f"could not stop instance {inst.name} (pid {inst.proc.pid}): {e}")
        for th in self.threads:
            if th.is_alive():
                th.stop()
        try:
            self.delete_groups(self._groups(), group_wait_s)
        except Exception as e:  # noqa: BLE001
            self._warn(f"deleting consumer groups failed: {e}")
        try:
            self.delete_topics()
        except Exception as e:  # noqa: BLE001
            self._warn(f"deleting topics failed: {e}")
        self.verify()

    def delete_groups(self, groups: list[str], wait_s: float) -> None:
        """Delete ``groups``; a group that still has members (a static member that has not timed
        out yet) is retried until ``wait_s`` has passed. Missing groups are fine."""
        deadline = time.monotonic() + wait_s
        pending, told = list(groups), False
        while pending:
            futures = self.admin.delete_consumer_groups(pending, request_timeout=15)
            retry = []
            for g, f in futures.items():
                try:
                    f.result()
                except Exception as e:  # noqa: BLE001
                    err = _err(e)
                    code = err.code() if err is not None else None
                    if code == KafkaError.GROUP_ID_NOT_FOUND:
                        continue
                    if code == KafkaError.NON_EMPTY_GROUP and time.monotonic() < deadline:
                        retry.append(g)
                    elif _unsupported(err):
                        self._warn(f"the broker does not support deleting consumer groups ({err.str()}); "
                                   f"left: {', '.join(pending)}")
                        return
                    else:
                        self._warn(f"could not delete consumer group {g}: {err.str() if err else e}")
            pending = retry
            if pending:
                if not told:
                    self.console.print(f"waiting for consumer group(s) {', '.join(pending)} to become empty "
                                       f"(static members leave after their {SESSION_TIMEOUT_MS} ms session timeout)")
                    told = True
                time.sleep(1)

    def _mine(self, topic: str) -> bool:
        return topic in self.topics or any(topic.startswith(f"{a}-") and topic.endswith(INTERNAL_SUFFIXES)
                                           for a in self.app_ids)

    def delete_topics(self) -> None:
        names = list(self.topics)
        if self.app_ids:
            names += [t for t in self.admin.list_topics(timeout=15).topics if self._mine(t)]
        names = list(dict.fromkeys(names))
        if not names:
            return
        for t, f in self.admin.delete_topics(names, operation_timeout=30, request_timeout=30).items():
            try:
                f.result()
            except Exception as e:  # noqa: BLE001
                err = _err(e)
                if err is not None and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    continue                # never created (an interrupted run)
                if _unsupported(err):
                    self._warn(f"the broker does not delete topics ({err.str()}); left: {', '.join(names)}")
                    return
                self._warn(f"could not delete topic {t}: {err.str() if err else e}")

    def verify(self) -> None:
        """Say what is left on the broker (best effort: a topic deletion may take a moment to show)."""
        if not self.topics and not self.app_ids:
            return
        try:
            deadline = time.monotonic() + 10
            while True:
                topics = [t for t in self.admin.list_topics(timeout=15).topics if self._mine(t)]
                if not topics or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            groups = self.admin.list_consumer_groups(request_timeout=15).result()
            mine = set(self._groups())
            left = [f"topic {t}" for t in topics] + [f"consumer group {g.group_id}" for g in groups.valid
                                                     if g.group_id in mine]
        except Exception as e:  # noqa: BLE001
            self._warn(f"could not check what is left on the broker: {e}")
            return
        if left:
            self._warn(f"left on the broker: {', '.join(left)}")
        else:
            self.console.print(f"cleanup: no topic or consumer group of this run is left "
                               f"({len(self.app_ids)} app id(s))")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


# --------------------------------------------------------------------------- reporting
def print_latency(console: Console, r: dict, args, broker_name: str) -> None:
    table = Table(title=f"Query latency under load: 2 instances x 1 worker, {PARTITIONS} partitions, {KEYS:,} keys, "
                        f"non-windowed count, {args.guarantee}; {args.query_rate} queries/s; broker {broker_name}")
    for col in ("query (to instance A)", "queries", "errors", "p50 ms", "p99 ms", "mean ms"):
        table.add_column(col, justify="left" if col.startswith("query") else "right")

    def row(label, xs, errs=None):
        table.add_row(label, f"{len(xs):,}", "-" if errs is None else (
            ", ".join(f"{n} x {s}" for s, n in errs.items()) or "0"),
            f"{_pct(xs, 50):.2f}", f"{_pct(xs, 99):.2f}", f"{statistics.fmean(xs):.2f}" if xs else "-")

    lat = r["lat"]
    row("local key (200 from A)", lat["local"], r["errors"]["local"])
    row("forwarded key (307 from A + 200 from B)", lat["forwarded"], r["errors"]["forwarded"])
    row("  hop 1: A answers 307", lat["hop1"])
    row("  hop 2: B answers 200", lat["hop2"])
    console.print(table)
    cr = r["committed_rate"]
    console.print(f"  meanwhile ({r['seconds']:.0f} s): the producer wrote {r['produced_rate']:,.0f} records/s, "
                  f"the app committed {cr:,.0f} records/s" if cr is not None else "the app's rate: unknown",
                  end="")
    console.print(f", lag at the end {r['lag']:,} records" if r["lag"] is not None else "")
    console.print(f"  tasks A {r['tasks'][0]}, B {r['tasks'][1]}; {r['opened']} connection(s) opened by the "
                  f"client (keep-alive); answers naming the wrong instance: {r['wrong_instance']}")


def cost_summary(runs: list[dict]) -> dict:
    """Medians of the runs without and with queries, and what serving the queries cost: ``rate_ratio``
    (records/s with / without), ``cpu_ratio`` (CPU µs/record with / without), ``throughput_cost``
    (1 - rate_ratio), ``cost`` (the larger of the throughput and the CPU cost: the target's figure)
    and the extra CPU µs per query answered (whole tree, and the supervisor alone)."""
    off = [r for r in runs if not r["queries"]]
    on = [r for r in runs if r["queries"]]
    med = {k: {f: statistics.median(x[f] for x in rs) for f in ("rate", "cpu_us", "sup_us")}
           for k, rs in (("off", off), ("on", on))}
    for m in med.values():
        m["work_us"] = m["cpu_us"] - m["sup_us"]
    med["on"]["qps"] = statistics.median(x["qps"] for x in on)
    rate_ratio = med["on"]["rate"] / med["off"]["rate"]
    cpu_ratio = med["on"]["cpu_us"] / med["off"]["cpu_us"]
    # extra CPU per query: the CPU µs/record difference over the records, per query answered in the span
    per_q = [(a["cpu_us"] - med["off"]["cpu_us"]) * a["records"] / max(a["n_queries"], 1) for a in on]
    per_q_sup = [(a["sup_us"] - med["off"]["sup_us"]) * a["records"] / max(a["n_queries"], 1) for a in on]
    statuses: dict = {}
    for r in on:
        for s, n in r["statuses"].items():
            statuses[s] = statuses.get(s, 0) + n
    return {"median_off": med["off"], "median_on": med["on"], "rate_ratio": rate_ratio, "cpu_ratio": cpu_ratio,
            "throughput_cost": 1 - rate_ratio, "cost": max(1 - rate_ratio, cpu_ratio - 1),
            "cpu_us_per_query": statistics.median(per_q), "sup_us_per_query": statistics.median(per_q_sup),
            "statuses": statuses}


def print_cost(console: Console, runs: list[dict], args, broker_name: str) -> None:
    table = Table(title=f"Cost of serving {args.qps} queries/s: 1 instance x 1 worker processing a backlog of "
                        f"{args.messages:,} records ({PARTITIONS} partitions, {KEYS:,} keys, non-windowed count, "
                        f"{args.guarantee}); broker {broker_name}")
    for col in ("run", "records/s", "CPU µs/record", "supervisor", "workers", "queries in span",
                "query p50 / p99 ms"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for r in runs:
        q = (f"{r['n_queries']:,} ({r['qps']:.0f}/s)", f"{r['q_p50']:.2f} / {r['q_p99']:.2f}") if r["queries"] \
            else ("-", "-")
        table.add_row(r["name"], f"{r['rate']:,.0f}", f"{r['cpu_us']:.2f}", f"{r['sup_us']:.2f}",
                      f"{r['cpu_us'] - r['sup_us']:.2f}", *q)
    summary = cost_summary(runs)
    med = {"off": summary["median_off"], "on": summary["median_on"]}
    table.add_section()
    for k, label in (("off", "median without queries"), ("on", f"median with {args.qps} queries/s")):
        m = med[k]
        table.add_row(label, f"{m['rate']:,.0f}", f"{m['cpu_us']:.2f}", f"{m['sup_us']:.2f}", f"{m['work_us']:.2f}",
                      f"{m['qps']:.0f}/s" if k == "on" else "-", "-")
    rate_ratio, cpu_ratio = summary["rate_ratio"], summary["cpu_ratio"]
    table.add_row("with / without", f"{rate_ratio:.3f}x", f"{cpu_ratio:.3f}x",
                  f"{med['on']['sup_us'] / med['off']['sup_us']:.2f}x" if med["off"]["sup_us"] > 0 else "-",
                  f"{med['on']['work_us'] / med['off']['work_us']:.3f}x", "-", "-")
    console.print(table)
    console.print(f"  throughput cost {100 * (1 - rate_ratio):+.1f}%, CPU per record {100 * (cpu_ratio - 1):+.1f}%; "
                  f"extra CPU per query ~{summary['cpu_us_per_query']:,.0f} µs (supervisor alone "
                  f"~{summary['sup_us_per_query']:,.0f} µs); target < 5%: "
                  + ("[green]met[/]" if summary["cost"] < 0.05 else "[red]not met[/]"))
    console.print(f"  answers to the queries in the spans: {summary['statuses']} (404: a key the backlog had not "
                  f"reached yet)")


def latency_summary(r: dict) -> dict:
    """Part 1 without the raw latencies: p50, p99 and mean ms and the count of each kind."""
    lat = {kind: {"n": len(xs), "p50_ms": _pct(xs, 50), "p99_ms": _pct(xs, 99),
                  "mean_ms": statistics.fmean(xs) if xs else None} for kind, xs in r["lat"].items()}
    return {**{k: v for k, v in r.items() if k != "lat"}, "latency": lat}


def write_json(path: str, latency: dict | None, cost: list[dict] | None, args, broker_name: str) -> None:
    data = {"benchmark": "queries", "partitions": PARTITIONS, "keys": KEYS, "guarantee": args.guarantee,
            "broker": broker_name, "latency": None, "cost": None}
    if latency is not None:
        data["latency"] = {"query_rate": args.query_rate, "producer_rate": args.rate, **latency_summary(latency)}
    if cost is not None:
        data["cost"] = {"messages": args.messages, "qps": args.qps, "rounds": args.rounds, "runs": cost,
                        **cost_summary(cost)}
    with open(path, "wb") as f:
        f.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap-servers", default=os.environ.get("STREAMPROC_BOOTSTRAP_SERVERS"),
                    help="Kafka cluster (default: start the embedded Tansu development broker)")
    ap.add_argument("--messages", type=int, default=None, help="backlog records of part 2 (default 1,000,000)")
    ap.add_argument("--quick", action="store_true", help="200,000 backlog records, 1,000 queries of each kind")
    ap.add_argument("--parts", default="latency,cost", help="latency, cost or both")
    ap.add_argument("--guarantee", default="exactly-once", choices=("exactly-once", "at-least-once"))
    ap.add_argument("--rate", type=int, default=5000, help="part 1: input records/s produced during the queries")
    ap.add_argument("--queries", type=int, default=None, help="part 1: queries of each kind (default 2000)")
    ap.add_argument("--query-rate", type=float, default=200, help="part 1: queries/s, both kinds together")
    ap.add_argument("--warmup", type=int, default=100, help="part 1: unmeasured queries of each kind first")
    ap.add_argument("--distinct", type=int, default=1000, help="part 1: keys of each kind to draw queries from")
    ap.add_argument("--qps", type=int, default=100, help="part 2: queries/s during the run with queries")
    ap.add_argument("--rounds", type=int, default=2, help="part 2: rounds of (without, with), medians reported")
    ap.add_argument("--timeout", type=float, default=900, help="seconds a run or a wait may take")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = ap.parse_args(argv)
    if args.messages is None:
        args.messages = 200_000 if args.quick else 1_000_000
    if args.queries is None:
        args.queries = 1000 if args.quick else 2000
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or set(parts) - {"latency", "cost"}:
        ap.error("--parts: latency, cost or latency,cost")

    console = Console() if sys.stdout.isatty() else Console(width=160)
    signal.signal(signal.SIGTERM, _raise_interrupt)       # SIGTERM cleans up like Ctrl-C
    broker = cleanup = tmp = None
    bootstrap = args.bootstrap_servers
    try:
        if not bootstrap:
            from streamproc.kafka.devbroker import DevBroker
            broker = DevBroker().start()
            bootstrap = broker.bootstrap
            console.print(f"[yellow]embedded development broker (Tansu) at {bootstrap}[/]")
        broker_name = "Tansu (embedded)" if broker else bootstrap
        cleanup = Cleanup(AdminClient({"bootstrap.servers": bootstrap, "log_level": 3}), console)
        tmp = tempfile.mkdtemp(prefix="queries-bench-")
        topology_path = os.path.join(tmp, "queries_topology.py")
        with open(topology_path, "w") as f:
            f.write(TOPOLOGY)
        run_id = uuid.uuid4().hex[:8]
        latency = cost = None
        if "latency" in parts:
            latency = part_latency(args, bootstrap, cleanup.admin, tmp, topology_path, run_id, console, cleanup)
        if "cost" in parts:
            cost = part_cost(args, bootstrap, cleanup.admin, tmp, topology_path, run_id, console, cleanup)
        if latency is not None:
            print_latency(console, latency, args, broker_name)
        if cost is not None:
            print_cost(console, cost, args, broker_name)
        if args.json:
            write_json(args.json, latency, cost, args, broker_name)
        return 0
    except KeyboardInterrupt:
        console.print("[red]interrupted: cleaning up[/]")
        return 130
    finally:
        try:
            if cleanup is not None:
                cleanup.run()
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            cleanup = None          # no admin client left to log the stopped broker's absence
            if broker is not None:
                broker.stop()


if __name__ == "__main__":
    sys.exit(main())
