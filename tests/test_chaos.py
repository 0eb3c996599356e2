"""Chaos test: two ``streamproc run --workers 2`` instances of one app, fed while random faults hit them.

Two instances (separate state dirs, one app id) run a repartitioning windowed aggregation
(``group_by(user)`` -> tumbling 1 s count, sum and the input ids, ``emit="final"``) as real
subprocesses. A producer feeds 4 source partitions while a seeded schedule of faults runs:

* ``kill-instance``: SIGKILL of an instance's whole process group (supervisor and workers);
* ``kill-worker``: SIGKILL of one worker process (its supervisor restarts it);
* ``wipe-instance``: SIGKILL of the whole instance, then ``rm -rf`` of its state dir.

Killed instances are restarted after a short random delay. Afterwards a batch of "closer"
records far in the future, on every source partition, closes every window, and:

* no worker exited except the ones killed (the supervisor's restart message for exactly those
  kills is allowed; "crashed", "Traceback", ``error:`` paragraphs and ERROR logs are not), and
  no instance that was not killed stopped;
* the output holds a result for every (user, window) of the input within a bounded time;
* at-least-once (any broker; the only guarantee Tansu can check, as it delivers records of
  aborted transactions to read_committed consumers): nothing lost. Input processed again after
  a crash is counted again (at-least-once allows it, so "largest count == true count" would
  fail on correct runs), which is why the windows also collect the input ids: some result of
  every (user, window) must hold exactly the window's input ids (duplicates allowed), with a
  count and sum that agree with them. exactly-once (real Kafka only): every (user, window)
  exactly once, with the true count, sum and ids, read with read_committed;
* SIGTERM stops both instances with exit code 0 within a bounded time.

Event time. Stream time is per downstream task and the repartition topic mixes the records of
all source partitions, so a source partition that stalls while its instance restarts would see
its backlog arrive late (dropped by design) if the others ran ahead in event time. The feeder
therefore keeps producing on a wall-clock schedule but lets event time advance only as far as
``LAG_TICKS`` ticks past what the app has committed on every source partition; the window grace
covers that bound, so no record can be late and every (user, window) must be counted. While the
app makes progress, windows keep closing during the run; the closers are produced only once all
input is committed (else a stalled partition's backlog would be late behind them).

``STREAMPROC_CHAOS_SEED`` replays a schedule; the seed and the schedule are printed at the start
and in every failure message. ``STREAMPROC_CHAOS_VERBOSE=1`` runs the instances with ``--verbose``
(debug logs, in the failure message's log digest); ``STREAMPROC_CHAOS_CONFIG="k=v ..."`` adds
``--config`` properties (e.g. ``consumer.debug=cgrp``); ``STREAMPROC_CHAOS_FAULTS=kill-worker,...``
limits the schedule to some fault kinds (to tell which one breaks the app).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

import runtime_helpers as h

pytestmark = pytest.mark.broker

PARTITIONS = 4
USERS = [f"u{i:03d}" for i in range(200)]
WINDOW_MS = 1000
TICK_S = 0.25                 # the feeder produces one tick of records every TICK_S of wall time
TICK_EVENT_MS = 250           # ... spanning at most this much event time
RECORDS_PER_TICK = 160        # ~640 records/s: ~20-25k records over the run
LAG_TICKS = 8                 # event time runs at most this many ticks ahead of the committed input
MAX_STEP_TICKS = 4            # ... and moves at most this many ticks' worth per tick
GRACE_MS = (LAG_TICKS + 2) * TICK_EVENT_MS + 1000     # > the largest possible event-time skew
T0 = 1_700_000_000_000        # first window start (epoch aligned)
CLOSER_USERS = 64             # closers per source partition: every repartition partition gets some
RESTART_DELAY_S = (0.3, 2.0)
FAULT_GAP_S = (3.5, 6.0)
FAULT_KINDS = ("kill-instance", "kill-worker", "wipe-instance")
CLIENT_CONFIG = ["consumer.session.timeout.ms=6000", "consumer.heartbeat.interval.ms=1000"]

TOPOLOGY = '''
from streamproc import Topology, agg, serdes, windows

t = Topology("{app}")
s = t.stream("{src}", key=serdes.String(), value=serdes.Json())
(s.group_by(lambda k, v: v["user"], name="by-user")
  .window(windows.Tumbling("1s", grace={grace}))
  .aggregate(n=agg.count(), total=agg.sum("x"), ids=agg.collect("id"), emit="final", name="user-windows")
  .to("{out}", key=serdes.String(), value=serdes.Json()))
'''

#: The supervisor's message for a worker that was SIGKILLed (supervisor.py ``_crashed``).
RESTART_MSG = re.compile(r"worker (\d+) exited \(killed by SIGKILL\): killed by SIGKILL; restarting in [0-9.]+ s")
WORKER_EXITED = re.compile(r"worker \d+ exited")
BAD = re.compile(r"crashed|Traceback|^\s*error:|\"level\":\"(ERROR|CRITICAL)\"", re.MULTILINE)


class ChaosFailure(AssertionError):
    pass


# ------------------------------------------------------------------------------------------ processes

def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, pgrp) of a process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[1]), int(rest[2])
    except (OSError, IndexError, ValueError):
        return None


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _worker_pids(supervisor: int) -> list[int]:
    """The worker processes of a supervisor: its children started by multiprocessing spawn."""
    out = []
    for pid in _all_pids():
        st = _stat(pid)
        if st is None or st[0] != supervisor:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    out.append(pid)
        except OSError:
            pass
    return sorted(out)


def _group_alive(pgid: int) -> list[int]:
    out = []
    for pid in _all_pids():
        st = _stat(pid)
        if st is not None and st[1] == pgid:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        continue          # a zombie waiting for its parent: dead already
            except OSError:
                continue
            out.append(pid)
    return out


class Launch:
    """One start of an instance: its process (a session of its own) and its stderr log."""

    def __init__(self, argv: list[str], env: dict, log_path: str):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.worker_kills = 0
        self.killed = False       # SIGKILLed by the test (its exit is expected)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def kill_group(self) -> None:
        """SIGKILL the supervisor and its workers (its process group).

        ``killpg`` only while the supervisor is not reaped (its pid, the group id, cannot be
        reused then); afterwards the members still in the group are killed one by one.
        """
        if self.proc.returncode is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            return
        for pid in _group_alive(self.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def close(self) -> None:
        self.kill_group()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self.kill_group()          # workers that outlived their supervisor
        self.log.close()


class Instance:
    def __init__(self, name: str, argv: list[str], state_dir: str, log_dir: str):
        self.name = name
        self.argv = argv
        self.state_dir = state_dir
        self.log_dir = log_dir
        self.launches: list[Launch] = []
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = h.ROOT + os.pathsep + self.env.get("PYTHONPATH", "")

    @property
    def current(self) -> Launch:
        return self.launches[-1]

    def start(self) -> Launch:
        path = os.path.join(self.log_dir, f"{self.name}-{len(self.launches)}.log")
        self.launches.append(Launch(self.argv, self.env, path))
        return self.current

    def kill(self) -> None:
        """SIGKILL the supervisor and its workers; return when none of them is left."""
        launch = self.current
        launch.killed = True
        launch.kill_group()
        launch.proc.wait(10)
        end = time.monotonic() + 10
        while _group_alive(launch.pid):
            if time.monotonic() > end:
                raise ChaosFailure(f"{self.name}: processes {_group_alive(launch.pid)} survived SIGKILL of their group")
            launch.kill_group()
            time.sleep(0.05)

    def workers(self, timeout: float, want: int = 2) -> list[int]:
        end = time.monotonic() + timeout
        while True:
            pids = _worker_pids(self.current.pid)
            if len(pids) >= want or time.monotonic() > end or self.current.proc.poll() is not None:
                return pids
            time.sleep(0.1)

    def close(self) -> None:
        for launch in self.launches:
            launch.close()


# ------------------------------------------------------------------------------------------ input

class Feeder(threading.Thread):
    """Produces a tick of records every TICK_S while the instances run (see the module doc)."""

    def __init__(self, bootstrap: str, topic: str, group: str, seed: int):
        super().__init__(daemon=True, name="chaos-feeder")
        self.bootstrap, self.topic, self.group = bootstrap, topic, group
        self.rnd = random.Random(seed)
        self.stop_evt = threading.Event()
        self.error: BaseException | None = None
        self.truth: dict = {}                # (user, window_start) -> [count, sum, ids]
        self.x_of: dict = {}                 # id -> x
        self.records = 0
        self.base = T0                       # event-time base of the last tick
        self.ticks: list[tuple[int, list[int]]] = []    # (base, end offsets after the tick)
        self.committed = [0] * PARTITIONS
        self.ends = [0] * PARTITIONS
        self._lock = threading.Lock()

    def run(self) -> None:
        from confluent_kafka import Consumer, Producer

        producer = Producer({"bootstrap.servers": self.bootstrap, "partitioner": "murmur2_random",
                             "linger.ms": 5, "enable.idempotence": True})
        offsets = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group,
                            "enable.auto.commit": False})
        try:
            next_at = time.monotonic()
            n = 0
            while not self.stop_evt.is_set():
                committed = committed_offsets(offsets, self.topic)
                with self._lock:
                    self.committed = committed
                # the newest tick whose records are all committed on every partition
                done_base = T0
                for base, ends in self.ticks:
                    if all(c >= e for c, e in zip(committed, ends)):
                        done_base = base
                    else:
                        break
                # as far as the committed input allows (at most MAX_STEP_TICKS ticks at once), never back
                self.base = max(self.base, min(self.base + MAX_STEP_TICKS * TICK_EVENT_MS,
                                               done_base + LAG_TICKS * TICK_EVENT_MS))
                ends = list(self.ends)

                def delivered(err, msg, ends=ends):
                    if err is None:
                        ends[msg.partition()] = max(ends[msg.partition()], msg.offset() + 1)

                for _ in range(RECORDS_PER_TICK):
                    user = self.rnd.choice(USERS)
                    x = self.rnd.randrange(100)
                    ts = self.base + self.rnd.randrange(TICK_EVENT_MS)
                    cell = self.truth.setdefault((user, ts - ts % WINDOW_MS), [0, 0, []])
                    cell[0] += 1
                    cell[1] += x
                    cell[2].append(n)
                    self.x_of[n] = x
                    value = ('{"id":%d,"user":"%s","x":%d}' % (n, user, x)).encode()
                    producer.produce(self.topic, value, f"k{n % 997}".encode(), timestamp=ts,
                                     on_delivery=delivered)
                    n += 1
                left = producer.flush(30)
                if left:
                    raise RuntimeError(f"{left} input records not delivered")
                if ends == self.ends and RECORDS_PER_TICK:
                    raise RuntimeError("no delivery report for a tick of input")
                self.ends = ends
                self.ticks.append((self.base, ends))
                self.records = n
                next_at += TICK_S
                self.stop_evt.wait(max(0.0, next_at - time.monotonic()))
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e
        finally:
            offsets.close()

    def progress(self) -> tuple[list[int], list[int]]:
        with self._lock:
            return list(self.committed), list(self.ends)


def committed_offsets(consumer, topic: str) -> list[int]:
    from confluent_kafka import TopicPartition

    tps = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
    return [max(tp.offset, 0) for tp in sorted(tps, key=lambda tp: tp.partition)]


class OutputReader:
    """Reads the output topic from the start, incrementally, with read_committed."""

    def __init__(self, bootstrap: str, topic: str):
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": h.unique("chaos-reader"),
                           "enable.auto.commit": False, "auto.offset.reset": "earliest",
                           "isolation.level": "read_committed"})
        self.c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        self.results: dict = {}      # (user, window_start) -> [(count, sum, window_end, ids), ...]
        self.bad: list = []

    def poll(self, seconds: float = 0.5) -> int:
        got = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            msgs = self.c.consume(5000, 0.2)
            for m in msgs:
                if m.error() is not None:
                    continue
                got += 1
                try:
                    user = m.key().decode()
                    v = json.loads(m.value())
                    self.results.setdefault((user, v["window_start"]), []).append(
                        (v["n"], v["total"], v["window_end"], v["ids"]))
                except Exception as e:  # noqa: BLE001
                    self.bad.append((m.key(), m.value(), repr(e)))
            if not msgs:
                break
        return got

    def drain(self, quiet_s: float = 2.0, max_s: float = 30.0) -> None:
        end = time.monotonic() + max_s
        last = time.monotonic()
        while time.monotonic() < end and time.monotonic() - last < quiet_s:
            if self.poll(0.5):
                last = time.monotonic()

    def close(self) -> None:
        self.c.close()


# ------------------------------------------------------------------------------------------ checks

def _missing(truth: dict, results: dict) -> list:
    return [k for k in truth if k not in results]


def _value_errors(truth: dict, x_of: dict, results: dict, guarantee: str) -> list:
    """``[(key, what is wrong)]`` for the (user, window)s whose results are wrong.

    exactly-once: exactly one result, with the true count, sum and ids. at-least-once: a record
    processed again after a crash is counted again (that is what at-least-once allows), so
    some result must hold every input id of the window and nothing else (no loss), with a
    count and sum that agree with its ids, duplicates included.
    """
    out = []
    for k, (n, total, ids) in truth.items():
        got = results.get(k)
        if not got:
            continue
        summary = "; ".join(f"(count {g[0]}, sum {g[1]}, {len(g[3])} ids, end {g[2] - k[1]} ms after start)"
                            for g in got[:4])
        want_ids = sorted(ids)
        if guarantee == "exactly-once":
            if len(got) != 1 or (got[0][0], got[0][1], sorted(got[0][3]), got[0][2] - k[1]) != (
                    n, total, want_ids, WINDOW_MS):
                out.append((k, f"true (count {n}, sum {total}); {len(got)} result(s): {summary}"))
            continue
        want = set(ids)
        if any(set(g[3]) == want and g[0] == len(g[3]) and g[1] == sum(x_of[i] for i in g[3])
               and g[2] - k[1] == WINDOW_MS for g in got):
            continue
        seen = set().union(*(set(g[3]) for g in got))
        out.append((k, f"true (count {n}, sum {total}); lost ids {sorted(want - seen)[:10]}, foreign ids "
                       f"{sorted(seen - want)[:10]}; {len(got)} result(s): {summary}"))
    return out


def _duplicates(truth: dict, results: dict) -> int:
    """Records counted more than once in the largest result of each window (at-least-once)."""
    return sum(max(g[0] for g in results[k]) - n for k, (n, _, _) in truth.items() if k in results)


def _log_problems(inst: Instance) -> list[str]:
    """Unexpected lines in an instance's logs: errors, and worker exits the test did not cause."""
    problems = []
    for i, launch in enumerate(inst.launches):
        text = launch.text()
        where = f"{inst.name} launch {i} (pid {launch.pid})"
        restarts = [ln for ln in text.splitlines() if RESTART_MSG.search(ln)]
        if len(restarts) != launch.worker_kills:
            problems.append(f"{where}: {len(restarts)} worker restart message(s) for {launch.worker_kills} "
                            f"worker kill(s)")
        for ln in text.splitlines():
            if RESTART_MSG.search(ln):
                continue
            if BAD.search(ln) or WORKER_EXITED.search(ln):
                problems.append(f"{where}: {ln.strip()}")
    return problems


