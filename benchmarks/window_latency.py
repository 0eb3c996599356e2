"""How long after its window closes does a result come out, on a live, caught-up stream?

Two apps on the same input (1 s tumbling count, emit="final", grace 0, exactly-once, 1 worker each):
(direct) grouped by the record key; (re-keyed) the same behind a repartition topic, where the
downstream task's time comes from its upstream tasks' watermarks. A producer writes records stamped
with the wall clock at about ``--rate`` per second over 4 partitions; a window [s, s+1000) closes when
a record stamped >= s+1000 reaches the task (every partition: records are spread over all keys), so
the latency of a window is (when its result was read) - (s + 1000). Reported: median and p90 per app.

    python benchmarks/window_latency.py [--bootstrap-servers host:9092] [--seconds 20] [--rate 400]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap-servers")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--rate", type=int, default=400)
    args = ap.parse_args(argv)

    import orjson
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

    import runtime_helpers as h
    from streamproc.kafka.devbroker import DevBroker
    from streamproc.runtime.options import RunOptions
    from streamproc.runtime.instance.app import prepare_topics

    broker = None
    bootstrap = args.bootstrap_servers
    if not bootstrap:
        broker = DevBroker().start()
        bootstrap = broker.bootstrap
    run = uuid.uuid4().hex[:6]
    src = f"lat-in-{run}"
    h.create(bootstrap, [src], 4)
    apps = {}
    for name, grouped in (("direct", ".group_by_key()"), ("re-keyed", ".group_by(lambda k, v: k, name='by-k')")):
        out = f"lat-out-{name}-{run}"
        h.create(bootstrap, [out], 1)
        path = f"/tmp/lat_{name}_{run}.py"
        h.write_topology(path, f"""
            from streamproc import Topology, serdes, windows
            topology = Topology("lat-{name}-{run}")
            (topology.stream("{src}", key=serdes.String(), value=serdes.Json()){grouped}
             .window(windows.Tumbling("1s")).count(name="c").to("{out}", value=serdes.Json()))
        """)
        plan = h.load_plan(path)
        opts = RunOptions(bootstrap, state_dir=f"/tmp/lat-state-{name}-{run}", topology=path,
                          client_config=dict(h.CLIENT_CONFIG))
        prepare_topics(plan, opts)
        apps[name] = (plan, opts, out)
    workers = {n: h.WorkerThread(p, o).start() for n, (p, o, _) in apps.items()}
    for w in workers.values():
        h.wait_until(lambda w=w: w.worker.tasks, 60, what="tasks running")
    seen: dict = {n: {} for n in apps}
    stop = threading.Event()

    def reader(name, topic):
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lat-reader-{uuid.uuid4().hex[:6]}",
                      "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])     # no group join (slow on the dev broker)
        while not stop.is_set():
            for m in c.consume(100, 0.05):
                if m.error() is None:
                    v = orjson.loads(m.value())
                    seen[name].setdefault((m.key(), v["window_start"]), time.time() * 1000)
        c.close()

    readers = [threading.Thread(target=reader, args=(n, a[2]), daemon=True) for n, a in apps.items()]
    for t in readers:
        t.start()
    p = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 1})
    start = time.time()
    i = 0
    while time.time() - start < args.seconds:
        now = int(time.time() * 1000)
        p.produce(src, orjson.dumps({"i": i}), f"k{i % 16}".encode(), timestamp=now)
        i += 1
        p.poll(0)
        time.sleep(1.0 / args.rate)
    p.flush(10)
    time.sleep(3)
    stop.set()
    for w in workers.values():
        w.stop()
    if broker is not None:
        broker.stop()
    print(f"{i} records over {args.seconds:.0f} s at ~{args.rate}/s, 4 partitions, 16 keys, 1 s windows, grace 0")
    for name, got in seen.items():
        lat = sorted(t - (ws + 1000) for (_, ws), t in got.items() if ws + 1000 < start * 1000 + args.seconds * 1000)
        if not lat:
            print(f"{name:9s}: no results")
            continue
        print(f"{name:9s}: {len(lat)} results, latency after window end: median {statistics.median(lat):.0f} ms, "
              f"p90 {lat[int(0.9 * (len(lat) - 1))]:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
