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

    python benchmarks/restore.py [--bootstrap-servers HOST:PORT] [--records 1000000] --no-rss
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

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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


def fill_changelog(bootstrap: str, topic: str, records, *, console=None) -> None:
    """Produce ``records`` to partition 0 of ``topic`` with a plain (non-transactional) producer, fast."""
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
                    p.produce(topic, v, k, partition=0, on_delivery=on_delivery)
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
    with _progress(console) as prog:
        task = prog.add_task("restore from Kafka into RocksDB", total=len(records), rate="")
        t0 = time.perf_counter()

        def progress(part):
            prog.update(task, completed=part.restored,
                        rate=f"{part.restored / max(1e-9, time.perf_counter() - t0):,.0f} rec/s")

        backend = RocksDBBackend(path, [spec])
        try:
            n = restore_blocking(restore_consumer_config(bootstrap, app), (0, 0), backend, [spec], 0,
                                 progress=progress)
        finally:
            backend.close()
        seconds = time.perf_counter() - t0
        prog.update(task, completed=n)
    with RocksDBBackend(path, [spec]) as check:                     # not timed
        assert check.get_meta("changelog_offsets") == {"counts": len(records) - 1}, check.get_meta("changelog_offsets")
        k0, v0 = records[-1]
        assert check.get("counts", _record_key(k0)) == codec.decode_value(v0)
    return seconds, n / seconds, n


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--local-only", action="store_true", help="no broker: bulk_restore timing and the RSS check")
    ap.add_argument("--records", type=int, default=1_000_000, help="changelog records (distinct keys) to restore")
    ap.add_argument("--repeat", type=int, default=3, help="restore runs; the best is reported")
    ap.add_argument("--rss-keys", type=int, default=3_000_000, help="distinct keys written in the RSS check")
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--bootstrap-servers", default=None,
                    help="Kafka for the restore-from-changelog part (default: start the Tansu development broker)")
    args = ap.parse_args(argv)
    console = Console()
    broker = None
    kafka_result = None
    base = args.dir or tempfile.mkdtemp(prefix="restore-bench-")
    signal.signal(signal.SIGTERM, _raise_interrupt)       # SIGTERM cleans up like Ctrl-C
    try:
        with console.status(f"building {args.records:,} changelog records ..."):
            records = changelog_records(args.records)
        runs = [restore_local(args.records, os.path.join(base, "bulk"), records=records, console=console)
                for _ in range(args.repeat)]
        secs, rps = min(runs)
        if not args.local_only:
            bootstrap = args.bootstrap_servers
            if not bootstrap:
                from streamproc.kafka.devbroker import DevBroker

                broker = DevBroker().start()
                bootstrap = broker.bootstrap
                console.print(f"started the Tansu development broker at {bootstrap}")
            kafka_result = restore_kafka(bootstrap, args.records, os.path.join(base, "kafka"), records=records,
                                         console=console)
        with console.status("the generic write() path, for comparison ..."):
            wsecs, wrps = restore_via_write(args.records, os.path.join(base, "write"), records=records)
        table = Table(title=f"restore {args.records:,} changelog records ({args.records:,} distinct window keys) "
                            f"into a fresh RocksDB, batches of {BATCH:,}")
        for col in ("path", "seconds", "records/s", "target 200k/s"):
            table.add_column(col, justify="left" if col == "path" else "right")
        table.add_row("bulk_restore (best of %d)" % args.repeat, f"{secs:.2f}", f"{rps:,.0f}",
                      "[green]met" if rps >= 200_000 else "[red]missed")
        table.add_row("write(decoded changes)", f"{wsecs:.2f}", f"{wrps:,.0f}",
                      "[green]met" if wrps >= 200_000 else "[red]missed")
        if kafka_result is not None:
            ksecs, krps, kn = kafka_result
            table.add_row(f"Kafka changelog -> Restorer -> RocksDB ({kn:,} records)", f"{ksecs:.2f}", f"{krps:,.0f}",
                          "[green]met" if krps >= 200_000 else "[red]missed")
        console.print(table)
        del records
        if not args.no_rss:
            res = rss_flat(args.rss_keys, os.path.join(base, "rss"), console=console)
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
