"""Join throughput through the compiled task path: stream-table and stream-stream joins.

Standalone, in-process, no broker. The topology is compiled (``compile_topology``) and its task
(``Task(subtopology, 0, backend)``) is fed ``RawBatch``es of serialized bytes with
``Task.process_many``, as the Kafka worker feeds it; a checkpoint (``state.changes()`` +
``state.apply()``, no changelog produced) runs every ``--checkpoint-every`` polls and once at the
end. Memory backend (``MemoryBackend``) and RocksDB (``RocksDBBackend.for_task`` in a temporary
directory). String keys, Json values.

stream-table (``orders.join(customers, joiner)``, inner)
    The task first loads the table (``--table-keys`` records of the table topic, in polls of
    ``--batch``; reported as its own row, "table load"), then ``--records`` stream records whose
    keys are drawn at random from the table's keys. The joiner builds a small dict out of both
    sides. Every record matches: results = records.
    Targets (issue): >= 1,000,000 records/s on memory, >= 400,000 records/s on RocksDB.

stream-stream (``left.join(right, joiner, window=JoinWindow(--window, grace=--grace))``, inner and left)
    ``--records`` records per side; key ``k<i>`` once on each side, the left one at
    ``i * 1000 / --rate`` ms, the right one within ``--jitter`` ms of it: one match per pair, time
    increases, so windows close and the join's stores stay bounded (about ``(window + grace) * rate``
    records per side). Each poll holds ``--batch`` records of each side: one ``process_many`` of
    both (the worker's path when a poll holds both topics: merged into timestamp-ordered runs), or
    with ``--feed sides`` one ``process`` per side. records/s counts the records of both sides.
    Target (issue): >= 200,000 records/s.

Baselines, for the split between serialization and the join itself:
    * "stream->to": the same input records through a plain ``stream(...).to(...)`` task (decode,
      stream time, sink encode: the task path without the join);
    * column "serde": the CPU cost of just the serde calls of the case, measured apart on the first
      ``10 * --batch`` records of each input (the warm-up run, which keeps its results):
      ``deserialize_many`` of the input keys and values plus ``serialize_many`` of the output keys
      and values that run produced; "rest" = CPU - serde = the join and the task machinery
      around it.

Each case runs ``--repeat`` times (fresh task and backend each time); the table shows the best
wall time and the best CPU time (``time.process_time``, all threads: RocksDB's background work
counts). "ckpt" is the share of the wall time spent in checkpoints; "faults" the minor page faults
per record (``getrusage``): glibc gives freed heap memory back to the OS, and each new
``orjson.dumps`` result may then fault a page in (about 2 µs here; ``MALLOC_TRIM_THRESHOLD_=1000000000``
in the environment shows the difference). The results are counted and check-summed per poll, then
dropped (that bookkeeping is timed apart and not counted); the results column checks that every case
produced what it should (and the same on both backends: count and checksum). records/s is wall
time: on a shared machine it varies more than CPU µs/record, the figure to compare versions by.

    python benchmarks/joins.py [--records 1000000] [--backend memory|rocksdb|both]
    python benchmarks/joins.py --quick          # smoke run: 100k records, 10k table keys
    python benchmarks/joins.py --cases ss --how left --backend rocksdb --profile

``--profile`` then runs the slowest case once more under cProfile and prints the top functions by
own time; ``--json PATH`` also writes every case's figures as JSON (what ``benchmarks/suite.py``
reads). Like ``sliding_hot_key.py`` it imports ``streamproc`` from ``--repo`` (default: the
current directory if it holds a ``streamproc`` package, else this file's repository), so the same
script measures another checkout: ``cd /tmp/base && python /work/main/benchmarks/joins.py``.
"""
from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import pstats
import resource
import shutil
import sys
import tempfile
import time
import zlib


def _repo_from_argv() -> str:
    for i, a in enumerate(sys.argv):
        if a == "--repo" and i + 1 < len(sys.argv):
            return os.path.abspath(sys.argv[i + 1])
        if a.startswith("--repo="):
            return os.path.abspath(a.split("=", 1)[1])
    if os.path.isdir(os.path.join(os.getcwd(), "streamproc")):
        return os.getcwd()
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


