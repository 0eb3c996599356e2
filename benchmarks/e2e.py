"""End to end on one broker: raw loop vs hand-written windowed loop vs `streamproc run`.

One prepared input topic (4 partitions, JSON events, 1000 keys, >= 1M messages). Each variant
runs as its own process tree, reads the whole topic in a fresh consumer group and writes its
results to its own output topic:

  (a) raw confluent-kafka consume -> orjson parse -> produce loop (no state)
  (b) hand-written windowed loop: per-partition stream time, dict state, 10 s tumbling
      count+sum, final results on close, offsets committed every 200 ms (no changelog, no EOS)
  (c) streamproc run --guarantee at-least-once
  (d) streamproc run --guarantee exactly-once
  (m) (d) with --metrics-port, scraped once a second (the cost of serving metrics)
  (r) (d) behind a repartition topic (group_by to the same key): the cost of a re-key, watermarks
      included; msgs/s follows the input topic's committed offsets (the upstream sub-topology), CPU
      counts both sub-topologies

msgs/s is measured between the group's first and last committed offset progress (so group
joins, imports and topic creation are left out); CPU µs/msg is the CPU time of the variant's
whole process tree over the same span, from /proc. Peak RSS (MB = 10^6 bytes), also from
/proc, over the whole run (start-up included): "worker" is the largest high-water mark
(``VmHWM``) of one process of the tree (a ``streamproc run`` worker; the loop itself for (a)
and (b)), "tree" the largest sampled sum of the tree's RSS (every 0.25 s: supervisor and
workers together).

Safe on a shared Apache Kafka cluster:

* event times are recent (the last event is a little before the run starts; the first window
  boundary stays a multiple of 10 s, so the windows and their contents are the same as with any
  other base), and every topic the benchmark creates has ``retention.ms=-1``: a broker's time
  retention never deletes input or output mid-run. (The changelog topics ``streamproc run``
  creates keep window size + grace + 1 day of event time, which recent event times satisfy.)
* the input is written by an idempotent producer and checked for delivery errors, so the topic
  holds exactly ``--messages`` records.
* everything it creates is removed at the end, also on failure, Ctrl-C or SIGTERM: the variant
  processes are stopped first, then the consumer groups are deleted (the loops' groups and each
  app's group; a group is deletable only once empty, and ``streamproc run`` workers are static
  members that do not leave on close, so deletion is retried until their session timeout has
  passed), then the topics (input, outputs, and each app's ``<app-id>-*-changelog``,
  ``-repartition`` and ``-dlq`` topics), then the ``/tmp/e2e-state-*`` state dirs. An operation
  the broker does not support or refuses is reported and skipped. The transactional ids of (d)
  (``<app-id>-<process id>-<worker>``) cannot be deleted; the broker expires them after
  ``transactional.id.expiration.ms`` (default 7 days).

    python benchmarks/e2e.py [--bootstrap-servers host:9092] [--messages 1000000] [--json PATH]
                             [--repeat N] [--compare OTHER_TREE] [--repo TREE]

``--json PATH`` also writes the figures as JSON (what ``benchmarks/suite.py`` reads).

Before/after comparisons on a noisy machine: ``--repeat N`` runs every variant N times over the same
input (medians reported), and ``--compare OTHER_TREE`` (a copy of the code, e.g. from ``git archive``)
runs each ``streamproc run`` variant alternately from this tree and from that one (A, B, A, B ...), then
prints both medians and their ratio. ``--repo TREE`` runs the ``streamproc run`` variants from another
tree instead of this one.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import orjson  # noqa: E402
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

PARTITIONS = 4
KEYS = 1000
WINDOW_MS = 10_000
COMMIT_S = 0.2          # the loops and (c) commit every 200 ms; (d) uses its default 100 ms
SESSION_TIMEOUT_MS = 6000
#: every topic the benchmark creates: no time retention (real Kafka deletes by record timestamp)
TOPIC_CONFIG = {"retention.ms": "-1"}
#: the internal topics `streamproc run` creates for an application id
INTERNAL_SUFFIXES = ("-changelog", "-repartition", "-dlq")
_TICK = os.sysconf("SC_CLK_TCK")


def _err(exc: BaseException) -> KafkaError | None:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def _unsupported(err: KafkaError | None) -> bool:
    return err is not None and err.code() in (
        KafkaError._UNSUPPORTED_FEATURE, KafkaError.UNSUPPORTED_VERSION, KafkaError.INVALID_REQUEST,
        KafkaError._NOT_IMPLEMENTED, KafkaError.TOPIC_DELETION_DISABLED)


def create_topic(admin: AdminClient, name: str, partitions: int, timeout_s: float = 30) -> None:
    """Create ``name`` with :data:`TOPIC_CONFIG` and wait until its partitions are in the metadata."""
    admin.create_topics([NewTopic(name, partitions, config=dict(TOPIC_CONFIG))],
                        operation_timeout=timeout_s, request_timeout=timeout_s)[name].result(timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        md = admin.list_topics(timeout=10).topics.get(name)
        if md is not None and md.error is None and len(md.partitions) == partitions:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"topic {name} was created but its {partitions} partitions did not show up "
                             f"in the metadata within {timeout_s:.0f} s")
        time.sleep(0.2)


def event_time_base(n: int, rate: int) -> int:
    """Event time of event 0: ``n`` events at ``rate``/s end before now; a multiple of the window size."""
    now = int(time.time() * 1000)
    return (now - n * 1000 // rate - WINDOW_MS) // WINDOW_MS * WINDOW_MS


# --------------------------------------------------------------------------- preparing the input
def prepare(admin: AdminClient, bootstrap: str, topic: str, n: int, rate: int, console: Console) -> None:
    create_topic(admin, topic, PARTITIONS)
    # idempotent: a retried batch is not written twice, so the topic holds exactly n records
    p = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 20,
                  "log_level": 3, "batch.num.messages": 10000, "queue.buffering.max.messages": 500000,
                  "enable.idempotence": True})
    failed: list = []

    def on_delivery(err, _msg):
        if err is not None:
            failed.append(err)

    rng = np.random.default_rng(1)
    users = rng.integers(0, KEYS, n)
    amounts = rng.integers(1, 1000, n)
    base = event_time_base(n, rate)
    ts = base + np.arange(n) * 1000 // rate - rng.integers(0, 2000, n)     # up to 2 s out of order
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task(f"producing {n:,} events to {topic}", total=n)
        for i in range(n):
            u = f"user-{users[i]}"
            while True:
                try:
                    p.produce(topic, key=u.encode(), timestamp=int(ts[i]), on_delivery=on_delivery,
                              value=orjson.dumps({"user": u, "amount": int(amounts[i]), "ts": int(ts[i])}))
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


# --------------------------------------------------------------------------- the two hand-written loops
def _consumer(bootstrap, group):
    return Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                     "enable.auto.commit": False, "session.timeout.ms": SESSION_TIMEOUT_MS,
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


class _RssPeaks:
    """Peak RSS of a process tree, sampled from /proc: the largest sum over the tree, and per process
    its high-water mark (``VmHWM``, kept by the kernel between samples)."""

    def __init__(self):
        self.tree = 0                       # bytes
        self.hwm: dict[int, int] = {}       # pid -> bytes

    def sample(self, pid: int) -> None:
        total = 0
        for q in _tree(pid):
            try:
                with open(f"/proc/{q}/status") as f:
                    fields = dict(line.split(":", 1) for line in f if line.startswith(("VmRSS", "VmHWM")))
            except OSError:
                continue
            kib = {k: int(v.split()[0]) * 1024 for k, v in fields.items()}
            total += kib.get("VmRSS", 0)
            self.hwm[q] = max(self.hwm.get(q, 0), kib.get("VmHWM", 0))
        self.tree = max(self.tree, total)

    def result(self) -> dict:
        return {"rss_mb": max(self.hwm.values(), default=0) / 1e6, "rss_tree_mb": self.tree / 1e6,
                "processes": len(self.hwm)}


class _Monitor:
    """Reads a group's committed offsets on the input topic (one consumer, never joins the group).

    read_uncommitted: with read_committed librdkafka asks for stable offsets only (KIP-447), and a
    broker answers UNSTABLE_OFFSET_COMMIT while (d) has offsets pending in an open transaction;
    read_uncommitted returns the last committed (stable) offsets right away.
    """

    def __init__(self, bootstrap: str, topic: str, group: str):
        self.parts = [TopicPartition(topic, i) for i in range(PARTITIONS)]
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                           "isolation.level": "read_uncommitted", "log_level": 3})
        self.last_error: str | None = None

    def committed(self) -> int | None:
        try:
            offs = self.c.committed(self.parts, timeout=10)
        except KafkaException as e:
            self.last_error = str(e)
            return None                     # a slow coordinator: try again on the next tick
        return sum(max(tp.offset, 0) for tp in offs)

    def close(self) -> None:
        self.c.close()


def stop_process(proc: subprocess.Popen, timeout_s: float = 60) -> None:
    """SIGTERM (``streamproc run`` finishes or aborts its checkpoint, closes its clients, exits), then SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()                     # streamproc workers die with it (parent-death signal)
            proc.wait(10)


