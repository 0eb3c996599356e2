"""The RocksDB backend in the Kafka runtime (issue 4): replay, restart from local state, the
fingerprint refusal, expiry tombstones.

Workers run in threads of the test process (``runtime_helpers.WorkerThread``) except where the
test is about the CLI (`streamproc run` refusing a changed topology) or a SIGKILL.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import runtime_helpers as h
from streamproc.cli import app as cli_app
from streamproc.runtime.changelog.records import META_KEY
from streamproc.runtime.options import RunOptions
from streamproc.runtime.instance.load import process_id
from streamproc.runtime.instance.app import prepare_topics
from streamproc.runtime.engine.task import Task
from streamproc.state import codec as K
from streamproc.state.rocksdb import RocksDBBackend, task_dir
from test_runtime_examples import BASE, M, _views, renamed_example
from test_runtime_kafka import JSON, STR, TOPO_COUNT, events, last_per_key, read, setup_app

pytestmark = pytest.mark.broker


# ------------------------------------------------------------------------------------------ helpers

def snapshot(plan, state_dir) -> dict:
    """``{(store, partition): operator snapshot}`` of every local task directory (opened read-only)."""
    out = {}
    for st in plan.subtopologies:
        for spec in st.stores:
            root = os.path.join(state_dir, plan.app_id)
            for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
                sid, _, part = name.partition("_")
                if sid != str(st.id) or not part.isdigit():
                    continue
                b = RocksDBBackend.for_task(os.path.join(root, name), st, read_only=True)
                try:
                    out[(spec.name, int(part))] = Task(st, int(part), b).snapshot(spec.name)
                finally:
                    b.close()
    return out


def run_until(plan, opts, pred, timeout=60.0, what="processing"):
    """Run a worker in a thread until ``pred(worker)``; stop it cleanly; return the worker.

    The worker's identity is the instance's (the process id persisted in the state dir), as
    under ``streamproc run``: a restarted static member takes its partitions straight back."""
    w = h.WorkerThread(plan, opts, process_id=process_id(opts.state_dir, plan.app_id)).start()
    try:
        h.wait_until(lambda: pred(w.worker), timeout, what=what)
    finally:
        w.stop()
    return w.worker


def cli(*args):
    res = CliRunner().invoke(cli_app, list(args))
    assert res.exit_code == 0, res.output
    return res.output


# ------------------------------------------------------------------------------------------ (a) replay

def _moving_average_input():
    rnd = random.Random(13)
    recs, t = [], BASE
    for i in range(800):
        t += rnd.randint(0, 400)
        s = f"sensor{rnd.randrange(6)}"
        recs.append((s, {"sensor": s, "value": round(rnd.uniform(-5, 40), 2), "ts": t}, BASE + i))
    return recs


EXAMPLES = {
    "page_views": (lambda: _views(600, 11, key_by_user=False), 1),
    "user_sessions": (lambda: _views(400, 12, key_by_user=True), 2),
    "moving_average": (_moving_average_input, 2),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_replay_rebuilds_the_state_the_app_had(tmp_path, kafka, name):
    """Run an example until its input is read, stop, delete the state dir, `streamproc replay`:
    every store of every task equals what the running app had."""
    bootstrap = kafka[0]
    make, partitions = EXAMPLES[name]
    ref, _ = renamed_example(tmp_path, name)
    plan = h.load_plan(ref)
    [src] = plan.source_topics
    h.create(bootstrap, [src, *plan.sink_topics], partitions)
    state = str(tmp_path / "state")
    opts = RunOptions(bootstrap, state_dir=state, client_config=dict(h.CLIENT_CONFIG), topology=ref)
    prepare_topics(plan, opts)
    source = next(n for st in plan.subtopologies for n in st.nodes if n.kind == "source")
    records = make()
    h.produce(bootstrap, src, records, key_serde=source.params["key_serde"],
              value_serde=source.params["value_serde"])
    n_rep = len(plan.repartition_topics)
    seen = []

    def processed(w):           # the source read, and (with a repartition topic) the repartitioned records too
        seen.append(w.records_in)
        return w.records_in >= len(records) and len(seen) > 3 and seen[-1] == seen[-4] and not w.restoring \
            and (n_rep == 0 or w.records_in > len(records))
    run_until(plan, opts, processed, what=f"{name}: input processed")
    before = snapshot(plan, state)
    assert before and any(before.values()), f"{name}: no state written"

    shutil.rmtree(state)
    out = cli("replay", ref, "--state-dir", state, "--bootstrap-servers", bootstrap)
    line = out.strip().splitlines()[-1]
    assert line.startswith("replayed ") and "records/s" in line, out
    assert snapshot(plan, state) == before


def test_replay_refuses_while_a_worker_holds_the_task(tmp_path, kafka):
    bootstrap = kafka[0]
    names, ref, plan, opts = setup_app(tmp_path, bootstrap, TOPO_COUNT, 1, outputs=("out_table", "out_ids"))
    h.produce(bootstrap, names["src"], events(50, seed=3, late_every=0), key_serde=STR, value_serde=JSON)
    with h.WorkerThread(plan, opts, process_id=process_id(opts.state_dir, plan.app_id)) as w:
        h.wait_until(lambda: w.worker.tasks and not w.worker.restoring and w.worker.records_in >= 50, 60,
                     what="tasks running")
        res = CliRunner().invoke(cli_app, ["replay", ref, "--state-dir", opts.state_dir,
                                           "--bootstrap-servers", bootstrap])
        assert res.exit_code == 1
        assert "is in use by process" in res.output and "Traceback" not in res.output


# ------------------------------------------------------------------------------------------ (b) tail restore

def _changelog_records(bootstrap, plan):
    [spec] = plan.stores
    return h.read_to_end(bootstrap, spec.changelog)


def test_restart_restores_only_the_changelog_tail(tmp_path, kafka):
    """A clean restart reads nothing from the changelog; a restart on an older copy of the local
    state reads exactly the changelog records written after that copy's offsets."""
    bootstrap = kafka[0]
    names, ref, plan, opts = setup_app(tmp_path, bootstrap, TOPO_COUNT, 1, outputs=("out_table", "out_ids"))
    [spec] = plan.stores
    recs = events(1200, seed=5, late_every=0)
    want: dict = {}
    for _, v, _ in recs:
        want[v["user"]] = want.get(v["user"], 0) + 1
    h.produce(bootstrap, names["src"], recs[:600], key_serde=STR, value_serde=JSON)
    counted = lambda w: not w.restoring and w.records_in >= 2 * 600      # source + repartition
    w1 = run_until(plan, opts, counted)
    assert w1.restorer.records_restored == 0
    old = str(tmp_path / "state-copy")
    shutil.copytree(opts.state_dir, old)
    [tdir] = [d for d in os.listdir(os.path.join(old, plan.app_id)) if d[0].isdigit()]
    with RocksDBBackend(os.path.join(old, plan.app_id, tdir), read_only=True) as b:
        stored = b.get_meta("changelog_offsets")[spec.name]

    # clean restart: the local state is at the end of the changelog, nothing is read; then more input
    h.produce(bootstrap, names["src"], recs[600:], key_serde=STR, value_serde=JSON)
    w2 = run_until(plan, opts, counted)
    assert w2.restorer.records_restored == 0

    # restart on the older copy: only the changelog records past its offsets are read
    shutil.rmtree(opts.state_dir)
    shutil.copytree(old, opts.state_dir)
    tail = [r for r in _changelog_records(bootstrap, plan) if r[1] > stored]
    assert tail
    [st] = [st for st in plan.subtopologies if st.stores]
    parts = []

    def restored(w):
        parts[:] = parts or (w.restorer.parts((st.id, 0)) if w.restorer is not None else [])
        return w.tasks and not w.restoring and not w.restorer.pending
    w3 = run_until(plan, opts, restored)
    assert w3.restorer.records_restored == len(tail)
    [part] = parts
    assert part.first == stored + 1 and part.restored == len(tail)
    got = {k: v["count"] for k, v in last_per_key(h.decode(h.read_to_end(bootstrap, names["out_table"]),
                                                             STR, JSON)).items()}
    assert got == want
    assert {k: v["count"] for k, v in snapshot(plan, opts.state_dir)[(spec.name, 0)].items()} == want