def _log_digest(inst: Instance, limit: int = 40) -> str:
    out = []
    for i, launch in enumerate(inst.launches):
        lines = [ln for ln in launch.text().splitlines() if ln.strip()]
        rc = launch.proc.poll()
        out.append(f"--- {inst.name} launch {i} (pid {launch.pid}, exit {rc}, killed by the test: "
                   f"{launch.killed}, worker kills {launch.worker_kills}), {len(lines)} line(s):")
        if len(lines) > limit:
            out.append(f"    ... {len(lines) - limit} earlier line(s) left out")
        out.extend("    " + ln[:600] for ln in lines[-limit:])
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ the test

def _plan_faults(rnd: random.Random) -> list[dict]:
    allowed = [k.strip() for k in os.environ.get("STREAMPROC_CHAOS_FAULTS", ",".join(FAULT_KINDS)).split(",")]
    assert allowed and set(allowed) <= set(FAULT_KINDS), f"STREAMPROC_CHAOS_FAULTS: one or more of {FAULT_KINDS}"
    kinds = allowed + [rnd.choice(allowed) for _ in range(5 - len(allowed))]
    rnd.shuffle(kinds)
    at = 0.0
    plan = []
    for kind in kinds:
        at += rnd.uniform(*FAULT_GAP_S)
        plan.append({"at": round(at, 2), "kind": kind, "instance": rnd.randrange(2),
                     "delay": round(rnd.uniform(*RESTART_DELAY_S), 2), "pick": rnd.random()})
    return plan