REPO = _repo_from_argv()
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import orjson  # noqa: E402

import streamproc  # noqa: E402
from streamproc import Topology, serdes, windows  # noqa: E402
from streamproc.operators import RawBatch  # noqa: E402
from streamproc.plan import compile_topology  # noqa: E402
from streamproc.runtime.engine.task import Task  # noqa: E402
from streamproc.state import MemoryBackend  # noqa: E402

TARGETS = {("st", "memory"): 1_000_000, ("st", "rocksdb"): 400_000,
           ("ss", "memory"): 200_000, ("ss", "rocksdb"): 200_000}
BASE_TS = 1_700_000_000_000


# --------------------------------------------------------------------------- topologies


def enrich(order, customer):
    """The stream-table joiner: a small dict out of both sides."""
    return {"order_id": order["order_id"], "amount": order["amount"],
            "customer": customer["name"], "tier": customer["tier"]}


def pay(order, payment):
    """The stream-stream joiner (``payment`` is None for an unmatched left record under how="left")."""
    return {"order_id": order["order_id"], "amount": order["amount"],
            "paid": None if payment is None else payment["paid"]}


def st_topology():
    t = Topology("bench-st")
    orders = t.stream("orders", key=serdes.String(), value=serdes.Json())
    customers = t.table("customers", key=serdes.String(), value=serdes.Json(), name="customers")
    orders.join(customers, enrich).to("out", value=serdes.Json())
    return t


def ss_topology(how: str, window: int, grace: int):
    t = Topology("bench-ss")
    left = t.stream("left", key=serdes.String(), value=serdes.Json())
    right = t.stream("right", key=serdes.String(), value=serdes.Json())
    left.join(right, pay, how=how, window=windows.JoinWindow(window, grace=grace), name="j").to(
        "out", value=serdes.Json())
    return t


def passthrough_topology(topics):
    """The baseline: the input topics (merged, so one task reads them all, as the join's does) straight
    to ``out``, same serdes, no join."""
    t = Topology("bench-base")
    streams = [t.stream(topic, key=serdes.String(), value=serdes.Json()) for topic in topics]
    merged = streams[0]
    for other in streams[1:]:
        merged = merged.merge(other)
    merged.to("out", value=serdes.Json())
    return t


# --------------------------------------------------------------------------- inputs


class Inputs:
    """Serialized records per topic, as they come off Kafka: ``{topic: (keys, values, timestamps)}``."""

    def __init__(self):
        self.topics: dict[str, tuple[list, list, list]] = {}

    def add(self, topic, keys, values, ts):
        """Each record's bytes copied to an exact-size ``bytes``, as a Kafka consumer hands them over:
        an ``orjson.dumps`` result keeps its ~4 KB allocation, and 200k of them held for the whole run
        would put ~800 MB of the benchmark's own inputs in the peak RSS and spread the heap."""
        ks, vs = serdes.String(), serdes.Json()
        self.topics[topic] = ([bytes(memoryview(ks.serialize(k))) for k in keys],
                              [bytes(memoryview(vs.serialize(v))) for v in values], [int(t) for t in ts])

    def n(self, topic) -> int:
        return len(self.topics[topic][0])

    def head(self, n: int) -> "Inputs":
        """The first ``n`` records of each topic (a warm-up run)."""
        h = Inputs()
        h.topics = {t: tuple(col[:n] for col in cols) for t, cols in self.topics.items()}
        return h


