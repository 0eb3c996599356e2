"""Hand-computed examples for tests/reference_model.py.

These pin DESIGN.md section 4 in readable form and validate the model that
test_window_semantics.py holds the implementation to.  They do not import
streamproc.  Every expected value below was worked out by hand from the rules
in DESIGN.md section 4 (and, for sliding windows, the Kafka Streams
SlidingWindows javadoc); the comment next to each step says why.
"""

from __future__ import annotations

import random

import pytest

import reference_model as m
from reference_model import Hopping, Session, Sliding, Tumbling


def R(key, ws, we, ts, n, total):
    return (key, ws, we, n, total, ts)


def batches(out: m.ModelOutput):
    """Per input record: the sorted results of that batch, as R(...) tuples."""
    return [
        sorted(
            (r.key, r.value["window_start"], r.value["window_end"], r.value["n"], r.value["total"], r.timestamp)
            for r in b
        )
        for b in out.batches
    ]


# --------------------------------------------------------------------------- tumbling


def test_tumbling_closes_when_stream_time_reaches_end():
    # size 10, grace 0: [0,10) closes when stream time >= 10 + 0; ts 12 does it.
    out = m.run([("k", {"v": 1}, 1), ("k", {"v": 2}, 5), ("k", {"v": 4}, 12)], Tumbling(10, 0))
    assert batches(out) == [[], [], [R("k", 0, 10, 5, 2, 3)]]


def test_tumbling_record_at_end_plus_grace_is_late():
    # size 10, grace 5: [0,10) closes when stream time >= 15.
    recs = [
        ("k", {"v": 1}, 3),
        ("x", {"v": 1}, 15),  # stream time 15 = end + grace: [0,10) of k closes now
        ("k", {"v": 7}, 9),  # late for [0,10): dropped, counted
    ]
    out = m.run(recs, Tumbling(10, 5))
    assert batches(out) == [[], [R("k", 0, 10, 3, 1, 1)], []]
    assert out.late_records == 1 and out.late_window_drops == 1
    # update mode: the late record changes nothing, so produces nothing
    out = m.run(recs, Tumbling(10, 5), emit="update")
    assert batches(out) == [[R("k", 0, 10, 3, 1, 1)], [R("x", 10, 20, 15, 1, 1)], []]


def test_tumbling_record_at_end_plus_grace_minus_one_is_accepted():
    recs = [
        ("k", {"v": 1}, 3),
        ("x", {"v": 1}, 14),  # stream time 14 = end + grace - 1: [0,10) still open
        ("k", {"v": 7}, 9),  # accepted
        ("x", {"v": 1}, 15),  # closes [0,10): final result n=2, ts = 9
    ]
    out = m.run(recs, Tumbling(10, 5))
    assert batches(out) == [[], [], [], [R("k", 0, 10, 9, 2, 8)]]
    assert out.late_records == 0


def test_tumbling_result_timestamp_is_max_event_time_not_last_arrival():
    recs = [("k", {"v": 1}, 8), ("k", {"v": 1}, 2), ("x", {"v": 0}, 10)]
    out = m.run(recs, Tumbling(10, 0))
    assert batches(out) == [[], [], [R("k", 0, 10, 8, 2, 2)]]


def test_tumbling_update_mode_emits_current_value_per_batch():
    recs = [("k", {"v": 1}, 1), ("k", {"v": 2}, 5), ("k", {"v": 3}, 12), ("k", {"v": 9}, 7)]
    out = m.run(recs, Tumbling(10, 0), emit="update")
    assert batches(out) == [
        [R("k", 0, 10, 1, 1, 1)],
        [R("k", 0, 10, 5, 2, 3)],
        [R("k", 10, 20, 12, 1, 3)],
        [],  # ts 7 at stream time 12: [0,10) closed -> late
    ]


def test_final_results_of_still_open_windows_are_not_emitted():
    out = m.run([("k", {"v": 1}, 1), ("k", {"v": 2}, 9)], Tumbling(10, 0))
    assert out.results == []


def test_none_key_dropped_and_counted():
    recs = [(None, {"v": 1}, 5), ("k", {"v": 2}, 5)]
    out = m.run(recs, Tumbling(10, 0), emit="update")
    assert out.none_key_drops == 1
    assert batches(out) == [[], [R("k", 0, 10, 5, 1, 2)]]


