"""`make demo`: page views per user per minute, end to end on the embedded development broker.

1. starts the development broker (Tansu, memory only) on a free loopback port;
2. creates the `page-views` topic (4 partitions) and produces a few minutes of sample page
   views (Avro), a little out of order, in the background, about 4 s of event time per
   second of wall time;
3. runs `streamproc run topologies/page_views.py` against it (exactly-once, 2 workers);
4. prints the per-user, per-minute results as the windows close, read_committed;
5. stops everything.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from rich.console import Console
from rich.live import Live
from rich.table import Table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from streamproc import serdes  # noqa: E402
from streamproc.kafka.devbroker import DevBroker  # noqa: E402

USERS = ["ann", "bob", "cho", "dev", "eve", "fay"]
PAGES = ["/", "/pricing", "/docs", "/blog", "/signup"]
EVENT_MINUTES = 4
SPEEDUP = 4            # event-time ms per wall ms


def produce_views(bootstrap: str, stop: threading.Event, console: Console) -> None:
    avro = serdes.Avro(os.path.join(ROOT, "schemas", "page_view.avsc"))
    p = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 5, "log_level": 3})
    rng = random.Random(42)
    start_ts = 1_700_000_000_000 - 1_700_000_000_000 % 60_000
    t0 = time.monotonic()
    event_ms = 0
    n = 0
    while event_ms < EVENT_MINUTES * 60_000 + 15_000 and not stop.is_set():
        event_ms = int((time.monotonic() - t0) * 1000 * SPEEDUP)
        for _ in range(rng.randint(1, 4)):
            user = rng.choice(USERS)
            ts = start_ts + max(0, event_ms - rng.randint(0, 5_000))     # up to 5 s out of order
            view = {"user_id": user, "page": rng.choice(PAGES),
                    "duration_ms": rng.choice([0, rng.randint(200, 30_000)]), "ts": ts}
            p.produce("page-views", key=f"session-{user}-{rng.randint(1, 3)}".encode(),
                      value=avro.serialize(view), timestamp=ts)
            n += 1
        p.poll(0)
        time.sleep(0.05)
    p.flush(10)
    console.log(f"producer: sent {n} page views covering {EVENT_MINUTES} minutes of event time")


def main() -> int:
    console = Console()
    with DevBroker() as broker:
        bootstrap = broker.bootstrap
        console.log(f"development broker (memory only) at {bootstrap}")
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
        for f in admin.create_topics([NewTopic("page-views", 4), NewTopic("page-views-per-user-1m", 4)]).values():
            f.result(15)
        stop = threading.Event()
        prod = threading.Thread(target=produce_views, args=(bootstrap, stop, console), daemon=True)
        prod.start()
        run_seconds = EVENT_MINUTES * 60 / SPEEDUP + 25
        state_dir = os.path.join(ROOT, ".demo-state")
        app = subprocess.Popen(
            [sys.executable, "-m", "streamproc", "run", os.path.join(ROOT, "topologies", "page_views.py"),
             "--bootstrap-servers", bootstrap, "--workers", "2", "--state-dir", state_dir,
             "--config", "consumer.session.timeout.ms=6000", "--max-runtime", str(run_seconds)],
            cwd=ROOT)
        console.log(f"streamproc run topologies/page_views.py (pid {app.pid}, 2 workers, exactly-once) "
                    f"for {run_seconds:.0f} s")
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"demo-reader-{os.getpid()}",
                             "auto.offset.reset": "earliest", "isolation.level": "read_committed",
                             "session.timeout.ms": 6000, "log_level": 3})
        consumer.subscribe(["page-views-per-user-1m"])
        json = serdes.Json()
        table = Table(title="page views per user per minute (final results, read_committed)")
        for col in ("minute", "user", "views", "seconds", "record ts"):
            table.add_column(col, justify="right" if col != "user" else "left")
        rows = 0
        try:
            with Live(table, console=console, refresh_per_second=4):
                while app.poll() is None:
                    msg = consumer.poll(0.5)
                    if msg is None or msg.error():
                        continue
                    v = json.deserialize(msg.value())
                    minute = time.strftime("%H:%M", time.gmtime(v["window_start"] / 1000))
                    table.add_row(minute, json.deserialize(msg.key()), str(v["views"]),
                                  f"{v['seconds'] / 1000:.1f}", str(msg.timestamp()[1]))
                    rows += 1
        except KeyboardInterrupt:
            app.send_signal(signal.SIGINT)
        finally:
            stop.set()
            try:
                app.wait(45)
            except subprocess.TimeoutExpired:
                app.kill()
            consumer.close()
        console.log(f"{rows} window results; streamproc exited with code {app.returncode}")
        return 0 if app.returncode == 0 and rows > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