def _chaos(tmp_path, bootstrap: str, guarantee: str, extra_config: tuple = ()) -> None:
    seed = int(os.environ.get("STREAMPROC_CHAOS_SEED") or random.SystemRandom().randrange(1, 10**9))
    rnd = random.Random(seed)
    faults = _plan_faults(rnd)
    log: list[str] = []           # what happened, when
    t_start = time.monotonic()

    def note(msg: str) -> None:
        committed, ends = feeder.progress()
        line = (f"[{time.monotonic() - t_start:6.1f}s] {msg}  (input committed {sum(committed)} of {sum(ends)}, "
                f"event time {feeder.base - T0} ms)")
        log.append(line)
        print("chaos:", line, flush=True)

    print(f"\nchaos: seed {seed} ({guarantee}); set STREAMPROC_CHAOS_SEED={seed} to replay", flush=True)
    for f in faults:
        print(f"chaos: planned {f}", flush=True)

    app = h.unique("chaos")
    names = {"app": app, "src": f"{app}-in", "out": f"{app}-out", "grace": GRACE_MS}
    ref = h.write_topology(tmp_path / f"{app.replace('-', '_')}.py", TOPOLOGY.format(**names))
    h.create(bootstrap, [names["src"], names["out"]], PARTITIONS)

    def argv(state_dir: str) -> list[str]:
        verbose = ["--verbose"] if os.environ.get("STREAMPROC_CHAOS_VERBOSE") else []
        cmd = [sys.executable, "-m", "streamproc", *verbose, "run", ref, "--workers", "2", "--state-dir", state_dir,
               "--bootstrap-servers", bootstrap, "--guarantee", guarantee]
        for c in list(CLIENT_CONFIG) + list(extra_config) + os.environ.get("STREAMPROC_CHAOS_CONFIG", "").split():
            cmd += ["--config", c]
        return cmd

    log_dir = str(tmp_path / "logs")
    os.makedirs(log_dir)
    instances = [Instance(f"instance-{i}", argv(str(tmp_path / f"state-{i}")), str(tmp_path / f"state-{i}"),
                          log_dir) for i in range(2)]
    feeder = Feeder(bootstrap, names["src"], app, seed)
    reader = None
    restarts: list[tuple[float, Instance]] = []     # (when, instance) pending restarts

    def fail(what: str) -> None:
        digest = "\n".join(_log_digest(i) for i in instances)
        raise ChaosFailure(
            f"{what}\n\nseed {seed} ({guarantee}; STREAMPROC_CHAOS_SEED={seed} replays the schedule)\n"
            f"planned faults: {faults}\nwhat happened:\n  " + "\n  ".join(log) + f"\n\nlogs:\n{digest}")

    def check_running(skip: Instance | None = None) -> None:
        for inst in instances:
            if inst is skip or any(r[1] is inst for r in restarts):
                continue
            rc = inst.current.proc.poll()
            if rc is not None:
                fail(f"{inst.name} stopped by itself with exit code {rc} (it was not killed)")
        if feeder.error is not None:
            fail(f"the feeder failed: {feeder.error!r}")

    def do_restarts(now: float) -> None:
        for item in list(restarts):
            if item[0] <= now:
                restarts.remove(item)
                launch = item[1].start()
                note(f"restarted {item[1].name} (pid {launch.pid})")

    last_note = [0.0]

    def wait(seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            if time.monotonic() - last_note[0] > 5:
                last_note[0] = time.monotonic()
                note("progress")
            do_restarts(time.monotonic())
            check_running()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.1, left))

    try:
        for inst in instances:
            launch = inst.start()
            note(f"started {inst.name} (pid {launch.pid})")
        feeder.start()
        note("feeding")
        # the schedule starts once the app commits input on every partition
        end = time.monotonic() + 60
        while not all(feeder.progress()[0]):
            if time.monotonic() > end:
                fail("the app did not commit input on every partition within 60 s of the start")
            wait(0.2)
        note(f"app running: committed {feeder.progress()[0]}")

        t_faults = time.monotonic()
        for f in faults:
            wait(t_faults + f["at"] - time.monotonic())
            inst = instances[f["instance"]]
            if any(r[1] is inst for r in restarts):           # still down: restart it first
                restarts[:] = [r for r in restarts if r[1] is not inst]
                inst.start()
                note(f"restarted {inst.name} early (pid {inst.current.pid})")
            if f["kind"] == "kill-worker":
                pids = inst.workers(timeout=20)
                if not pids:
                    fail(f"{inst.name} has no worker process to kill")
                victim = pids[int(f["pick"] * len(pids))]
                os.kill(victim, signal.SIGKILL)
                inst.current.worker_kills += 1
                note(f"SIGKILL worker pid {victim} of {inst.name} (workers {pids})")
                continue
            inst.kill()
            what = "SIGKILL"
            if f["kind"] == "wipe-instance":
                shutil.rmtree(inst.state_dir, ignore_errors=True)
                what += " + rm -rf state dir of"
            note(f"{what} {inst.name} (pid {inst.current.pid}); restart in {f['delay']} s")
            restarts.append((time.monotonic() + f["delay"], inst))
        wait(max(r[0] for r in restarts) - time.monotonic() + 0.1 if restarts else 0)
        wait(2.0)
        feeder.stop_evt.set()
        feeder.join(60)
        if feeder.is_alive() or feeder.error is not None:
            fail(f"the feeder did not finish: {feeder.error!r}")
        note(f"fed {feeder.records} records, {len(feeder.truth)} (user, window)s, event time up to "
             f"{feeder.base + TICK_EVENT_MS - T0} ms")

        # every input record committed (so on its way through the repartition topic), then the closers
        from confluent_kafka import Consumer

        offsets = Consumer({"bootstrap.servers": bootstrap, "group.id": app, "enable.auto.commit": False})
        try:
            end = time.monotonic() + 60
            while True:
                committed = committed_offsets(offsets, names["src"])
                with feeder._lock:
                    feeder.committed = committed
                if all(c >= e for c, e in zip(committed, feeder.ends)):
                    break
                if time.monotonic() > end:
                    fail(f"the app did not commit all input within 60 s: committed {committed}, "
                         f"end offsets {feeder.ends}")
                wait(0.5)
        finally:
            offsets.close()
        note(f"all input committed: {committed}")
        truth = feeder.truth
        reader = OutputReader(bootstrap, names["out"])
        reader.drain(quiet_s=1.0, max_s=10)
        note(f"before the closers: {sum(len(v) for v in reader.results.values())} results for "
             f"{len(reader.results)} of {len(truth)} (user, window)s")
        closer_ts = feeder.base + TICK_EVENT_MS + GRACE_MS + 10 * WINDOW_MS
        from confluent_kafka import Producer

        p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
        for part in range(PARTITIONS):
            for j in range(CLOSER_USERS):
                p.produce(names["src"], b'{"id":-1,"user":"~closer-%d","x":0}' % j, b"closer",
                          partition=part, timestamp=closer_ts)
        assert p.flush(30) == 0
        note(f"produced {PARTITIONS * CLOSER_USERS} closer records at event time {closer_ts - T0} ms")

        # the run completes: every (user, window) in the output
        end = time.monotonic() + 60
        while True:
            reader.poll(1.0)
            missing = _missing(truth, reader.results)
            wrong = _value_errors(truth, feeder.x_of, reader.results, guarantee)
            if not missing and not wrong:
                break
            if time.monotonic() > end:
                break
            check_running()
        note(f"output: {sum(len(v) for v in reader.results.values())} results for "
             f"{len(reader.results)} (user, window)s; missing {len(missing)}, wrong {len(wrong)}, "
             f"records counted twice {_duplicates(truth, reader.results)}")

        # stop both instances
        for inst in instances:
            inst.current.proc.send_signal(signal.SIGTERM)
        note("SIGTERM to both instances")
        codes = {}
        stop_by = time.monotonic() + 45
        for inst in instances:
            try:
                codes[inst.name] = inst.current.proc.wait(max(1.0, stop_by - time.monotonic()))
            except subprocess.TimeoutExpired:
                codes[inst.name] = "still running 45 s after SIGTERM"
        note(f"exit codes {codes}")
        reader.drain(quiet_s=2.0, max_s=20)
        results = reader.results
        with open(tmp_path / "chaos-results.json", "w") as f:     # for a post-mortem
            json.dump({"truth": [[*k, *v] for k, v in truth.items()],
                       "results": [[*k, g] for k, v in results.items() for g in v]}, f)

        problems = []
        for inst in instances:
            problems += _log_problems(inst)
        if problems:
            fail("unexpected worker exits or errors in the instances' output:\n  " + "\n  ".join(problems))
        missing = _missing(truth, results)
        if missing:
            fail(f"{len(missing)} of {len(truth)} (user, window)s have no result within 60 s after the closers "
                 f"(e.g. {sorted(missing)[:10]}; windows missing per start: "
                 f"{_per_window(missing)})")
        wrong = _value_errors(truth, feeder.x_of, results, guarantee)
        if wrong:
            what = ("not exactly one result with the true count, sum and ids" if guarantee == "exactly-once"
                    else "no result holds exactly the window's input ids with a count and sum that agree")
            fail(f"{len(wrong)} of {len(truth)} (user, window)s: {what}; e.g.\n  "
                 + "\n  ".join(f"{k}: {w}" for k, w in sorted(wrong)[:10]))
        extra = [k for k in results if k not in truth and not k[0].startswith("~closer")]
        if extra or reader.bad:
            fail(f"results for (user, window)s not in the input: {extra[:10]}; undecodable: {reader.bad[:3]}")
        for inst in instances:
            if codes[inst.name] != 0:
                fail(f"{inst.name} did not exit 0 on SIGTERM: {codes[inst.name]}")
        note(f"passed in {time.monotonic() - t_start:.1f} s")
    finally:
        feeder.stop_evt.set()
        for inst in instances:
            inst.close()
        if reader is not None:
            reader.close()
        feeder.join(30)


def _per_window(keys) -> dict:
    from collections import Counter

    return dict(sorted(Counter((w - T0) // WINDOW_MS for _, w in keys).items())[:20])


def test_chaos_at_least_once_loses_nothing(tmp_path, kafka):
    """Any broker (Tansu included): at-least-once, every (user, window) with its true count and sum.

    On Tansu the instances use dynamic membership (``consumer.group.instance.id=``): Tansu never
    expires a dead static member that was the group's leader, so the group stays in a rebalance for
    good after a SIGKILL (reproduced with plain confluent-kafka consumers, no streamproc); with
    dynamic members it recovers. On real Kafka the runtime's static membership is used."""
    extra = ("consumer.group.instance.id=",) if kafka[1] == "tansu" else ()
    _chaos(tmp_path, kafka[0], "at-least-once", extra)


@pytest.mark.real_kafka("Tansu delivers records of aborted transactions to read_committed consumers")
def test_chaos_exactly_once(tmp_path, kafka):
    """Real Kafka: exactly-once, every (user, window) exactly once with its true count and sum."""
    _chaos(tmp_path, kafka[0], "exactly-once")
