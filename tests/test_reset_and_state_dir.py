"""Operating safely (issue 20, items 1-3 and the reset/replay/README points of item 5): a reset that
cannot half-happen, state bound to the cluster it was built against, figures that agree.

Fast tests use a fake cluster (the admin calls `reset` and `run` make, patched); the ``broker``
tests run the app on the test broker. Tansu drops a static member on a clean stop (Apache Kafka
keeps it until its session times out), so the wait for lingering members is tested with the fake.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import runtime_helpers as h
from streamproc.cli import app as cli_app
from streamproc.cli import state as cli_state
from streamproc.errors import BrokerError, StateBusyError, StateError
from streamproc.kafka import admin as kadmin
from streamproc.kafka.admin import GroupInfo, GroupMember
from streamproc.runtime.instance import app as rt_app
from streamproc.runtime.options import RunOptions
from streamproc.runtime.instance.load import StateDirLock, process_id
from streamproc.state import layout
from streamproc.state.lock import TaskDirLock
from streamproc.state.rocksdb import RocksDBBackend, task_dir

REPO = Path(__file__).resolve().parent.parent

TOPO = '''
from streamproc import Topology, serdes
t = Topology("{app}")
s = t.stream("{src}", key=serdes.String(), value=serdes.Json())
s.group_by(lambda k, v: v["user"], name="by-user").count(name="counts").to("{out}", key=serdes.String(), value=serdes.Json())
'''


@pytest.fixture(autouse=True)
def _keep_logging(monkeypatch):
    """`run` configures this process's logging (format, root handlers): undo it after each test."""
    import logging

    from streamproc.runtime.instance import logs

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    monkeypatch.setattr(logs, "_current", logs.current_format())
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def make_app(tmp_path, template=TOPO, **extra):
    app = h.unique("rs")
    names = {"app": app, "src": f"{app}-in", "out": f"{app}-out", **extra}
    ref = h.write_topology(tmp_path / f"{app.replace('-', '_')}.py", template.format(**names))
    return names, ref, h.load_plan(ref)


def cli(*args, input=None):
    return CliRunner().invoke(cli_app, [str(a) for a in args], input=input)


def paragraph(output: str) -> str:
    """The one error paragraph of a command's output (rich may wrap it: lines joined)."""
    text = " ".join(line.strip() for line in output.strip().splitlines())
    assert text.count("error: ") == 1 and "Traceback" not in output, output
    return text[text.index("error: "):]


# ============================================================================ the layout

def test_every_state_path_comes_from_the_layout(tmp_path):
    sd = str(tmp_path / "state")
    assert task_dir(sd, "app", "1_0") == layout.task_dir(sd, "app", "1_0") == \
        os.path.join(os.path.abspath(sd), "app", "1_0")
    lock = TaskDirLock(layout.task_dir(sd, "app", "1_0"))
    assert lock.path == os.path.join(layout.task_dir(sd, "app", "1_0"), layout.TASK_LOCK)
    assert StateDirLock(sd, "app").path == layout.lock_path(sd, "app") == os.path.join(sd, "app", ".lock")
    pid = process_id(sd, "app")
    assert Path(layout.process_id_path(sd, "app")).read_text().strip() == pid
    assert layout.dev_broker_state_dir(sd) == os.path.join(sd, "dev-broker")
    assert layout.reset_marker_topic("app") == "app-reset-incomplete"
    os.makedirs(layout.task_dir(sd, "app", "1_0"))
    os.makedirs(layout.global_dir(sd, "app", 0))
    os.makedirs(layout.task_dir(sd, "app", "not-a-task"))
    assert layout.task_dirs(sd, "app") == [(1, 0, layout.task_dir(sd, "app", "1_0"))]
    assert layout.global_dirs(sd, "app") == [(None, 0, layout.global_dir(sd, "app", 0))]


