"""Crash tests: SIGKILL at random points mid-stream, restart, and every input counts exactly once.

Needs real Apache Kafka: the read_committed checks rely on aborted transactions being
invisible, which Tansu (the default test broker) does not implement.
"""
from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

import runtime_helpers as h
from streamproc.runtime.changelog.restore import restore_blocking
from streamproc.runtime.engine.task import Task
from streamproc.state import MemoryBackend
from test_runtime_kafka import JSON, STR, TOPO_COUNT, events, last_per_key, read, setup_app

pytestmark = pytest.mark.broker


def _children(pid: int) -> list[int]:
    """The worker processes of the app process ``pid`` (not multiprocessing's resource tracker)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        return []
    workers = []
    for k in kids:
        try:
            with open(f"/proc/{k}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    workers.append(k)
        except OSError:
            pass
    return workers


def _restored_counts(plan, bootstrap, app_id):
    """Rebuild every task of the counting sub-topology from its changelog, as a restarted worker would."""
    from streamproc.kafka.config import restore_consumer_config

    st = next(s for s in plan.subtopologies if s.stateful)
    from confluent_kafka.admin import AdminClient

    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    n = len(md.topics[st.stores[0].changelog].partitions)
    out = {}
    for p in range(n):
        backend = MemoryBackend()
        restore_blocking(restore_consumer_config(bootstrap, app_id), (st.id, p), backend, st.stores, p,
                         stall_timeout_s=3.0)
        out.update(Task(st, p, backend).snapshot("counts"))
    return {k: v["count"] for k, v in out.items()}


def _repartition_duplicates(bootstrap, app_id) -> str:
    """Diagnosis: input records seen more than once by the counting tasks (read_committed)."""
    from collections import Counter

    from streamproc.state import codec

    recs = h.read_topic(bootstrap, f"{app_id}-by-user-repartition", quiet_s=2.0)
    values = [codec.decode_value(r[3]) for r in recs]
    seen = Counter(v["id"] for v in values)
    user_of = {v["id"]: v["user"] for v in values}
    dups = dict(Counter({u: 0 for u in user_of.values()}) + Counter(
        {u: sum(n - 1 for i, n in seen.items() if n > 1 and user_of[i] == u) for u in set(user_of.values())}))
    return f"ids read twice from the repartition topic per user: {dups or 'none'}"


def _committed_total(bootstrap, group, topic, partitions):
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return sum(max(tp.offset, 0) for tp in tps)
    finally:
        c.close()


@pytest.mark.real_kafka("Tansu delivers records of aborted transactions to read_committed consumers")
def test_sigkill_at_random_points_counts_every_input_exactly_once(tmp_path, kafka):
    bootstrap = kafka[0]
    names, ref, plan, opts = setup_app(tmp_path, bootstrap, TOPO_COUNT, 4, outputs=("out_table", "out_ids"))
    recs = events(24_000, seed=6, late_every=0)
    want: dict = {}
    for _, v, _ in recs:
        want[v["user"]] = want.get(v["user"], 0) + 1
    state = str(tmp_path / "state")
    log = str(tmp_path / "app.log")
    rnd = random.Random(int(os.environ.get("STREAMPROC_CRASH_SEED", "7")))
    killing = threading.Event()
    killing.set()

    def feed():               # a steady stream while the app is killed and restarted, the rest at the end
        for i in range(0, len(recs), 200):
            h.produce(bootstrap, names["src"], recs[i:i + 200], key_serde=STR, value_serde=JSON)
            if killing.is_set():
                time.sleep(0.25)

    def progress():
        return _committed_total(bootstrap, names["app"], names["src"], 4)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    kills = 0
    for cycle in range(4):
        base = progress()
        p = h.app_subprocess(ref, bootstrap, state, workers=2, log_path=log)
        try:
            h.wait_until(lambda: progress() > base, 90, interval=0.2, what="the restarted app to commit progress")
            time.sleep(rnd.uniform(0.0, 2.5))
            kids = _children(p.pid)
            if cycle % 2 and kids:        # a worker dies mid-stream; the supervisor restarts it
                os.kill(rnd.choice(kids), signal.SIGKILL)
                kills += 1
                base = progress()
                h.wait_until(lambda: progress() > base, 90, interval=0.2, what="progress after a worker restart")
                time.sleep(rnd.uniform(0.0, 2.0))
            os.killpg(p.pid, signal.SIGKILL)      # the whole instance dies mid-stream
            kills += 1
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
    killing.clear()
    feeder.join(120)
    assert not feeder.is_alive()

    p = h.app_subprocess(ref, bootstrap, state, workers=2, log_path=log)
    try:
        counts = {}

        def caught_up():
            counts.update({k: v["count"] for k, v in
                           last_per_key(read(bootstrap, names["out_table"], quiet_s=1.0)).items()})
            return counts == want
        try:
            h.wait_until(caught_up, 180, interval=2.0, what="final counts equal to the input counts")
        except AssertionError:
            raise AssertionError(f"after the crashes: counts {counts} != input counts {want} "
                                 f"(differences {({k: counts.get(k, 0) - n for k, n in want.items()})}; "
                                 f"{_repartition_duplicates(bootstrap, names['app'])})") from None
        ids = [v for _, v, _ in read(bootstrap, names["out_ids"], expect=len(recs), max_s=60)]
        time.sleep(2.0)
        ids_again = [v for _, v, _ in read(bootstrap, names["out_ids"], quiet_s=2.0)]
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert kills >= 6
    assert sorted(ids) == list(range(len(recs))), "every input exactly once in the read_committed output"
    assert len(ids_again) == len(recs)
    assert _restored_counts(plan, bootstrap, names["app"]) == want, "restored state counts every input once"


def test_sigkill_restart_recovers(tmp_path, kafka):
    """The mechanics on any broker: an instance SIGKILLed mid-stream restarts with the same identity
    (its transactional.id fences the dead one), restores its state and catches up."""
    bootstrap = kafka[0]
    names, ref, plan, opts = setup_app(tmp_path, bootstrap, TOPO_COUNT, 2, outputs=("out_table", "out_ids"))
    recs = events(4000, seed=8, late_every=0)
    want: dict = {}
    for _, v, _ in recs:
        want[v["user"]] = want.get(v["user"], 0) + 1
    state = str(tmp_path / "state")
    log = str(tmp_path / "app.log")
    h.produce(bootstrap, names["src"], recs[:2000], key_serde=STR, value_serde=JSON)
    p = h.app_subprocess(ref, bootstrap, state, workers=1, log_path=log)
    try:
        read(bootstrap, names["out_ids"], expect=1000, max_s=60)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)
        h.produce(bootstrap, names["src"], recs[2000:], key_serde=STR, value_serde=JSON)
        p = h.app_subprocess(ref, bootstrap, state, workers=1, log_path=log)
        h.wait_until(lambda: {k: v["count"] for k, v in
                              last_per_key(read(bootstrap, names["out_table"], quiet_s=1.0)).items()} == want,
                     90, interval=1.0, what="final counts after a SIGKILL and restart")
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    ids = {v for _, v, _ in read(bootstrap, names["out_ids"], quiet_s=1.0)}
    assert ids == set(range(len(recs)))
    assert _restored_counts(plan, bootstrap, names["app"]) == want