def st_inputs(n: int, table_keys: int, seed: int = 7) -> Inputs:
    rng = np.random.default_rng(seed)
    tiers = ["gold", "silver", "bronze"]
    inp = Inputs()
    inp.add("customers", [f"cust-{i}" for i in range(table_keys)],
            [{"name": f"customer {i}", "tier": tiers[i % 3]} for i in range(table_keys)],
            BASE_TS + np.arange(table_keys) // 10)
    t0 = BASE_TS + table_keys // 10 + 1
    inp.add("orders", [f"cust-{c}" for c in rng.integers(0, table_keys, n).tolist()],
            [{"order_id": i, "amount": a, "product": "p-17"} for i, a in enumerate(rng.integers(1, 1000, n).tolist())],
            t0 + np.arange(n) // 10)
    return inp


def ss_inputs(n: int, rate: int, jitter: int, seed: int = 7) -> Inputs:
    rng = np.random.default_rng(seed)
    lt = BASE_TS + np.arange(n, dtype=np.int64) * 1000 // rate
    rt = lt + rng.integers(-jitter, jitter + 1, n)
    keys = [f"k{i}" for i in range(n)]
    inp = Inputs()
    inp.add("left", keys, [{"order_id": i, "amount": a, "product": "p-17"}
                           for i, a in enumerate(rng.integers(1, 1000, n).tolist())], lt)
    inp.add("right", keys, [{"order_id": i, "paid": p} for i, p in enumerate(rng.integers(1, 1000, n).tolist())], rt)
    return inp


# --------------------------------------------------------------------------- driving a task


class Run:
    """What one timed run measured. Results are counted and check-summed as they come (then dropped,
    as the worker drops them once produced); ``keep`` also keeps them (for the serde measurement)."""

    def __init__(self, records: int, keep: bool = False):
        self.records = records
        self.wall = self.cpu = self.ckpt = 0.0
        self.faults = 0
        self.own_wall = self.own_cpu = 0.0      # the benchmark's own work (checksums), not counted
        self.results = 0
        self.checksum = 0
        self.keep = keep
        self.out_keys: list = []
        self.out_values: list = []
        self.metrics: dict = {}

    def add(self, kb: list, vb: list) -> None:
        self.results += len(vb)
        self.checksum = (self.checksum + sum(map(zlib.crc32, vb))) % 1_000_000_007
        if self.keep:              # exact-size copies (see Inputs.add): kept through the timed runs
            self.out_keys += [None if b is None else bytes(memoryview(b)) for b in kb]
            self.out_values += [None if b is None else bytes(memoryview(b)) for b in vb]


def make_backend(kind: str, sub, tmp: str):
    if kind == "memory":
        return MemoryBackend()
    from streamproc.state.rocksdb import RocksDBBackend
    return RocksDBBackend.for_task(tempfile.mkdtemp(dir=tmp), sub)


def checkpoint(task) -> None:
    task.state.changes()
    task.state.apply()


def feed(task, inp: Inputs, topics: list[str], batch: int, every: int, mode: str, run: Run) -> None:
    """Polls of ``batch`` records of each of ``topics`` (``mode`` "merged": one ``process_many`` per
    poll; "sides": one ``process`` per topic); a checkpoint every ``every`` polls and at the end."""
    n = max(inp.n(t) for t in topics)
    cols = [(t,) + inp.topics[t] for t in topics]
    ckpt = 0.0
    polls = 0
    for i in range(0, n, batch):
        j = i + batch
        raws = [RawBatch(t, 0, ks[i:j], vs[i:j], ts[i:j], list(range(i, min(j, len(ks)))))
                for t, ks, vs, ts in cols if i < len(ks)]
        if mode == "merged":
            produced = task.process_many(raws)
        else:
            produced = [p for raw in raws for p in task.process(raw)]
        w, c = time.perf_counter(), time.process_time()
        for _topic, kb, vb, _ts in produced:
            run.add(kb, vb)
        run.own_wall += time.perf_counter() - w
        run.own_cpu += time.process_time() - c
        polls += 1
        if polls % every == 0:
            c = time.perf_counter()
            checkpoint(task)
            ckpt += time.perf_counter() - c
    c = time.perf_counter()
    checkpoint(task)
    run.ckpt += ckpt + time.perf_counter() - c


def timed(fn, run: Run) -> Run:
    gc.collect()
    f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    w, c = time.perf_counter(), time.process_time()
    fn()
    run.wall = time.perf_counter() - w - run.own_wall
    run.cpu = time.process_time() - c - run.own_cpu
    run.faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f
    return run


def run_case(plan, backend_kind: str, inp: Inputs, topics: list[str], args, tmp: str,
             table_topic: str | None = None, keep: bool = False) -> tuple[Run, Run | None]:
    """One run: a fresh task (and backend); the table loaded first if ``table_topic``; then ``topics``
    timed. Returns (the timed run, the table load's run or None)."""
    sub = plan.subtopologies[0]
    backend = make_backend(backend_kind, sub, tmp)
    try:
        task = Task(sub, 0, backend)
        load = None
        if table_topic is not None:
            load = Run(inp.n(table_topic))
            timed(lambda: feed(task, inp, [table_topic], args.batch, args.checkpoint_every, "merged", load), load)
        run = Run(sum(inp.n(t) for t in topics), keep)
        timed(lambda: feed(task, inp, topics, args.batch, args.checkpoint_every, args.feed, run), run)
        run.metrics = dict(task.metrics)
        return run, load
    finally:
        backend.close()


def serde_cpu(inp: Inputs, topics: list[str], run: Run, batch: int, repeat: int) -> float:
    """CPU seconds per input record of just the serde calls of a run (best of ``repeat``): decode its
    inputs and encode its outputs, ``batch`` records at a time, each chunk's results dropped before
    the next, as the task and the worker do (keeping them all would change what the allocator does)."""
    ks, vs = serdes.String(), serdes.Json()
    out_k = ks.deserialize_many(run.out_keys)
    out_v = vs.deserialize_many(run.out_values)
    chunks = [inp.topics[t][:2] for t in topics] + [(out_k, out_v, "out")]
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        c = time.process_time()
        for keys, values, *out in chunks:
            dec = not out
            for i in range(0, len(keys), batch):
                if dec:
                    a, b = ks.deserialize_many(keys[i:i + batch]), vs.deserialize_many(values[i:i + batch])
                else:
                    a, b = ks.serialize_many(keys[i:i + batch]), vs.serialize_many(values[i:i + batch])
                del a, b
        best = min(best, time.process_time() - c)
    return best / run.records


# --------------------------------------------------------------------------- cases


class Case:
    def __init__(self, family: str, label: str, plan, inputs: Inputs, topics: list[str], backend: str,
                 table_topic: str | None = None, expect: int | None = None):
        self.family, self.label, self.plan, self.inputs, self.topics = family, label, plan, inputs, topics
        self.backend, self.table_topic, self.expect = backend, table_topic, expect

    def run(self, args, tmp, inputs: Inputs | None = None, keep: bool = False):
        return run_case(self.plan, self.backend, inputs or self.inputs, self.topics, args, tmp, self.table_topic, keep)


def us(seconds: float, records: int) -> float:
    return seconds * 1e6 / records


HEADER = (f"{'case':26} {'backend':8} {'records':>10} {'results':>10} {'late':>5} {'records/s':>11} "
          f"{'CPU µs/rec':>10} {'serde':>6} {'rest':>6} {'ckpt':>5} {'faults':>6} {'target':>18}  checksum")


def row(label, backend, records, results, late, wall, cpu, serde, ckpt, faults, target, checksum) -> str:
    rate = records / wall
    tgt = "" if target is None else f"{target:>9,} {'ok' if rate >= target else 'MISS'} {rate / target:4.2f}x"
    s = f"{us(serde, records):6.2f}" if serde is not None else f"{'':6}"
    rest = f"{us(cpu - serde, records):6.2f}" if serde is not None else f"{'':6}"
    results = f"{results:,}" if isinstance(results, int) else results
    return (f"{label:26} {backend:8} {records:>10,} {results:>10} {late:>5} {rate:>11,.0f} "
            f"{us(cpu, records):>10.2f} {s} {rest} {100 * ckpt / wall:4.0f}% {faults / records:6.2f} {tgt:>18}  {checksum}")


def build_cases(family: str, args, backends: list[str]) -> tuple[str, list[Case]]:
    """The heading and cases of ``family`` ("st" or "ss"; ValueError for another)."""
    if family == "st":
        heading = f"\nstream-table join, inner: {args.records:,} stream records, {args.table_keys:,} table keys"
        inp = st_inputs(args.records, args.table_keys)
        cases = []
        if not args.no_baseline:
            cases += [Case("base", "stream->to (baseline)", compile_topology(passthrough_topology(["orders"])),
                           inp, ["orders"], b, expect=args.records) for b in backends]
        cases += [Case("st", "stream-table inner", compile_topology(st_topology()), inp, ["orders"], b,
                       table_topic="customers", expect=args.records) for b in backends]
        return heading, cases
    if family == "ss":
        heading = (f"\nstream-stream join: {args.records:,} records per side, JoinWindow({args.window} ms, "
                   f"grace={args.grace} ms), {args.rate:,} records/s of event time per side, right within "
                   f"+-{args.jitter} ms of left, feed: {args.feed}")
        inp = ss_inputs(args.records, args.rate, args.jitter)
        cases = []
        if not args.no_baseline:
            cases += [Case("base", "stream->to x2 (baseline)",
                           compile_topology(passthrough_topology(["left", "right"])), inp,
                           ["left", "right"], b, expect=2 * args.records) for b in backends]
        for how in args.how.split(","):
            cases += [Case("ss", f"stream-stream {how}",
                           compile_topology(ss_topology(how, args.window, args.grace)), inp,
                           ["left", "right"], b, expect=args.records) for b in backends]
        return heading, cases
    raise ValueError(f"unknown case {family!r} (st, ss)")


def _keep_best(best: Run | None, run: Run | None) -> Run | None:
    """``best`` with the best (lowest) wall, CPU, checkpoint time and faults of ``run`` folded in."""
    if run is None:
        return best
    if best is None:
        return run
    best.wall, best.cpu = min(best.wall, run.wall), min(best.cpu, run.cpu)
    best.ckpt, best.faults = min(best.ckpt, run.ckpt), min(best.faults, run.faults)
    return best


def run_family(cases: list[Case], args, tmp: str, found: list[dict]) -> tuple[bool, tuple | None]:
    """Run and print ``cases`` (each ``args.repeat`` times, the best kept); each case's figures are appended
    to ``found``. Returns (every case produced what it should, the slowest non-baseline case as
    ``(cpu µs/record, case)``)."""
    print(HEADER)
    print("-" * len(HEADER))
    ok = True
    slowest = None
    sums: dict = {}
    for case in cases:
        best = load_best = None
        head = case.inputs.head(10 * args.batch)        # warm-up (not reported), kept for the serde split
        sample, _ = case.run(args, tmp, head, keep=True)
        for _ in range(args.repeat):
            run, load = case.run(args, tmp)
            best, load_best = _keep_best(best, run), _keep_best(load_best, load)
            del run, load
        if load_best is not None:
            print(row("  table load", case.backend, load_best.records, "-", "", load_best.wall, load_best.cpu,
                      None, load_best.ckpt, load_best.faults, None, ""), flush=True)
        serde = serde_cpu(head, case.topics, sample, args.batch, max(5, args.repeat)) * best.records
        late = best.metrics.get("late_records", 0)
        checksum = best.checksum
        good = best.results == case.expect and not late
        prev = sums.setdefault(case.label, (best.results, checksum))
        good &= prev == (best.results, checksum)
        ok &= good
        target = TARGETS.get((case.family, case.backend))
        print(row(case.label, case.backend, best.records, best.results, late, best.wall, best.cpu,
                  serde, best.ckpt, best.faults, target, f"{checksum}{'' if good else '  <- WRONG'}"), flush=True)
        found.append(figures(case, best, load_best, serde, late, good))
        if case.family != "base" and (slowest is None or us(best.cpu, best.records) > slowest[0]):
            slowest = (us(best.cpu, best.records), case)
        del sample, head
    print("results as expected (one per pair / per order, same on every backend): "
          f"{'yes' if ok else 'NO'}")
    return ok, slowest


def figures(case: Case, best: Run, load: Run | None, serde: float, late: int, good: bool) -> dict:
    """One case's figures for ``--json``."""
    out = {"family": case.family, "label": case.label, "backend": case.backend, "records": best.records,
           "results": best.results, "late": late, "ok": bool(good), "wall": best.wall, "cpu": best.cpu,
           "rate": best.records / best.wall, "cpu_us": us(best.cpu, best.records),
           "serde_us": us(serde, best.records), "ckpt": best.ckpt, "faults": best.faults,
           "target": TARGETS.get((case.family, case.backend)), "checksum": best.checksum}
    if load is not None:
        out["table_load"] = {"records": load.records, "wall": load.wall, "cpu": load.cpu,
                             "rate": load.records / load.wall}
    return out


def profile(case: Case, cpu_us: float, args, tmp: str) -> None:
    print(f"\nprofile of the slowest case: {case.label} on {case.backend} "
          f"({cpu_us:.2f} CPU µs/record), top {args.profile_top} by own time")
    prof = cProfile.Profile()
    prof.enable()
    case.run(args, tmp)
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(args.profile_top)
    print(s.getvalue())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", default=REPO, help="repository whose streamproc to import (default: cwd or this repo)")
    ap.add_argument("--records", type=int, default=1_000_000,
                    help="stream records (stream-table) / records per side (stream-stream)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 100k records and 10k table keys (unless given explicitly)")
    ap.add_argument("--backend", default="both", choices=["memory", "rocksdb", "both"])
    ap.add_argument("--cases", default="st,ss", help="st: stream-table, ss: stream-stream (comma separated)")
    ap.add_argument("--how", default="inner,left", help="stream-stream join kinds (comma separated)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the stream->to baseline rows")
    ap.add_argument("--table-keys", type=int, default=None, help="table rows of the stream-table join (default 100k)")
    ap.add_argument("--batch", type=int, default=10_000, help="records per poll (per side for stream-stream)")
    ap.add_argument("--checkpoint-every", type=int, default=10,
                    help="polls per checkpoint (10 x 10k records ~ a 100 ms commit interval at 1M records/s)")
    ap.add_argument("--feed", default="merged", choices=["merged", "sides"],
                    help="stream-stream polls: merged = one process_many of both sides (the worker's path); "
                         "sides = one process per side")
    ap.add_argument("--window", type=int, default=5000, help="stream-stream JoinWindow before = after, ms")
    ap.add_argument("--grace", type=int, default=1000, help="stream-stream grace, ms")
    ap.add_argument("--rate", type=int, default=10_000, help="stream-stream event-time records per second per side")
    ap.add_argument("--jitter", type=int, default=1000, help="stream-stream: right record within +-jitter ms of its left one")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each case; the best is reported")
    ap.add_argument("--profile", action="store_true", help="then profile the slowest case (cProfile, by own time)")
    ap.add_argument("--profile-top", type=int, default=15)
    ap.add_argument("--json", metavar="PATH", help="also write every case's figures as JSON to PATH")
    args = ap.parse_args(argv)
    given = set(a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]))
    if args.quick:
        if "--records" not in given:
            args.records = 100_000
        if args.table_keys is None:
            args.table_keys = 10_000
    args.table_keys = args.table_keys or 100_000
    backends = ["memory", "rocksdb"] if args.backend == "both" else [args.backend]
    families = args.cases.split(",")
    if args.jitter >= args.window:
        ap.error("--jitter must be below --window (every pair must match)")
    unknown = [f for f in families if f not in ("st", "ss")]
    if unknown:
        ap.error(f"unknown case {unknown[0]!r} (st, ss)")

    print(f"streamproc from {os.path.dirname(os.path.abspath(streamproc.__file__))}")
    print(f"polls of {args.batch:,} records (per input), checkpoint every {args.checkpoint_every} polls; "
          f"best of {args.repeat}; µs are CPU µs per input record")
    tmp = tempfile.mkdtemp(prefix="bench-joins-")
    slowest = None           # (cpu µs/record, case)
    all_ok = True
    found: list[dict] = []
    try:
        for family in families:
            heading, cases = build_cases(family, args, backends)
            print(heading)
            gc.collect()
            gc.freeze()          # the inputs are long-lived: keep the cyclic GC from rescanning them
            ok, slow = run_family(cases, args, tmp, found)
            all_ok &= ok
            if slow is not None and (slowest is None or slow[0] > slowest[0]):
                slowest = slow
            gc.unfreeze()
        if args.json:
            params = {k: getattr(args, k) for k in ("records", "table_keys", "batch", "checkpoint_every", "feed",
                                                    "window", "grace", "rate", "jitter", "repeat")}
            with open(args.json, "wb") as f:
                f.write(orjson.dumps({"benchmark": "joins", **params, "ok": bool(all_ok), "cases": found},
                                     option=orjson.OPT_INDENT_2))
        if args.profile and slowest is not None:
            profile(slowest[1], slowest[0], args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