# ------------------------------------------------------------------------------------------ (c) SIGKILL, EOS

@pytest.mark.real_kafka("Tansu delivers records of aborted transactions to read_committed consumers")
def test_sigkill_restart_resumes_from_local_state_exactly_once(tmp_path, kafka):
    bootstrap = kafka[0]
    names, ref, plan, opts = setup_app(tmp_path, bootstrap, TOPO_COUNT, 2, outputs=("out_table", "out_ids"))
    [spec] = plan.stores
    recs = events(6000, seed=9, late_every=0)
    want: dict = {}
    for _, v, _ in recs:
        want[v["user"]] = want.get(v["user"], 0) + 1
    state = opts.state_dir
    log = str(tmp_path / "app.log")
    h.produce(bootstrap, names["src"], recs[:3000], key_serde=STR, value_serde=JSON)
    p = h.app_subprocess(ref, bootstrap, state, workers=1, log_path=log)
    try:
        read(bootstrap, names["out_ids"], expect=1500, max_s=60)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)
        assert snapshot(plan, state), "no local state before the restart"
        h.produce(bootstrap, names["src"], recs[3000:], key_serde=STR, value_serde=JSON)
        p = h.app_subprocess(ref, bootstrap, state, workers=1, log_path=log)
        h.wait_until(lambda: {k: v["count"] for k, v in
                              last_per_key(read(bootstrap, names["out_table"], quiet_s=1.0)).items()} == want,
                     90, interval=1.0, what="final counts after a SIGKILL and restart")
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    ids = [v for _, v, _ in read(bootstrap, names["out_ids"], quiet_s=1.0)]
    assert sorted(ids) == list(range(len(recs)))           # exactly once
    merged: dict = {}
    for snap in snapshot(plan, state).values():
        merged.update({k: v["count"] for k, v in snap.items()})
    assert merged == want