def test_cluster_record_binds_state_to_its_cluster(tmp_path):
    sd = str(tmp_path / "state")
    layout.bind_cluster(sd, "app", "cluster-A", "a:9092")
    rec = layout.read_cluster_record(sd, "app")
    assert rec["cluster_id"] == "cluster-A" and rec["app_id"] == "app" and rec["bootstrap_servers"] == "a:9092"
    # no state yet: another cluster simply takes the directory over
    layout.bind_cluster(sd, "app", "cluster-B", "b:9092")
    assert layout.read_cluster_record(sd, "app")["cluster_id"] == "cluster-B"
    os.makedirs(layout.task_dir(sd, "app", "0_0"))
    layout.bind_cluster(sd, "app", "cluster-B", "b:9092")            # its own cluster: fine
    with pytest.raises(StateError) as e:
        layout.bind_cluster(sd, "app", "cluster-A", "a:9092", "topo.py")
    msg = str(e.value)
    assert "'cluster-B'" in msg and "'cluster-A'" in msg and "--state-dir" in msg and "reset" in msg, msg
    assert "\n" not in msg
    assert layout.read_cluster_record(sd, "app")["cluster_id"] == "cluster-B"     # not rebound
    # a directory copied under another app id
    os.rename(layout.app_dir(sd, "app"), layout.app_dir(sd, "other"))
    with pytest.raises(StateError, match="built for app id 'app', not 'other'"):
        layout.bind_cluster(sd, "other", "cluster-B", "b:9092")


# ============================================================================ a fake cluster

class FakeCluster:
    """What `reset` and `run`'s start-up checks see of a cluster, in memory."""

    cluster_id = "fake-cluster-id"

    def __init__(self):
        self.topics: set[str] = set()
        self.groups: dict[str, list[GroupMember]] = {}        # group -> members (present: offsets too)
        self.leave_after: float | None = None                 # members go after this many seconds
        self.t0 = time.monotonic()
        self.calls: list[str] = []

    def install(self, monkeypatch):
        c = self

        class MD:
            def __init__(self):
                self.cluster_id = c.cluster_id
                self.topics = {t: object() for t in c.topics}
                self.brokers = {1: object()}

        monkeypatch.setattr(kadmin, "wait_for_broker", lambda conf, timeout_s=30: MD())
        monkeypatch.setattr(rt_app, "wait_for_broker", lambda conf, timeout_s=30: MD())
        monkeypatch.setattr(kadmin, "make_admin", lambda *a, **k: object())
        monkeypatch.setattr(kadmin, "describe_group", lambda admin, group, timeout_s=15: c.describe(group))
        monkeypatch.setattr(kadmin, "create_topics", lambda admin, names, n, **k: c.create(names))
        monkeypatch.setattr(kadmin, "delete_group", lambda admin, group, timeout_s=30: c.delete_group(group))
        monkeypatch.setattr(kadmin, "delete_topics", lambda admin, names, timeout_s=30: c.delete_topics(names))
        return self

    def describe(self, group):
        if group not in self.groups:
            return None
        if self.leave_after is not None and time.monotonic() - self.t0 > self.leave_after:
            self.groups[group] = []
        return GroupInfo("STABLE" if self.groups[group] else "EMPTY", tuple(self.groups[group]))

    def create(self, names):
        self.calls.append(f"create {','.join(names)}")
        new = [n for n in names if n not in self.topics]
        self.topics.update(names)
        return new

    def delete_group(self, group):
        self.calls.append(f"delete group {group}")
        if self.groups.get(group):
            raise BrokerError(f"refused to delete consumer group {group!r}: NON_EMPTY_GROUP")
        return self.groups.pop(group, None) is not None

    def delete_topics(self, names):
        self.calls.append(f"delete {','.join(names)}")
        gone = [n for n in names if n in self.topics]
        self.topics.difference_update(gone)
        return gone


class Killed(Exception):
    """A reset stopped at a hook point, as by SIGKILL: no handler of the reset runs."""


def kill_at(monkeypatch, step):
    def reached(s):
        if s == step:
            raise Killed(s)
    monkeypatch.setattr(cli_state, "_reached", reached)