def measure(name: str, cmd: list[str], env: dict, bootstrap: str, topic: str, group: str, total: int,
            console: Console, timeout_s: float, cleanup: "Cleanup", cwd: str = ROOT) -> dict:
    # stderr to a file, not a pipe: a process that logs more than a pipe holds would block on it
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, cwd=cwd, stdout=subprocess.DEVNULL, stderr=log)
    cleanup.procs.append(proc)
    monitor = _Monitor(bootstrap, topic, group)
    rss = _RssPeaks()
    t_first = cpu_first = None
    done_first = 0
    deadline = time.monotonic() + timeout_s
    try:
        with Progress(console=console, transient=True) as prog:
            task = prog.add_task(f"{name}", total=total)
            while True:
                rss.sample(proc.pid)
                if time.monotonic() > deadline:
                    raise SystemExit(f"{name}: did not finish within {timeout_s:.0f} s"
                                     + (f" (last offset fetch error: {monitor.last_error})" if monitor.last_error else ""))
                exited = proc.poll() is not None
                done = monitor.committed()
                if done is None:
                    if exited:
                        done = 0
                    else:
                        time.sleep(0.25)
                        continue
                if exited and done < total:
                    log.seek(0)
                    err = log.read().decode(errors="replace")[-2000:]
                    raise SystemExit(f"{name}: exited with {proc.returncode} after {done:,} messages:\n{err}")
                now, cpu = time.monotonic(), _cpu_seconds(proc.pid)
                if done > 0 and t_first is None:
                    t_first, cpu_first, done_first = now, cpu, done
                prog.update(task, completed=done)
                if done >= total:
                    t_last, cpu_last = now, cpu
                    break
                time.sleep(0.25)
    finally:
        monitor.close()
        stop_process(proc)
        log.close()
    n = total - done_first
    secs = max(t_last - t_first, 1e-9)
    return {"name": name, "msgs": n, "seconds": secs, "rate": n / secs,
            "cpu_us": (cpu_last - cpu_first) * 1e6 / max(n, 1), **rss.result()}


