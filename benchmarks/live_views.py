"""Live views at scale (issue 21): 1, 100 and 1,000 SSE clients on one instance's change stream.

One instance (``streamproc run --workers 1 --http-port``) keeps a table of ``--keys`` (500) keys, a
count and sum per key, fed at ``--rate`` (2,000) records/s; every committed change of a key is a change
event on ``GET /stores/counts/changes``. For each client count (0 first, as the baseline):

* **steady** (``--seconds``): N clients, in another process (asyncio, raw sockets), follow the stream.
  Per read, a client notes how old the newest change it got is (now - the record's timestamp, which the
  producer sets to the wall clock): the staleness of what it shows, p50/p99 over every read of every
  client. Also: change events/s per client (mean and min), the CPU of the serving side (the instance's
  supervisor process, where the HTTP server runs, all threads) and of the workers, as shares of a core;
  the server's own counters (sent, conflated, resets) from ``/status``.
* **burst**: with the clients still connected, ``--burst`` (100,000) records at once, three times; the
  time until the app's committed offsets reach them gives the processing throughput (median of the
  three), against the run with no client (the throughput lost to serving). The client process runs on
  the same 2 cores as the instance, so its own CPU counts against the instance here.

    python benchmarks/live_views.py [--clients 1,100,1000] [--seconds 20] [--json PATH]

Targets (issue 21): with 1,000 clients, p99 staleness <= 1 s and throughput loss <= 10%.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import numpy as np                                    # noqa: E402
from confluent_kafka import Consumer, Producer, TopicPartition   # noqa: E402
from rich.console import Console                     # noqa: E402
from rich.table import Table                         # noqa: E402

from e2e import _tree, _TICK, stop_process           # noqa: E402

TOPOLOGY = '''
import os
from streamproc import Topology, agg, serdes
t = Topology(os.environ["LIVE_APP_ID"])
(t.stream(os.environ["LIVE_INPUT"], key=serdes.String(), value=serdes.Json())
   .group_by_key().aggregate(n=agg.count(), total=agg.sum("x"), name="counts"))
'''
PARTITIONS = 2
BURSTS = 3
_TS = re.compile(rb'"timestamp":(\d+)')


# --------------------------------------------------------------------------- load
class Load(threading.Thread):
    """``rate`` records/s over ``keys`` keys, record timestamps = the wall clock (ms)."""

    def __init__(self, bootstrap: str, topic: str, rate: int, keys: int):
        super().__init__(daemon=True)
        self.p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
        self.topic, self.rate, self.keys = topic, rate, keys
        self.halt = threading.Event()
        self.n = 0

    def run(self) -> None:
        rng = random.Random(1)
        t0 = time.monotonic()
        while not self.halt.is_set():
            target = int((time.monotonic() - t0) * self.rate)
            while self.n < target:
                k = f"k{rng.randrange(self.keys)}"
                try:
                    self.p.produce(self.topic, b'{"x": 1}', k.encode())
                except BufferError:
                    self.p.poll(0.05)
                    continue
                self.n += 1
            self.p.poll(0)
            self.halt.wait(0.005)
        self.p.flush(30)

    def burst(self, n: int) -> None:
        for i in range(n):
            while True:
                try:
                    self.p.produce(self.topic, b'{"x": 1}', f"k{i % self.keys}".encode())
                    break
                except BufferError:
                    self.p.poll(0.05)
        assert self.p.flush(60) == 0


def _ends(bootstrap: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "live-bench-ends"})
    try:
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(PARTITIONS))
    finally:
        c.close()


def _committed(bootstrap: str, topic: str, group: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "isolation.level": "read_uncommitted"})
    try:
        offs = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        return sum(max(tp.offset, 0) for tp in offs)
    finally:
        c.close()


def _cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of ``pid`` itself (the supervisor: HTTP server) and of its children (workers)."""
    own = rest = 0
    for q in _tree(pid):
        try:
            with open(f"/proc/{q}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks = (int(fields[11]) + int(fields[12])) / _TICK
        if q == pid:
            own = ticks
        else:
            rest += ticks
    return own, rest


# --------------------------------------------------------------------------- clients (another process)
async def _client(port: int, store: str, until: float, out: dict, i: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /stores/{store}/changes HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    reads = []                      # (time, change events, age of the newest change in ms)
    try:
        while time.time() < until:
            try:
                chunk = await asyncio.wait_for(reader.read(1 << 16), max(0.05, until - time.time()))
            except asyncio.TimeoutError:
                break
            if not chunk:
                break
            now = time.time()
            ts = _TS.findall(chunk)
            reads.append((now, chunk.count(b"event: change"), now * 1000 - int(ts[-1]) if ts else None))
    finally:
        writer.close()
    out[i] = reads


def _clients_main(port: int, n: int, seconds: float, start_at: float, conn) -> None:
    async def run():
        await asyncio.sleep(max(0.0, start_at - time.time()))
        out: dict = {}
        until = time.time() + seconds
        errors = [r for r in await asyncio.gather(*(_client(port, "counts", until, out, i) for i in range(n)),
                                                  return_exceptions=True) if isinstance(r, BaseException)]
        if errors:
            print(f"{len(errors)} client(s) failed, e.g. {errors[0]!r}", file=sys.stderr)
        return out
    out = asyncio.run(run())
    conn.send(out)
    conn.close()


# --------------------------------------------------------------------------- one instance
def _wait(pred, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def _status(port: int) -> dict:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as r:
            return json.loads(r.read())
    except OSError:
        return {}


def measure(bootstrap: str, clients: list[int], seconds: float, rate: int, keys: int, burst: int,
            console: Console) -> list[dict]:
    from streamproc.kafka.admin import create_topics, make_admin

    tmp = tempfile.mkdtemp(prefix="live-bench-")
    app, topic = f"live-{uuid.uuid4().hex[:8]}", f"live-in-{uuid.uuid4().hex[:8]}"
    create_topics(make_admin(bootstrap), [topic], PARTITIONS)
    path = os.path.join(tmp, "topo.py")
    with open(path, "w") as f:
        f.write(TOPOLOGY)
    port = random.randint(20000, 29999)
    log = open(os.path.join(tmp, "app.log"), "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamproc", "run", path, "--bootstrap-servers", bootstrap,
                             "--workers", "1", "--http-port", str(port), "--state-dir", os.path.join(tmp, "state"),
                             "--log-format", "text"],
                            env={**os.environ, "LIVE_APP_ID": app, "LIVE_INPUT": topic}, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=log)
    load = Load(bootstrap, topic, rate, keys)
    rows = []
    try:
        _wait(lambda: _status(port).get("running") == PARTITIONS, 90, "the instance to run its tasks")
        load.start()
        time.sleep(3.0)
        ctx = multiprocessing.get_context("spawn")
        for n in clients:
            console.log(f"{n} client(s): steady {seconds:.0f} s at {rate} records/s, then a burst of {burst:,}")
            before = _status(port).get("live", {})
            start_at = time.time() + (2.0 if n else 0.0)
            parent, child = ctx.Pipe(duplex=False)
            cp = ctx.Process(target=_clients_main, args=(port, n, seconds + 6.0 + 60.0, start_at, child)) if n \
                else None
            if cp is not None:
                cp.start()
                child.close()                     # so that a client process that dies reads as EOF here
            time.sleep(max(0.0, start_at - time.time()) + 2.0)          # connected, settled
            own0, rest0, w0, t0_wall = *_cpu(proc.pid), time.monotonic(), time.time()
            time.sleep(seconds)
            own1, rest1, w1, t1_wall = *_cpu(proc.pid), time.monotonic(), time.time()
            # burst: processing throughput with the clients still there
            load.halt.set()
            load.join()
            _wait(lambda: _committed(bootstrap, topic, app) >= _ends(bootstrap, topic), 120, "the steady load done")
            rates = []
            for _ in range(BURSTS):               # the median of a few: one burst is a noisy figure
                target = _ends(bootstrap, topic) + burst
                t0 = time.monotonic()
                load.burst(burst)
                _wait(lambda: _committed(bootstrap, topic, app) >= target, 300, "the burst processed")
                rates.append(burst / (time.monotonic() - t0))
                time.sleep(1.0)
            after = _status(port).get("live", {})
            got: dict = {}
            if cp is not None:
                try:                              # read before joining: a big result fills the pipe
                    got = parent.recv() if parent.poll(seconds + 120.0) else {}
                except (EOFError, OSError):
                    raise SystemExit(f"the client process of {n} client(s) died (exit code {cp.exitcode})")
                cp.join(30)
                if cp.is_alive():
                    cp.kill()
            steady = {i: [r for r in reads if t0_wall <= r[0] < t1_wall] for i, reads in got.items()}
            ages = [r[2] for reads in steady.values() for r in reads if r[2] is not None]
            per = [sum(r[1] for r in reads) / (t1_wall - t0_wall) for reads in steady.values()]
            rows.append({
                "clients": n, "connected": len(got),
                "staleness_p50_ms": float(np.percentile(ages, 50)) if ages else None,
                "staleness_p99_ms": float(np.percentile(ages, 99)) if ages else None,
                "events_per_client_s": float(np.mean(per)) if per else None,
                "events_per_client_min_s": float(np.min(per)) if per else None,
                "serving_cpu_share": (own1 - own0) / (w1 - w0), "workers_cpu_share": (rest1 - rest0) / (w1 - w0),
                "burst_records_s": float(np.median(rates)), "burst_runs": rates,
                "sent": after.get("sent", 0) - before.get("sent", 0),
                "conflated": after.get("conflated", 0) - before.get("conflated", 0),
                "resets": after.get("resets", 0) - before.get("resets", 0),
            })
            load = Load(bootstrap, topic, rate, keys)
            load.start()
            time.sleep(2.0)
    finally:
        load.halt.set()
        stop_process(proc, 60)
        log.close()
    base = rows[0]["burst_records_s"] if rows and rows[0]["clients"] == 0 else None
    for r in rows:
        r["throughput_lost_pct"] = None if base is None else 100.0 * (1 - r["burst_records_s"] / base)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="1,100,1000")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--keys", type=int, default=500)
    ap.add_argument("--burst", type=int, default=100_000)
    ap.add_argument("--bootstrap-servers", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    console = Console(stderr=True)
    clients = [0] + [int(x) for x in args.clients.split(",") if int(x) > 0]
    broker = None
    bootstrap = args.bootstrap_servers
    if bootstrap is None:
        from streamproc.kafka.devbroker import DevBroker

        broker = DevBroker().start()
        bootstrap = broker.bootstrap
    try:
        rows = measure(bootstrap, clients, args.seconds, args.rate, args.keys, args.burst, console)
    finally:
        if broker is not None:
            broker.stop()
    t = Table(title=f"live views: {args.rate:,} records/s over {args.keys} keys, one instance, "
                    f"{args.seconds:.0f} s per client count")
    for col in ("clients", "staleness p50 / p99 ms", "changes/s per client (mean / min)", "serving CPU",
                "workers CPU", "sent / conflated / resets", "burst records/s", "throughput lost"):
        t.add_column(col, justify="right")

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    for r in rows:
        t.add_row(str(r["clients"]), f"{f(r['staleness_p50_ms'], '.0f')} / {f(r['staleness_p99_ms'], '.0f')}",
                  f"{f(r['events_per_client_s'], ',.0f')} / {f(r['events_per_client_min_s'], ',.0f')}",
                  f"{r['serving_cpu_share']:.0%}", f"{r['workers_cpu_share']:.0%}",
                  f"{r['sent']:,} / {r['conflated']:,} / {r['resets']}", f"{r['burst_records_s']:,.0f}",
                  f(r["throughput_lost_pct"], ".1f") + ("%" if r["throughput_lost_pct"] is not None else ""))
    Console().print(t)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
