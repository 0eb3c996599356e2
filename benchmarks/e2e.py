"""End to end on one broker: raw loop vs hand-written windowed loop vs `streamproc run`.

One prepared input topic (4 partitions, JSON events, 1000 keys, >= 1M messages). Each variant
runs as its own process tree, reads the whole topic in a fresh consumer group and writes its
results to its own output topic:

  (a) raw confluent-kafka consume -> orjson parse -> produce loop (no state)
  (b) hand-written windowed loop: per-partition stream time, dict state, 10 s tumbling
      count+sum, final results on close, offsets committed every 200 ms (no changelog, no EOS)
  (c) streamproc run --guarantee at-least-once
  (d) streamproc run --guarantee exactly-once

msgs/s is measured between the group's first and last committed offset progress (so group
joins, imports and topic creation are left out); CPU µs/msg is the CPU time of the variant's
whole process tree over the same span, from /proc.

    python benchmarks/e2e.py [--bootstrap-servers host:9092] [--messages 1000000]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import orjson  # noqa: E402
from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

PARTITIONS = 4
KEYS = 1000
WINDOW_MS = 10_000
COMMIT_S = 0.2          # the loops and (c) commit every 200 ms; (d) uses its default 100 ms
_TICK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- preparing the input
def prepare(bootstrap: str, topic: str, n: int, rate: int, console: Console) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    admin.create_topics([NewTopic(topic, PARTITIONS)])[topic].result(30)
    p = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 20,
                  "log_level": 3, "batch.num.messages": 10000, "queue.buffering.max.messages": 500000})
    rng = np.random.default_rng(1)
    users = rng.integers(0, KEYS, n)
    amounts = rng.integers(1, 1000, n)
    base = 1_700_000_000_000
    ts = base + np.arange(n) * 1000 // rate - rng.integers(0, 2000, n)     # up to 2 s out of order
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task(f"producing {n:,} events to {topic}", total=n)
        for i in range(n):
            u = f"user-{users[i]}"
            while True:
                try:
                    p.produce(topic, key=u.encode(), timestamp=int(ts[i]),
                              value=orjson.dumps({"user": u, "amount": int(amounts[i]), "ts": int(ts[i])}))
                    break
                except BufferError:
                    p.poll(0.05)
            if i % 20000 == 0:
                p.poll(0)
                prog.update(task, completed=i)
        p.flush(120)
        prog.update(task, completed=n)


# --------------------------------------------------------------------------- the two hand-written loops
def _consumer(bootstrap, group):
    return Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                     "enable.auto.commit": False, "session.timeout.ms": 6000,
                     "fetch.queue.backoff.ms": 10, "partition.assignment.strategy": "range"})


def role_raw(bootstrap, topic, out, group, total):
    c = _consumer(bootstrap, group)
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "partitioner": "murmur2_random"})
    c.subscribe([topic])
    seen, committed, last_commit = 0, 0, time.monotonic()
    loads, dumps = orjson.loads, orjson.dumps
    while seen < total:
        msgs = c.consume(1000, 0.5)
        for m in msgs:
            if m.error():
                continue
            v = loads(m.value())
            v["amount_x2"] = v["amount"] * 2
            p.produce(out, key=m.key(), value=dumps(v))
        seen += len(msgs)
        p.poll(0)
        if seen > committed and (time.monotonic() - last_commit > COMMIT_S or seen >= total):
            p.flush()
            c.commit(asynchronous=False)
            committed, last_commit = seen, time.monotonic()
    p.flush()
    c.close()


def role_windowed(bootstrap, topic, out, group, total):
    """What a careful engineer writes by hand: correct windows, no fault tolerance."""
    c = _consumer(bootstrap, group)
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "partitioner": "murmur2_random"})
    c.subscribe([topic])
    stream_time: dict = {}
    state: dict = {}          # partition -> {(key, start): [count, sum, max_ts]}
    by_close: dict = {}       # partition -> {close_time: [window keys]}
    seen, committed, last_commit = 0, 0, time.monotonic()
    loads, dumps = orjson.loads, orjson.dumps
    while seen < total:
        msgs = c.consume(1000, 0.5)
        for m in msgs:
            if m.error():
                continue
            part = m.partition()
            v = loads(m.value())
            t = v["ts"]
            st = stream_time.get(part, -1)
            windows = state.setdefault(part, {})
            closes = by_close.setdefault(part, {})
            if t > st:
                st = stream_time[part] = t
                for ct in sorted(x for x in closes if x <= st):
                    for wk in closes.pop(ct):
                        cnt, sm, mt = windows.pop(wk)
                        p.produce(out, key=wk[0].encode(), timestamp=mt, value=dumps(
                            {"window_start": wk[1], "window_end": wk[1] + WINDOW_MS, "count": cnt, "sum": sm}))
            start = t - t % WINDOW_MS
            if st >= start + WINDOW_MS:
                continue                                   # late
            wk = (v["user"], start)
            cur = windows.get(wk)
            if cur is None:
                windows[wk] = [1, v["amount"], t]
                closes.setdefault(start + WINDOW_MS, []).append(wk)
            else:
                cur[0] += 1
                cur[1] += v["amount"]
                if t > cur[2]:
                    cur[2] = t
        seen += len(msgs)
        p.poll(0)
        if seen > committed and (time.monotonic() - last_commit > COMMIT_S or seen >= total):
            p.flush()
            c.commit(asynchronous=False)
            committed, last_commit = seen, time.monotonic()
    p.flush()
    c.close()


# --------------------------------------------------------------------------- measuring
def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        q = todo.pop()
        out.append(q)
        try:
            for tid in os.listdir(f"/proc/{q}/task"):
                with open(f"/proc/{q}/task/{tid}/children") as f:
                    todo += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return out


def _cpu_seconds(pid: int) -> float:
    total = 0
    for q in _tree(pid):
        try:
            with open(f"/proc/{q}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])      # utime, stime
        except OSError:
            pass
    return total / _TICK


def _committed(bootstrap: str, topic: str, group: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        offs = c.committed([TopicPartition(topic, i) for i in range(PARTITIONS)], timeout=10)
        return sum(max(tp.offset, 0) for tp in offs)
    finally:
        c.close()


def measure(name: str, cmd: list[str], env: dict, bootstrap: str, topic: str, group: str, total: int,
            console: Console, timeout_s: float) -> dict:
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t_first = cpu_first = None
    done_first = 0
    deadline = time.monotonic() + timeout_s
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task(f"{name}", total=total)
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"{name}: did not finish within {timeout_s:.0f} s")
            exited = proc.poll() is not None
            done = _committed(bootstrap, topic, group)
            if exited and done < total:
                err = proc.stderr.read().decode(errors="replace")[-2000:]
                raise SystemExit(f"{name}: exited with {proc.returncode} after {done:,} messages:\n{err}")
            now, cpu = time.monotonic(), _cpu_seconds(proc.pid)
            if done > 0 and t_first is None:
                t_first, cpu_first, done_first = now, cpu, done
            prog.update(task, completed=done)
            if done >= total:
                t_last, cpu_last = now, cpu
                break
            time.sleep(0.25)
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
    n = total - done_first
    secs = max(t_last - t_first, 1e-9)
    return {"name": name, "msgs": n, "seconds": secs, "rate": n / secs,
            "cpu_us": (cpu_last - cpu_first) * 1e6 / max(n, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap-servers", default=os.environ.get("STREAMPROC_BOOTSTRAP_SERVERS"))
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--rate", type=int, default=10_000, help="events per second of event time")
    ap.add_argument("--workers", type=int, default=1, help="streamproc worker processes (the loops use one)")
    ap.add_argument("--only", default="a,b,c,d", help="variants to run, e.g. b,d")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--role", help=argparse.SUPPRESS)
    ap.add_argument("--args", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.role:
        bootstrap, topic, out, group, total = args.args
        {"raw": role_raw, "windowed": role_windowed}[args.role](bootstrap, topic, out, group, int(total))
        time.sleep(3600)        # stay measurable until the monitor has read our CPU time and stops us
        return 0

    console = Console()
    broker = None
    bootstrap = args.bootstrap_servers
    if not bootstrap:
        from streamproc.kafka.devbroker import DevBroker
        broker = DevBroker().start()
        bootstrap = broker.bootstrap
        console.print(f"[yellow]embedded development broker (Tansu) at {bootstrap}[/]")
    try:
        run_id = uuid.uuid4().hex[:8]
        topic = f"e2e-input-{run_id}"
        prepare(bootstrap, topic, args.messages, args.rate, console)
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
        results = []
        variants = {
            "a": ("(a) raw consume-parse-produce loop", "raw"),
            "b": ("(b) hand-written dict-state windowed loop", "windowed"),
            "c": ("(c) streamproc run, at-least-once", "at-least-once"),
            "d": ("(d) streamproc run, exactly-once", "exactly-once"),
        }
        for key in args.only.split(","):
            name, what = variants[key]
            out = f"e2e-out-{key}-{run_id}"
            admin.create_topics([NewTopic(out, PARTITIONS)])[out].result(30)
            if what in ("raw", "windowed"):
                group = f"e2e-{what}-{run_id}"
                cmd = [sys.executable, __file__, "--role", what, "--args", bootstrap, topic, out, group,
                       str(args.messages)]
                env = {}
            else:
                group = f"e2e-streamproc-{key}-{run_id}"
                cmd = [sys.executable, "-m", "streamproc", "run", os.path.join(ROOT, "benchmarks", "e2e_topology.py"),
                       "--bootstrap-servers", bootstrap, "--guarantee", what, "--workers", str(args.workers),
                       "--state-dir", f"/tmp/e2e-state-{run_id}-{key}", "--batch-size", "2000",
                       "--config", "consumer.session.timeout.ms=6000"]
                if what == "at-least-once":
                    cmd += ["--commit-interval", str(int(COMMIT_S * 1000))]
                env = {"E2E_APP_ID": group, "E2E_INPUT": topic, "E2E_OUTPUT": out}
            results.append(measure(name, cmd, env, bootstrap, topic, group, args.messages, console, args.timeout))
        by = {r["name"][:3]: r for r in results}
        ref = by.get("(b)")
        table = Table(title=f"{args.messages:,} JSON events, {PARTITIONS} partitions, {KEYS} keys, "
                            f"10 s tumbling count+sum; broker {'Tansu (embedded)' if broker else bootstrap}")
        for col in ("variant", "msgs/s", "CPU µs/msg", "vs (b) throughput"):
            table.add_column(col, justify="left" if col == "variant" else "right")
        for r in results:
            table.add_row(r["name"], f"{r['rate']:,.0f}", f"{r['cpu_us']:.2f}",
                          f"{r['rate'] / ref['rate']:.2f}x" if ref else "-")
        console.print(table)
        return 0
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    sys.exit(main())