def test_none_key_record_advances_task_stream_time():
    # DESIGN.md: stream time is per TASK, "the largest event timestamp seen so far".
    recs = [("k", {"v": 1}, 5), (None, {"v": 1}, 10)]
    assert batches(m.run(recs, Tumbling(10, 0))) == [[], [R("k", 0, 10, 5, 1, 1)]]
    # Kafka Streams' processor-local reading: the null-key record is skipped first.
    assert batches(m.run(recs, Tumbling(10, 0), none_key_advances_time=False)) == [[], []]


def test_all_aggregates():
    aggs = {
        "n": ("count", None),
        "s": ("sum", "v"),
        "lo": ("min", "v"),
        "hi": ("max", "v"),
        "avg": ("mean", "v"),
        "first": ("first", "v"),
        "last": ("last", "v"),
        "all": ("collect", "v"),
    }
    recs = [("k", {"v": 4}, 7), ("k", {"v": 1}, 2), ("k", {"v": 6}, 5), ("x", {"v": 0}, 10)]
    (res,) = m.run(recs, Tumbling(10, 0), aggs=aggs).results
    assert res.key == "k" and res.timestamp == 7
    assert res.value == {
        "window_start": 0,
        "window_end": 10,
        "n": 3,
        "s": 11,
        "lo": 1,
        "hi": 6,
        "avg": 11 / 3,
        "first": 4,  # arrival order
        "last": 6,
        "all": [4, 1, 6],
    }


# --------------------------------------------------------------------------- hopping


def test_hopping_record_is_in_size_over_advance_windows():
    # size 10, advance 5: ts 7 is in [0,10) and [5,15)
    out = m.run([("k", {"v": 1}, 7)], Hopping(10, 5, 0), emit="update")
    assert batches(out) == [[R("k", 0, 10, 7, 1, 1), R("k", 5, 15, 7, 1, 1)]]


def test_hopping_no_negative_window_starts():
    # ts 3 would be in [-5,5) too; Kafka Streams (and the model) only create [0,10)
    out = m.run([("k", {"v": 1}, 3)], Hopping(10, 5, 0), emit="update")
    assert batches(out) == [[R("k", 0, 10, 3, 1, 1)]]


def test_hopping_advance_not_dividing_size():
    out = m.run([("k", {"v": 1}, 12)], Hopping(10, 3, 0), emit="update")
    assert batches(out) == [
        [R("k", 3, 13, 12, 1, 1), R("k", 6, 16, 12, 1, 1), R("k", 9, 19, 12, 1, 1), R("k", 12, 22, 12, 1, 1)]
    ]


def test_hopping_final_and_partial_lateness():
    recs = [
        ("k", {"v": 1}, 7),  # [0,10) [5,15)
        ("k", {"v": 2}, 3),  # [0,10)
        ("k", {"v": 4}, 12),  # [5,15) [10,20); stream 12 closes [0,10)
        ("k", {"v": 8}, 9),  # [0,10) closed -> late there; [5,15) open -> applied
        ("k", {"v": 16}, 16),  # stream 16 closes [5,15)
    ]
    out = m.run(recs, Hopping(10, 5, 0))
    assert batches(out) == [
        [],
        [],
        [R("k", 0, 10, 7, 2, 3)],
        [],
        [R("k", 5, 15, 12, 3, 13)],  # ts 7, 12, 9: values 1 + 4 + 8
    ]
    assert out.late_window_drops == 1 and out.late_records == 0


# --------------------------------------------------------------------------- sliding


