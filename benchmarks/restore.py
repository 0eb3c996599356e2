"""Restore speed into RocksDB, and RSS while state lives on disk.

Local part (no broker): ``restore_local`` builds changelog-shaped records (the changelog format
of ``streamproc.runtime.changelog.records``: ``codec.encode_store_key`` key bytes, ``codec.encode_value``
value bytes; 1M distinct window keys, window-state tuple values) and times
``RocksDBBackend.bulk_restore`` into a fresh task directory, in restore-loop sized batches
that also record the changelog offset reached; ``rss_flat`` keeps writing distinct keys
through ``TaskState``/``Store`` checkpoints and samples the process RSS, RocksDB against the
memory backend, each in a fresh process.

    python benchmarks/restore.py --local-only [--records 1000000] [--rss-keys 3000000]

Kafka part (``restore_kafka``): fill a changelog topic with the same records (a plain
producer), then time the runtime's restore path (``Restorer`` via ``restore_blocking``, as
``streamproc replay`` and a restarting worker use it: read_committed fetches, raw key/value
copy into one RocksDB write batch per fetch batch with the offsets reached) into an empty
state dir. Without ``--bootstrap-servers`` the embedded Tansu development broker is started.
Safe on a shared Apache Kafka cluster: the changelog topic is created with ``retention.ms=-1``
and filled by an idempotent producer (exactly the records built, no retried duplicates); it and
the restore consumer's group id ``<app>-restore`` are deleted at the end, also on failure,
Ctrl-C or SIGTERM (an operation the broker does not support or refuses is reported and skipped).

Replay part (``replay_cli``, also needs Kafka; ``--no-replay`` skips it): fill the changelog of a
non-windowed count store with ``--replay-keys`` distinct keys over ``--replay-partitions``
partitions (the values the compiled task writes, each partition ending with its metadata
record), then run ``streamproc replay`` on it as a subprocess into an empty state dir and time
its wall clock: keys/s as a user sees it, interpreter start-up and broker connection included.
Its changelog topic and ``<app>-restore`` group are deleted at the end like the other's.

    python benchmarks/restore.py [--bootstrap-servers HOST:PORT] [--records 1000000] --no-rss

``--json PATH`` also writes the figures as JSON (what ``benchmarks/suite.py`` reads).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import time

import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from streamproc.state import codec  # noqa: E402
from streamproc.plan.model import StoreSpec  # noqa: E402
from streamproc.state import DELETED, MemoryBackend, TaskState  # noqa: E402

WINDOW_SPEC = StoreSpec("counts", "window", "bench-counts-changelog", "bench-fingerprint", 0)
BATCH = 10_000          # the runtime's restore batch (Restorer.batch_size)
_PAGE = os.sysconf("SC_PAGE_SIZE")


def changelog_records(n_records: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    """``n_records`` changelog records over as many distinct keys: key ``(user, window_start)``,
    value ``(max_ts, count, sum, mean)`` as a tumbling store writes them, in the changelog format."""
    enc, kenc = codec.encode_value, codec.key_encoder("window")
    out = []
    for i in range(start, start + n_records):
        ws = 1_700_000_000_000 + (i % 60) * 60_000
        out.append((kenc((f"user-{i // 60:07d}", ws)), enc((ws + 59_123, i % 1000, i * 7, i * 0.5))))
    return out


def _record_key(kb: bytes):
    return codec.decode_store_key("window", kb)


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 2**20


def _progress(console=None) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=console, transient=False)


def restore_local(n_records: int, path: str, *, records=None, batch: int = BATCH, progress: bool = True,
                  console=None) -> tuple[float, float]:
    """Time ``bulk_restore`` of ``n_records`` distinct-key changelog records into a fresh backend at ``path``.

    Returns ``(seconds, records/s)``. The clock covers opening the database, every batch (decode
    key, re-encode to the sorted key format, write batch with the offset reached) and closing it.
    """
    from streamproc.state.rocksdb import RocksDBBackend

    records = changelog_records(n_records) if records is None else records
    shutil.rmtree(path, ignore_errors=True)
    prog = _progress(console) if progress else None
    t0 = time.perf_counter()
    backend = RocksDBBackend(path, [WINDOW_SPEC])
    try:
        if prog:
            prog.start()
            task = prog.add_task("restore into RocksDB", total=len(records), rate="")
        for lo in range(0, len(records), batch):
            chunk = records[lo:lo + batch]
            backend.bulk_restore("counts", chunk, {"changelog_offsets": {"counts": lo + len(chunk) - 1}})
            if prog:
                done = lo + len(chunk)
                prog.update(task, completed=done, rate=f"{done / (time.perf_counter() - t0):,.0f} rec/s")
    finally:
        backend.close()
        if prog:
            prog.stop()
    seconds = time.perf_counter() - t0
    with RocksDBBackend(path, [WINDOW_SPEC]) as check:                 # not timed: everything is there
        assert check.get_meta("changelog_offsets") == {"counts": len(records) - 1}
        k0, v0 = records[0]
        assert check.get("counts", _record_key(k0)) == codec.decode_value(v0)
    return seconds, len(records) / seconds


def restore_via_write(n_records: int, path: str, *, records=None, batch: int = BATCH) -> tuple[float, float]:
    """The generic path for comparison: decode key and value, ``backend.write`` (which re-encodes values)."""
    from streamproc.state.rocksdb import RocksDBBackend

    records = changelog_records(n_records) if records is None else records
    shutil.rmtree(path, ignore_errors=True)
    dec = codec.decode_value
    t0 = time.perf_counter()
    with RocksDBBackend(path, [WINDOW_SPEC]) as backend:
        for lo in range(0, len(records), batch):
            chunk = records[lo:lo + batch]
            backend.write({"counts": {_record_key(k): DELETED if v is None else dec(v) for k, v in chunk}},
                          {"changelog_offsets": {"counts": lo + len(chunk) - 1}})
    seconds = time.perf_counter() - t0
    return seconds, len(records) / seconds


def fill_changelog(bootstrap: str, topic: str, records, *, partitions=None, console=None) -> None:
    """Produce ``records`` to ``topic`` with a plain (non-transactional) producer, fast: record ``i`` to
    partition ``partitions[i]`` (default: every record to partition 0)."""
    from confluent_kafka import Producer

    # idempotent (acks=all): a retried batch is not written twice, so the changelog ends at offset n - 1
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.size": 1 << 20,
                  "compression.type": "lz4", "queue.buffering.max.messages": 1_000_000,
                  "queue.buffering.max.kbytes": 1 << 20, "enable.idempotence": True, "log_level": 3})
    failed: list = []

    def on_delivery(err, _msg):
        if err is not None:
            failed.append(err)

    with _progress(console) as prog:
        task = prog.add_task(f"fill {topic}", total=len(records), rate="")
        t0 = time.perf_counter()
        for i, (k, v) in enumerate(records):
            while True:
                try:
                    p.produce(topic, v, k, partition=0 if partitions is None else partitions[i],
                              on_delivery=on_delivery)
                    break
                except BufferError:
                    p.poll(0.05)
            if i % 50_000 == 0:
                p.poll(0)
                prog.update(task, completed=i, rate=f"{i / max(1e-9, time.perf_counter() - t0):,.0f} rec/s")
        left = p.flush(120)
        prog.update(task, completed=len(records))
    if left or failed:
        raise RuntimeError(f"{left + len(failed)} changelog records were not delivered"
                           + (f" (first error: {failed[0]})" if failed else ""))


def restore_kafka(bootstrap: str, n_records: int, path: str, *, records=None, console=None) -> tuple[float, float, int]:
    """Fill a fresh changelog topic with ``n_records`` distinct-key records, then time the runtime's
    restore (``restore_blocking``: ``Restorer`` -> ``RocksDBBackend.restore_batch``) into an empty
    task directory at ``path``. Returns ``(seconds, records/s, records restored)``; the clock covers
    opening the database, reading the whole changelog and closing the database."""
    import uuid

    from streamproc.kafka import create_topics, make_admin

    records = changelog_records(n_records) if records is None else records
    app = f"bench-{uuid.uuid4().hex[:8]}"
    topic = f"{app}-counts-changelog"
    admin = make_admin(bootstrap, overrides={"log_level": 3})
    try:
        # no time retention: a broker's retention must not delete records while they are restored
        create_topics(admin, [topic], 1, config={"retention.ms": "-1"})
        fill_changelog(bootstrap, topic, records, console=console)
        return _time_restore(bootstrap, app, topic, records, path, console)
    finally:
        _delete(admin, [topic], [f"{app}-restore"], console)


def _delete(admin, topics: list[str], groups: list[str], console=None) -> None:
    """Delete ``topics`` and consumer ``groups``; missing ones are fine, anything else is reported."""
    from confluent_kafka import KafkaError, KafkaException

    say = (console or Console(stderr=True)).print
    ignore = (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.GROUP_ID_NOT_FOUND)
    for what, call in (("topic", lambda: admin.delete_topics(topics, operation_timeout=30, request_timeout=30)),
                       ("consumer group", lambda: admin.delete_consumer_groups(groups, request_timeout=15))):
        try:
            futures = call()
        except Exception as e:  # noqa: BLE001 - housekeeping: report and go on
            say(f"[yellow]cleanup: could not delete {what}s: {e}[/]")
            continue
        for name, fut in futures.items():
            try:
                fut.result()
            except Exception as e:  # noqa: BLE001
                err = e.args[0] if isinstance(e, KafkaException) and e.args else None
                if isinstance(err, KafkaError) and err.code() in ignore:
                    continue
                say(f"[yellow]cleanup: could not delete {what} {name}: {err.str() if isinstance(err, KafkaError) else e}[/]")


def _time_restore(bootstrap: str, app: str, topic: str, records, path: str, console) -> tuple[float, float, int]:
    from streamproc.kafka.config import restore_consumer_config
    from streamproc.plan.model import StoreSpec
    from streamproc.runtime.changelog.restore import restore_blocking
    from streamproc.state.rocksdb import RocksDBBackend

    spec = StoreSpec("counts", "window", topic, "bench-fingerprint", 0)
    shutil.rmtree(path, ignore_errors=True)
    with (console or Console()).status(f"restore {len(records):,} records from Kafka into RocksDB ..."):
        t0 = time.perf_counter()
        backend = RocksDBBackend(path, [spec])
        try:
            n = restore_blocking(restore_consumer_config(bootstrap, app), (0, 0), backend, [spec], 0)
        finally:
            backend.close()
        seconds = time.perf_counter() - t0
    with RocksDBBackend(path, [spec]) as check:                     # not timed
        assert check.get_meta("changelog_offsets") == {"counts": len(records) - 1}, check.get_meta("changelog_offsets")
        k0, v0 = records[-1]
        assert check.get("counts", _record_key(k0)) == codec.decode_value(v0)
    return seconds, n / seconds, n


# ------------------------------------------------------------------------------------- replay
REPLAY_TOPOLOGY = """\
\"\"\"Written by benchmarks/restore.py: a non-windowed count per key (store "counts"), for `streamproc replay`.\"\"\"
import os

