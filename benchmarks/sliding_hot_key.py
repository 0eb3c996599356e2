"""One hot key through a sliding-window aggregate: does the per-record cost stay flat?

Standalone, in-process, no broker: the compiled task is driven directly (``Task.process`` with
serialized ``RawBatch``es, as the Kafka worker does), with the memory and the RocksDB backend,
records in order and slightly out of order (within grace), in batches of 1 and of 500. A
checkpoint (``state.changes()`` + ``state.apply()``) runs every ``--checkpoint-records``
records (a commit interval), and after every batch larger than that.

For each run it prints records/s over the first and the last ``--segment`` records (a
slowdown over time shows as "end" far below "start"), overall records/s, CPU µs/record, and a
checksum of the results (count and sum over every emitted window) so runs of two versions
can be compared for equal output.

    python benchmarks/sliding_hot_key.py [--records 8000] [--max-difference 60000] [--spacing 10]

Defaults: records 10 ms apart, a 1 minute window: a window fills up over the first 6,000
records, so a per-record cost that grows with the window shows as "end" far below "start".

It imports ``streamproc`` from ``--repo`` (default: the current directory if it holds a
``streamproc`` package, else this file's repository), so the same script measures another
checkout::

    cd /tmp/base && python /work/main/benchmarks/sliding_hot_key.py
"""
from __future__ import annotations

import argparse
import gc
import os
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

import streamproc  # noqa: E402
from streamproc import Topology, agg, serdes, windows  # noqa: E402
from streamproc.operators import RawBatch  # noqa: E402
from streamproc.plan import compile_topology  # noqa: E402
from streamproc.runtime.engine.task import Task  # noqa: E402
from streamproc.state import MemoryBackend  # noqa: E402


def build(d: int, grace: int, aggs: str):
    t = Topology("hot")
    if aggs == "ordered":
        named = dict(n=agg.count(), total=agg.sum("v"), first=agg.first("v"), last=agg.last("v"))
    else:
        named = dict(n=agg.count(), total=agg.sum("v"), lo=agg.min("v"), hi=agg.max("v"))
    (t.stream("in", key=serdes.String(), value=serdes.Json())
        .group_by_key()
        .window(windows.Sliding(d, grace=grace))
        .aggregate(**named, emit="final", name="sliding")
        .to("out", value=serdes.Json()))
    return compile_topology(t)


def make_records(n: int, spacing: int, jitter: int, n_keys: int = 1, seed: int = 7):
    """Timestamps ``spacing`` ms apart; with ``jitter``, each moved back by up to ``jitter`` ms
    (slightly out of order). Values are serialized once, as they would come off Kafka. One key
    ("hot"), or ``n_keys`` keys taking turns (each then gets ``spacing * n_keys`` ms between records)."""
    rng = np.random.default_rng(seed)
    base = 1_000_000
    ts = base + np.arange(n, dtype=np.int64) * spacing
    if jitter:
        ts = ts - rng.integers(0, jitter + 1, n)
    ks = serdes.String()
    keys = [ks.serialize("hot")] * n if n_keys == 1 else [ks.serialize(f"k{i % n_keys}") for i in range(n)]
    vs = serdes.Json()
    values = [vs.serialize({"v": int(v)}) for v in rng.integers(1, 100, n)]
    return keys, values, ts.tolist()


def make_backend(kind: str, sub, tmp: str):
    if kind == "memory":
        return MemoryBackend()
    from streamproc.state.rocksdb import RocksDBBackend
    path = tempfile.mkdtemp(dir=tmp)
    return RocksDBBackend.for_task(path, sub)