# --------------------------------------------------------------------------- cleaning up
class Cleanup:
    """Everything one run created, removed in :meth:`run` (called from ``finally``)."""

    def __init__(self, admin: AdminClient, console: Console):
        self.admin = admin
        self.console = console
        self.procs: list[subprocess.Popen] = []
        self.topics: list[str] = []         # exact names
        self.groups: list[str] = []
        self.app_ids: list[str] = []        # streamproc apps: group, <app>-restore, <app>-*-changelog/...
        self.dirs: list[str] = []

    def _warn(self, what: str) -> None:
        self.console.print(f"[yellow]cleanup: {what}[/]")

    def run(self, group_wait_s: float = 3 * SESSION_TIMEOUT_MS / 1000 + 10) -> None:
        for proc in self.procs:             # groups are deletable only once their members are gone
            try:
                stop_process(proc)
            except Exception as e:  # noqa: BLE001 - go on cleaning
                self._warn(f"could not stop pid {proc.pid}: {e}")
        groups = list(dict.fromkeys(self.groups + [g for a in self.app_ids for g in (a, f"{a}-restore")]))
        try:
            self.delete_groups(groups, group_wait_s)
        except Exception as e:  # noqa: BLE001
            self._warn(f"deleting consumer groups failed: {e}")
        try:
            self.delete_topics()
        except Exception as e:  # noqa: BLE001
            self._warn(f"deleting topics failed: {e}")
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)

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

    def delete_topics(self) -> None:
        names = list(self.topics)
        if self.app_ids:
            existing = self.admin.list_topics(timeout=15).topics
            names += [t for t in existing for a in self.app_ids
                      if t.startswith(f"{a}-") and t.endswith(INTERNAL_SUFFIXES)]
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


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _orphan_guard() -> None:
    """A loop process outlives its measurement only while the benchmark runs: exit when it goes away."""
    parent = os.getppid()
    for _ in range(3600):
        if os.getppid() != parent:
            return
        time.sleep(1)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Scraper:
    """GETs /metrics once a second, as Prometheus would (its own CPU is not measured)."""

    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.ok = self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "_Scraper":
        self._thread.start()
        return self

    def _run(self) -> None:
        import urllib.request

        while not self._stop.wait(1.0):
            try:
                urllib.request.urlopen(self.url, timeout=2).read()
                self.ok += 1
            except Exception:  # noqa: BLE001 - not up yet, or stopped
                self.failed += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(3)


