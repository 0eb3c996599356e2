"""Recovery times of `streamproc run`: an instance SIGKILLed and restarted, a second instance joining.

One stateful topology (``group_by_key`` -> 10 s tumbling count + sum, store ``counts``, JSON in
and out), exactly-once, ``--workers 2`` per instance, fed continuously by a background producer
thread at ``--rate`` msgs/s (4 partitions, 1000 keys, event time = now). A monitor thread reads
the app's committed input offsets (a ``Consumer.committed()`` for the app's group, never joining
it) every 100 ms; every number below is read from those samples.

1. **SIGKILL + restart -> next committed progress** (``--kills``, median reported). Once every
   partition has been committing steadily for 3 s (no partition without progress for 1 s),
   the instance's whole process group (supervisor and workers; it runs in a session of its
   own) is SIGKILLed and the same command is started again at once, with the same state dir
   (same process id, so the same static members and transactional ids). Measured: kill ->
   the first sample in which any partition's committed offset is beyond its offset at the
   kill, and kill -> every partition beyond it. A transaction whose commit was already on its
   way when the kill landed may still show up right after it: samples from the first 0.5 s
   after the kill count as "at the kill" (a new instance cannot commit that early: its
   workers log "started" well after it, which is checked). From the new instance's log
   (``streamproc -v``): kill -> first worker "started" (process start: interpreter, imports,
   topic checks, spawned workers, init_transactions) and "started" -> first progress (the
   restart without the process start), "started" -> "assigned" (the group join).

2. **A second instance joins** (``--joins``, median reported). With the instance running
   steadily, instance B (same app id, a fresh state dir, so it restores its tasks from the
   changelogs like a new machine) starts. The rebalance is read from the worker logs: it is
   complete when each of the four workers has logged "assigned" since B's start and their
   latest assignments add up to the 4 input partitions. Measured: B start -> every partition's
   committed offset beyond where it was once that rebalance was complete (both instances
   resumed; eager rebalancing stops every partition), the longest time in [B start, resumed]
   with no committed progress on any partition and on the worst single partition. Then B gets
   SIGTERM (exit code reported; its static members do not leave the group, so its partitions
   wait for their session timeout), and B stop -> every partition committed again (instance A
   took B's partitions over) is reported too; the group settles before the next round.
   Tansu still assigns partitions to static members whose session timed out, so there A never
   gets B's partitions back (detected when A's post-leave assignment stays short of the 4
   partitions for 5 s, and reported): the next round then starts over in a fresh consumer group
   (a new app id whose committed offsets are set to the input's end, a fresh instance A).

On Tansu a restarted static member also makes the group rebalance (Apache Kafka hands it its
cached assignment), several times while the workers come back one by one: the kill numbers
are dominated by that there; the "assigned" column shows how many assignments it took.

Sanity checks: no instance log (stderr, at ``-v``) contains "crashed" or "Traceback", the
exit codes (SIGKILLed: -9, SIGTERMed: 0 expected), the producer's delivery errors, and a
summary of WARNING/ERROR lines.

Works on the embedded Tansu development broker (default, started here) and on a real cluster
(``--bootstrap-servers``). Topics get unique names and ``retention.ms=-1``; at the end, also
on failure, Ctrl-C or SIGTERM, the instances are stopped, then the app's consumer groups, the
input/output topics and the app's internal topics are deleted and the temp dir (topology file,
state dirs, logs) is removed. Deleting the group waits for the static members' session timeout.
The transactional ids cannot be deleted; a broker expires them after
``transactional.id.expiration.ms``.

    python benchmarks/recovery.py [--bootstrap-servers host:9092] [--kills 5] [--joins 3] [--rate 2000]
"""
from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import orjson  # noqa: E402
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from rich.console import Console  # noqa: E402
from e2e import _err, _unsupported  # noqa: E402 - shared with e2e.py
from rich.table import Table  # noqa: E402

PARTITIONS = 4
KEYS = 1000
POLL_S = 0.1                 # committed offsets are read this often
STEADY_WINDOW_S = 3.0        # "steady": every partition committed within every STEADY_MAX_GAP_S of this window
STEADY_MAX_GAP_S = 1.0
KILL_SETTLE_S = 0.5          # commits seen this soon after a kill were in flight at the kill
CONFIRM_S = 2.0              # a rebalance counts as the last one when no "assigned" follows for this long
TOPIC_CONFIG = {"retention.ms": "-1"}
INTERNAL_SUFFIXES = ("-changelog", "-repartition", "-dlq")
BAD_WORDS = ("crashed", "Traceback")

TOPOLOGY = '''\
"""Written by benchmarks/recovery.py: 10 s tumbling count + sum per user, JSON in and out."""
import os

from streamproc import Topology, agg, serdes, windows

topology = Topology(os.environ["RECOVERY_APP_ID"])

(topology.stream(os.environ["RECOVERY_INPUT"], key=serdes.String(), value=serdes.Json(),
                 timestamp=lambda k, v, ts: v["ts"])
    .group_by_key()
    .window(windows.Tumbling("10s"))
    .aggregate(count=agg.count(), sum=agg.sum("amount"), emit="final", name="counts")
    .to(os.environ["RECOVERY_OUTPUT"], value=serdes.Json()))
'''

# the runtime's log lines (`streamproc -v`): {"ts":"...","level":"...","logger":"...","msg":"..."}
LOG_RE = re.compile(r'^\{"ts":"(?P<ts>[^"]+)","level":"(?P<level>\w+)","logger":"(?P<logger>[^"]*)",'
                    r'"msg":"(?P<msg>.*)"\}\s*$')
STARTED_RE = re.compile(r"^worker (?P<wid>\S+) started\b")
ASSIGNED_RE = re.compile(r"^worker (?P<wid>\S+) assigned (?P<n>\d+) partition")
RESTORED_RE = re.compile(r"^worker (?P<wid>\S+): task (?P<task>.+?) restored\b")


