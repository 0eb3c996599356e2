"""The state layer: per-checkpoint write cache over a backend (DESIGN.md section 5).

``Store``: get / put / delete / items seen through the write cache. ``TaskState``:
``changes()`` takes the caches (one entry per key per checkpoint), ``apply(offsets)``
writes them with the metadata in one go, ``discard()`` goes back to the last checkpoint.
"""
from __future__ import annotations

import pytest

from streamproc import Topology, agg, serdes, windows
from streamproc.state import MemoryBackend, Store, TaskState


def checkpoint(state: TaskState, offsets=None) -> dict:
    changes = state.changes()
    state.apply(offsets)
    return changes


def as_sets(changes: dict) -> dict:
    return {store: sorted(entries, key=repr) for store, entries in changes.items() if entries}


@pytest.fixture
def backend():
    return MemoryBackend()


@pytest.fixture
def state(backend):
    return TaskState(backend, ["s", "t"])


# --------------------------------------------------------------------------- Store overlay


def test_store_get_put_delete_overlay_the_backend(state, backend):
    s = state.store("s")
    assert isinstance(s, Store)
    s.put("kept", 1)
    s.put("changed", 2)
    s.put("deleted", 3)
    checkpoint(state)
    assert backend.get("s", "changed") == 2

    s.put("changed", 20)          # cached value hides the backend's
    s.delete("deleted")           # a cached delete hides the backend's value
    s.put("new", 4)
    assert s.get("kept") == 1                     # from the backend
    assert s.get("changed") == 20
    assert s.get("deleted") is None
    assert s.get("deleted", "dflt") == "dflt"
    assert s.get("missing") is None and s.get("missing", 0) == 0
    assert s.get("new") == 4
    assert sorted(s.items()) == [("changed", 20), ("kept", 1), ("new", 4)]
    # the backend still has the checkpointed view
    assert backend.get("s", "changed") == 2 and backend.get("s", "deleted") == 3
    assert backend.get("s", "new") is None


def test_put_after_delete_and_delete_after_put(state):
    s = state.store("s")
    s.put("k", 1)
    s.delete("k")
    assert s.get("k") is None and s.items() == []
    s.put("k", 2)
    assert s.get("k") == 2 and s.items() == [("k", 2)]


def test_get_many_reads_cache_then_backend(state):
    s = state.store("s")
    s.put("a", 1)
    s.put("b", 2)
    checkpoint(state)
    s.put("b", 20)
    s.delete("a")
    s.put("c", 3)
    assert s.get_many(["a", "b", "c", "d"]) == [None, 20, 3, None]


def test_stores_of_one_task_are_separate(state):
    state.store("s").put("k", "in s")
    state.store("t").put("k", "in t")
    assert state.store("s").get("k") == "in s"
    assert as_sets(checkpoint(state)) == {"s": [("k", "in s")], "t": [("k", "in t")]}
    assert state.store("t").get("k") == "in t"


def test_values_are_kept_as_given_including_tuple_keys_and_lists(state, backend):
    s = state.store("s")
    s.put(("user", 60_000), [59_999, 3, [1, 2]])
    checkpoint(state)
    assert backend.get("s", ("user", 60_000)) == [59_999, 3, [1, 2]]
    assert s.get(("user", 60_000)) == [59_999, 3, [1, 2]]


# --------------------------------------------------------------------------- changes()


def test_changes_has_one_entry_per_key_per_checkpoint_even_after_many_puts(state):
    s = state.store("s")
    for i in range(1000):
        s.put("hot", i)
        s.put(f"k{i % 3}", i)
    s.put("gone", 1)
    s.delete("gone")
    changes = state.changes()
    assert as_sets(changes) == {"s": sorted([("hot", 999), ("k0", 999), ("k1", 997), ("k2", 998), ("gone", None)],
                                            key=repr)}
    assert [k for k, _ in changes["s"]].count("hot") == 1
    assert changes.get("t", []) == []


def test_a_delete_of_a_checkpointed_key_is_a_tombstone_in_the_next_changes(state, backend):
    s = state.store("s")
    s.put("k", 1)
    checkpoint(state)
    s.delete("k")
    assert as_sets(checkpoint(state)) == {"s": [("k", None)]}
    assert backend.get("s", "k") is None
    assert backend.items("s") == []


def test_a_checkpoint_without_writes_has_no_changes(state):
    state.store("s").put("k", 1)
    checkpoint(state)
    assert as_sets(checkpoint(state)) == {}


def test_writes_after_changes_belong_to_the_next_checkpoint(state, backend):
    s = state.store("s")
    s.put("a", 1)
    first = state.changes()
    s.put("b", 2)                 # written while the checkpoint is open
    state.apply()
    assert as_sets(first) == {"s": [("a", 1)]}
    assert backend.get("s", "a") == 1 and backend.get("s", "b") is None
    assert s.get("b") == 2
    assert as_sets(checkpoint(state)) == {"s": [("b", 2)]}
    assert backend.get("s", "b") == 2


def test_changes_twice_without_apply_is_refused(state):
    state.store("s").put("k", 1)
    state.changes()
    with pytest.raises(RuntimeError):
        state.changes()


# --------------------------------------------------------------------------- apply()