def test_sliding_kafka_javadoc_example():
    # Kafka Streams SlidingWindows javadoc, time difference 5000 ms:
    # [3000;8000]=[1] [4200;9200]=[1,2] [7400;12400]=[1,2,3] [8001;13001]=[2,3] [9201;14201]=[3]
    recs = [("A", {"v": 1}, 8000), ("A", {"v": 2}, 9200), ("A", {"v": 3}, 12400), ("x", {"v": 0}, 20000)]
    out = m.run(recs, Sliding(5000, 0))
    assert batches(out) == [
        [],
        [R("A", 3000, 8000, 8000, 1, 1)],  # stream 9200 > 8000: closed
        [R("A", 4200, 9200, 9200, 2, 3)],
        [
            R("A", 7400, 12400, 12400, 3, 6),
            R("A", 8001, 13001, 12400, 2, 5),
            R("A", 9201, 14201, 12400, 1, 3),
        ],
    ]
    out = m.run(recs, Sliding(5000, 0), emit="update")
    assert batches(out) == [
        [R("A", 3000, 8000, 8000, 1, 1)],
        # 9200 enters: its left window; 8000's right window is created holding 9200
        [R("A", 4200, 9200, 9200, 2, 3), R("A", 8001, 13001, 9200, 1, 2)],
        # 12400 enters: its left window; it joins 8000's right window; 9200's right window is created
        [R("A", 7400, 12400, 12400, 3, 6), R("A", 8001, 13001, 12400, 2, 5), R("A", 9201, 14201, 12400, 1, 3)],
        [R("x", 15000, 20000, 20000, 1, 0)],
    ]


def test_sliding_window_open_while_stream_time_equals_end_plus_grace():
    # d 10, grace 0: [90,100] closes when stream time > 100 (not >= as for time windows)
    recs = [
        ("k", {"v": 1}, 100),  # [90,100]
        ("x", {"v": 0}, 100),
        ("k", {"v": 2}, 95),  # stream 100: [90,100] still open -> applied;
        # its left window [85,95] is born closed (100 > 95) and never exists;
        # its right window [96,106] holds 100
        ("x", {"v": 0}, 101),  # stream 101 > 100: [90,100] closes (x's [90,100] too)
    ]
    out = m.run(recs, Sliding(10, 0))
    assert batches(out) == [[], [], [], [R("k", 90, 100, 100, 2, 3), R("x", 90, 100, 100, 1, 0)]]
    out = m.run(recs, Sliding(10, 0), emit="update")
    assert batches(out) == [
        [R("k", 90, 100, 100, 1, 1)],
        [R("x", 90, 100, 100, 1, 0)],
        [R("k", 90, 100, 100, 2, 3), R("k", 96, 106, 100, 1, 1)],
        [R("x", 91, 101, 101, 2, 0), R("x", 101, 111, 101, 1, 0)],  # [91,101] holds x@100 and x@101
    ]


def test_sliding_record_lateness_boundary():
    # d 10, grace 0; stream time 112.  A record is late when stream > ts + d + grace.
    base = [("k", {"v": 1}, 100), ("k", {"v": 2}, 112)]
    # ts 101: 112 > 111 -> late, dropped
    out = m.run(base + [("k", {"v": 4}, 101)], Sliding(10, 0), emit="update")
    assert batches(out)[2] == [] and out.late_records == 1
    # ts 102: 112 > 112 is false -> accepted: joins [102,112] (open: 112 > 112 false),
    # creates its right window [103,113] = {112}; its left window [92,102] and
    # 100's right window [101,111] would be born closed.
    out = m.run(base + [("k", {"v": 4}, 102)], Sliding(10, 0), emit="update")
    assert batches(out) == [
        [R("k", 90, 100, 100, 1, 1)],
        [R("k", 102, 112, 112, 1, 2)],  # 100 is not in [102,112]; 100's right window [101,111] is empty
        [R("k", 102, 112, 112, 2, 6), R("k", 103, 113, 112, 1, 2)],
    ]


def test_sliding_previous_record_right_window_when_own_left_window_is_closed():
    # d 10 grace 1: 20 at stream time 22 -> its left window [10,20] is born closed,
    # 10's right window [11,21] = {20} is open (closes when stream > 22) -> created.
    recs = [("a", {"v": 1}, 10), ("a", {"v": 2}, 22), ("a", {"v": 4}, 20), ("a", {"v": 8}, 23)]
    expected = [
        [R("a", 0, 10, 10, 1, 1)],
        [R("a", 12, 22, 22, 1, 2)],
        [R("a", 11, 21, 20, 1, 4), R("a", 12, 22, 22, 2, 6), R("a", 21, 31, 22, 1, 2)],
        [R("a", 13, 23, 23, 3, 14), R("a", 21, 31, 23, 2, 10), R("a", 23, 33, 23, 1, 8)],
    ]
    assert batches(m.run(recs, Sliding(10, 1), emit="update")) == expected
    assert batches(m.kafka_sliding_port(recs, Sliding(10, 1), emit="update")) == expected
    assert batches(m.run(recs, Sliding(10, 1)))[3] == [R("a", 11, 21, 20, 1, 4)]