class BenchError(Exception):
    """A measurement could not be taken (timeout, an instance exited): reported with what was measured."""



def wall_to_mono(wall: float) -> float:
    return wall - time.time() + time.monotonic()


def create_topic(admin: AdminClient, name: str, partitions: int, timeout_s: float = 30) -> None:
    admin.create_topics([NewTopic(name, partitions, config=dict(TOPIC_CONFIG))],
                        operation_timeout=timeout_s, request_timeout=timeout_s)[name].result(timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        md = admin.list_topics(timeout=10).topics.get(name)
        if md is not None and md.error is None and len(md.partitions) == partitions:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"topic {name} was created but its {partitions} partitions did not show up "
                             f"in the metadata within {timeout_s:.0f} s")
        time.sleep(0.2)


# --------------------------------------------------------------------------- input and observation
class LoadProducer(threading.Thread):
    """Produces ``rate`` JSON events per second (event time = now) until stopped; idempotent."""

    def __init__(self, bootstrap: str, topic: str, rate: int):
        super().__init__(daemon=True, name="load-producer")
        self.bootstrap, self.topic, self.rate = bootstrap, topic, rate
        self.produced = 0
        self.failed: list = []
        self.error: BaseException | None = None
        self.left = 0
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(60)

    def _on_delivery(self, err, _msg) -> None:
        if err is not None:
            self.failed.append(err)

    def run(self) -> None:
        try:
            p = Producer({"bootstrap.servers": self.bootstrap, "partitioner": "murmur2_random", "linger.ms": 5,
                          "enable.idempotence": True, "log_level": 3})
            rng = random.Random(1)
            dumps = orjson.dumps
            t0 = time.monotonic()
            n = 0
            while not self._halt.is_set():
                target = int((time.monotonic() - t0) * self.rate)
                while n < target:
                    user = f"user-{rng.randrange(KEYS)}"
                    now_ms = int(time.time() * 1000)
                    try:
                        p.produce(self.topic, key=user.encode(), timestamp=now_ms, on_delivery=self._on_delivery,
                                  value=dumps({"user": user, "amount": rng.randrange(1, 1000), "ts": now_ms}))
                    except BufferError:
                        p.poll(0.05)
                        continue
                    n += 1
                self.produced = n
                p.poll(0)
                self._halt.wait(0.01)
            self.left = p.flush(30)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            self.error = e


class OffsetMonitor(threading.Thread):
    """Samples the group's committed offsets of the input partitions every :data:`POLL_S`.

    ``samples`` holds ``(t, offsets)`` with ``t`` the monotonic time the request was sent (the
    offsets are at least that recent) and ``-1`` for "none committed". read_uncommitted: with
    read_committed librdkafka asks for stable offsets only (KIP-447) and the broker answers
    UNSTABLE_OFFSET_COMMIT while a transaction holds pending offsets; read_uncommitted returns the
    last committed offsets right away.
    """

    def __init__(self, bootstrap: str, topic: str, group: str):
        super().__init__(daemon=True, name="offset-monitor")
        self.bootstrap, self.topic, self.group = bootstrap, topic, group
        self.samples: list[tuple[float, tuple[int, ...]]] = []
        self.errors = 0
        self.last_error: str | None = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(30)

    def run(self) -> None:
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group, "enable.auto.commit": False,
                      "isolation.level": "read_uncommitted", "log_level": 3})
        parts = [TopicPartition(self.topic, i) for i in range(PARTITIONS)]
        try:
            while not self._halt.is_set():
                t0 = time.monotonic()
                try:
                    offs = c.committed(parts, timeout=5)
                    self.samples.append((t0, tuple(tp.offset if tp.offset >= 0 else -1 for tp in offs)))
                except KafkaException as e:
                    self.errors += 1
                    self.last_error = str(e)
                self._halt.wait(max(0.0, POLL_S - (time.monotonic() - t0)))
        finally:
            c.close()

    # ---- queries (the list only grows; reading it from the main thread is safe)
    def latest(self):
        return self.samples[-1] if self.samples else None

    def last_at_or_before(self, t: float):
        for s in reversed(self.samples):
            if s[0] <= t:
                return s
        return None

    def first_at_or_after(self, t: float):
        for s in self.samples:
            if s[0] >= t:
                return s
        return None

    def advance_times(self, after: float, baseline) -> list[float | None]:
        """Per partition: the first sample time > ``after`` whose offset is beyond ``baseline``."""
        out: list[float | None] = [None] * PARTITIONS
        for t, offs in self.samples:
            if t <= after:
                continue
            for p in range(PARTITIONS):
                if out[p] is None and offs[p] > baseline[p]:
                    out[p] = t
            if all(x is not None for x in out):
                break
        return out

    def _changes(self, start: float, end: float):
        """``(group_advances, per_partition_advances)`` in (start, end], plus the last advance at or
        before ``start`` (group, per partition) so a gap that began before the window counts whole."""
        group: list[float] = []
        per: list[list[float]] = [[] for _ in range(PARTITIONS)]
        prev = None
        for t, offs in self.samples:
            if t > end:
                break
            if prev is not None:
                moved = [offs[p] > prev[p] for p in range(PARTITIONS)]
                if any(moved):
                    if t <= start:
                        group = [t]
                    else:
                        group.append(t)
                for p in range(PARTITIONS):
                    if moved[p]:
                        if t <= start:
                            per[p] = [t]
                        else:
                            per[p].append(t)
            prev = offs
        return group, per

    def longest_gaps(self, start: float, end: float) -> tuple[float, float]:
        """Longest time within [start, end] without committed progress: on every partition (the
        group's gap) and on the worst single partition."""
        def gap(points):
            pts = list(points)
            if not pts or pts[0] > start:
                pts = [start] + pts
            pts.append(end)
            return max(b - a for a, b in zip(pts, pts[1:]))
        group, per = self._changes(start, end)
        return gap(group), max(gap(p) for p in per)

    def steady(self, now: float) -> bool:
        """Every partition committed progress within every :data:`STEADY_MAX_GAP_S` of the last
        :data:`STEADY_WINDOW_S` (and the samples cover the whole window)."""
        start = now - STEADY_WINDOW_S
        if not self.samples or self.samples[0][0] > start - POLL_S:
            return False
        first = self.last_at_or_before(start)
        if first is None or min(first[1]) < 0:
            return False
        _, per = self._changes(start, now)
        for points in per:
            if not points or points[-1] <= start:
                return False
            pts = (list(points) if points[0] <= start else [start] + points) + [now]
            if max(b - a for a, b in zip(pts, pts[1:])) >= STEADY_MAX_GAP_S:
                return False
        return True