def fake_app(tmp_path, cluster: FakeCluster):
    """An app that ran on the fake cluster: internal topics, a group with offsets, local state."""
    names, ref, plan = make_app(tmp_path)
    sd = str(tmp_path / "state")
    internal = plan.changelog_topics + plan.repartition_topics + [f"{plan.app_id}-instances"]
    cluster.topics.update([names["src"], names["out"], *internal])
    cluster.groups[plan.app_id] = []
    for tid in ("1_0", "1_1"):
        os.makedirs(os.path.join(layout.task_dir(sd, plan.app_id, tid), "rocksdb"))
        Path(layout.task_dir(sd, plan.app_id, tid), "rocksdb", "CURRENT").write_text("x")
    process_id(sd, plan.app_id)
    layout.write_cluster_record(sd, plan.app_id, cluster.cluster_id, "fake:9092")
    StateDirLock(sd, plan.app_id).acquire().release()        # a run leaves its lock file
    return names, ref, plan, sd, internal


def start_checks(plan, sd, ref):
    """`run`'s checks before it touches a topic (``run_app`` calls them first)."""
    rt_app._check_state_dir(plan, RunOptions("fake:9092", state_dir=sd, topology=ref))


def reset_cli(ref, sd, *extra):
    return cli("reset", ref, "--state-dir", sd, "-b", "fake:9092", "-y", *extra)


def assert_reset_done(cluster, plan, sd, names, internal):
    assert not set(internal) & cluster.topics, cluster.topics
    assert layout.reset_marker_topic(plan.app_id) not in cluster.topics
    assert {names["src"], names["out"]} <= cluster.topics          # the app's own topics stay
    assert plan.app_id not in cluster.groups
    assert sorted(os.listdir(layout.app_dir(sd, plan.app_id))) == ["process-id"]   # no lock, marker, state


@pytest.mark.parametrize("step", cli_state.RESET_STEPS)
def test_reset_killed_at_a_step_blocks_run_until_reset_again(tmp_path, monkeypatch, step):
    cluster = FakeCluster().install(monkeypatch)
    names, ref, plan, sd, internal = fake_app(tmp_path, cluster)
    kill_at(monkeypatch, step)
    res = reset_cli(ref, sd)
    assert isinstance(res.exception, Killed), res.output
    if step == "checked":          # nothing deleted, nothing marked: the app may run on
        assert cluster.calls == [] and not os.path.exists(layout.reset_marker_path(sd, plan.app_id))
        assert len(layout.task_dirs(sd, plan.app_id)) == 2
        start_checks(plan, sd, ref)
    else:
        with pytest.raises(StateError) as e:
            start_checks(plan, sd, ref)
        msg = str(e.value)
        assert msg.startswith("reset incomplete: run `streamproc reset ") and "\n" not in msg, msg
        assert ref in msg and sd in msg
        # `replay` refuses too, before it reads or writes anything
        res = cli("replay", ref, "--state-dir", sd, "-b", "fake:9092")
        assert res.exit_code == 2 and "reset incomplete: run `streamproc reset" in paragraph(res.output)
    if step in ("kafka-marker-deleted",):
        # only the local marker is left: a new machine may run; this one still refuses
        assert layout.reset_marker_topic(plan.app_id) not in cluster.topics
    monkeypatch.setattr(cli_state, "_reached", lambda s: None)
    res = reset_cli(ref, sd)
    assert res.exit_code == 0, res.output
    assert_reset_done(cluster, plan, sd, names, internal)
    start_checks(plan, sd, ref)


def test_a_new_machine_sees_the_kafka_half_of_the_marker(tmp_path, monkeypatch):
    cluster = FakeCluster().install(monkeypatch)
    names, ref, plan, sd, internal = fake_app(tmp_path, cluster)
    kill_at(monkeypatch, "topics-deleted")            # the case: topics gone, local state left
    assert isinstance(reset_cli(ref, sd).exception, Killed)
    other = str(tmp_path / "other-machine")           # a state directory that never saw the reset
    with pytest.raises(StateError) as e:
        start_checks(plan, other, ref)
    assert "reset incomplete" in str(e.value) and layout.reset_marker_topic(plan.app_id) in str(e.value)
    monkeypatch.setattr(cli_state, "_reached", lambda s: None)
    assert reset_cli(ref, other).exit_code == 0       # finished from the other machine
    start_checks(plan, other, ref)
    with pytest.raises(StateError, match="reset incomplete"):
        start_checks(plan, sd, ref)                    # this machine's local marker still stands
    assert reset_cli(ref, sd).exit_code == 0
    assert_reset_done(cluster, plan, sd, names, internal)