from streamproc import Topology, agg, serdes

topology = Topology(os.environ["REPLAY_APP_ID"])

(topology.stream(os.environ["REPLAY_APP_ID"] + "-input", key=serdes.String(), value=serdes.Json())
    .group_by_key()
    .aggregate(count=agg.count(), name="counts")
    .to(os.environ["REPLAY_APP_ID"] + "-output", value=serdes.Json()))
"""


def count_changelog(plan, n_keys: int, partitions: int) -> tuple[list, list, list]:
    """The changelog of store ``counts`` of ``plan`` (:data:`REPLAY_TOPOLOGY`) holding ``n_keys`` distinct
    keys, as checkpoints write it: one record per key on the partition its key hashes to, then each
    partition's metadata record. The values are what the compiled task itself writes (one input record
    per key, fed as a worker feeds it). Returns ``(records, partition of each record, metadata records)``,
    the metadata record of partition ``i`` at index ``i``."""
    from streamproc.operators import RawBatch
    from streamproc.partitioner import partitions_for
    from streamproc.runtime.changelog.records import META_KEY, meta_value
    from streamproc.runtime.engine.task import Task

    sub = plan.subtopologies[0]
    spec = next(s for s in sub.stores if s.name == "counts")
    source = next(n.params["topic"] for n in sub.nodes if n.kind == "source")
    task = Task(sub, 0, MemoryBackend())
    keys = [f"user-{i:08d}".encode() for i in range(n_keys)]
    value = b'{"amount": 1}'
    ts0 = 1_700_000_000_000
    for lo in range(0, n_keys, BATCH):
        hi = min(lo + BATCH, n_keys)
        task.process(RawBatch(source, 0, keys[lo:hi], [value] * (hi - lo), list(range(ts0 + lo, ts0 + hi)),
                              list(range(lo, hi))))
    changes = task.state.changes()[spec.name]
    enc_key, enc = codec.key_encoder(spec.kind), codec.encode_value
    records = [(enc_key(k), enc(v)) for k, v in changes]
    parts = partitions_for([k.encode() for k, _ in changes], partitions)
    return records, parts, [(META_KEY, meta_value(spec, task.state.stream_time))] * partitions


def replay_cli(bootstrap: str, n_keys: int, partitions: int, base: str, *, console=None) -> dict:
    """Fill the changelog of a count store with ``n_keys`` distinct keys over ``partitions`` partitions,
    then run ``streamproc replay`` on it as a subprocess into an empty state dir and time its wall clock
    (interpreter start-up, imports and broker connection included: what a user waits for)."""
    import re
    import subprocess
    import uuid

    from streamproc.kafka import create_topics, make_admin
    from streamproc.loader import load_topology
    from streamproc.plan import compile_topology

    console = console or Console()
    app = f"bench-replay-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "REPLAY_APP_ID": app}
    os.makedirs(base, exist_ok=True)
    path = os.path.join(base, "replay_topology.py")
    with open(path, "w") as f:
        f.write(REPLAY_TOPOLOGY)
    os.environ["REPLAY_APP_ID"] = app                     # the topology file reads it here too
    plan = compile_topology(load_topology(path))
    topic = next(s for s in plan.stores if s.name == "counts").changelog
    admin = make_admin(bootstrap, overrides={"log_level": 3})
    try:
        create_topics(admin, [topic], partitions, config={"retention.ms": "-1"})
        with console.status(f"building the changelog of {n_keys:,} keys ..."):
            records, parts, metas = count_changelog(plan, n_keys, partitions)
        fill_changelog(bootstrap, topic, records, partitions=parts, console=console)
        del records, parts
        # the metadata records after a flush, one record per batch (as a transaction's commit marker ends a
        # checkpoint): the Tansu development broker reports a multi-record batch's first offset + 1 as the
        # high watermark, which would end the replay before the partition's last batch
        fill_changelog(bootstrap, topic, metas, partitions=list(range(partitions)), console=console)
        cmd = [sys.executable, "-m", "streamproc", "replay", path, "--bootstrap-servers", bootstrap,
               "--state-dir", os.path.join(base, "replay-state")]
        with console.status(f"streamproc replay of {n_keys:,} keys ..."):
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"streamproc replay exited with {proc.returncode}:\n{proc.stderr[-2000:]}")
        # its last line: "replayed <offsets> changelog offsets into ... in <s> s: <n> records (<rate> records/s)"
        m = re.search(r" in ([0-9.]+) s: (\d+) records", proc.stdout)
        if m is None:
            console.print(f"[yellow]streamproc replay: could not read its summary line: {proc.stdout.strip()[-300:]}")
        elif int(m.group(2)) not in (n_keys, n_keys + partitions):      # with or without the metadata records
            raise RuntimeError(f"streamproc replay restored {m.group(2)} records, expected {n_keys:,} keys: "
                               f"{proc.stdout.strip()[-500:]}")
        return {"keys": n_keys, "partitions": partitions, "seconds": seconds, "rate": n_keys / seconds,
                "cli_seconds": float(m.group(1)) if m else None}
    finally:
        _delete(admin, [topic], [f"{app}-restore"], console)


# ------------------------------------------------------------------------------------- RSS
def _rss_worker(kind: str, path: str, total_keys: int, per_checkpoint: int, sample_every: int, memory, q) -> None:
    if kind == "rocksdb":
        from streamproc.state.rocksdb import RocksDBBackend, configure_memory

        if memory:
            configure_memory(*memory)
        backend = RocksDBBackend(path, [WINDOW_SPEC])
    else:
        backend = MemoryBackend()
    state = TaskState(backend, ["counts"])
    store = state.store("counts")
    samples = [(0, rss_mib())]
    written = 0
    t0 = time.perf_counter()
    while written < total_keys:
        n = min(per_checkpoint, total_keys - written)
        keys = [(f"user-{i // 60:07d}", 1_700_000_000_000 + (i % 60) * 60_000) for i in range(written, written + n)]
        store.put_many(keys, [(k[1] + 59_123, i % 1000, i * 7, i * 0.5) for i, k in enumerate(keys, written)])
        state.stream_time = written
        state.changes()
        state.apply({"counts": written + n - 1})
        written += n
        if written % sample_every == 0 or written == total_keys:
            samples.append((written, rss_mib()))
            q.put(("progress", written))
    elapsed = time.perf_counter() - t0
    backend.close()
    q.put(("done", samples, elapsed))


def rss_flat(total_keys: int = 3_000_000, path: str | None = None, *, per_checkpoint: int = 20_000,
             sample_every: int = 200_000, kinds=("rocksdb", "memory"), memory=(64 << 20, 32 << 20),
             console=None) -> dict:
    """Write ``total_keys`` distinct keys through checkpoints, sampling RSS; one fresh process per backend.

    ``memory``: ``(block cache, write buffers)`` bytes for RocksDB (``configure_memory``).
    Returns ``{kind: ([(keys written, RSS MiB), ...], seconds)}``.
    """
    path = path or tempfile.mkdtemp(prefix="rss-")
    ctx = mp.get_context("spawn")
    out = {}
    for kind in kinds:
        d = os.path.join(path, kind)
        shutil.rmtree(d, ignore_errors=True)
        q = ctx.Queue()
        p = ctx.Process(target=_rss_worker, args=(kind, d, total_keys, per_checkpoint, sample_every, memory, q))
        p.start()
        with _progress(console) as prog:
            task = prog.add_task(f"{kind}: distinct keys through checkpoints", total=total_keys, rate="")
            while True:
                msg = q.get()
                if msg[0] == "progress":
                    prog.update(task, completed=msg[1])
                else:
                    out[kind] = (msg[1], msg[2])
                    break
        p.join()
        shutil.rmtree(d, ignore_errors=True)
    return out


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def print_restore(console: Console, args, results: dict) -> None:
    table = Table(title=f"restore {args.records:,} changelog records ({args.records:,} distinct window keys) "
                        f"into a fresh RocksDB, batches of {BATCH:,}")
    for col in ("path", "seconds", "records/s", "target 200k/s"):
        table.add_column(col, justify="left" if col == "path" else "right")

    def add(label: str, r: dict) -> None:
        table.add_row(label, f"{r['seconds']:.2f}", f"{r['rate']:,.0f}",
                      "[green]met" if r["rate"] >= 200_000 else "[red]missed")

    add("bulk_restore (best of %d)" % args.repeat, results["bulk_restore"])
    add("write(decoded changes)", results["write"])
    if results.get("kafka") is not None:
        add(f"Kafka changelog -> Restorer -> RocksDB ({results['kafka']['records']:,} records)", results["kafka"])
    console.print(table)
    replay = results.get("replay")
    if replay is not None:
        console.print(f"streamproc replay of {replay['keys']:,} keys ({replay['partitions']} partitions): "
                      f"{replay['seconds']:.2f} s wall, {replay['rate']:,.0f} keys/s"
                      + (f" (its own restore loop: {replay['cli_seconds']:.2f} s)" if replay["cli_seconds"] else ""))


def print_rss(console: Console, args, res: dict) -> None:
    kinds = list(res)
    t = Table(title=f"RSS (MiB) while writing {args.rss_keys:,} distinct keys in checkpoints of 20,000 "
                    f"(RocksDB: 64 MiB block cache incl. 32 MiB write buffers)")
    t.add_column("keys written", justify="right")
    for k in kinds:
        t.add_column(f"{k} RSS", justify="right")
    rows = {}
    for k in kinds:
        for n, r in res[k][0]:
            rows.setdefault(n, {})[k] = r
    for n in sorted(rows):
        t.add_row(f"{n:,}", *[f"{rows[n].get(k, float('nan')):.0f}" for k in kinds])
    t.add_row("keys/s", *[f"{args.rss_keys / res[k][1]:,.0f}" for k in kinds])
    console.print(t)


def run_kafka_parts(args, base: str, records, console: Console, results: dict):
    """The parts that need Kafka: restore through the Restorer, and ``streamproc replay`` (into ``results``).
    Returns the development broker it started, or None."""
    broker = None
    bootstrap = args.bootstrap_servers
    if not bootstrap:
        from streamproc.kafka.devbroker import DevBroker

        broker = DevBroker().start()
        bootstrap = broker.bootstrap
        console.print(f"started the Tansu development broker at {bootstrap}")
    results["broker"] = "Tansu (embedded)" if broker else bootstrap
    try:
        ksecs, krps, kn = restore_kafka(bootstrap, args.records, os.path.join(base, "kafka"), records=records,
                                        console=console)
        results["kafka"] = {"seconds": ksecs, "rate": krps, "records": kn}
        if not args.no_replay:
            results["replay"] = replay_cli(bootstrap, args.replay_keys, args.replay_partitions,
                                           os.path.join(base, "replay"), console=console)
    except BaseException:
        if broker is not None:
            broker.stop()
        raise
    return broker


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--local-only", action="store_true", help="no broker: bulk_restore timing and the RSS check")
    ap.add_argument("--records", type=int, default=1_000_000, help="changelog records (distinct keys) to restore")
    ap.add_argument("--repeat", type=int, default=3, help="restore runs; the best is reported")
    ap.add_argument("--rss-keys", type=int, default=3_000_000, help="distinct keys written in the RSS check")
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--replay-keys", type=int, default=1_000_000, help="keys of the `streamproc replay` part")
    ap.add_argument("--replay-partitions", type=int, default=4, help="changelog partitions of the replay part")
    ap.add_argument("--no-replay", action="store_true", help="skip the `streamproc replay` part")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--bootstrap-servers", default=None,
                    help="Kafka for the restore-from-changelog part (default: start the Tansu development broker)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = ap.parse_args(argv)
    console = Console()
    broker = None
    results: dict = {"benchmark": "restore", "records": args.records, "batch": BATCH, "repeat": args.repeat,
                     "kafka": None, "replay": None, "rss": None}
    base = args.dir or tempfile.mkdtemp(prefix="restore-bench-")
    signal.signal(signal.SIGTERM, _raise_interrupt)       # SIGTERM cleans up like Ctrl-C
    try:
        with console.status(f"building {args.records:,} changelog records ..."):
            records = changelog_records(args.records)
        runs = [restore_local(args.records, os.path.join(base, "bulk"), records=records, console=console)
                for _ in range(args.repeat)]
        secs, rps = min(runs)
        results["bulk_restore"] = {"seconds": secs, "rate": rps, "runs": [r for _, r in runs]}
        if not args.local_only:
            broker = run_kafka_parts(args, base, records, console, results)
        with console.status("the generic write() path, for comparison ..."):
            wsecs, wrps = restore_via_write(args.records, os.path.join(base, "write"), records=records)
        results["write"] = {"seconds": wsecs, "rate": wrps}
        print_restore(console, args, results)
        del records
        if not args.no_rss:
            res = rss_flat(args.rss_keys, os.path.join(base, "rss"), console=console)
            print_rss(console, args, res)
            results["rss"] = {k: {"samples_mib": samples, "seconds": secs, "keys_per_s": args.rss_keys / secs}
                              for k, (samples, secs) in res.items()}
        if args.json:
            with open(args.json, "wb") as f:
                f.write(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    except KeyboardInterrupt:
        console.print("[red]interrupted: cleaning up[/]")
        return 130
    finally:
        if broker is not None:
            broker.stop()
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