# --------------------------------------------------------------------------- instances
class Instance:
    """One ``streamproc -v run`` process tree in a session of its own; its stderr+stdout in a file."""

    def __init__(self, name: str, cmd: list[str], env: dict, state_dir: str, log_path: str, app_id: str):
        self.name, self.cmd, self.env, self.state_dir, self.log_path = name, cmd, env, state_dir, log_path
        self.app_id = app_id
        self.proc: subprocess.Popen | None = None
        self.t_start = 0.0
        self.stopped_by: str | None = None        # "SIGKILL" / "SIGTERM"
        self.returncode: int | None = None
        self._events: list = []
        self._read_pos = 0
        self._partial = b""
        self.lines: list[str] = []

    def start(self) -> "Instance":
        log = open(self.log_path, "wb")
        try:
            self.t_start = time.monotonic()
            self.proc = subprocess.Popen(self.cmd + ["--state-dir", self.state_dir], env=self.env, cwd=ROOT,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        finally:
            log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None and self.stopped_by is None:
            raise BenchError(f"instance {self.name} exited with code {self.proc.returncode}; its log ends with:\n"
                             f"{self.tail()}")

    def kill_group(self) -> None:
        """SIGKILL the supervisor and every worker (the whole process group)."""
        assert self.proc is not None
        self.stopped_by = "SIGKILL"
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.returncode = self.proc.wait(30)

    def group_alive(self) -> list[int]:
        """Pids (not zombies) still in this instance's process group."""
        if self.proc is None:
            return []
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.proc.pid and fields[0] != "Z":
                out.append(int(d))
        return out

    def terminate(self, timeout_s: float = 60) -> int | None:
        """SIGTERM the supervisor (it stops its workers: checkpoint, close, exit 0); SIGKILL the group
        after ``timeout_s``. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.stopped_by = self.stopped_by or "SIGTERM"
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.stopped_by = "SIGTERM, then SIGKILL after %.0f s" % timeout_s
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(30)
        if self.returncode is None:
            self.returncode = self.proc.returncode
        return self.returncode

    # ---- the log
    def events(self) -> list:
        """``(t_monotonic, level, msg)`` of every runtime log line so far (read incrementally)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._read_pos)
                data = f.read()
                self._read_pos = f.tell()
        except FileNotFoundError:
            return self._events
        if data:
            data = self._partial + data
            *complete, self._partial = data.split(b"\n")
            for raw in complete:
                line = raw.decode(errors="replace")
                self.lines.append(line)
                m = LOG_RE.match(line)
                if m:
                    try:
                        wall = datetime.strptime(m["ts"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                    except ValueError:
                        continue
                    self._events.append((wall_to_mono(wall), m["level"], m["msg"]))
        return self._events

    def matching(self, rx: re.Pattern, since: float = float("-inf")) -> list:
        return [(t, m) for t, _lvl, msg in self.events() if t >= since for m in [rx.match(msg)] if m]

    def worker_ids(self) -> set[str]:
        return {m["wid"] for _, m in self.matching(STARTED_RE)}

    def tail(self, n: int = 25) -> str:
        self.events()
        return "\n".join(self.lines[-n:]) or "(empty log)"


# --------------------------------------------------------------------------- the benchmark
class Bench:
    def __init__(self, args, console: Console, bootstrap: str, admin: AdminClient, tmp: str, run_id: str):
        self.args, self.console, self.bootstrap, self.admin, self.tmp = args, console, bootstrap, admin, tmp
        self.run_id = run_id
        self.app_id = f"recovery-{run_id}"
        self.app_ids = [self.app_id]          # a fresh app (group) per join round where the broker needs it
        self.input = f"recovery-input-{run_id}"
        self.output = f"recovery-out-{run_id}"
        self.topology_path = os.path.join(tmp, "recovery_topology.py")
        self.log_dir = args.log_dir or os.path.join(tmp, "logs")
        os.makedirs(self.log_dir, exist_ok=True)
        self.instances: list[Instance] = []
        self.producer: LoadProducer | None = None
        self.monitor: OffsetMonitor | None = None
        self.kills: list[dict] = []
        self.joins: list[dict] = []
        self.notes: list[str] = []
        self.leave_broken: int | None = None     # the join round after which the broker kept B's partitions
        self.created_topics: list[str] = []
        self.session_timeout_s = _session_timeout_ms(args.config) / 1000
        self.cmd = [sys.executable, "-m", "streamproc", "-v", "run", self.topology_path,
                    "--bootstrap-servers", bootstrap, "--workers", str(args.workers)]
        for kv in args.config:
            self.cmd += ["--config", kv]

    # ---- setup
    def setup(self) -> None:
        with open(self.topology_path, "w") as f:
            f.write(TOPOLOGY)
        for t in (self.input, self.output):
            self.created_topics.append(t)
            create_topic(self.admin, t, PARTITIONS)
        self.monitor = OffsetMonitor(self.bootstrap, self.input, self.app_id)
        self.monitor.start()
        self.producer = LoadProducer(self.bootstrap, self.input, self.args.rate)
        self.producer.start()

    def new_instance(self, name: str, state_dir: str) -> Instance:
        env = {**os.environ, "RECOVERY_APP_ID": self.app_id, "RECOVERY_INPUT": self.input,
               "RECOVERY_OUTPUT": self.output, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        inst = Instance(name, self.cmd, env, state_dir, os.path.join(self.log_dir, f"{name}.log"), self.app_id)
        self.instances.append(inst)
        return inst.start()

    def fresh_app(self, a: Instance, why: str) -> Instance:
        """Stop ``a`` and start over in a new consumer group (app id) whose committed offsets start at
        the input's current end, with a fresh instance A: the old group cannot settle (``why``)."""
        with self.console.status(f"starting over in a fresh consumer group ({why})"):
            a.terminate()
            self.monitor.stop()
            self.app_id = f"recovery-{self.run_id}-{len(self.app_ids) + 1}"
            self.app_ids.append(self.app_id)
            c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.app_id, "enable.auto.commit": False,
                          "log_level": 3})
            try:
                ends = [TopicPartition(self.input, p, c.get_watermark_offsets(TopicPartition(self.input, p),
                                                                              timeout=10)[1])
                        for p in range(PARTITIONS)]
                c.commit(offsets=ends, asynchronous=False)
            finally:
                c.close()
            self.monitor = OffsetMonitor(self.bootstrap, self.input, self.app_id)
            self.monitor.start()
            name = f"A-app{len(self.app_ids)}"
            new = self.new_instance(name, os.path.join(self.tmp, f"state-{name}"))
        self.console.print(f"[yellow]started over:[/] app {self.app_id} (committed offsets at the input's end), "
                           f"instance {name} ({why})")
        return new

    # ---- waiting
    def _check(self, *instances: Instance) -> None:
        for inst in instances:
            inst.check_alive()
        if self.producer is not None and self.producer.error is not None:
            raise BenchError(f"the load producer failed: {self.producer.error}")

    def wait_steady(self, what: str, *instances: Instance) -> float:
        t0 = time.monotonic()
        deadline = t0 + self.args.timeout
        with self.console.status(f"{what}: waiting for steady committed progress on all {PARTITIONS} partitions"):
            while True:
                self._check(*instances)
                now = time.monotonic()
                if self.monitor.steady(now):
                    return now - t0
                if now > deadline:
                    latest = self.monitor.latest()
                    raise BenchError(
                        f"{what}: committed offsets not steady within {self.args.timeout:.0f} s (latest "
                        f"{latest[1] if latest else None}, monitor errors {self.monitor.errors}: "
                        f"{self.monitor.last_error}); log of {instances[-1].name}:\n{instances[-1].tail()}")
                time.sleep(0.1)

    def wait_all_advanced(self, what: str, after: float, baseline, inst: list[Instance], deadline: float):
        while True:
            self._check(*inst)
            adv = self.monitor.advance_times(after, baseline)
            if all(x is not None for x in adv):
                return adv
            if time.monotonic() > deadline:
                raise BenchError(f"{what}: partitions {[p for p in range(PARTITIONS) if adv[p] is None]} made no "
                                 f"committed progress within {self.args.timeout:.0f} s (baseline {baseline}, latest "
                                 f"{self.monitor.latest()[1]}); log of {inst[-1].name}:\n{inst[-1].tail()}")
            time.sleep(0.05)

    def _sample_after(self, t: float, deadline: float):
        while True:
            s = self.monitor.first_at_or_after(t)
            if s is not None:
                return s
            if time.monotonic() > deadline:
                raise BenchError(f"no committed-offset sample after the event (monitor errors "
                                 f"{self.monitor.errors}: {self.monitor.last_error})")
            time.sleep(0.02)

    # ---- 1: SIGKILL + restart
    def kill_restart(self, i: int, inst: Instance) -> Instance:
        self.wait_steady(f"kill {i}", inst)
        t_kill = time.monotonic()
        inst.kill_group()
        new = self.new_instance(f"A{i}", inst.state_dir)        # at once, same state dir
        deadline = time.monotonic() + self.args.timeout
        with self.console.status(f"kill {i}: restarted, waiting for committed progress"):
            self._sample_after(t_kill + KILL_SETTLE_S, deadline)
            at_kill = self.monitor.last_at_or_before(t_kill)
            base = self.monitor.last_at_or_before(t_kill + KILL_SETTLE_S)
            if at_kill is None or base is None:
                raise BenchError(f"kill {i}: no committed-offset sample before the kill")
            adv = self.wait_all_advanced(f"kill {i}", t_kill + KILL_SETTLE_S, base[1], [new], deadline)
            # the log lines of the new instance up to its first progress
            time.sleep(0.3)
        left = inst.group_alive()          # SIGKILLed processes die asynchronously: checked now, not at once
        if left:
            self.notes.append(f"kill {i}: pids {left} of {inst.name} were still alive "
                              f"{time.monotonic() - t_kill:.1f} s after the SIGKILL")
        started = sorted(t for t, _ in new.matching(STARTED_RE))
        assigned = sorted(t for t, _ in new.matching(ASSIGNED_RE))
        restored = sorted(t for t, _ in new.matching(RESTORED_RE))
        first, last = min(adv), max(adv)
        assigns = sum(1 for t in assigned if t <= last)
        r = {"kill_to_first": first - t_kill, "kill_to_all": last - t_kill,
             "kill_to_started": started[0] - t_kill if started else None,
             "started_to_assigned": assigned[0] - started[0] if started and assigned else None,
             "started_to_first": first - started[0] if started else None,
             "started_to_restored": restored[-1] - started[0] if started and restored else None,
             "inflight": base[1] != at_kill[1], "workers_started": len(started), "assigns": assigns}
        if started and started[0] <= t_kill + KILL_SETTLE_S:
            self.notes.append(f"kill {i}: a worker of the new instance started {started[0] - t_kill:.2f} s after the "
                              f"kill, within the {KILL_SETTLE_S} s counted as 'at the kill'")
        self.kills.append(r)
        self.console.print(
            f"kill {i}: kill -> first committed progress [bold]{r['kill_to_first']:.2f} s[/], all partitions "
            f"{r['kill_to_all']:.2f} s; process start (kill -> first worker started) {_fmt(r['kill_to_started'])} s, "
            f"started -> progress {_fmt(r['started_to_first'])} s"
            + (" [dim](a commit in flight at the kill landed after it)[/]" if r["inflight"] else ""))
        return new

    # ---- 2: a second instance joins
    def join(self, j: int, a: Instance) -> bool:
        """One join round; returns False when the group cannot settle after B left (see :meth:`_leave`)."""
        self.wait_steady(f"join {j}", a)
        b = self.new_instance(f"B{j}", os.path.join(self.tmp, f"state-B{j}"))
        t_b = b.t_start
        deadline = t_b + self.args.timeout
        t_asg = None
        resumed = None
        with self.console.status(f"join {j}: instance B started, waiting for the rebalance and for every "
                                 f"partition to commit again"):
            while True:
                self._check(a, b)
                now = time.monotonic()
                if now > deadline:
                    raise BenchError(
                        f"join {j}: the group did not resume on every partition within {self.args.timeout:.0f} s "
                        f"of B's start (last complete assignment at "
                        f"{'-' if t_asg is None else f'{t_asg - t_b:.1f} s'}); log of B:\n{b.tail()}\nlog of A:\n"
                        f"{a.tail()}")
                t_last = self._complete_assignment(t_b, [a, b])
                if t_last is None:
                    time.sleep(0.1)
                    continue
                if t_last != t_asg:                 # a (further) rebalance: measure from it
                    t_asg, resumed = t_last, None
                if resumed is None:
                    base = self.monitor.first_at_or_after(t_asg)
                    if base is not None:
                        adv = self.monitor.advance_times(base[0], base[1])
                        if all(x is not None for x in adv):
                            resumed = max(adv)
                if resumed is not None and now - max(resumed, t_asg) >= CONFIRM_S:
                    break
                time.sleep(0.1)
        group_gap, part_gap = self.monitor.longest_gaps(t_b, resumed)
        b_started = sorted(t for t, _ in b.matching(STARTED_RE))
        b_restored = sorted(t for t, _ in b.matching(RESTORED_RE))
        rebalances = len(a.matching(ASSIGNED_RE, t_b)) + len(b.matching(ASSIGNED_RE, t_b))
        r = {"to_resumed": resumed - t_b, "to_rebalanced": t_asg - t_b,
             "to_b_started": b_started[-1] - t_b if b_started else None,
             "to_b_restored": b_restored[-1] - t_b if b_restored else None,
             "group_gap": group_gap, "partition_gap": part_gap, "assigned_events": rebalances}
        r["app"] = f"#{len(self.app_ids)}"
        self.joins.append(r)
        self.console.print(
            f"join {j}: B start -> every partition committing again [bold]{r['to_resumed']:.2f} s[/] (rebalance "
            f"complete {r['to_rebalanced']:.2f} s, B restored {_fmt(r['to_b_restored'])} s); longest gap: "
            f"{r['group_gap']:.2f} s all partitions, {r['partition_gap']:.2f} s one partition")
        return self._leave(j, a, b, r)

    def _leave(self, j: int, a: Instance, b: Instance, r: dict) -> bool:
        """SIGTERM to B. Its static members do not leave: after their session timeout the group rebalances
        and A takes B's partitions over (measured). A broker that still assigns partitions to the expired
        members (seen on Tansu) leaves them without an owner: detected when A's rebalanced assignment
        stays short of the input partitions (nothing new from A for 10 s after it was rebalanced, or
        2 session timeouts + 15 s after the SIGTERM): returns False. Once that happened, later rounds
        only stop B (the broker will not do better) and return False."""
        if self.leave_broken is not None:
            t_stop = time.monotonic()
            r["b_exit"] = b.terminate()
            r["b_stop_s"] = time.monotonic() - t_stop
            r["leave_to_all"] = None
            r["leave_note"] = f"not waited for: the broker kept B's partitions in join {self.leave_broken}"
            self.console.print(f"join {j}: B SIGTERM: exit code {r['b_exit']} after {r['b_stop_s']:.1f} s "
                               f"({r['leave_note']})")
            return False
        with self.console.status(f"join {j}: SIGTERM to instance B, waiting for A to take its partitions over"):
            t_stop = time.monotonic()
            r["b_exit"] = b.terminate()
            t_exit = time.monotonic()
            r["b_stop_s"] = t_exit - t_stop
            base = self._sample_after(t_exit, t_exit + self.args.timeout)
            deadline = t_exit + 2 * self.session_timeout_s + 15
            while True:
                self._check(a)
                adv = self.monitor.advance_times(base[0], base[1])
                if all(x is not None for x in adv):
                    r["leave_to_all"] = max(adv) - t_stop
                    r["leave_group_gap"], r["leave_partition_gap"] = self.monitor.longest_gaps(t_stop, max(adv))
                    self.console.print(f"join {j}: B SIGTERM: exit code {r['b_exit']} after {r['b_stop_s']:.1f} s; A "
                                       f"took over every partition {r['leave_to_all']:.2f} s after the SIGTERM")
                    return True
                assigned = a.matching(ASSIGNED_RE, t_exit)
                news = [t for t, _ in assigned] + [t for t, _ in a.matching(RESTORED_RE, t_exit)]
                now = time.monotonic()
                short = bool(assigned) and now - max(news) >= 10
                if short or now > deadline:
                    stuck = [p for p in range(PARTITIONS) if adv[p] is None]
                    why = (f"after B left, A was rebalanced {assigned[0][0] - t_stop:.1f} s after the SIGTERM "
                           f"({len(assigned)} assignment(s), {'+'.join(m['n'] for _, m in assigned)} partitions)"
                           if short else
                           f"A did not take B's partitions over within {deadline - t_stop:.0f} s of the SIGTERM")
                    r["leave_to_all"] = None
                    r["leave_note"] = f"{why}: partitions {stuck} made no committed progress since B stopped"
                    self.notes.append(f"join {j}: {r['leave_note']}" + (
                        " (the broker still assigns partitions to B's static members whose session timed out, as "
                        "Tansu does; Apache Kafka removes such members)" if short else ""))
                    self.console.print(f"join {j}: B SIGTERM: exit code {r['b_exit']} after {r['b_stop_s']:.1f} s; "
                                       f"[yellow]{r['leave_note']}[/]")
                    self.leave_broken = j
                    return False
                time.sleep(0.1)

    def _complete_assignment(self, since: float, insts: list[Instance]) -> float | None:
        """Time of the last "assigned" of the newest complete assignment since ``since``: every worker of
        ``insts`` logged "assigned" after it and their latest counts add up to the input partitions."""
        latest: dict[str, tuple[float, int]] = {}
        wids: set[str] = set()
        for inst in insts:
            ids = inst.worker_ids()
            if len(ids) < self.args.workers:
                return None
            wids |= ids
            for t, m in inst.matching(ASSIGNED_RE, since):
                if m["wid"] in ids and (m["wid"] not in latest or t >= latest[m["wid"]][0]):
                    latest[m["wid"]] = (t, int(m["n"]))
        if not wids <= set(latest) or sum(n for _, n in latest.values()) != PARTITIONS:
            return None
        return max(t for t, _ in latest.values())

    # ---- sanity
    def sanity(self) -> tuple[list[str], list[tuple]]:
        bad, warnings = [], {}
        for inst in self.instances:
            inst.events()
            for line in inst.lines + ([inst._partial.decode(errors="replace")] if inst._partial else []):
                if any(w in line for w in BAD_WORDS):
                    bad.append(f"{inst.name}: {line[:300]}")
                m = LOG_RE.match(line)
                if m and m["level"] in ("WARNING", "ERROR", "CRITICAL"):
                    key = re.sub(r"\d+", "N", re.sub(r"recovery-" + re.escape(self.run_id) + r"(-\d+)?-\w+-\d+", "<worker>", m["msg"]))[:140]
                    warnings.setdefault((m["level"], key), []).append(inst.name)
                elif not m and line.startswith("%"):           # librdkafka's own log (errors by default)
                    key = re.sub(r"\d+", "N", line.split("]: ", 1)[-1])[:140]
                    warnings.setdefault(("librdkafka", key), []).append(inst.name)
                elif not m and line.strip() and ("error" in line.lower() or "warning" in line.lower()):
                    warnings.setdefault(("stderr", line[:140]), []).append(inst.name)
        return bad, sorted(((lvl, msg, names) for (lvl, msg), names in warnings.items()), key=lambda x: -len(x[2]))


def _fmt(x, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _median(rows: list[dict], key: str):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def print_results(console: Console, bench: Bench, broker_name: str) -> None:
    if bench.kills:
        t = Table(title=f"SIGKILL of the whole instance + immediate restart, same state dir (exactly-once, "
                        f"--workers {bench.args.workers}, {bench.args.rate:,} msgs/s; {broker_name}); seconds",
                  caption="kill -> ...: from the SIGKILL; started -> ...: from the new instance's first worker "
                          "logging 'started' (process start excluded); assigned: 'assigned' log lines until every "
                          "partition committed (one per worker per rebalance)")
        cols = [("kill", None), ("kill -> first progress", "kill_to_first"), ("kill -> all partitions", "kill_to_all"),
                ("kill -> worker started", "kill_to_started"), ("started -> assigned", "started_to_assigned"),
                ("started -> restored", "started_to_restored"), ("started -> first progress", "started_to_first"),
                ("assigned", "assigns")]
        for name, _ in cols:
            t.add_column(name, justify="right")
        for i, r in enumerate(bench.kills, 1):
            t.add_row(str(i), *[str(r.get(k)) if k == "assigns" else _fmt(r.get(k)) for _, k in cols[1:]])
        t.add_row("[bold]median[/]", *[f"[bold]{_fmt(_median(bench.kills, k))}[/]" if k != "assigns" else ""
                                       for _, k in cols[1:]])
        console.print(t)
    if bench.joins:
        t = Table(title=f"Instance B (fresh state dir) joins running instance A, then leaves on SIGTERM "
                        f"({broker_name}); seconds",
                  caption="resumed: every partition committed after the last rebalance; gap: longest time without "
                          "committed progress between B's start and 'resumed', on all partitions / on one; "
                          "A took over: B SIGTERM -> every partition committed again")
        cols = [("join", None), ("group", "app"), ("B start -> resumed", "to_resumed"),
                ("B start -> rebalanced", "to_rebalanced"), ("B start -> B restored", "to_b_restored"),
                ("gap, all partitions", "group_gap"), ("gap, one partition", "partition_gap"),
                ("A took over", "leave_to_all"), ("B exit code", "b_exit")]
        for name, _ in cols:
            t.add_column(name, justify="right")
        for i, r in enumerate(bench.joins, 1):
            t.add_row(str(i), *[str(r.get(k)) if k in ("b_exit", "app") else _fmt(r.get(k)) for _, k in cols[1:]])
        t.add_row("[bold]median[/]", *[f"[bold]{_fmt(_median(bench.joins, k))}[/]" if k not in ("b_exit", "app")
                                       else "" for _, k in cols[1:]])
        console.print(t)


def print_sanity(console: Console, bench: Bench) -> bool:
    ok = True
    bad, warnings = bench.sanity()
    if bad:
        ok = False
        console.print(f"[red]instance logs contain {' / '.join(BAD_WORDS)} ({len(bad)} line(s)):[/]")
        for line in bad[:20]:
            console.print(f"  {line}", markup=False)
    else:
        console.print(f"[green]no instance log contains {' or '.join(repr(w) for w in BAD_WORDS)}[/] "
                      f"({len(bench.instances)} instance(s))")
    t = Table(title="instances")
    for c in ("instance", "stopped by", "exit code", "expected"):
        t.add_column(c)
    for inst in bench.instances:
        exp = -9 if inst.stopped_by == "SIGKILL" else 0
        rc = inst.returncode if inst.returncode is not None else (inst.proc.poll() if inst.proc else None)
        good = rc == exp
        ok = ok and good
        t.add_row(inst.name, inst.stopped_by or "(running)", f"[{'green' if good else 'red'}]{rc}[/]", str(exp))
    console.print(t)
    if warnings:
        console.print("WARNING/ERROR lines in the instance logs (digits as N):")
        for lvl, msg, names in warnings[:15]:
            console.print(f"  {len(names)}x {lvl}: {msg}  [dim]({', '.join(sorted(set(names)))})[/]", highlight=False)
    p = bench.producer
    if p is not None:
        console.print(f"load producer: {p.produced:,} records, {len(p.failed)} delivery error(s)"
                      + (f" (first: {p.failed[0]})" if p.failed else "") + (f", {p.left} undelivered" if p.left else ""))
        ok = ok and not p.failed
    if bench.monitor is not None and bench.monitor.errors:
        console.print(f"offset monitor: {bench.monitor.errors} failed read(s) (last: {bench.monitor.last_error})")
    for n in bench.notes:
        console.print(f"[yellow]note:[/] {n}")
    return ok


# --------------------------------------------------------------------------- cleaning up
class Cleanup:
    def __init__(self, console: Console, session_timeout_ms: int):
        self.console = console
        self.session_timeout_ms = session_timeout_ms
        self.hurry = False

    def _warn(self, what: str) -> None:
        self.console.print(f"[yellow]cleanup: {what}[/]")

    def run(self, bench: Bench | None, admin: AdminClient | None, tmp: str | None) -> None:
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def hurry(signum, frame):
            self.hurry = True
            self.console.print("[yellow]cleanup: interrupted again - killing the instances, "
                               "not waiting for the consumer group[/]")

        for s in old:
            signal.signal(s, hurry)
        try:
            if bench is not None:
                for inst in bench.instances:
                    try:
                        if inst.alive:
                            inst.terminate(2 if self.hurry else 60)
                        left = inst.group_alive()
                        if left:
                            for pid in left:
                                try:
                                    os.kill(pid, signal.SIGKILL)
                                except ProcessLookupError:
                                    pass
                    except Exception as e:  # noqa: BLE001 - go on cleaning
                        self._warn(f"could not stop instance {inst.name}: {e}")
                for th in (bench.producer, bench.monitor):
                    if th is not None and th.is_alive():
                        th.stop()
                if admin is not None:
                    try:
                        self.delete_groups(admin, [g for a in bench.app_ids for g in (a, f"{a}-restore")])
                    except Exception as e:  # noqa: BLE001
                        self._warn(f"deleting consumer groups failed: {e}")
                    try:
                        self.delete_topics(admin, bench)
                    except Exception as e:  # noqa: BLE001
                        self._warn(f"deleting topics failed: {e}")
                    self.verify(admin, bench)
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def delete_groups(self, admin: AdminClient, groups: list[str]) -> None:
        """Missing groups are fine; a group with members left (static members leave only after their
        session timeout) is retried until 3 session timeouts + 10 s have passed."""
        deadline = time.monotonic() + 3 * self.session_timeout_ms / 1000 + 10
        pending, told = list(groups), False
        while pending:
            retry = []
            for g, f in admin.delete_consumer_groups(pending, request_timeout=15).items():
                try:
                    f.result()
                except Exception as e:  # noqa: BLE001
                    err = _err(e)
                    code = err.code() if err is not None else None
                    if code == KafkaError.GROUP_ID_NOT_FOUND:
                        continue
                    if code == KafkaError.NON_EMPTY_GROUP and time.monotonic() < deadline and not self.hurry:
                        retry.append(g)
                    elif _unsupported(err):
                        self._warn(f"the broker does not delete consumer groups ({err.str()}); left: {', '.join(pending)}")
                        return
                    else:
                        self._warn(f"could not delete consumer group {g}: {err.str() if err else e}")
            pending = retry
            if pending:
                if not told:
                    self.console.print(f"cleanup: waiting for consumer group {', '.join(pending)} to become empty "
                                       f"(static members leave after their {self.session_timeout_ms} ms session timeout)")
                    told = True
                time.sleep(1)

    def delete_topics(self, admin: AdminClient, bench: Bench) -> None:
        existing = admin.list_topics(timeout=15).topics
        names = list(bench.created_topics) + [t for t in existing for a in bench.app_ids
                                              if t.startswith(f"{a}-") and t.endswith(INTERNAL_SUFFIXES)]
        names = list(dict.fromkeys(names))
        if not names:
            return
        for t, f in admin.delete_topics(names, operation_timeout=30, request_timeout=30).items():
            try:
                f.result()
            except Exception as e:  # noqa: BLE001
                err = _err(e)
                if err is not None and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    continue
                if _unsupported(err):
                    self._warn(f"the broker does not delete topics ({err.str()}); left: {', '.join(names)}")
                    return
                self._warn(f"could not delete topic {t}: {err.str() if err else e}")


    def verify(self, admin: AdminClient, bench: Bench) -> None:
        """Say what is left on the broker (best effort: a topic deletion may take a moment to show)."""
        left = []
        try:
            deadline = time.monotonic() + 10
            while True:
                topics = [t for t in admin.list_topics(timeout=15).topics
                          if t in bench.created_topics or any(t.startswith(f"{a}-") for a in bench.app_ids)]
                if not topics or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            left += [f"topic {t}" for t in topics]
        except Exception as e:  # noqa: BLE001
            self._warn(f"could not list the topics: {e}")
            return
        try:
            groups = admin.list_consumer_groups(request_timeout=15).result()
            mine = {g for a in bench.app_ids for g in (a, f"{a}-restore")}
            left += [f"consumer group {g.group_id}" for g in groups.valid if g.group_id in mine]
        except Exception as e:  # noqa: BLE001
            self.console.print(f"cleanup: could not list the consumer groups ({e})")
        if left:
            self._warn(f"left on the broker: {', '.join(left)}")
        else:
            self.console.print(f"cleanup: no topic or consumer group of this run is left "
                               f"({len(bench.app_ids)} app id(s))")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _session_timeout_ms(configs: list[str]) -> int:
    from streamproc.kafka.config import DEFAULT_SESSION_TIMEOUT_MS

    for kv in configs:
        k, _, v = kv.partition("=")
        if k.strip() in ("session.timeout.ms", "consumer.session.timeout.ms"):
            try:
                return int(v)
            except ValueError:
                pass
    return DEFAULT_SESSION_TIMEOUT_MS


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap-servers", default=os.environ.get("STREAMPROC_BOOTSTRAP_SERVERS"),
                    help="Kafka cluster (default: start the embedded Tansu development broker)")
    ap.add_argument("--kills", type=int, default=5, help="SIGKILL + restart rounds (median reported)")
    ap.add_argument("--joins", type=int, default=3, help="second-instance join rounds (median reported)")
    ap.add_argument("--rate", type=int, default=2000, help="input msgs/s, produced continuously")
    ap.add_argument("--workers", type=int, default=2, help="--workers of each instance")
    ap.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                    help="passed to `streamproc run --config` (repeatable), e.g. consumer.session.timeout.ms=6000")
    ap.add_argument("--timeout", type=float, default=120, help="seconds any one wait may take")
    ap.add_argument("--log-dir", help="keep the instance logs here (default: in the temp dir, removed)")
    args = ap.parse_args(argv)

    console = Console() if sys.stdout.isatty() else Console(width=140)
    signal.signal(signal.SIGTERM, _raise_interrupt)       # SIGTERM cleans up like Ctrl-C
    broker = admin = bench = tmp = None
    bootstrap = args.bootstrap_servers
    code = 1
    try:
        if not bootstrap:
            from streamproc.kafka.devbroker import DevBroker
            broker = DevBroker().start()
            bootstrap = broker.bootstrap
            console.print(f"[yellow]embedded development broker (Tansu) at {bootstrap}[/]")
        broker_name = "Tansu (embedded)" if broker else bootstrap
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
        tmp = tempfile.mkdtemp(prefix="streamproc-recovery-")
        bench = Bench(args, console, bootstrap, admin, tmp, uuid.uuid4().hex[:8])
        console.print(f"app {bench.app_id}: {PARTITIONS} partitions, {args.rate:,} msgs/s, {args.workers} workers "
                      f"per instance, exactly-once; {args.kills} kill(s), {args.joins} join(s)"
                      + (f"; --config {' '.join(args.config)}" if args.config else ""))
        try:
            bench.setup()
            a = bench.new_instance("A0", os.path.join(tmp, "state-A"))
            took = bench.wait_steady("start", a)
            console.print(f"instance A0 committing steadily {time.monotonic() - a.t_start:.1f} s after its start "
                          f"(steady check {took:.1f} s)")
            if args.kills:
                console.rule("SIGKILL + restart")
            for i in range(1, args.kills + 1):
                a = bench.kill_restart(i, a)
            if args.joins:
                console.rule("a second instance joins")
            for j in range(1, args.joins + 1):
                settled = bench.join(j, a)
                if not settled and j < args.joins:
                    a = bench.fresh_app(a, f"join {j}: B's partitions were never handed back to A")
            console.rule("results")
            print_results(console, bench, broker_name)
            with console.status("SIGTERM to the running instance"):
                a.terminate()
            code = 0 if print_sanity(console, bench) else 1
            if code:
                console.print("[red]sanity checks failed (see above)[/]")
        except BenchError as e:
            console.print("[red]measurement failed:[/]")
            console.print(str(e), markup=False, highlight=False, soft_wrap=True)
            console.rule("results so far")
            print_results(console, bench, broker_name)
            for inst in bench.instances:
                if inst.alive:
                    inst.terminate()
            print_sanity(console, bench)
            code = 1
        return code
    except KeyboardInterrupt:
        console.print("[red]interrupted: cleaning up[/]")
        if bench is not None and (bench.kills or bench.joins):
            print_results(console, bench, "partial")
        return 130
    finally:
        try:
            with console.status("cleaning up: instances, consumer groups, topics, temp dir"):
                Cleanup(console, _session_timeout_ms(args.config)).run(bench, admin, tmp)
        finally:
            admin = None
            if broker is not None:
                broker.stop()


if __name__ == "__main__":
    sys.exit(main())