def test_reset_waits_for_static_members_a_clean_stop_leaves(tmp_path, monkeypatch):
    cluster = FakeCluster().install(monkeypatch)
    names, ref, plan, sd, internal = fake_app(tmp_path, cluster)
    cluster.groups[plan.app_id] = [GroupMember("m-1", f"{plan.app_id}-abc-0", "c", "/10.0.0.1")]
    cluster.leave_after = 1.0
    t0 = time.monotonic()
    res = reset_cli(ref, sd, "--config", "consumer.session.timeout.ms=1500")
    assert res.exit_code == 0, res.output
    assert 0.9 < time.monotonic() - t0 < 6
    out = " ".join(res.output.split())
    assert "static member" in out and "waiting up to" in out, res.output
    assert_reset_done(cluster, plan, sd, names, internal)


def test_reset_refuses_with_nothing_deleted_while_members_stay(tmp_path, monkeypatch):
    cluster = FakeCluster().install(monkeypatch)
    names, ref, plan, sd, internal = fake_app(tmp_path, cluster)
    cluster.groups[plan.app_id] = [GroupMember("m-1", None, "rs-consumer", "/10.0.0.2")]
    t0 = time.monotonic()
    res = reset_cli(ref, sd, "--config", "consumer.session.timeout.ms=500")
    assert res.exit_code == 1
    assert time.monotonic() - t0 < 8
    msg = paragraph(res.output)
    assert "nothing deleted" in msg and "still running" in msg and "10.0.0.2" in msg, msg
    assert cluster.calls == []
    assert not os.path.exists(layout.reset_marker_path(sd, plan.app_id))
    assert len(layout.task_dirs(sd, plan.app_id)) == 2
    start_checks(plan, sd, ref)                       # nothing changed: the app may run on


def test_reset_refuses_while_an_instance_or_a_replay_holds_the_state(tmp_path, monkeypatch):
    cluster = FakeCluster().install(monkeypatch)
    names, ref, plan, sd, internal = fake_app(tmp_path, cluster)
    with StateDirLock(sd, plan.app_id):               # an instance runs on this state dir
        res = reset_cli(ref, sd)
    assert res.exit_code == 1 and "in use by another streamproc instance" in paragraph(res.output)
    with TaskDirLock(layout.task_dir(sd, plan.app_id, "1_1")):     # e.g. a replay
        res = reset_cli(ref, sd)
    assert res.exit_code == 1 and "in use by process" in paragraph(res.output)
    assert cluster.calls == [] and len(layout.task_dirs(sd, plan.app_id)) == 2
    assert not os.path.exists(layout.reset_marker_path(sd, plan.app_id))


def test_reset_refuses_another_clusters_state_dir(tmp_path, monkeypatch):
    cluster = FakeCluster().install(monkeypatch)
    names, ref, plan, sd, internal = fake_app(tmp_path, cluster)
    layout.write_cluster_record(sd, plan.app_id, "staging-cluster", "staging:9092")
    res = reset_cli(ref, sd)
    msg = paragraph(res.output)
    assert res.exit_code == 2 and "nothing deleted" in msg and "'staging-cluster'" in msg and \
        "'fake-cluster-id'" in msg, msg
    assert cluster.calls == [] and len(layout.task_dirs(sd, plan.app_id)) == 2
    assert cli("reset", ref, "--state-dir", sd, "--local-only", "-y").exit_code == 0
    assert layout.task_dirs(sd, plan.app_id) == [] and not os.path.exists(layout.lock_path(sd, plan.app_id))


