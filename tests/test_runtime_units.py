"""Runtime pieces that need no broker: topic sizing and configs, options, process id, lock,
topology references, and the supervisor's crash loop."""
from __future__ import annotations

import os
import time

import pytest

import runtime_helpers as h
from streamproc import Topology, agg, serdes, windows
from streamproc.errors import StateBusyError, StateError, TopologyError
from streamproc.plan import compile_topology
from streamproc.runtime.instance import app as app_mod
from streamproc.runtime.instance import supervisor as sup_mod
from streamproc.runtime.changelog.records import META_KEY
from streamproc.runtime.options import RunOptions
from streamproc.loader import load_topology
from streamproc.runtime.instance.load import StateDirLock, process_id


def _plan():
    t = Topology("units")
    s = t.stream("clicks", key=serdes.String(), value=serdes.Json(), on_error="dead-letter")
    s.group_by(lambda k, v: v["user"]).window(windows.Tumbling("1m", grace="10s")).aggregate(
        n=agg.count(), name="per-user").to("per-user-out")
    s.group_by_key().window(windows.Session("30s", grace="5s")).count(name="sessions").to("sessions-out")
    s.group_by_key().count(name="totals").to("totals-out")
    return compile_topology(t)


def test_partition_counts_follow_the_upstream_inputs():
    plan = _plan()
    counts = app_mod.partition_counts(plan, {"clicks": 6})
    assert counts["units-per-user-repartition"] == 6
    for st in plan.subtopologies:
        assert counts[("task", st.id)] == 6


def test_internal_topic_configs():
    plan = _plan()
    specs = {s.name: s for s in app_mod.internal_topic_specs(plan, app_mod.partition_counts(plan, {"clicks": 3}))}
    margin = app_mod.RETENTION_MARGIN_MS
    windowed = specs["units-per-user-changelog"]
    assert windowed.partitions == 3
    assert windowed.config == {"cleanup.policy": "compact,delete", "retention.ms": str(60_000 + 10_000 + margin)}
    session = specs["units-sessions-changelog"]
    assert session.config == {"cleanup.policy": "compact,delete", "retention.ms": str(30_000 + 5_000 + margin)}
    assert specs["units-totals-changelog"].config == {"cleanup.policy": "compact"}
    assert specs["units-per-user-repartition"].config == {"cleanup.policy": "delete", "retention.ms": "-1"}
    assert specs["units-per-user-repartition"].partitions == 3
    assert specs["units-dlq"].partitions == 3


def test_metadata_key_cannot_collide_with_encoded_keys():
    from streamproc.state import codec

    for k in ["", b"", 0, None, ("a", 1), "\x00streamproc.meta", META_KEY]:
        assert codec.encode_key(k)[:1] != b"\x00"
        for kind in codec.KINDS:
            assert codec.encode_store_key(kind, (k, 0) if kind in codec.WINDOWED_KINDS else k)[:1] != b"\x00"
    assert META_KEY[:1] == b"\x00" and codec.is_reserved_key(META_KEY)


def test_options_split_client_config_and_defaults():
    o = RunOptions("b:9092", client_config={"linger.ms": 5, "consumer.session.timeout.ms": 6000,
                                            "producer.acks": "all"})
    assert o.client("consumer") == {"linger.ms": 5, "session.timeout.ms": 6000}
    assert o.client("producer") == {"linger.ms": 5, "acks": "all"}
    assert o.commit_interval_s == 0.1
    assert RunOptions("b", guarantee="at-least-once").commit_interval_s == 1.0
    with pytest.raises(Exception, match="guarantee"):
        RunOptions("b", guarantee="maybe").validate()


def test_process_id_is_persisted_and_the_state_dir_is_locked(tmp_path):
    a = process_id(str(tmp_path), "app")
    assert a == process_id(str(tmp_path), "app")
    assert (tmp_path / "app" / "process-id").read_text().strip() == a
    assert process_id(str(tmp_path), "other") != a
    with StateDirLock(str(tmp_path), "app"):
        with pytest.raises(StateBusyError, match="in use by another streamproc instance"):
            StateDirLock(str(tmp_path), "app").acquire()
    StateDirLock(str(tmp_path), "app").acquire().release()


def test_topology_references(tmp_path):
    path = h.write_topology(tmp_path / "two.py", """
        from streamproc import Topology
        a = Topology("app-a"); a.stream("x").to("y")
        b = Topology("app-b"); b.stream("x").to("z")
        def make():
            t = Topology("app-c"); t.stream("x").to("w"); return t
    """)
    assert load_topology(f"{path}:b").app_id == "app-b"
    assert load_topology(f"{path}:make").app_id == "app-c"
    assert load_topology(path, app_id="app-a").app_id == "app-a"
    with pytest.raises(Exception, match="pick one with"):
        load_topology(path)


def test_copartitioning_mismatch_is_refused():
    t = Topology("cop")
    a = t.stream("a")
    b = t.stream("b")
    a.merge(b).group_by_key().count().to("out")
    plan = compile_topology(t)
    with pytest.raises(TopologyError, match="co-partitioning"):
        app_mod.partition_counts(plan, {"a": 2, "b": 3})


def test_crash_loop_stops_with_the_workers_last_error(tmp_path, monkeypatch):
    """A worker that cannot start is restarted with backoff; the 5th crash within 60 s ends the app."""
    monkeypatch.setattr(sup_mod, "BACKOFF_START_S", 0.05)
    path = h.write_topology(tmp_path / "broken.py", """
        from streamproc import Topology
        t = Topology("broken"); t.stream("x").to("y")
        raise RuntimeError("the topology module blew up on purpose")
    """)
    opts = RunOptions("127.0.0.1:1", workers=1, state_dir=str(tmp_path / "state"))
    sup = sup_mod.Supervisor(path, "broken", opts, "pid")
    t0 = time.monotonic()
    with pytest.raises(sup_mod.WorkerCrashLoop) as exc:
        sup.run()
    msg = str(exc.value)
    assert "crashed 5 times within 60 s" in msg
    assert "blew up on purpose" in msg
    assert "Traceback" not in msg and "\n" not in msg
    assert time.monotonic() - t0 < 60
    assert sup.worker_pids() == []
    assert os.path.exists(path)


def test_unreachable_broker_is_a_clear_error_not_a_hang(tmp_path):
    from streamproc.errors import BrokerError
    from streamproc.runtime.instance.app import run_app

    t = Topology("unreachable")
    t.stream("x").to("y")
    opts = RunOptions("127.0.0.1:1", state_dir=str(tmp_path), broker_timeout_s=2.0, topology="unused.py")
    t0 = time.monotonic()
    with pytest.raises(BrokerError, match="cannot reach Kafka at 127.0.0.1:1"):
        run_app(compile_topology(t), opts)
    assert time.monotonic() - t0 < 10