VARIANTS = {
    "a": ("(a) raw consume-parse-produce loop", "raw"),
    "b": ("(b) hand-written dict-state windowed loop", "windowed"),
    "c": ("(c) streamproc run, at-least-once", "at-least-once"),
    "d": ("(d) streamproc run, exactly-once", "exactly-once"),
    "m": ("(m) (d) + --metrics-port, scraped 1/s", "exactly-once"),
    "r": ("(r) (d) re-keyed: through a repartition topic", "exactly-once"),
}


def variant_command(key: str, args, bootstrap: str, topic: str, out: str, run_id: str,
                    cleanup: Cleanup, repo: str = ROOT, tag: str | None = None) -> tuple[list[str], dict, str]:
    """``(command, extra environment, consumer group)`` of variant ``key`` (``streamproc run`` from the code
    in ``repo``); ``tag`` (default ``key``) names its group and state dir; what it creates goes to ``cleanup``."""
    what = VARIANTS[key][1]
    tag = tag or key
    if what in ("raw", "windowed"):
        group = f"e2e-{what}-{run_id}" + ("" if tag == key else f"-{tag}")
        cleanup.groups.append(group)
        cmd = [sys.executable, __file__, "--role", what, "--args", bootstrap, topic, out, group,
               str(args.messages)]
        return cmd, {}, group
    group = f"e2e-streamproc-{tag}-{run_id}"
    state_dir = f"/tmp/e2e-state-{run_id}-{tag}"
    cleanup.app_ids.append(group)
    cleanup.dirs.append(state_dir)
    cmd = [sys.executable, "-m", "streamproc", "run", os.path.join(repo, "benchmarks", "e2e_topology.py"),
           "--bootstrap-servers", bootstrap, "--guarantee", what, "--workers", str(args.workers),
           "--state-dir", state_dir, "--batch-size", "2000",
           "--config", f"consumer.session.timeout.ms={SESSION_TIMEOUT_MS}"]
    if what == "at-least-once":
        cmd += ["--commit-interval", str(int(COMMIT_S * 1000))]
    env = {"E2E_APP_ID": group, "E2E_INPUT": topic, "E2E_OUTPUT": out}
    if repo != ROOT:
        env["PYTHONPATH"] = repo
    if key == "r":
        env["E2E_REKEY"] = "1"
    return cmd, env, group


