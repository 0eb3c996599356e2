"""The internal codec seen from the operators, under the test driver: what cannot be stored or
repartitioned fails when the record is processed, naming the operator; equal keys meet."""
from __future__ import annotations

import pytest

from streamproc import Topology, agg, serdes, windows
from streamproc.errors import CodecError, StreamprocError
from streamproc.testing import TopologyTestDriver


class Opaque:
    """A value the codec cannot represent (and must not try to pickle)."""

    def __init__(self, x):
        self.x = x


def _src(t):
    return t.stream("in", key=serdes.String(), value=serdes.Json())


def test_an_unencodable_value_fails_at_the_repartition_sink_naming_it():
    t = Topology("codec-rp")
    (_src(t).map(lambda k, v: (v["u"], Opaque(v)))
        .group_by_key().count(name="c").to("out"))
    with TopologyTestDriver(t) as d:
        with pytest.raises(CodecError) as ei:
            d.pipe("in", "k", {"u": "ann"}, timestamp=1)
    msg = str(ei.value)
    assert "repartition topic 'codec-rp-c-repartition'" in msg and "Opaque" in msg
    assert "test_codec_operators.py" in msg          # where the re-keying was defined


@pytest.mark.parametrize("window", [None, windows.Tumbling(10), windows.Session(10), windows.Sliding(10)],
                         ids=["table", "tumbling", "session", "sliding"])
def test_an_unencodable_state_fails_when_processed_naming_the_store_and_key(window):
    t = Topology("codec-state")
    g = _src(t).map_values(lambda v: Opaque(v)).group_by_key()
    (g.window(window) if window else g).aggregate(last=agg.last(), name="lasts", emit="update").to("out")
    with TopologyTestDriver(t) as d:
        with pytest.raises(CodecError) as ei:
            d.pipe("in", "k1", {"x": 1}, timestamp=1)
    msg = str(ei.value)
    assert "aggregate 'lasts'" in msg and "Opaque" in msg and "'k1'" in msg, msg


def test_sliding_windows_check_the_record_values_they_keep():
    """Sliding windows keep, per record, the values their aggregations read (to fold windows created
    later): one the codec cannot write fails when the record is processed, even for an aggregation
    (max) whose state would not keep it. A count keeps no value of the record, so it has nothing to
    refuse."""
    t = Topology("codec-sliding")
    _src(t).map_values(lambda v: {"o": Opaque(v)}).group_by_key().window(windows.Sliding(10)) \
        .aggregate(hi=agg.max(lambda v: v["o"]), name="n", emit="update").to("out")
    with TopologyTestDriver(t) as d:
        with pytest.raises(CodecError, match="aggregate 'n'.*Opaque"):
            d.pipe("in", "k1", {"x": 1}, timestamp=1)
    t = Topology("codec-sliding-count")
    _src(t).map_values(lambda v: Opaque(v)).group_by_key().window(windows.Sliding(10)) \
        .count(name="n", emit="update").to("out")
    with TopologyTestDriver(t) as d:
        d.pipe("in", "k1", {"x": 1}, timestamp=1)
        assert [r.value for r in d.read_output("out")] == [{"window_start": -9, "window_end": 1, "count": 1}]


def test_an_unencodable_group_key_fails_naming_the_store():
    t = Topology("codec-key")
    _src(t).group_by(lambda k, v: frozenset([k])).count(name="by-set").to("out")
    with TopologyTestDriver(t) as d:
        with pytest.raises(StreamprocError, match="frozenset"):
            d.pipe("in", "k1", {"x": 1}, timestamp=1)


def test_plain_states_and_keys_are_fine():
    t = Topology("codec-fine")
    (_src(t).group_by(lambda k, v: (v["a"], v["b"]), name="pairs")
        .aggregate(n=agg.count(), xs=agg.collect("x"), name="per-pair", emit="update").to("out"))
    with TopologyTestDriver(t) as d:
        d.pipe("in", "k1", {"a": "x", "b": "y", "x": {"deep": [1, (2, 3)]}}, timestamp=1)
        out = d.read_output("out")
    assert [r.value for r in out] == [{"n": 1, "xs": [{"deep": [1, [2, 3]]}]}]


def test_equal_tuple_keys_from_distinct_objects_land_in_one_partition():
    """With pickle, ("ab", "ab") pickled differently when both items were one object, so murmur2
    sent one logical key to two partitions and its window was split. Canonical keys cannot."""
    t = Topology("codec-tuples")
    (_src(t)
        .group_by(lambda k, v: (v["a"], v["a"] if v["same"] else "".join(list(v["a"]))), name="pairs")
        .window(windows.Tumbling(100)).count(name="per-pair", emit="update").to("out"))
    with TopologyTestDriver(t, partitions={"in": 4, "codec-tuples-pairs-repartition": 8}) as d:
        d.pipe_many("in", [(f"s{i}", {"a": f"user-{i % 3}", "same": i % 2 == 0}, i) for i in range(60)])
        out = d.read_output("out")
    best: dict = {}
    for r in out:              # a key split over two tasks would never reach its full count in one
        best[tuple(r.key)] = max(best.get(tuple(r.key), 0), r.value["count"])
    assert best == {(f"user-{u}", f"user-{u}"): 20 for u in range(3)}


def test_no_module_of_streamproc_can_unpickle():
    """Internal topics and stores are untrusted input: nothing in the package may reach pickle
    (or marshal/eval/exec on data)."""
    import pathlib
    import re

    pkg = pathlib.Path(__file__).resolve().parent.parent / "streamproc"
    bad = re.compile(r"^\s*(import|from)\s+(pickle|cPickle|_pickle|marshal|shelve|dill|cloudpickle)\b"
                     r"|\bpickle\.loads?\(|\b(eval|exec)\(", re.M)
    offenders = [str(p.relative_to(pkg)) for p in pkg.rglob("*.py") if bad.search(p.read_text())]
    assert offenders == []