def run(plan, backend_kind, keys, values, ts, batch: int, checkpoint_records: int, segment: int, tmp: str):
    sub = plan.subtopologies[0]
    backend = make_backend(backend_kind, sub, tmp)
    task = Task(sub, 0, backend)
    n = len(keys)
    done_at = []                       # (records done, wall, cpu) after each batch
    results = 0
    checksum = 0
    since_ckpt = 0
    gc.collect()
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, n, batch):
        j = min(n, i + batch)
        produced = task.process(RawBatch("in", 0, keys[i:j], values[i:j], ts[i:j], list(range(i, j))))
        since_ckpt += j - i
        if since_ckpt >= checkpoint_records:
            task.state.changes()
            task.state.apply()
            since_ckpt = 0
        for _topic, _kb, vb, _t in produced:
            results += len(vb)
            checksum = (checksum + sum(zlib.crc32(v) for v in vb)) % 1_000_000_007
        done_at.append((j, time.perf_counter() - w0, time.process_time() - c0))
    task.state.changes()
    task.state.apply()
    wall, cpu = done_at[-1][1], done_at[-1][2]
    if hasattr(backend, "close"):
        backend.close()

    def rate(lo, hi):
        """records/s between the batches ending nearest ``lo`` and ``hi`` records."""
        a = min(done_at, key=lambda x: abs(x[0] - lo)) if lo else (0, 0.0, 0.0)
        b = min(done_at, key=lambda x: abs(x[0] - hi))
        return (b[0] - a[0]) / max(b[1] - a[1], 1e-9)

    seg = min(segment, n // 2)
    return {"start": rate(0, seg), "end": rate(n - seg, n), "all": n / wall, "cpu_us": cpu * 1e6 / n,
            "wall": wall, "results": results, "checksum": checksum, "late": task.metrics.get("late_records", 0)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", default=REPO, help="repository whose streamproc to import (default: cwd or this repo)")
    ap.add_argument("--records", type=int, default=8000)
    ap.add_argument("--max-difference", type=int, default=60_000, help="sliding window max_difference, ms")
    ap.add_argument("--grace", type=int, default=1000, help="grace, ms")
    ap.add_argument("--spacing", type=int, default=10, help="event-time ms between consecutive records")
    ap.add_argument("--jitter", type=int, default=500,
                    help="'disorder' runs: records move back by up to this many ms (keep it <= grace)")
    ap.add_argument("--batches", default="1,500")
    ap.add_argument("--backends", default="memory,rocksdb")
    ap.add_argument("--orders", default="in-order,disorder")
    ap.add_argument("--aggs", default="minmax", choices=["minmax", "ordered"],
                    help="minmax: count, sum, min, max; ordered: count, sum, first, last")
    ap.add_argument("--checkpoint-records", type=int, default=500,
                    help="checkpoint every this many records (a commit interval)")
    ap.add_argument("--segment", type=int, default=1000, help="records measured at the start and at the end")
    ap.add_argument("--keys", type=int, default=1, help="spread the records over this many keys (default: one)")
    args = ap.parse_args(argv)

    plan = build(args.max_difference, args.grace, args.aggs)
    per_window = args.max_difference // (args.spacing * args.keys) + 1
    print(f"streamproc from {os.path.dirname(os.path.abspath(streamproc.__file__))}")
    print(f"{'one key' if args.keys == 1 else f'{args.keys} keys'}, {args.records:,} records {args.spacing} ms apart, Sliding({args.max_difference} ms, "
          f"grace={args.grace} ms) -> ~{per_window} records per window; aggregations: {args.aggs}; "
          f"checkpoint every {args.checkpoint_records} records")
    hdr = (f"{'backend':8} {'order':9} {'batch':>5} {'start rec/s':>12} {'end rec/s':>12} {'all rec/s':>12} "
           f"{'CPU µs/rec':>11} {'results':>8} {'late':>5} {'checksum':>11}")
    print(hdr)
    print("-" * len(hdr))
    tmp = tempfile.mkdtemp(prefix="sliding-hot-key-")
    try:
        wk, wv, wt = make_records(min(args.records, 1000), args.spacing, 0, args.keys)
        for backend in args.backends.split(","):        # warm-up (imports, allocator, caches): not reported
            run(plan, backend, wk, wv, wt, 100, args.checkpoint_records, args.segment, tmp)
        for order in args.orders.split(","):
            jitter = args.jitter if order == "disorder" else 0
            keys, values, ts = make_records(args.records, args.spacing, jitter, args.keys)
            for backend in args.backends.split(","):
                for batch in [int(b) for b in args.batches.split(",")]:
                    r = run(plan, backend, keys, values, ts, batch, args.checkpoint_records, args.segment, tmp)
                    print(f"{backend:8} {order:9} {batch:>5} {r['start']:>12,.0f} {r['end']:>12,.0f} "
                          f"{r['all']:>12,.0f} {r['cpu_us']:>11,.1f} {r['results']:>8,} {r['late']:>5} "
                          f"{r['checksum']:>11,}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