def test_local_only_reset_killed_midway_blocks_run(tmp_path, monkeypatch):
    cluster = FakeCluster().install(monkeypatch)
    names, ref, plan, sd, internal = fake_app(tmp_path, cluster)
    kill_at(monkeypatch, "local-deleting")
    assert isinstance(cli("reset", ref, "--state-dir", sd, "--local-only", "-y").exception, Killed)
    with pytest.raises(StateError) as e:
        start_checks(plan, sd, ref)
    assert "--local-only" in str(e.value)
    monkeypatch.setattr(cli_state, "_reached", lambda s: None)
    assert cli("reset", ref, "--state-dir", sd, "--local-only", "-y").exit_code == 0
    assert sorted(os.listdir(layout.app_dir(sd, plan.app_id))) == ["process-id"]
    assert cluster.calls == []
    start_checks(plan, sd, ref)


# ============================================================================ run on the development broker

def test_run_without_bootstrap_warns_and_keeps_dev_state_apart(tmp_path, monkeypatch):
    from streamproc.kafka import devbroker

    names, ref, plan = make_app(tmp_path)
    sd = str(tmp_path / "state")
    os.makedirs(layout.task_dir(sd, plan.app_id, "1_0"))            # a real cluster's state
    layout.write_cluster_record(sd, plan.app_id, "prod", "kafka:9092")
    dev = layout.dev_broker_state_dir(sd)
    os.makedirs(layout.task_dir(dev, plan.app_id, "1_0"))           # a previous dev run's, now meaningless
    seen = {}

    class FakeDevBroker:
        bootstrap = "127.0.0.1:1"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def fake_run_app(plan_, options):
        seen["options"] = options
        return 0

    monkeypatch.setattr(devbroker, "DevBroker", FakeDevBroker)
    monkeypatch.setattr(rt_app, "run_app", fake_run_app)
    res = cli("run", ref, "--state-dir", sd, "--log-format", "json")
    assert res.exit_code == 0, res.output
    warning = [json.loads(line) for line in res.output.splitlines() if line.startswith("{")]
    assert warning and warning[0]["level"] == "WARNING", res.output
    assert "DEVELOPMENT broker" in warning[0]["msg"] and dev in warning[0]["msg"]
    assert seen["options"].state_dir == dev and seen["options"].bootstrap_servers == FakeDevBroker.bootstrap
    assert layout.task_dirs(dev, plan.app_id) == []                  # started afresh
    assert len(layout.task_dirs(sd, plan.app_id)) == 1               # the cluster's state left alone
    assert layout.read_cluster_record(sd, plan.app_id)["cluster_id"] == "prod"


# ============================================================================ `state`

TWO_STORES = '''
from streamproc import Topology, agg, serdes, windows
t = Topology("{app}")
s = t.stream("{src}", key=serdes.String(), value=serdes.Json())
(s.group_by_key()
  .window(windows.Tumbling("1m"))
  .aggregate(views=agg.count(), seconds=agg.sum("s"), name="views-per-user-1m")
  .to("{out}", value=serdes.Json()))
s.group_by_key().count(name="totals").to("{out2}", key=serdes.String(), value=serdes.Json())
'''


def _write_local_state(plan, sd, records):
    from streamproc import serdes
    from streamproc.operators.io import RawBatch
    from streamproc.runtime.engine.task import Task

    [st] = plan.subtopologies
    path = layout.task_dir(sd, plan.app_id, layout.task_id(st.id, 0))
    backend = RocksDBBackend.for_task(path, st)
    try:
        task = Task(st, 0, backend)
        ks, js = serdes.String(), serdes.Json()
        task.process(RawBatch(st.nodes[0].params["topic"], 0, [ks.serialize(k) for k, _, _ in records],
                              [js.serialize(v) for _, v, _ in records], [ts for *_, ts in records],
                              list(range(len(records)))))
        task.state.changes()
        task.state.apply({})
    finally:
        backend.close()