def test_nothing_reaches_the_backend_before_apply(state, backend):
    s = state.store("s")
    s.put("a", 1)
    s.put("b", 2)
    state.stream_time = 500
    assert backend.get("s", "a") is None and backend.items("s") == []
    assert backend.get_meta("stream_time") is None
    state.changes()
    assert backend.get("s", "a") is None and backend.items("s") == []       # taken, not yet applied
    assert backend.get_meta("stream_time") is None
    state.apply({"s": 41})
    assert sorted(backend.items("s")) == [("a", 1), ("b", 2)]
    assert backend.get_meta("stream_time") == 500


def test_apply_writes_stream_time_and_changelog_offsets_to_metadata(state, backend):
    assert state.stream_time == -1                  # a fresh task has seen nothing
    state.store("s").put("k", 1)
    state.stream_time = 1_000
    checkpoint(state, {"s": 10, "t": 3})
    assert backend.get_meta("stream_time") == 1_000
    assert backend.get_meta("changelog_offsets") == {"s": 10, "t": 3}

    state.stream_time = 2_000
    checkpoint(state, {"s": 11})                    # t's offset did not move: kept
    assert backend.get_meta("stream_time") == 2_000
    assert backend.get_meta("changelog_offsets") == {"s": 11, "t": 3}

    checkpoint(state)                               # no offsets: the recorded ones stay
    assert backend.get_meta("changelog_offsets") == {"s": 11, "t": 3}


def test_stream_time_survives_a_restart_on_the_same_backend(state, backend):
    state.store("s").put("k", "v")
    state.stream_time = 12_345
    checkpoint(state)
    state.stream_time = 99_999                      # processed but never checkpointed
    again = TaskState(backend, ["s", "t"])
    assert again.stream_time == 12_345
    assert again.store("s").get("k") == "v"


# --------------------------------------------------------------------------- discard()


def test_discard_restores_the_last_checkpoint_view_and_stream_time(state, backend):
    s = state.store("s")
    s.put("a", 1)
    s.put("b", 2)
    state.stream_time = 100
    checkpoint(state, {"s": 5})

    s.put("a", 10)
    s.delete("b")
    s.put("c", 3)
    state.store("t").put("x", 1)
    state.stream_time = 900
    state.discard()

    assert state.stream_time == 100
    assert s.get("a") == 1 and s.get("b") == 2 and s.get("c") is None
    assert sorted(s.items()) == [("a", 1), ("b", 2)]
    assert state.store("t").get("x") is None
    assert as_sets(checkpoint(state)) == {}         # nothing left over
    assert backend.get_meta("changelog_offsets") == {"s": 5}


def test_discard_after_changes_drops_the_taken_changes(state, backend):
    s = state.store("s")
    s.put("a", 1)
    checkpoint(state)
    s.put("a", 2)
    state.stream_time = 50
    state.changes()                                 # the checkpoint opened ...
    state.discard()                                 # ... and its transaction was aborted
    assert s.get("a") == 1
    assert state.stream_time == -1
    state.apply()                                   # a later apply writes nothing of it
    assert backend.get("s", "a") == 1
    assert as_sets(state.changes()) == {}


def test_discard_on_a_fresh_task_empties_everything(state):
    state.store("s").put("k", 1)
    state.stream_time = 7
    state.discard()
    assert state.stream_time == -1
    assert state.store("s").items() == []


# --------------------------------------------------------------------------- tasks on a kept backend


def _window_task(backend):
    from streamproc.plan import compile_topology
    from streamproc.runtime.engine.task import Task

    top = Topology("app")
    top.stream("in", key=serdes.String(), value=serdes.Json()).group_by_key() \
        .window(windows.Tumbling(10)).aggregate(n=agg.count(), name="w").to("out")
    return Task(compile_topology(top).subtopologies[0], 0, backend)


def _process(task, key, ts, offset):
    from streamproc.operators import RawBatch

    produced = task.process(RawBatch("in", 0, [key.encode()], [b"1"], [ts], [offset]))
    return [(topic, kb, vb, t) for topic, kbs, vbs, tss in produced for kb, vb, t in zip(kbs, vbs, tss)]


def test_a_task_rebuilt_from_its_backend_keeps_open_windows_and_stream_time(backend):
    task = _window_task(backend)
    assert _process(task, "a", 3, 0) == []
    checkpoint(task.state)

    again = _window_task(backend)                   # restart: operators re-index the stored windows
    assert again.state.stream_time == 3
    out = _process(again, "b", 12, 1)               # closes a's [0, 10) from the earlier run
    assert out == [("out", b"a", b'{"window_start":0,"window_end":10,"n":1}', 3)]


def test_a_rebuilt_task_uses_the_persisted_stream_time_for_lateness(backend):
    task = _window_task(backend)
    _process(task, "a", 25, 0)
    checkpoint(task.state)
    again = _window_task(backend)
    assert _process(again, "a", 5, 1) == []          # [0, 10) closed at stream time 25: late
    assert again.metrics.get("late_records") == 1


def test_a_task_rebuilt_after_discard_forgets_the_aborted_records(backend):
    task = _window_task(backend)
    _process(task, "a", 3, 0)
    checkpoint(task.state)
    _process(task, "a", 4, 1)                       # this checkpoint is aborted
    task.state.discard()
    again = _window_task(backend)
    out = _process(again, "b", 10, 1)
    assert out == [("out", b"a", b'{"window_start":0,"window_end":10,"n":1}', 3)]
