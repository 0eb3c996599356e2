"""What a consume() returned, as the columns and batches a worker's tasks take (runtime/worker/fetch.py),
without a broker: error events among the records, several partitions in one fetch, offsets read lazily."""
from __future__ import annotations

from confluent_kafka import KafkaError

from streamproc.operators import RawBatch
from streamproc.runtime.engine.watermarks import WATERMARK_KEY
from streamproc.runtime.worker.fetch import columns, next_offset, split_watermarks


class _Msg:
    def __init__(self, topic, partition, offset, key=b"k", value=b"v", ts=0, error=None, headers=None):
        self._t, self._p, self._o, self._k, self._v, self._ts, self._e, self._h = (
            topic, partition, offset, key, value, ts, error, headers)
        self.offset_calls = 0

    def topic(self):
        return self._t

    def partition(self):
        return self._p

    def offset(self):
        self.offset_calls += 1
        return self._o

    def key(self):
        return self._k

    def value(self):
        return self._v

    def timestamp(self):
        return (1, self._ts)

    def error(self):
        return self._e

    def headers(self):
        return self._h


def test_error_events_among_records_are_reported_and_left_out():
    eof = KafkaError(KafkaError._PARTITION_EOF)
    msgs = [_Msg("a", 0, 5, ts=10), _Msg("a", 0, 6, error=eof), _Msg("a", 1, 3, key=b"x", ts=20),
            _Msg("a", 1, 4, error=KafkaError(KafkaError._TRANSPORT))]
    seen = []
    groups, ends = columns(msgs, set(), seen.append, "a")
    assert ends == [("a", 0)] and [m.error() for m in seen] == [eof, msgs[3].error()]
    assert sorted(groups) == [("a", 0), ("a", 1)]
    keys, values, ts, part_msgs = groups[("a", 1)]
    assert (keys, values, ts) == ([b"x"], [b"v"], [20]) and next_offset(groups[("a", 1)]) == 4
    only_errors, ends = columns([_Msg("a", 2, 9, error=eof)], set(), seen.append)
    assert only_errors == {} and ends == [("a", 2)]


def test_one_partition_interleaved_with_another_keeps_each_partitions_order():
    msgs = [_Msg("a", 0, 1), _Msg("b", 0, 7), _Msg("a", 0, 2), _Msg("a", 1, 1), _Msg("a", 0, 3)]
    groups, _ = columns(msgs, set(), lambda m: None)
    assert [m.offset() for m in groups[("a", 0)][3]] == [1, 2, 3]
    assert [m.offset() for m in groups[("b", 0)][3]] == [7] and [m.offset() for m in groups[("a", 1)][3]] == [1]


def test_offsets_are_read_from_the_messages_only_when_asked_for():
    msgs = [_Msg("a", 0, o, key=b"k%d" % o) for o in (10, 11, 13)]
    groups, _ = columns(msgs, set(), lambda m: None, "a")
    raw, wms = split_watermarks(("a", 0), groups[("a", 0)])
    assert wms == [] and raw.keys == [b"k10", b"k11", b"k13"]
    assert raw.next_offset == 14 and all(m.offset_calls <= 1 for m in msgs)
    assert raw.offsets == [10, 11, 13]
    raw.offsets = [1, 2, 3]                                  # given offsets win over the messages
    assert raw.offsets == [1, 2, 3] and raw.next_offset == 4
    assert RawBatch("a", 0, [b"k"], [b"v"], [0], [41]).next_offset == 42


def test_a_repartition_partitions_watermarks_and_carried_times_are_taken_out():
    from streamproc.operators.io import STREAM_TIME_HEADER

    carried = [(STREAM_TIME_HEADER, (90).to_bytes(8, "big", signed=True))]
    msgs = [_Msg("rp", 0, 1, key=b"\x01k", ts=50), _Msg("rp", 0, 2, key=WATERMARK_KEY, value=b"wm"),
            _Msg("rp", 0, 3, key=b"\x01j", ts=40, headers=carried)]
    groups, _ = columns(msgs, {"rp"}, lambda m: None, None)
    raw, wms = split_watermarks(("rp", 0), groups[("rp", 0)])
    assert wms == [b"wm"] and raw.keys == [b"\x01k", b"\x01j"] and raw.timestamps == [50, 40]
    assert raw.carried == [None, 90] and raw.offsets == [1, 3] and raw.next_offset == 4