def test_readme_state_key_example_works_with_several_stores(tmp_path):
    readme = (REPO / "README.md").read_text()
    [line] = [ln for ln in readme.splitlines() if ln.startswith("streamproc state ") and "--key" in ln]
    args = line.split("#")[0].split()[2:]
    assert args[0] == "topologies/page_views.py"
    names, ref, plan = make_app(tmp_path, TWO_STORES, out2="x")
    assert len(plan.stores) == 2
    sd = str(tmp_path / "state")
    t0 = 1_700_000_000_000
    key = args[args.index("--key") + 1]
    _write_local_state(plan, sd, [(key, {"s": 5}, t0), (key, {"s": 7}, t0 + 1000), ("bob", {"s": 1}, t0)])
    res = cli("state", ref, *args[1:], "--state-dir", sd)
    assert res.exit_code == 0, res.output
    [window] = json.loads(res.output)
    assert window["views"] == 2 and window["seconds"] == 12, window
    res = cli("state", ref, "--key", key, "--state-dir", sd)            # no --store: says which to pick
    assert res.exit_code == 1 and "--store views-per-user-1m" in paragraph(res.output)
    # a reset left unfinished: `state` refuses too (the state may be half deleted)
    layout.write_reset_marker(sd, plan.app_id, {"local_only": True})
    res = cli("state", ref, *args[1:], "--state-dir", sd)
    assert res.exit_code == 2 and "reset incomplete" in paragraph(res.output)


# ============================================================================ broker

def _wait_processed(w, n_in, timeout=60.0):
    """The worker read every input record and every repartitioned one (the topology re-keys them all)."""
    h.wait_until(lambda: w.worker.records_in >= 2 * n_in and not w.worker.restoring, timeout,
                 what=f"{2 * n_in} records processed")


def _run(plan, opts, n_in):
    """`run` as the CLI does it, in this process: the start-up checks, the topics, one worker."""
    rt_app._check_state_dir(plan, opts)
    rt_app.prepare_topics(plan, opts)
    w = h.WorkerThread(plan, opts, process_id=process_id(opts.state_dir, plan.app_id)).start()
    try:
        _wait_processed(w, n_in)
    finally:
        w.stop()


def _counts(bootstrap, topic):
    from streamproc import serdes

    return {k: v for k, v, _ in h.decode(h.read_to_end(bootstrap, topic), serdes.String(), serdes.Json())}


def _inputs(n, seed, first=0):
    import random

    rnd = random.Random(seed)
    return [(f"k{rnd.randrange(9)}", {"user": f"u{rnd.randrange(5)}", "i": first + i}, 1_700_000_000_000 + first + i)
            for i in range(n)]


def _broker_app(tmp_path, bootstrap):
    from streamproc import serdes

    names, ref, plan = make_app(tmp_path)
    h.create(bootstrap, [names["src"], names["out"]], 2)
    opts = RunOptions(bootstrap, state_dir=str(tmp_path / "state"), client_config=dict(h.CLIENT_CONFIG),
                      topology=ref)

    def produce(recs):
        h.produce(bootstrap, names["src"], recs, key_serde=serdes.String(), value_serde=serdes.Json())
    return names, ref, plan, opts, produce


def _from_scratch(ref, names, records):
    out = h.driver_output(ref, {names["src"]: records}, {names["src"]: 2}, [names["out"]])[names["out"]]
    return {r.key: r.value for r in out}


@pytest.mark.broker
def test_reset_right_after_a_clean_stop_then_run_equals_from_scratch(tmp_path, kafka):
    bootstrap = kafka[0]
    names, ref, plan, opts, produce = _broker_app(tmp_path, bootstrap)
    first, more = _inputs(120, 1), _inputs(40, 2, first=120)
    produce(first)
    _run(plan, opts, len(first))
    rec = layout.read_cluster_record(opts.state_dir, plan.app_id)
    assert rec["cluster_id"] and rec["app_id"] == plan.app_id
    res = cli("reset", ref, "--state-dir", opts.state_dir, "-b", bootstrap, "-y",
              "--config", "consumer.session.timeout.ms=6000")
    assert res.exit_code == 0, res.output
    listed = set(kadmin.make_admin(bootstrap).list_topics(timeout=10).topics)
    assert not listed & {*plan.changelog_topics, *plan.repartition_topics, f"{plan.app_id}-instances",
                         layout.reset_marker_topic(plan.app_id)}
    assert os.listdir(layout.app_dir(opts.state_dir, plan.app_id)) == ["process-id"]
    produce(more)
    _run(plan, opts, len(first) + len(more))          # everything reprocessed, from empty state
    assert _counts(bootstrap, names["out"]) == _from_scratch(ref, names, first + more)

    # replay: the final line's figure is the bar's
    res = cli("replay", ref, "--state-dir", str(tmp_path / "replayed"), "-b", bootstrap)
    assert res.exit_code == 0, res.output
    bar = re.findall(r"(\d+)/(\d+)", res.output.split("replayed ")[0])
    line = res.output.strip().splitlines()[-1]
    m = re.match(r"replayed (\d+)/(\d+) changelog offsets .*: (\d+) records", line)
    assert m and bar and bar[-1] == (m.group(1), m.group(2)) and m.group(1) == m.group(2), res.output
    assert int(m.group(3)) <= int(m.group(1))