def test_sliding_right_window_when_next_record_is_exactly_d_plus_one_later():
    # 100's right window [101,111] and 111's left window [101,111] are the same window
    out = m.run([("k", {"v": 1}, 100), ("k", {"v": 2}, 111)], Sliding(10, 5), emit="update")
    assert batches(out) == [[R("k", 90, 100, 100, 1, 1)], [R("k", 101, 111, 111, 1, 2)]]


def _canon(out):
    return [sorted((r.key, tuple(sorted(r.value.items())), r.timestamp) for r in b) for b in out.batches]


@pytest.mark.parametrize("emit", ["final", "update"])
def test_sliding_model_equals_kafka_algorithm_on_in_order_input(emit):
    """The model's window set and contents = Kafka's incremental algorithm
    wherever that algorithm is exact (no record arrives after a window it
    would have fed into has closed; in-order input guarantees that)."""
    rnd = random.Random(1234)
    for _ in range(1500):
        d = rnd.choice([3, 5, 10])
        grace = rnd.choice([0, 2, 5])
        ts = d + rnd.randint(0, 10)
        recs = []
        for _ in range(rnd.randint(1, 12)):
            ts += rnd.randint(0, 8)
            recs.append((rnd.choice("ab"), {"v": rnd.randint(0, 5)}, ts))
        spec = Sliding(d, grace)
        assert _canon(m.run(recs, spec, emit=emit)) == _canon(m.kafka_sliding_port(recs, spec, emit=emit)), recs


@pytest.mark.parametrize("emit", ["final", "update"])
def test_sliding_model_equals_kafka_algorithm_when_disorder_within_grace(emit):
    """Out-of-order input where every record is no later than ``grace`` behind
    stream time: no window a record belongs to is closed when it arrives."""
    rnd = random.Random(99)
    for _ in range(1500):
        d = rnd.choice([3, 5, 10])
        grace = rnd.choice([2, 5, 12])
        st, recs = d, []
        for _ in range(rnd.randint(1, 12)):
            ts = max(d, st + rnd.randint(-grace, 6))
            st = max(st, ts)
            recs.append((rnd.choice("ab"), {"v": rnd.randint(0, 5)}, ts))
        spec = Sliding(d, grace)
        assert _canon(m.run(recs, spec, emit=emit)) == _canon(m.kafka_sliding_port(recs, spec, emit=emit)), recs


def test_sliding_where_kafka_incremental_algorithm_loses_a_record():
    """Documented divergence.  d 10, grace 5:
    a@23 -> [13,23]
    a@14 at stream 23: its left window [4,14] is born closed (23 > 19); it joins
         [13,23]; its right window [15,25] = {23} is created.
    a@10 at stream 23 (not late: 23 <= 10+10+5): when 10 drops out of the
         sliding window the window is [11,21], which holds 14 and is open until
         stream time 26.  The model creates it.  Kafka finds no stored window
         holding 14 in its look-up range (14's own left window was never stored)
         and creates nothing.
    """
    recs = [("a", {"v": 2}, 23), ("a", {"v": 2}, 14), ("a", {"v": 0}, 10)]
    spec = Sliding(10, 5)
    assert batches(m.run(recs, spec, emit="update"))[2] == [R("a", 11, 21, 14, 1, 2)]
    assert batches(m.kafka_sliding_port(recs, spec, emit="update"))[2] == []


# --------------------------------------------------------------------------- session