# ------------------------------------------------------------------------------------------ (d) fingerprint

TOPO_WINDOW = '''
from streamproc import Topology, agg, serdes, windows
t = Topology("{app}")
s = t.stream("{src}", key=serdes.String(), value=serdes.Json())
(s.group_by_key()
  .window(windows.Tumbling("{size}", grace="{grace}"))
  .aggregate(n=agg.count(), total=agg.sum("x"), name="windows")
  .to("{out_win}", key=serdes.String(), value=serdes.Json()))
'''


def test_changed_topology_is_refused_by_streamproc_run(tmp_path, kafka):
    bootstrap = kafka[0]
    names, ref, plan, opts = setup_app(tmp_path, bootstrap, TOPO_WINDOW, 1, outputs=("out_win",),
                                       size="1s", grace="0s")
    h.produce(bootstrap, names["src"], events(100, seed=4, late_every=0), key_serde=STR, value_serde=JSON)
    run_until(plan, opts, lambda w: w.tasks and not w.restoring and w.records_in >= 100)
    changed = h.write_topology(tmp_path / "changed.py", TOPO_WINDOW.format(**{**names, "size": "500ms"}))
    env = dict(os.environ, PYTHONPATH=h.ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), COLUMNS="300")
    p = subprocess.run([sys.executable, "-m", "streamproc", "run", changed, "--bootstrap-servers", bootstrap,
                        "--state-dir", opts.state_dir, "--config", "consumer.session.timeout.ms=6000",
                        "--log-format", "text"],
                       env=env, capture_output=True, text=True, timeout=90)
    assert p.returncode != 0
    assert "was written by a different definition of its operator" in p.stderr, p.stderr
    assert "streamproc reset" in p.stderr and "Traceback" not in p.stderr
    assert "crashed" not in p.stderr          # refused at once, not after a crash loop
    assert p.stderr.count("error:") == 1


