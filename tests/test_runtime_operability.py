"""Runtime behaviour an operator relies on: refused settings, the no-partitions warning, a
failure restarting cannot fix (exit code 2 at once), purging that survives failures."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import pytest

import runtime_helpers as h
from streamproc import serdes
from streamproc.errors import UnrecoverableError
from streamproc.runtime.options import RunOptions
from streamproc.runtime.instance.app import prepare_topics
from streamproc.runtime.worker.errors import ConfigError
from streamproc.runtime.worker.group import check_assignor

STR, JSON = serdes.String(), serdes.Json()

TOPO = '''
from streamproc import Topology, agg, serdes, windows
t = Topology("{app}")
s = t.stream("{src}", key=serdes.String(), value=serdes.Json())
s.group_by_key().count(name="counts").to("{out}", key=serdes.String(), value=serdes.Json())
'''

TOPO_FAILING = '''
from streamproc import Topology, agg, serdes, windows
t = Topology("{app}")
s = t.stream("{src}", key=serdes.String(), value=serdes.Json())
s.map_values(lambda v: 1 // v["x"]).to("{out}", key=serdes.String(), value=serdes.Json())
'''


def _env():
    env = dict(os.environ, PYTHONPATH=h.ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), COLUMNS="300")
    env.pop("FORCE_COLOR", None)
    return env


# ----------------------------------------------------------------------------------------- assignor

@pytest.mark.parametrize("strategy", ["cooperative-sticky", "roundrobin", "range,cooperative-sticky"])
def test_an_assignor_other_than_eager_range_is_refused(strategy):
    with pytest.raises(ConfigError, match="not supported.*range") as e:
        check_assignor({"partition.assignment.strategy": strategy})
    assert isinstance(e.value, UnrecoverableError)
    check_assignor({"partition.assignment.strategy": "range"})
    check_assignor({})


def test_run_refuses_a_cooperative_assignor_with_exit_2_before_touching_the_broker(tmp_path):
    ref = h.write_topology(tmp_path / "t.py", TOPO.format(app="coop", src="in", out="out"))
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "streamproc", "run", ref, "-b", "127.0.0.1:1",
                        "--state-dir", str(tmp_path / "s"),
                        "--config", "consumer.partition.assignment.strategy=cooperative-sticky"],
                       env=_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert "cooperative-sticky" in p.stderr and "Traceback" not in p.stderr
    assert time.monotonic() - t0 < 20          # no broker wait: refused up front


# ----------------------------------------------------------------------------------------- broker

def _app(tmp_path, bootstrap, template, partitions=1):
    name = h.unique("op")
    names = {"app": name, "src": f"{name}-in", "out": f"{name}-out"}
    ref = h.write_topology(tmp_path / f"{name.replace('-', '_')}.py", template.format(**names))
    h.create(bootstrap, [names["src"], names["out"]], partitions)
    plan = h.load_plan(ref)
    opts = RunOptions(bootstrap, state_dir=str(tmp_path / "state"), client_config=dict(h.CLIENT_CONFIG),
                      topology=ref, no_partitions_warning_s=1.0)
    prepare_topics(plan, opts)
    return names, ref, plan, opts


@pytest.mark.broker
def test_a_worker_without_partitions_says_so_with_the_group_state(tmp_path, kafka, caplog):
    bootstrap = kafka[0]
    names, ref, plan, opts = _app(tmp_path, bootstrap, TOPO, partitions=1)
    caplog.set_level(logging.WARNING, logger="streamproc.worker")
    a = h.WorkerThread(plan, opts, process_id="a").start()
    try:
        h.wait_until(lambda: a.worker.tasks, 60, what="the first worker to own the partition")
        b = h.WorkerThread(plan, opts, process_id="b").start()
        try:
            h.wait_until(lambda: any("has had no partitions" in r.getMessage() for r in caplog.records), 60,
                         what="the idle worker's warning")
        finally:
            b.stop()
    finally:
        a.stop()
    msgs = [r.getMessage() for r in caplog.records if "has had no partitions" in r.getMessage()]
    assert all(names["app"] in m for m in msgs)
    assert any("member" in m or "could not be described" in m for m in msgs), msgs
    assert a.error is None and b.error is None


@pytest.mark.broker
def test_a_record_failing_under_fail_stops_the_instance_at_once_with_exit_2(tmp_path, kafka):
    bootstrap = kafka[0]
    names, ref, plan, opts = _app(tmp_path, bootstrap, TOPO_FAILING, partitions=1)
    h.produce(bootstrap, names["src"], [("k", {"x": 1}, 1), ("k", {"x": 0}, 2)], key_serde=STR, value_serde=JSON)
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "streamproc", "run", ref, "-b", bootstrap,
                        "--state-dir", str(tmp_path / "s"), "--config", "consumer.session.timeout.ms=6000",
                        "--log-format", "text"],
                       env=_env(), capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    assert p.returncode == 2, p.stderr
    assert "ZeroDivisionError" in p.stderr and "offsets" in p.stderr and names["src"] in p.stderr, p.stderr
    assert "crashed" not in p.stderr and "restarting" not in p.stderr and "Traceback" not in p.stderr
    assert p.stderr.count("error:") == 1
    assert took < 45, f"took {took:.0f} s: retried instead of stopping at once"


# ----------------------------------------------------------------------------------------- purging

class _Future:
    def __init__(self, exc=None):
        self._exc = exc

    def done(self):
        return True

    def exception(self):
        return self._exc


class _Admin:
    """delete_records that fails ``fail`` times, then succeeds; records every call."""

    def __init__(self, fail: int):
        self.fail = fail
        self.calls = []

    def delete_records(self, tps, request_timeout):
        self.calls.append({(tp.topic, tp.partition): tp.offset for tp in tps})
        exc = RuntimeError("broker said no") if len(self.calls) <= self.fail else None
        return {tp: _Future(exc) for tp in tps}


def test_purging_retries_with_backoff_after_failures_and_keeps_the_offsets(monkeypatch):
    from streamproc.runtime.worker import purge as W

    clock = [1000.0]
    monkeypatch.setattr(W.time, "monotonic", lambda: clock[0])

    class _W:
        id, app_id = "w", "app"
        options = RunOptions("b:1")

    purger = W.Purger(_W.options, _W.app_id, _W.id)
    purger._admin = admin = _Admin(fail=2)
    purger.committed({("rp", 0): 10, ("rp", 1): 7})
    purger.tick()
    assert admin.calls == []                       # not before the interval
    waits = []
    for _ in range(3):
        clock[0] = purger._next
        purger.tick()                                # sends
        purger.tick()                                # reads the result (on this thread)
        waits.append(purger._next - clock[0])
    assert len(admin.calls) == 3
    assert admin.calls[0] == admin.calls[1] == admin.calls[2] == {("rp", 0): 10, ("rp", 1): 7}
    assert waits[0] == 2 * W.PURGE_INTERVAL_S and waits[1] == 4 * W.PURGE_INTERVAL_S   # backoff grows
    purger.committed({("rp", 0): 20})
    clock[0] = purger._next
    purger.tick()
    assert admin.calls[-1] == {("rp", 0): 20}      # after a success only new offsets are purged
    purger.tick()
    assert purger._backoff == W.PURGE_INTERVAL_S   # and the backoff is reset


def test_static_membership_is_on_by_default_and_an_empty_instance_id_turns_it_off():
    from streamproc.kafka.config import consumer_config

    assert consumer_config("b:1", "app", {}, group_instance_id="app-p-0")["group.instance.id"] == "app-p-0"
    assert "group.instance.id" not in consumer_config("b:1", "app", {"group.instance.id": ""},
                                                      group_instance_id="app-p-0")
