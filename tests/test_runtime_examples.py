"""Differential tests of the example topologies (topologies/*.py): the output topic after running
on a broker equals the TopologyTestDriver's output for the same input.

Each example is copied with its app id and topics renamed (so runs never share topics) and its
schema path made absolute. Comparisons are exact where results cannot depend on batching or on
the interleaving of upstream partitions in a repartition topic (see test_runtime_kafka.py):
``emit="final"`` results of one-partition-per-task inputs as multisets; ``emit="update"`` results
by the last value per (key, window).
"""
from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

import runtime_helpers as h
from streamproc.plan import compile_topology
from streamproc.runtime.options import RunOptions
from streamproc.loader import load_topology
from streamproc.runtime.instance.app import prepare_topics

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parent.parent
BASE = 1_700_000_000_000
M = 60_000


@pytest.fixture(scope="module")
def bootstrap(request):
    return h.broker(request)[0]


def renamed_example(tmp_path, name: str) -> tuple[str, dict]:
    """A copy of topologies/<name>.py with unique app id and topic names; returns (path, old->new)."""
    src_path = REPO / "topologies" / f"{name}.py"
    text = src_path.read_text()
    plan = compile_topology(load_topology(str(src_path)) if "schemas/" not in text else _at_repo(src_path))
    prefix = h.unique("ex")
    names = {n: f"{prefix}-{n}" for n in {plan.app_id, *plan.source_topics, *plan.sink_topics}}
    for old, new in names.items():
        text = text.replace(f'"{old}"', f'"{new}"')
    text = re.sub(r'"schemas/', f'"{REPO}/schemas/', text)
    path = tmp_path / f"{prefix.replace('-', '_')}_{name}.py"
    path.write_text(text)
    return str(path), names


def _at_repo(src_path):
    import os

    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        return load_topology(str(src_path))
    finally:
        os.chdir(cwd)


def run_and_compare(tmp_path, bootstrap, name, records, partitions, *, final: bool):
    ref, names = renamed_example(tmp_path, name)
    plan = h.load_plan(ref)
    [src] = plan.source_topics
    [out] = plan.sink_topics
    h.create(bootstrap, [src, out], partitions)
    opts = RunOptions(bootstrap, state_dir=str(tmp_path / "state"), client_config=dict(h.CLIENT_CONFIG), topology=ref)
    prepare_topics(plan, opts)
    source = next(n for st in plan.subtopologies for n in st.nodes if n.kind == "source")
    sink = next(n for st in plan.subtopologies for n in st.nodes if n.kind == "sink")
    h.produce(bootstrap, src, records, key_serde=source.params["key_serde"], value_serde=source.params["value_serde"])
    want = h.driver_output(ref, {src: records}, {src: partitions}, [out])[out]
    assert want, "the example produced nothing under the driver: the input is too small"
    with h.WorkerThread(plan, opts):
        if final:
            raw = h.read_topic(bootstrap, out, expect=len(want), max_s=60)
        else:
            wanted = _last_per_window([tuple(r) for r in want])

            last = []

            def caught_up():
                got = h.decode(h.read_topic(bootstrap, out, quiet_s=0.5), sink.params["key_serde"],
                               sink.params["value_serde"])
                last[:] = [got]
                return _same_windows(_last_per_window(got), wanted)
            try:
                h.wait_until(caught_up, 60, interval=1.0, what=f"{name}: the last update of every window")
            except AssertionError:
                got = _last_per_window(last[0])
                diff = [(k, got.get(k), v) for k, v in wanted.items() if got.get(k) != v][:5]
                raise AssertionError(f"{len(got)} windows vs {len(wanted)} expected; differences e.g. {diff}")
            raw = h.read_topic(bootstrap, out, quiet_s=0.5)
    got = h.decode(raw, sink.params["key_serde"], sink.params["value_serde"])
    if final:
        assert h.multiset(got) == h.multiset([tuple(r) for r in want])
    else:
        assert _same_windows(_last_per_window(got), _last_per_window([tuple(r) for r in want]))


def _same_windows(got: dict, want: dict) -> bool:
    """Equal, floats up to rounding (a mean folded in other batches sums in another order)."""
    if got.keys() != want.keys():
        return False
    return all(g.keys() == w.keys() and all(g[f] == pytest.approx(w[f], rel=1e-9, abs=1e-9) for f in w)
               for g, w in ((got[k], want[k]) for k in want))


def _last_per_window(records) -> dict:
    return {(k, v.get("window_start")): v for k, v, _ in records}


def _views(n, seed, *, key_by_user: bool):
    rnd = random.Random(seed)
    users = [f"user{i}" for i in range(9)]
    t = BASE
    out = []
    for i in range(n):
        t += rnd.choice([rnd.randint(0, 4000), rnd.randint(0, 4000), rnd.randint(20 * M, 50 * M)]) \
            if key_by_user else rnd.randint(0, 1500)
        user = rnd.choice(users)
        ts = t - rnd.randint(0, 20_000) if i % 17 == 16 else t
        v = {"user_id": user, "page": f"/p{rnd.randrange(12)}", "duration_ms": rnd.choice([0, rnd.randint(1, 9000)]),
             "ts": ts}
        out.append((user if key_by_user else f"session{rnd.randrange(40)}", v, BASE + i))
    return out


def test_page_views_example(tmp_path, bootstrap):
    """Avro input, filter, group_by (repartition), tumbling 1m grace 10s, emit final. One source
    partition: the repartition topic then sees records in the driver's order, so late drops match."""
    run_and_compare(tmp_path, bootstrap, "page_views", _views(3000, 11, key_by_user=False), 1, final=True)


def test_user_sessions_example(tmp_path, bootstrap):
    """Session windows (gap 30m, grace 1m) per user, emit final, pages collected in order; 3 partitions."""
    run_and_compare(tmp_path, bootstrap, "user_sessions", _views(1500, 12, key_by_user=True), 3, final=True)


def test_moving_average_example(tmp_path, bootstrap):
    """Hopping 5m/1m windows, grace 30s, emit update: the last update of every window matches."""
    rnd = random.Random(13)
    recs, t = [], BASE
    for i in range(3000):
        t += rnd.randint(0, 400)
        ts = t - rnd.randint(0, 60_000) if i % 23 == 22 else t
        s = f"sensor{rnd.randrange(6)}"
        recs.append((s, {"sensor": s, "value": round(rnd.uniform(-5, 40), 2), "ts": ts}, BASE + i))
    run_and_compare(tmp_path, bootstrap, "moving_average", recs, 2, final=False)