# ------------------------------------------------------------------------------------------ (e) expiry

def test_expired_windows_are_deleted_locally_and_tombstoned(tmp_path, kafka):
    bootstrap = kafka[0]
    names, ref, plan, opts = setup_app(tmp_path, bootstrap, TOPO_WINDOW, 1, outputs=("out_win",),
                                       size="1s", grace="0s")
    [spec] = plan.stores
    t0 = 1_700_000_000_000
    old = [(f"k{i % 5}", {"id": i, "user": "u", "x": i}, t0 + i * 10) for i in range(50)]       # windows t0..
    h.produce(bootstrap, names["src"], old, key_serde=STR, value_serde=JSON)
    run_until(plan, opts, lambda w: w.tasks and not w.restoring and w.records_in >= 50)
    tdir = task_dir(opts.state_dir, plan.app_id, f"{plan.subtopologies[0].id}_0")
    with RocksDBBackend(tdir, read_only=True) as b:
        old_keys = set(b.keys(spec.name))
    assert old_keys, "no windows stored"
    # much later records close (and expire) every old window
    late = [(f"k{i % 5}", {"id": 100 + i, "user": "u", "x": i}, t0 + 10 * M + i) for i in range(10)]
    h.produce(bootstrap, names["src"], late, key_serde=STR, value_serde=JSON)
    run_until(plan, opts, lambda w: w.tasks and not w.restoring and w.records_in >= 10)
    with RocksDBBackend(tdir, read_only=True) as b:
        now_keys = set(b.keys(spec.name))
    assert not (now_keys & old_keys), f"expired windows still stored: {sorted(now_keys & old_keys)[:5]}"
    tombstoned = {K.decode_store_key("window", r[2]) for r in h.read_to_end(bootstrap, spec.changelog)
                  if r[3] is None and r[2] != META_KEY}
    assert old_keys <= tombstoned


# ------------------------------------------------------------------------------------------ memory backend

def test_memory_backend_restores_the_whole_changelog(tmp_path, kafka):
    """``state_backend="memory"`` keeps the old behaviour: nothing on disk, every start restores
    the whole changelog (canonical changelog keys decoded into the memory backend).

    Both states are read once their worker has stopped (its thread joined): a store read from this
    thread while the worker runs can fall inside a checkpoint, between ``TaskState.changes()`` and
    ``apply()``, when the batch's changes are in neither the write cache nor the backend (and after a
    rolled-back checkpoint ``records_in`` counts records whose changes were discarded)."""
    bootstrap = kafka[0]
    names, ref, plan, opts = setup_app(tmp_path, bootstrap, TOPO_WINDOW, 1, outputs=("out_win",),
                                       size="1s", grace="0s")
    opts.state_backend = "memory"
    h.produce(bootstrap, names["src"], events(300, seed=6, late_every=0), key_serde=STR, value_serde=JSON)
    tasks = {}

    def done(w):            # every record processed and committed (no checkpoint open)
        if w.tasks and not w.restoring and w.records_in >= 300 and not w.open:
            [tasks["first"]] = w.tasks.values()
            return True
        return False
    run_until(plan, opts, done)
    state = tasks["first"].snapshot("windows")       # a MemoryBackend outlives its closed task
    assert state, "no windows in the state"
    assert not [d for d in os.listdir(os.path.join(opts.state_dir, plan.app_id)) if d[0].isdigit()]
    changelog = h.read_to_end(bootstrap, plan.stores[0].changelog)

    def restored(w):
        if w.tasks and not w.restoring and not w.restorer.pending:
            [tasks["second"]] = w.tasks.values()
            return True
        return False
    w = run_until(plan, opts, restored)
    assert w.records_in == 0, "the restarted worker processed input again: its state is not the restored one"
    assert w.restorer.records_restored == len(changelog)
    assert tasks["second"].snapshot("windows") == state