@pytest.mark.broker
def test_reset_killed_at_every_step_is_refused_then_finished(tmp_path, kafka, monkeypatch):
    """Each reset of the chain is stopped at the next step (one by SIGKILL in a subprocess): `run`
    refuses whatever was deleted, the next reset finishes, and the run after it equals a from-scratch run."""
    bootstrap = kafka[0]
    names, ref, plan, opts, produce = _broker_app(tmp_path, bootstrap)
    first, more = _inputs(100, 3), _inputs(30, 4, first=100)
    produce(first)
    _run(plan, opts, len(first))
    args = ["reset", ref, "--state-dir", opts.state_dir, "-b", bootstrap, "-y"]
    for step in cli_state.RESET_STEPS:
        if step == "topics-deleted":                  # a real kill at the step
            code = ("import os, signal, sys; import streamproc.cli.state as s; "
                    "s._reached = lambda step: step == 'topics-deleted' and os.kill(os.getpid(), signal.SIGKILL); "
                    "from streamproc.cli import app; sys.argv = ['streamproc'] + sys.argv[1:]; app()")
            env = dict(os.environ, PYTHONPATH=h.ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
            p = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                               timeout=120)
            assert p.returncode == -9, p.stderr
        else:
            kill_at(monkeypatch, step)
            assert isinstance(cli(*args).exception, Killed)
        if step == "checked":
            continue                                  # nothing deleted yet: the app could run on
        with pytest.raises(StateError, match=r"^reset incomplete: run `streamproc reset "):
            rt_app.run_app(plan, opts)
    monkeypatch.setattr(cli_state, "_reached", lambda s: None)
    res = cli(*args)
    assert res.exit_code == 0, res.output
    assert "finishing an incomplete reset" in " ".join(res.output.split())
    assert os.listdir(layout.app_dir(opts.state_dir, plan.app_id)) == ["process-id"]
    produce(more)
    _run(plan, opts, len(first) + len(more))
    assert _counts(bootstrap, names["out"]) == _from_scratch(ref, names, first + more)


@pytest.mark.broker
def test_run_replay_and_state_refuse_another_clusters_state(tmp_path, kafka):
    bootstrap = kafka[0]
    names, ref, plan, opts, produce = _broker_app(tmp_path, bootstrap)
    sd = opts.state_dir
    os.makedirs(layout.task_dir(sd, plan.app_id, "1_0"))
    layout.write_cluster_record(sd, plan.app_id, "the-other-cluster", "elsewhere:9092")
    here = kadmin.cluster_id(kadmin.make_admin(bootstrap))
    for args in (["run", ref, "-b", bootstrap, "--state-dir", sd, "--log-format", "text"],
                 ["replay", ref, "-b", bootstrap, "--state-dir", sd],
                 ["state", ref, "-b", bootstrap, "--state-dir", sd]):
        res = cli(*args)
        msg = paragraph(res.output)
        assert res.exit_code == 2, (args[0], res.output)
        assert "'the-other-cluster'" in msg and repr(here) in msg and "--state-dir" in msg and \
            "streamproc reset" in msg, (args[0], msg)
    assert not set(kadmin.make_admin(bootstrap).list_topics(timeout=10).topics) & set(plan.changelog_topics)
    assert layout.read_cluster_record(sd, plan.app_id)["cluster_id"] == "the-other-cluster"
