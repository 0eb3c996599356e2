"""Tumbling count+sum through the batch operator vs a naive per-record dict loop.

Same 1M pre-built records (no serde, no Kafka), same semantics: stream time, grace, late
drops, final emits when windows close. Prints records/s for each and checks both produced
the same results.

    python benchmarks/operators.py [--records 1000000] [--batch 10000] [--keys 1000] [--json PATH]

``--json PATH`` also writes the figures as JSON (what ``benchmarks/suite.py`` reads).
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import numpy as np
import orjson
from rich.console import Console
from rich.table import Table

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from streamproc import Topology, agg, serdes, windows  # noqa: E402
from streamproc.operators import Batch  # noqa: E402
from streamproc.plan import compile_topology  # noqa: E402
from streamproc.runtime.engine.task import Task  # noqa: E402
from streamproc.state import MemoryBackend  # noqa: E402

SIZE, GRACE = 10_000, 2_000


def make_records(n: int, n_keys: int, rate: int = 1000, seed: int = 7):
    """``rate`` records per second of event time, up to 3 s out of order (so grace and lateness both happen)."""
    rng = np.random.default_rng(seed)
    ts = (np.arange(n) * 1000 // rate + rng.integers(-3000, 1, n)).clip(0).astype(np.int64)
    keys = [f"user-{i}" for i in rng.integers(0, n_keys, n)]   # distinct str objects, as deserialized
    amounts = rng.integers(1, 1000, n).tolist()
    values = [{"amount": a, "page": "/x"} for a in amounts]
    return keys, values, ts


def run_operator(keys, values, ts, batch: int, checkpoint_every: int):
    t = Topology("bench")
    (t.stream("in", key=serdes.String(), value=serdes.Json())
        .group_by_key()
        .window(windows.Tumbling(SIZE, grace=GRACE))
        .aggregate(n=agg.count(), total=agg.sum("amount"), emit="final")
        .to("out"))
    plan = compile_topology(t)
    task = Task(plan.subtopologies[0], 0, MemoryBackend())
    op = task.operator(plan.subtopologies[0].stores[0].name)       # the windowed aggregation (its only store)
    state = task.state
    results = []
    start = time.perf_counter()
    cpu = time.process_time()
    for n, i in enumerate(range(0, len(keys), batch), 1):
        tsb = ts[i:i + batch]
        st = np.maximum.accumulate(tsb)
        np.maximum(st, state.stream_time, out=st)
        state.stream_time = int(st[-1])
        out = op.process(Batch(keys[i:i + batch], values[i:i + batch], tsb, st))
        results += zip(out.keys, out.values)
        if n % checkpoint_every == 0:
            state.changes()
            state.apply()
    return time.perf_counter() - start, time.process_time() - cpu, results, task.metrics.get("late_records", 0)


def run_naive(keys, values, ts):
    """What a careful hand-written loop does: one dict entry per (key, window)."""
    windows_: dict = {}
    by_close: dict = {}
    stream_time = -1
    late = 0
    results = []
    start = time.perf_counter()
    cpu = time.process_time()
    for k, v, t in zip(keys, values, ts.tolist()):
        if t > stream_time:
            stream_time = t
            for ct in sorted(c for c in by_close if c <= stream_time):
                for wk in by_close.pop(ct):
                    n, total = windows_.pop(wk)
                    results.append((wk[0], {"window_start": wk[1], "window_end": wk[1] + SIZE,
                                            "n": n, "total": total}))
        ws = t - t % SIZE
        if stream_time >= ws + SIZE + GRACE:
            late += 1
            continue
        wk = (k, ws)
        cur = windows_.get(wk)
        if cur is None:
            windows_[wk] = [1, v["amount"]]
            by_close.setdefault(ws + SIZE + GRACE, []).append(wk)
        else:
            cur[0] += 1
            cur[1] += v["amount"]
    return time.perf_counter() - start, time.process_time() - cpu, results, late


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--rates", default="1000,20000",
                    help="event-time rates to run, records per second of event time (comma separated)")
    ap.add_argument("--checkpoint-every", type=int, default=10,
                    help="batches per checkpoint (10 x 10k records ~ a 100 ms commit interval at 1M records/s)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each; the best is reported")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = ap.parse_args(argv)
    console = Console()
    table = Table(title=f"tumbling {SIZE // 1000} s + {GRACE // 1000} s grace, count+sum, {args.records:,} records, "
                        f"{args.keys} keys, batch {args.batch:,}, checkpoint every {args.checkpoint_every} batches")
    for col in ("event rate", "implementation", "records/s", "CPU µs/record", "results", "late", "vs naive"):
        table.add_column(col, justify="left" if col in ("implementation", "event rate") else "right")
    all_same = True
    found = []
    for rate in [int(r) for r in args.rates.split(",")]:
        with console.status(f"building {args.records:,} records at {rate:,}/s ..."):
            keys, values, ts = make_records(args.records, args.keys, rate)
        gc.collect()
        gc.freeze()     # the input is long-lived: keep the cyclic GC from rescanning it (both loops benefit)
        best = {}
        for _ in range(args.repeat):
            for name, fn in (("streamproc",
                              lambda: run_operator(keys, values, ts, args.batch, args.checkpoint_every)),
                             ("naive dict loop", lambda: run_naive(keys, values, ts))):
                with console.status(f"{rate:,}/s: running {name} ..."):
                    wall, cpu, results, late = fn()
                if name not in best or wall < best[name][0]:
                    best[name] = (wall, cpu, results, late)
        op, naive = best["streamproc"], best["naive dict loop"]
        same = sorted(map(repr, op[2])) == sorted(map(repr, naive[2])) and op[3] == naive[3]
        all_same &= same
        for name, (wall, cpu, results, late) in best.items():
            table.add_row(f"{rate:,}/s", name, f"{args.records / wall:,.0f}", f"{cpu * 1e6 / args.records:.3f}",
                          f"{len(results):,}", f"{late:,}", f"{naive[0] / wall:.2f}x")
            found.append({"event_rate": rate, "implementation": name, "rate": args.records / wall,
                          "cpu_us": cpu * 1e6 / args.records, "results": len(results), "late": late,
                          "vs_naive": naive[0] / wall, "same": bool(same)})
        gc.unfreeze()
        del keys, values, ts, best, op, naive
    console.print(table)
    console.print(f"results identical to the naive loop: {'[green]yes' if all_same else '[red]NO'}")
    if args.json:
        with open(args.json, "wb") as f:
            f.write(orjson.dumps({"benchmark": "operators", "records": args.records, "keys": args.keys,
                                  "batch": args.batch, "repeat": args.repeat, "same": bool(all_same),
                                  "runs": found}, option=orjson.OPT_INDENT_2))
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
