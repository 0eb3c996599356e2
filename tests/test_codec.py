"""streamproc.state.codec: the one encoding of internal topics and stores (no pickle)."""
from __future__ import annotations

import ast
import enum
import math
import pickle
import struct
import sys
import threading
import uuid
from collections import OrderedDict, defaultdict, namedtuple
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproc.errors import CodecError, SerdeError
from streamproc.state import codec
from streamproc.state.codec import (
    KEY_FORMAT, VALUE_FORMAT, check_value, decode_key, decode_keys, decode_store_key, decode_value,
    decode_values, encode_key, encode_keys, encode_store_key, encode_value, encode_values,
    is_reserved_key, key_decoder, key_encoder, key_prefix, prefix_end, window_range,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
I64 = st.integers(min_value=-2**63, max_value=2**63 - 1)
dec_window = key_decoder("window")
enc_window = key_encoder("window")


# ------------------------------------------------------------------------------ comparison helpers
def _same(a, b) -> bool:
    """Exact equality: same types all the way down, floats bit for bit, tz offsets and folds kept."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return struct.pack(">d", a) == struct.pack(">d", b)
    if type(a) is Decimal:
        return str(a) == str(b)
    if type(a) in (datetime, time):
        return a == b and a.utcoffset() == b.utcoffset() and a.fold == b.fold and (a.tzinfo is None) == (b.tzinfo is None)
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return len(a) == len(b) and all(_same(ka, kb) and _same(va, vb)
                                        for (ka, va), (kb, vb) in zip(a.items(), b.items()))
    if type(a) in (set, frozenset):
        return a == b and all(any(x == y and _same(x, y) for y in b) for x in a)
    return a == b


def _canon_key(k):
    """What a key decodes to: -0.0 -> 0.0, NaN -> NaN, aware datetime -> UTC, naive fold dropped."""
    t = type(k)
    if t is float:
        return math.nan if k != k else (0.0 if k == 0.0 else k)
    if t is datetime:
        if k.utcoffset() is None:
            return k.replace(fold=0)
        return k.astimezone(timezone.utc)
    if t is tuple:
        return tuple(_canon_key(x) for x in k)
    if t is list:
        return [_canon_key(x) for x in k]
    if t is dict:
        return {kk: _canon_key(v) for kk, v in sorted(k.items())}
    return k


def _same_key(a, b) -> bool:
    if type(a) is float and a != a:
        return type(b) is float and b != b
    if type(a) is datetime and a.tzinfo is not None:
        return type(b) is datetime and b.tzinfo is timezone.utc and a == b
    if type(a) in (list, tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_same_key(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return (type(b) is dict and list(a) == list(b)
                and all(_same_key(a[k], b[k]) for k in a))
    return _same(a, b)


def _only_codec_error(fn, data):
    """Call fn(data): it may succeed or raise CodecError, and nothing else."""
    try:
        fn(data)
    except Exception as e:     # noqa: BLE001 - the point is to check the exact type
        assert type(e) is CodecError, f"{fn.__name__}({data!r}) raised {type(e).__name__}: {e}"


# ------------------------------------------------------------------------------ strategies
texts = st.text(st.characters(exclude_categories=()), max_size=12)     # surrogates and NUL included
fixed_tz = st.builds(lambda m: timezone(timedelta(minutes=m)), st.integers(-23 * 60 - 59, 23 * 60 + 59))
naive_dt = st.datetimes()
aware_dt = st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=fixed_tz)
big_ints = st.integers(min_value=-(2**2040 - 1), max_value=2**2040 - 1)
key_ints = st.one_of(I64, big_ints, st.sampled_from([2**63, 2**64, -2**63 - 1, -2**64, 2**2040 - 1, -(2**2040 - 1)]))
key_leaves = st.one_of(
    st.none(), st.booleans(), key_ints, st.floats(), st.binary(max_size=12), texts,
    st.dates(), naive_dt, aware_dt,
)
keys = st.recursive(key_leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=4).map(tuple),
    st.lists(inner, max_size=4),
    st.dictionaries(texts, inner, max_size=4),
), max_leaves=12)

hashable_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                            texts, st.binary(max_size=8), st.dates(), st.uuids())
hashables = st.recursive(hashable_leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=3).map(tuple), st.frozensets(inner, max_size=3)), max_leaves=6)
value_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), big_ints, st.floats(), texts, st.binary(max_size=16),
    st.builds(lambda d, f: d.replace(fold=f), naive_dt, st.integers(0, 1)),
    st.datetimes(timezones=fixed_tz), st.dates(),
    st.builds(lambda t, f: t.replace(fold=f), st.times(), st.integers(0, 1)),
    st.times(timezones=fixed_tz), st.timedeltas(), st.decimals(places=None), st.uuids(),
)
values = st.recursive(value_leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.lists(inner, max_size=4).map(tuple),
    st.dictionaries(hashables, inner, max_size=4),
    st.sets(hashables, max_size=4),
    st.frozensets(hashables, max_size=4),
), max_leaves=15)


# ============================================================================== keys
@SETTINGS
@given(keys)
def test_key_round_trip_is_exact(k):
    data = encode_key(k)
    assert data[0] == KEY_FORMAT and not is_reserved_key(data)
    assert _same_key(_canon_key(k), decode_key(data))
    assert encode_key(decode_key(data)) == data          # decoding gives the same key back


@pytest.mark.parametrize("k", [
    None, True, False, 0, -1, 2**63 - 1, -2**63, 2**63, -2**63 - 1, 2**2040 - 1, -(2**2040 - 1),
    0.0, 1.5, -math.inf, math.inf, b"", b"\x00\xff\x00", "", "a\x00b", "\ud800x\udfff", "é€😀",
    (), [], {}, ("a", 1), ["a", 1], {"b": 1, "a": [1, (2, None)]}, date(1, 1, 1), date(9999, 12, 31),
    datetime(1, 1, 1), datetime.max, datetime(2024, 3, 1, 12, 30, 5, 17),
    datetime(2024, 3, 1, 12, tzinfo=timezone.utc),
])
def test_key_round_trip_examples(k):
    assert _same_key(_canon_key(k), decode_key(encode_key(k)))


def test_key_types_stay_distinct():
    encs = [encode_key(k) for k in (1, 1.0, True, "1", b"1", (1,), [1], None)]
    assert len(set(encs)) == len(encs)
    assert type(decode_key(encode_key(True))) is bool
    assert type(decode_key(encode_key((1, 2)))) is tuple
    assert type(decode_key(encode_key([1, 2]))) is list


def test_key_float_canonical_zero_and_nan():
    assert encode_key(-0.0) == encode_key(0.0)
    other_nan = struct.unpack(">d", bytes.fromhex("fff8000000000001"))[0]
    assert other_nan != other_nan
    assert encode_key(other_nan) == encode_key(math.nan) == encode_key(-math.nan)
    assert encode_key(math.inf) < encode_key(math.nan)
    assert math.isnan(decode_key(encode_key(other_nan)))


def test_aware_datetime_key_is_its_utc_instant():
    a = datetime(2024, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    b = datetime(2024, 1, 1, 10, tzinfo=timezone.utc)
    assert encode_key(a) == encode_key(b)
    d = decode_key(encode_key(a))
    assert d == a and d.tzinfo is timezone.utc
    assert encode_key(datetime(2024, 1, 1, 10)) != encode_key(b)        # naive != aware
    assert decode_key(encode_key(datetime(2024, 1, 1, 10))).tzinfo is None


def _pairs(strategy):
    return st.tuples(strategy, strategy)


ordered = st.sampled_from([
    I64, key_ints, st.floats(allow_nan=False), texts, st.binary(max_size=10), st.booleans(),
    st.dates(), naive_dt, aware_dt,
    st.tuples(texts, I64), st.lists(key_ints, max_size=4).map(tuple), st.lists(texts, max_size=4),
    st.lists(st.tuples(texts, st.floats(allow_nan=False)), max_size=3),
    st.lists(st.lists(st.integers(-3, 3), max_size=3), max_size=3),
])


def _dict_order(d):
    return sorted(d.items())


@SETTINGS
@given(ordered.flatmap(_pairs))
def test_key_order_is_value_order(pair):
    a, b = pair
    ea, eb = encode_key(a), encode_key(b)
    assert (a < b) == (ea < eb)
    assert (a == b) == (ea == eb)


@SETTINGS
@given(_pairs(st.dictionaries(texts, st.integers(-5, 5), max_size=4)))
def test_dict_key_order_is_sorted_items_order(pair):
    a, b = pair
    ea, eb = encode_key(a), encode_key(b)
    assert (_dict_order(a) < _dict_order(b)) == (ea < eb)
    assert (a == b) == (ea == eb)


def test_key_order_across_types():
    ordered_keys = [None, False, True, -2**70, 0, 2**70, -math.inf, 1.5, date(2020, 1, 1),
                    datetime(2020, 1, 1), datetime(2020, 1, 1, tzinfo=timezone.utc), b"z", "a",
                    (), ("a",), [], {}]
    encs = [encode_key(k) for k in ordered_keys]
    assert encs == sorted(encs)


@SETTINGS
@given(_pairs(keys))
def test_keys_are_prefix_free(pair):
    a, b = pair
    ea, eb = encode_key(a), encode_key(b)
    if ea != eb:
        assert not eb.startswith(ea) and not ea.startswith(eb)


@SETTINGS
@given(keys)
def test_equal_keys_from_distinct_objects_give_equal_bytes(k):
    copy = pickle.loads(pickle.dumps(k))        # pickle only builds distinct test objects here
    assert encode_key(copy) == encode_key(k)


def test_canonical_for_runtime_built_and_shared_objects():
    runtime = "".join(["ab"] * 3)
    literal = "ababab"
    assert runtime == literal and runtime is not literal
    assert encode_key((runtime, "x")) == encode_key((literal, "x"))
    s = "".join(["sh", "ared"])
    shared = (s, s)
    distinct = ("shared", "".join(["shar", "ed"]))
    assert shared[0] is shared[1] and distinct[0] is not distinct[1]
    assert encode_key(shared) == encode_key(distinct)
    assert encode_key([s, s]) == encode_key(["shared", "".join(["s", "hared"])])
    d1 = {"b": 2, "a": 1, "c": [s, s]}
    d2 = {"c": ["shared", "shared"], "a": 1, "b": 2}
    assert encode_key(d1) == encode_key(d2)
    assert encode_key(OrderedDict([("b", 1), ("a", 2)])) == encode_key({"a": 2, "b": 1})


class Color(enum.StrEnum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


Point = namedtuple("Point", "x y")


class MyFloat(float):
    pass


class MyList(list):
    pass


class Weird(str):
    def __str__(self):
        return "not me"


@pytest.mark.parametrize("sub, base", [
    (Color.RED, "red"), (Level.HIGH, 3), (Point(1, "a"), (1, "a")), (MyFloat(2.5), 2.5),
    (MyList([1, 2]), [1, 2]), (OrderedDict(b=1, a=2), {"a": 2, "b": 1}), (defaultdict(int, a=1), {"a": 1}),
    (np.int64(-7), -7), (np.int32(5), 5), (np.uint64(2**64 - 1), 2**64 - 1), (np.float32(0.5), 0.5),
    (np.float64(1.25), 1.25), (np.bool_(True), True), (np.str_("x"), "x"), (Weird("w"), "w"),
    ({Color.RED: Level.HIGH}, {"red": 3}), ((Color.RED, np.int64(1)), ("red", 1)),
])
def test_key_subclasses_and_numpy_scalars_encode_as_base_type(sub, base):
    assert encode_key(sub) == encode_key(base)
    back = decode_key(encode_key(sub))
    assert _same(back, base)


class Foo:
    pass


@pytest.mark.parametrize("bad, name", [
    ({1, 2}, "set"), (frozenset(), "frozenset"), (Foo(), "Foo"), (object(), "object"), (1j, "complex"),
    ({1: "a"}, "int"), ((1, Foo()), "Foo"), ([{"a": {2, 3}}], "set"), (2**2040, "int"),
    (-(2**2040), "int"), (np.zeros(2), "ndarray"), (bytearray(b"x"), "bytearray"),
    (Decimal(1), "Decimal"), (time(1), "time"),
])
def test_unsupported_key_types_raise_codec_error_naming_the_type(bad, name):
    with pytest.raises(CodecError) as ei:
        encode_key(bad)
    assert type(ei.value) is CodecError
    assert f"'{name}'" in str(ei.value)
    assert "keys may be str" in str(ei.value)


def test_deeply_nested_key_is_a_codec_error():
    k = ()
    for _ in range(5000):
        k = (k,)
    with pytest.raises(CodecError, match="nested too deeply"):
        encode_key(k)


def test_encode_and_decode_keys_batches():
    ks = ["a", None, ("b", 1), 5, None]
    encs = encode_keys(ks)
    assert encs[1] is None and encs[4] is None
    assert encs[0] == encode_key("a") and encs[2] == encode_key(("b", 1))
    assert decode_keys(encs) == ks
    with pytest.raises(CodecError):
        encode_keys(["a", {1}])
    with pytest.raises(CodecError):
        decode_keys([encode_key("a"), b"\x02"])


def test_reserved_keys():
    assert is_reserved_key(b"\x00offsets")
    assert not is_reserved_key(encode_key(None)) and not is_reserved_key(b"")
    with pytest.raises(CodecError, match="reserved"):
        decode_key(b"\x00offsets")


def test_key_decode_accepts_bytearray_and_memoryview():
    e = encode_key(("a", 1))
    assert decode_key(bytearray(e)) == ("a", 1)
    assert decode_key(memoryview(e)) == ("a", 1)
    assert decode_key(memoryview(encode_key("s"))) == "s"
    assert dec_window(memoryview(enc_window(("a", 3)))) == ("a", 3)


# ------------------------------------------------------------------------------ windowed keys
@SETTINGS
@given(keys, I64)
def test_window_key_round_trip(gk, start):
    data = enc_window((gk, start))
    assert data[0] == KEY_FORMAT
    assert data.startswith(key_prefix(gk)) and len(data) == len(key_prefix(gk)) + 8
    back_gk, back_start = dec_window(data)
    assert _same_key(_canon_key(gk), back_gk) and back_start == start
    assert encode_store_key("window", (gk, start)) == data
    assert decode_store_key("window", data)[1] == start


@SETTINGS
@given(st.sampled_from([texts, I64, st.tuples(texts, I64), st.binary(max_size=6)])
       .flatmap(lambda s: _pairs(st.tuples(s, I64))))
def test_window_keys_ordered_by_group_key_then_start(pair):
    a, b = pair
    assert (a < b) == (enc_window(a) < enc_window(b))
    assert (a == b) == (enc_window(a) == enc_window(b))


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["a", "ab", "b", "a\x00", ""]), st.integers(-5, 5)), max_size=20),
       st.sampled_from(["a", "ab", "b", "a\x00", ""]),
       st.none() | st.integers(-6, 6), st.none() | st.integers(-6, 6))
def test_window_range_selects_exactly_the_windows(stored, gk, lo, hi):
    lower, upper = window_range(gk, lo, hi)
    for k in stored:
        b = enc_window(k)
        inside = lower <= b and (upper is None or b < upper)
        expected = k[0] == gk and (lo is None or lo <= k[1]) and (hi is None or k[1] < hi)
        assert inside == expected, (k, gk, lo, hi)
        assert b.startswith(key_prefix(gk)) == (k[0] == gk)


def test_window_start_validation():
    assert dec_window(enc_window(("a", np.int64(-5)))) == ("a", -5)
    assert dec_window(enc_window((("a", 1), np.int64(9)))) == (("a", 1), 9)
    for bad in [("a", 1.0), ("a", 2**63), ("a", -2**63 - 1), ("a", "1"), ("a",), "ab", 5, ({1}, 1)]:
        with pytest.raises(CodecError):
            enc_window(bad)
    with pytest.raises(CodecError):
        window_range("a", 1.5)


def test_store_key_helpers_by_kind():
    for kind in ("kv", "sliding", "session", "table", "join", "dedupe"):
        assert key_encoder(kind) is encode_key and key_decoder(kind) is decode_key
        assert encode_store_key(kind, ("a", 1)) == encode_key(("a", 1))
        assert decode_store_key(kind, encode_key(("a", 1))) == ("a", 1)
    assert codec.KINDS == ("kv", "window", "sliding", "session", "table", "join", "dedupe")
    assert codec.WINDOWED_KINDS == frozenset({"window"})


def test_prefix_end():
    assert prefix_end(b"ab") == b"ac"
    assert prefix_end(b"a\xff\xff") == b"b"
    assert prefix_end(b"\xff\xff") is None and prefix_end(b"") is None
    p = key_prefix("a")
    assert window_range("a") == (p, prefix_end(p))


# ------------------------------------------------------------------------------ key fuzzing
KEY_DECODERS = [decode_key, dec_window, lambda d: decode_keys([d]), lambda d: decode_store_key("window", d)]


@FUZZ
@given(st.binary(max_size=40))
def test_fuzz_key_decoders_raise_only_codec_error(data):
    for fn in KEY_DECODERS:
        _only_codec_error(fn, data)
        _only_codec_error(fn, b"\x01" + data)
        _only_codec_error(fn, b"\x01\x31" + data)


def _mutations(data: bytes):
    return st.one_of(
        st.integers(0, max(len(data) - 1, 0)).map(lambda i: data[:i]),
        st.tuples(st.integers(0, len(data)), st.binary(min_size=1, max_size=3))
        .map(lambda t: data[:t[0]] + t[1] + data[t[0]:]),
        st.tuples(st.integers(0, max(len(data) - 1, 0)), st.integers(0, 255))
        .map(lambda t: data[:t[0]] + bytes([t[1]]) + data[t[0] + 1:]),
    )


@FUZZ
@given(st.tuples(keys, I64).map(lambda k: enc_window(k)).flatmap(_mutations))
def test_fuzz_mutated_key_encodings_raise_only_codec_error(data):
    for fn in KEY_DECODERS:
        _only_codec_error(fn, data)
        _only_codec_error(fn, data[:-8])


def test_key_decoding_is_strict():
    for bad in [
        b"", b"\x01", b"\x01\x31abc", b"\x01\x31a\x00\x01b\x00\x00",      # truncated, bad escape
        b"\x01\x42\x31b\x00\x00\x01\x31a\x00\x00\x01\x00",                 # dict keys not sorted
        b"\x01\x42\x10" + bytes(8) + b"\x01\x00",                           # dict key not str
        b"\x01\x31\xff\x00\x00", b"\x01\x7f", b"\x01\x7fabc\x00\x00",       # bad utf-8, old pickle tag
        b"\x01\x28\x00\x00\x00\x00", b"\x01\x29" + b"\xff" * 8,             # date 0, datetime overflow
        b"\x01\x11\x05\x01", b"\x01\x01\x01", b"\x02\x01", None, "abc", 12,
    ]:
        with pytest.raises(CodecError) as ei:
            decode_key(bad)
        assert type(ei.value) is CodecError


# ============================================================================== values
@SETTINGS
@given(values)
def test_value_round_trip_is_exact(v):
    data = encode_value(v)
    if v is None:
        assert data is None
        return
    assert data[0] == VALUE_FORMAT
    assert _same(v, decode_value(data))


@pytest.mark.parametrize("v", [
    0, -1, 2**63, 2**64 - 1, 2**64, -2**63 - 1, 2**1000, -2**5000, -0.0, math.inf, math.nan, "", "\ud800",
    b"\x00", (), (1, (2, [3, (4,)])), [(1, 2)], {(1, "a"): [1], frozenset({1}): {2: 3}, None: 1.5},
    set(), {1, "a", (2, 3)}, frozenset({b"x"}), datetime(1, 1, 1), datetime.max,
    datetime(2024, 11, 3, 1, 30, fold=1), datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=-5, seconds=7))),
    datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))), date(1, 1, 1), time(0), time(23, 59, 59, 999999),
    time(1, 2, tzinfo=timezone(timedelta(hours=3))), time(1, fold=1), timedelta(0), timedelta.max, timedelta.min,
    Decimal("NaN"), Decimal("-sNaN12"), Decimal("-0.000"), Decimal("1E+999999"), Decimal("Infinity"),
    uuid.UUID(int=0), uuid.uuid4(),
])
def test_value_round_trip_examples(v):
    assert _same(v, decode_value(encode_value(v)))


def test_lone_surrogates_round_trip_anywhere_in_a_value():
    for v in ["\ud800", ["ok", ("\udfff", ("x", "\ud800"))], {"\udc80": {"\ud800"}}, ("a" * 50, "\ud800")]:
        assert _same(decode_value(encode_value(v)), v)
        assert _same(decode_values(encode_values([v, ("é",)])), [v, ("é",)])
    # valid text gives the same bytes as a surrogatepass encoder would
    sp = msgpack.Packer(use_bin_type=True, unicode_errors="surrogatepass")
    assert encode_value(["é€😀", {"k": "v"}]) == b"\x01" + sp.pack(["é€😀", {"k": "v"}])
    deep = ("\ud800",)
    for _ in range(15):
        deep = (deep,)
    assert decode_value(encode_value(deep)) == deep      # the nesting budget is intact afterwards
    with pytest.raises(CodecError, match="nested more than 16"):
        encode_value((deep,))


def test_value_buffers_come_back_as_bytes():
    assert decode_value(encode_value(bytearray(b"ab"))) == b"ab"
    assert type(decode_value(encode_value(memoryview(b"ab")))) is bytes
    assert decode_value(encode_value([bytearray(b"\x00")])) == [b"\x00"]


class UTCMinus3(tzinfo):
    def utcoffset(self, dt):
        return timedelta(hours=-3)

    def dst(self, dt):
        return timedelta(0)


def test_aware_datetime_value_keeps_offset_as_fixed_timezone():
    dt = datetime(2024, 5, 1, 8, 0, tzinfo=UTCMinus3())
    back = decode_value(encode_value(dt))
    assert back == dt and back.utcoffset() == timedelta(hours=-3)
    assert type(back.tzinfo) is timezone
    assert back.replace(tzinfo=None) == dt.replace(tzinfo=None)
    try:
        from zoneinfo import ZoneInfo
        paris = ZoneInfo("Europe/Paris")
    except Exception:          # no tz database on this machine
        return
    dt = datetime(2024, 7, 1, 12, tzinfo=paris)
    back = decode_value(encode_value(dt))
    assert back == dt and back.utcoffset() == timedelta(hours=2) and type(back.tzinfo) is timezone


@pytest.mark.parametrize("sub, base", [
    (Color.RED, "red"), (Level.HIGH, 3), (Point(1, "a"), (1, "a")), (MyFloat(2.5), 2.5), (MyList([1]), [1]),
    (OrderedDict(b=1), {"b": 1}), ({Color.RED: [Level.HIGH]}, {"red": [3]}), (np.int64(-7), -7),
    (np.uint64(2**64 - 1), 2**64 - 1), (np.float32(0.5), 0.5), (np.float64(1.25), 1.25), (np.bool_(False), False),
    (np.str_("x"), "x"), ([np.int8(1), np.float16(2.0)], [1, 2.0]), (Weird("w"), "w"),
    (type("BigInt", (int,), {})(2**100), 2**100), (type("D", (Decimal,), {})("1.5"), Decimal("1.5")),
    (type("S", (set,), {})([1]), {1}), (type("T", (timedelta,), {})(3), timedelta(3)),
])
def test_value_subclasses_and_numpy_scalars_come_back_as_base_type(sub, base):
    assert _same(decode_value(encode_value(sub)), base)


@pytest.mark.parametrize("bad, name", [
    (Foo(), "Foo"), (object(), "object"), (1j, "complex"), ([1, {"a": Foo()}], "Foo"), ({Foo(): 1}, "Foo"),
    ((1, Foo()), "Foo"), ({(1, Foo())}, "Foo"), (np.arange(3), "ndarray"), ([np.zeros((2, 2))], "ndarray"),
    (msgpack, "module"), (len, "builtin_function_or_method"),
])
def test_unsupported_values_raise_codec_error_naming_the_type(bad, name):
    for fn in (encode_value, check_value, lambda v: encode_values([1, v])):
        with pytest.raises(CodecError) as ei:
            fn(bad)
        assert type(ei.value) is CodecError
        assert f"'{name}'" in str(ei.value)
        assert "cannot be written to an internal topic or store" in str(ei.value)
        if name == "ndarray":
            assert ".tolist()" in str(ei.value)


def test_check_value_accepts_supported_values():
    assert check_value({"a": (1, {2})}) is None
    assert check_value(None) is None


def test_self_referential_and_deep_values_are_codec_errors():
    loop = []
    loop.append(loop)
    deep = ()
    for _ in range(3000):
        deep = (deep,)
    for v in (loop, deep, [loop], {"a": loop}):
        with pytest.raises(CodecError) as ei:
            encode_value(v)
        assert type(ei.value) is CodecError


def test_tuple_and_set_nesting_limit_is_the_same_for_writing_and_reading():
    ok = 1
    for _ in range(16):
        ok = (ok,)
    assert decode_value(encode_value([{"a": ok}])) == [{"a": ok}]
    with pytest.raises(CodecError, match="nested more than 16"):
        encode_value((ok,))
    with pytest.raises(CodecError, match="nested more than 16"):
        encode_value([frozenset({ok})])
    with pytest.raises(CodecError, match="nested more than 16"):
        decode_value(_nested_ext_tuples(17))
    # the per-thread nesting budget is whole again after the errors
    assert decode_value(encode_value([{"a": ok}])) == [{"a": ok}]
    assert decode_value(encode_value([ok] * 3)) == [ok] * 3


def test_deep_extension_nesting_cannot_crash_a_small_thread_stack():
    # each nesting level is a msgpack call taking ~45 KB of C stack: unbounded, this segfaults
    results = []
    old = threading.stack_size(1024 * 1024)
    try:
        t = threading.Thread(target=lambda: results.append(_decode_outcome(_nested_ext_tuples(2000))))
        t.start()
        t.join()
    finally:
        threading.stack_size(old)
    assert results == [CodecError]


def _decode_outcome(data):
    try:
        decode_value(data)
    except Exception as e:     # noqa: BLE001
        return type(e)
    return None


def test_value_batches():
    vs = [1, None, (1, 2), {"a": [1]}, None]
    encs = encode_values(vs)
    assert encs == [encode_value(v) for v in vs] and encs[1] is None
    assert decode_values(encs) == vs
    assert type(decode_values(encs)[2]) is tuple
    with pytest.raises(CodecError, match="'Foo'"):
        encode_values([1, Foo()])
    with pytest.raises(CodecError, match="streamproc reset"):
        decode_values([encs[0], pickle.dumps(1, 5)])
    with pytest.raises(CodecError):
        decode_values([encs[0], b""])


def test_value_packers_are_per_thread():
    # the default hook (tuples, datetimes) releases the GIL mid-pack: a shared Packer would mix outputs
    errors = []
    batches = [[[t, i, "x" * (i % 7), [(j, datetime(2020, 1, 1) + timedelta(seconds=i), {j}) for j in range(20)]]
                for i in range(100)] for t in range(6)]

    def work(batch):
        try:
            for _ in range(5):
                assert decode_values(encode_values(batch)) == batch
                assert [decode_value(encode_value(v)) for v in batch] == batch
        except BaseException as e:   # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(b,)) for b in batches]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)           # switch threads as often as possible, also inside pack()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors[:1]


# ------------------------------------------------------------------------------ value decoding errors
def test_old_pickle_values_and_keys_are_refused_with_reset_advice():
    for proto in range(2, 6):
        for data in (pickle.dumps({"a": 1}, proto), pickle.dumps(("k", 1), proto)):
            for fn in (decode_value, decode_key):
                with pytest.raises(CodecError) as ei:
                    fn(data)
                assert type(ei.value) is CodecError
                assert "streamproc reset" in str(ei.value) and "pickle" in str(ei.value)


def test_unknown_value_format_byte():
    with pytest.raises(CodecError, match="unknown value format byte 0x02"):
        decode_value(b"\x02\x90")
    with pytest.raises(CodecError, match="unknown key format byte 0x31"):
        decode_key(b"\x31abc\x00\x00")          # an old streamproc.state.keys encoding


def _raw_ext(code: int, payload: bytes) -> bytes:
    """msgpack bytes of an extension with any code (msgpack.ExtType refuses negative ones)."""
    n = len(payload)
    fixed = {1: b"\xd4", 2: b"\xd5", 4: b"\xd6", 8: b"\xd7", 16: b"\xd8"}
    head = fixed.get(n) or (b"\xc7" + bytes([n]) if n < 256 else b"\xc8" + n.to_bytes(2, "big"))
    return head + code.to_bytes(1, "big", signed=True) + payload


def _ext(code: int, payload: bytes) -> bytes:
    return b"\x01" + _raw_ext(code, payload)


def _nested_ext_tuples(depth: int) -> bytes:
    payload = msgpack.packb([1])
    for _ in range(depth):
        payload = msgpack.packb([msgpack.ExtType(1, payload)])
    return b"\x01" + payload


@pytest.mark.parametrize("data", [
    b"", b"\x01", b"\x01\xc1", b"\x01\x92\x01", b"\x01\x01\x02",                       # format/truncated/extra
    b"\x01" + b"\x91" * 100_000 + b"\x01",                                             # too deep
    b"\x01\xa2\xff\xfe", b"\x01\x81\x91\x01\x02", b"\x01\xdd\xff\xff\xff\xff",          # bad utf-8, list map key, huge len
    _ext(99, b""), _ext(0, b""), _ext(127, b"x"), _ext(-5, b"x"), _ext(-1, b"\x00" * 3),  # unknown / bad ext
    _ext(1, msgpack.packb(5)), _ext(2, msgpack.packb([[1]])), _ext(3, b"\xc1"), _ext(1, b"\x91\x01\x01"),
    _ext(5, b"\x7f" * 8), _ext(5, b"\x00" * 9 + b"\x02"), _ext(5, b""), _ext(6, b"\x00" * 8 + b"\x7f" * 8),
    _ext(7, b"\x00" * 4), _ext(7, b"\x00"), _ext(8, b"\x7f" * 8), _ext(8, b"\xff" * 8), _ext(9, b"\x00" * 15),
    _ext(10, b"\x7f" * 12), _ext(11, b"nope"), _ext(11, b"\xff"), _ext(12, b"\x00" * 15),
    _nested_ext_tuples(5000),
])
def test_invalid_values_raise_only_codec_error(data):
    with pytest.raises(CodecError) as ei:
        decode_value(data)
    assert type(ei.value) is CodecError


def test_msgpack_timestamp_extension_decodes_to_utc_datetime():
    assert decode_value(_ext(-1, b"\x00\x00\x00\x01")) == datetime(1970, 1, 1, 0, 0, 1, tzinfo=timezone.utc)


def test_decode_value_rejects_non_bytes():
    assert decode_value(None) is None
    for bad in ("\x01\x01", 1, [1], object()):
        with pytest.raises(CodecError) as ei:
            decode_value(bad)
        assert type(ei.value) is CodecError


VALUE_DECODERS = [decode_value, lambda d: decode_values([d])]


@FUZZ
@given(st.binary(max_size=60))
def test_fuzz_value_decoders_raise_only_codec_error(data):
    for fn in VALUE_DECODERS:
        _only_codec_error(fn, data)
        _only_codec_error(fn, b"\x01" + data)


@FUZZ
@given(st.integers(-128, 127), st.binary(max_size=20))
def test_fuzz_ext_payloads_raise_only_codec_error(code, payload):
    _only_codec_error(decode_value, _ext(code, payload))
    _only_codec_error(decode_value, b"\x01\x92\x01\x81\xa1a" + _raw_ext(code, payload))


@FUZZ
@given(values.filter(lambda v: v is not None).map(encode_value).flatmap(_mutations))
def test_fuzz_mutated_value_encodings_raise_only_codec_error(data):
    for fn in VALUE_DECODERS:
        _only_codec_error(fn, data)


# ============================================================================== no code execution
class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_pickles_are_refused_and_never_run(tmp_path: Path):
    marker = tmp_path / "pwned"
    # sanity: this payload really does create the marker when unpickled
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Evil(str(probe)), 2)).close()
    assert probe.exists()

    payloads = [pickle.dumps(_Evil(str(marker)), proto) for proto in range(0, 6)]
    payloads += [pickle.dumps([1, {"x": _Evil(str(marker))}], proto) for proto in (2, 5)]
    datas = []
    for p in payloads:
        datas.append(p)
        datas += [bytes([b]) + p for b in range(256)]                      # every format byte
        datas.append(b"\x01\x7f" + p.replace(b"\x00", b"\x00\xff") + b"\x00\x00")   # old keys.py pickle tag
        datas.append(b"\x01\x31" + p.replace(b"\x00", b"\x00\xff") + b"\x00\x00")
        datas += [_ext(code, p) for code in range(-2, 128)]                 # as an extension payload
        datas.append(b"\x01" + msgpack.packb(p))                           # as plain bytes in a value
    for data in datas:
        for fn in [*KEY_DECODERS, *VALUE_DECODERS]:
            try:
                out = fn(data)
            except CodecError:
                continue
            except Exception as e:     # noqa: BLE001
                pytest.fail(f"{type(e).__name__} decoding {data[:20]!r}: {e}")
            assert not isinstance(out, _Evil)
    assert not marker.exists()
    for p in payloads[:6]:
        for first in (None, KEY_FORMAT, VALUE_FORMAT, 0x00, 0x80):
            data = p if first is None else bytes([first]) + p
            for fn in [decode_key, dec_window, decode_value]:
                with pytest.raises(CodecError):
                    fn(data)
    assert not marker.exists()


def test_codec_module_uses_no_pickle_eval_or_dynamic_import():
    tree = ast.parse(Path(codec.__file__).read_text())
    banned_modules = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "importlib"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not {a.name.split(".")[0] for a in node.names} & banned_modules
        if isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] not in banned_modules
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in {"eval", "exec", "__import__", "compile", "getattr"}
        if isinstance(node, ast.Name):
            assert node.id not in {"pickle", "eval", "exec", "__import__"}


# ============================================================================== errors
def test_codec_error_is_a_located_serde_error():
    e = CodecError("bad bytes")
    assert isinstance(e, SerdeError) and e.reason == "bad bytes"
    assert str(e) == "streamproc internal codec error: bad bytes"
    loc = e.located(topic="app-agg-changelog", partition=3, offset=17)
    assert type(loc) is CodecError
    assert "topic 'app-agg-changelog'" in str(loc) and "partition 3" in str(loc) and "offset 17" in str(loc)
    assert loc.reason == "bad bytes" and loc.serde == "streamproc internal codec"
    assert CodecError("x", serde="other", topic="t").located(offset=1).serde == "other"
    assert CodecError("x", topic="t").located(offset=1).topic == "t"