def run_variant(key: str, args, bootstrap: str, topic: str, run_id: str, console: Console,
                cleanup: Cleanup, repo: str = ROOT, tag: str | None = None) -> dict:
    """Create variant ``key``'s output topic, run it over the whole input and measure it (``streamproc run``
    from the code in ``repo``; ``tag``: what names its topic, group and state dir, default ``key``)."""
    tag = tag or key
    out = f"e2e-out-{tag}-{run_id}"
    cleanup.topics.append(out)
    create_topic(cleanup.admin, out, PARTITIONS)
    cmd, env, group = variant_command(key, args, bootstrap, topic, out, run_id, cleanup, repo, tag)
    scraper = None
    if key == "m":
        port = _free_port()
        cmd += ["--metrics-port", str(port)]
        scraper = _Scraper(port).start()
    try:
        return measure(VARIANTS[key][0], cmd, env, bootstrap, topic, group, args.messages, console,
                       args.timeout, cleanup, cwd=repo)
    finally:
        if scraper is not None:
            scraper.stop()
            console.print(f"  /metrics scraped {scraper.ok} times ({scraper.failed} failed)")


def print_results(console: Console, results: list[dict], args, broker_name: str) -> None:
    by = {r["name"][:3]: r for r in results}
    ref = by.get("(b)")
    table = Table(title=f"{args.messages:,} JSON events, {PARTITIONS} partitions, {KEYS} keys, "
                        f"10 s tumbling count+sum; broker {broker_name}")
    for col in ("variant", "msgs/s", "CPU µs/msg", "vs (b) throughput", "peak RSS MB (worker / tree)"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in results:
        table.add_row(r["name"], f"{r['rate']:,.0f}", f"{r['cpu_us']:.2f}",
                      f"{r['rate'] / ref['rate']:.2f}x" if ref and ref["rate"] > 0 else "-",
                      f"{r['rss_mb']:.0f} / {r['rss_tree_mb']:.0f}")
    console.print(table)


def median_run(runs: list[dict]) -> dict:
    """One result for several runs of a variant: the median of each figure (peak RSS: the largest)."""
    if len(runs) == 1:
        return runs[0]
    out = dict(runs[0])
    for f in ("msgs", "seconds", "rate", "cpu_us"):
        out[f] = float(np.median([r[f] for r in runs]))
    for f in ("rss_mb", "rss_tree_mb"):
        out[f] = max(r[f] for r in runs)
    out["runs"] = len(runs)
    return out


def run_all(keys: list[str], args, bootstrap: str, topic: str, run_id: str, console: Console,
            cleanup: Cleanup) -> tuple[dict, dict]:
    """Every variant ``args.repeat`` times, in rounds (each round runs every variant once, so the ratios
    between variants compare runs close in time); with ``--compare``, each ``streamproc run`` variant
    alternately from this tree and from the other (A, B, A, B ...). Returns ``({key: [runs]}, {key: [runs of
    the other tree]})``."""
    repo = os.path.abspath(args.repo) if args.repo else ROOT
    other = os.path.abspath(args.compare) if args.compare else None
    runs: dict = {k: [] for k in keys}
    other_runs: dict = {}
    for i in range(args.repeat):
        for key in keys:
            loop = VARIANTS[key][1] in ("raw", "windowed")
            tag = key if args.repeat == 1 and other is None else f"{key}{i}"
            runs[key].append(run_variant(key, args, bootstrap, topic, run_id, console, cleanup, repo, tag))
            if other is not None and not loop:
                other_runs.setdefault(key, []).append(
                    run_variant(key, args, bootstrap, topic, run_id, console, cleanup, other, f"{key}{i}x"))
            if args.repeat > 1 or other is not None:
                last = [runs[key][-1]] + ([other_runs[key][-1]] if key in other_runs else [])
                console.print(f"  {key} run {i + 1}: " + ", ".join(
                    f"{'this' if j == 0 else 'other'} {r['cpu_us']:.2f} µs/msg {r['rate']:,.0f} msgs/s"
                    for j, r in enumerate(last)))
    return runs, other_runs


def print_comparison(console: Console, runs: dict, other_runs: dict, other: str) -> None:
    table = Table(title=f"this tree vs {other}: medians (each run: CPU µs/msg)")
    for col in ("variant", "CPU this", "CPU other", "this / other", "msgs/s this", "msgs/s other",
                "runs (this | other)"):
        table.add_column(col, justify="left" if col in ("variant", "runs (this | other)") else "right")
    for key, theirs in other_runs.items():
        a, b = median_run(runs[key]), median_run(theirs)
        table.add_row(VARIANTS[key][0], f"{a['cpu_us']:.3f}", f"{b['cpu_us']:.3f}", f"{a['cpu_us'] / b['cpu_us']:.3f}",
                      f"{a['rate']:,.0f}", f"{b['rate']:,.0f}",
                      " ".join(f"{r['cpu_us']:.2f}" for r in runs[key]) + " | "
                      + " ".join(f"{r['cpu_us']:.2f}" for r in theirs))
    console.print(table)


def write_json(path: str, keys: list[str], results: list[dict], args, broker_name: str,
               runs: dict | None = None, other_runs: dict | None = None) -> None:
    data = {"benchmark": "e2e", "messages": args.messages, "partitions": PARTITIONS, "keys": KEYS,
            "window_ms": WINDOW_MS, "workers": args.workers, "broker": broker_name,
            "variants": dict(zip(keys, results))}
    if runs and args.repeat > 1:
        data["runs"] = runs
    if other_runs:
        data["compare"] = {"tree": os.path.abspath(args.compare),
                           "variants": {k: median_run(v) for k, v in other_runs.items()}, "runs": other_runs}
    with open(path, "wb") as f:
        f.write(orjson.dumps(data, option=orjson.OPT_INDENT_2))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap-servers", default=os.environ.get("STREAMPROC_BOOTSTRAP_SERVERS"))
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--rate", type=int, default=10_000, help="events per second of event time")
    ap.add_argument("--workers", type=int, default=1, help="streamproc worker processes (the loops use one)")
    ap.add_argument("--only", default="a,b,c,d", help="variants to run, e.g. b,d")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each variant over the same input (medians)")
    ap.add_argument("--compare", metavar="TREE",
                    help="also run each streamproc variant from this other copy of the code, alternately")
    ap.add_argument("--repo", metavar="TREE", help="run the streamproc variants from this copy of the code")
    ap.add_argument("--role", help=argparse.SUPPRESS)
    ap.add_argument("--args", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.role:
        bootstrap, topic, out, group, total = args.args
        {"raw": role_raw, "windowed": role_windowed}[args.role](bootstrap, topic, out, group, int(total))
        _orphan_guard()         # stay measurable until the monitor has read our CPU time and stops us
        return 0

    console = Console()
    keys = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}: choose from {', '.join(VARIANTS)}")
    for tree in (args.compare, args.repo):
        if tree and not os.path.isfile(os.path.join(tree, "benchmarks", "e2e_topology.py")):
            ap.error(f"{tree} is not a copy of this repository (no benchmarks/e2e_topology.py)")
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    signal.signal(signal.SIGTERM, _raise_interrupt)       # SIGTERM cleans up like Ctrl-C
    broker = cleanup = admin = None
    bootstrap = args.bootstrap_servers
    try:
        if not bootstrap:
            from streamproc.kafka.devbroker import DevBroker
            broker = DevBroker().start()
            bootstrap = broker.bootstrap
            console.print(f"[yellow]embedded development broker (Tansu) at {bootstrap}[/]")
        broker_name = "Tansu (embedded)" if broker else bootstrap
        cleanup = Cleanup(AdminClient({"bootstrap.servers": bootstrap, "log_level": 3}), console)
        admin = cleanup.admin
        run_id = uuid.uuid4().hex[:8]
        topic = f"e2e-input-{run_id}"
        cleanup.topics.append(topic)
        prepare(admin, bootstrap, topic, args.messages, args.rate, console)
        runs, other_runs = run_all(keys, args, bootstrap, topic, run_id, console, cleanup)
        results = [median_run(runs[key]) for key in keys]
        print_results(console, results, args, broker_name)
        if other_runs:
            print_comparison(console, runs, other_runs, args.compare)
        if args.json:
            write_json(args.json, keys, results, args, broker_name, runs, other_runs)
        return 0
    except KeyboardInterrupt:
        console.print("[red]interrupted: cleaning up[/]")
        return 130
    finally:
        try:
            if cleanup is not None:
                cleanup.run()
        finally:
            cleanup = admin = None          # no admin client left to log the stopped broker's absence
            if broker is not None:
                broker.stop()


if __name__ == "__main__":
    sys.exit(main())