def test_session_merge_by_bridging_record():
    # gap 10, grace 20; 109 is within gap of both sessions -> one session [100,118]
    recs = [("k", {"v": 1}, 100), ("k", {"v": 2}, 118), ("k", {"v": 4}, 109), ("x", {"v": 0}, 149)]
    out = m.run(recs, Session(10, 20), emit="update")
    assert batches(out) == [
        [R("k", 100, 100, 100, 1, 1)],
        [R("k", 118, 118, 118, 1, 2)],
        [R("k", 100, 118, 118, 3, 7)],
        [R("x", 149, 149, 149, 1, 0)],
    ]
    # final: [100,118] closes when stream > 118 + 10 + 20 = 148
    out = m.run(recs, Session(10, 20))
    assert batches(out) == [[], [], [], [R("k", 100, 118, 118, 3, 7)]]


def test_session_gap_is_inclusive_both_sides():
    # 110 - 100 = gap: merges; 121 - 110 = gap + 1: new session
    recs = [("k", {"v": 1}, 100), ("k", {"v": 1}, 110), ("k", {"v": 1}, 121)]
    out = m.run(recs, Session(10, 100), emit="update")
    assert batches(out) == [
        [R("k", 100, 100, 100, 1, 1)],
        [R("k", 100, 110, 110, 2, 2)],
        [R("k", 121, 121, 121, 1, 1)],
    ]


def test_session_close_boundary():
    # gap 10, grace 0: [100,100] closes when stream time > 110
    recs = [("k", {"v": 1}, 100), ("x", {"v": 0}, 110), ("x", {"v": 0}, 111)]
    assert batches(m.run(recs, Session(10, 0))) == [[], [], [R("k", 100, 100, 100, 1, 1)]]


def test_session_late_record_dropped():
    recs = [("k", {"v": 1}, 100), ("x", {"v": 0}, 200), ("k", {"v": 5}, 150), ("k", {"v": 7}, 195)]
    out = m.run(recs, Session(10, 0), emit="update")
    assert batches(out) == [
        [R("k", 100, 100, 100, 1, 1)],
        [R("x", 200, 200, 200, 1, 0)],
        [],  # [150,150]: 200 > 150 + 10 + 0 -> late
        [R("k", 195, 195, 195, 1, 7)],  # 200 > 205 is false -> accepted
    ]
    assert out.late_records == 1


def test_session_record_merging_a_closed_session_literal_reading():
    """DESIGN.md: a record merges EVERY session with end >= ts-gap and
    start <= ts+gap, and is late only if the MERGED session is closed.  So a
    closed (already emitted) session can be merged into a new, open one, and
    its records are then part of two final results.  This test pins that
    literal reading; see the report for the question it raises."""
    recs = [
        ("k", {"v": 1}, 100),
        ("x", {"v": 0}, 111),  # stream 111 > 110: [100,100] closes, emitted
        ("k", {"v": 2}, 105),  # merges [100,100] -> [100,105]; 111 > 115 false -> not late
        ("x", {"v": 0}, 116),  # [100,105] closes
    ]
    assert batches(m.run(recs, Session(10, 0))) == [
        [],
        [R("k", 100, 100, 100, 1, 1)],
        [],
        [R("k", 100, 105, 105, 2, 3)],
    ]


def test_session_record_bridging_a_closed_and_an_open_session():
    # gap 5 grace 3; stream 114: [100,100] closed (114 > 108), [106,106] open (114 > 114 false)
    recs = [("a", {"v": 1}, 100), ("a", {"v": 2}, 106), ("x", {"v": 0}, 114), ("a", {"v": 4}, 103)]
    assert batches(m.run(recs, Session(5, 3), emit="update"))[3] == [R("a", 100, 106, 106, 3, 7)]
    assert batches(m.run(recs, Session(5, 3), emit="update", session_merge_closed=False))[3] == [
        R("a", 103, 106, 106, 2, 6)
    ]


def test_session_closed_sessions_never_merged_other_reading():
    recs = [("k", {"v": 1}, 100), ("x", {"v": 0}, 111), ("k", {"v": 2}, 105), ("x", {"v": 0}, 116)]
    assert batches(m.run(recs, Session(10, 0), session_merge_closed=False)) == [
        [],
        [R("k", 100, 100, 100, 1, 1)],
        [],
        [R("k", 105, 105, 105, 1, 2)],  # 111 > 105 + 10 is false: 105 alone is not late
    ]


def test_negative_timestamp_rejected():
    with pytest.raises(ValueError):
        m.run([("k", {"v": 1}, -1)], Tumbling(10, 0))
