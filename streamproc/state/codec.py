"""THE byte encoding of everything streamproc writes for itself: repartition topic keys and
values, changelog keys and values, RocksDB keys and values, store metadata.

Nothing here uses pickle, eval or imports by name. Bytes read from Kafka or from a state
directory are untrusted: decoding them either returns plain Python data or raises
:class:`~streamproc.errors.CodecError`, never any other exception, and never runs code.

Each encoding starts with a *format byte*, so the format can evolve; an unknown format byte
is refused with a clear error. Byte ``0x00`` is never the first byte of a key or a value
(the changelog uses ``b"\\x00..."`` keys for its own metadata records, see
:func:`is_reserved_key`), and a first byte ``0x80`` is recognised as a pickle written by an
older streamproc and refused with the advice to run ``streamproc reset <topology>``.

Keys: ``KEY_FORMAT`` (0x01) + tagged body
    A key is a Python object; Kafka's partitioner, log compaction and RocksDB only see its
    bytes. The body is *tagged*, *order-preserving*, *canonical* and *prefix-free*:

    =================  =====  ===========================================================
    type               tag    body
    =================  =====  ===========================================================
    ``None``           0x01   -
    ``False/True``     0x02/3 -
    ``int`` < -2^63    0x0F   ``255 - n`` (1 byte), then the magnitude's n big-endian bytes
                              inverted (n <= 255)
    ``int`` 64-bit     0x10   8 bytes big-endian, sign bit flipped (``i + 2**63`` unsigned)
    ``int`` >= 2^63    0x11   n (1 byte), then the magnitude's n big-endian bytes (n <= 255)
    ``float``          0x20   IEEE-754 big-endian; positive: sign bit flipped, negative: all
                              bits inverted. ``-0.0`` is stored as ``0.0``, every NaN as one
                              NaN (which sorts after ``inf``)
    ``date``           0x28   ``toordinal()``, 4 bytes big-endian
    naive datetime     0x29   microseconds since 1970-01-01 (of the naive value), 8 bytes
                              big-endian, sign bit flipped
    aware datetime     0x2A   its UTC instant in microseconds since the epoch, same layout;
                              decoded as a datetime in ``timezone.utc``
    ``bytes``          0x30   the bytes, ``00`` escaped as ``00 FF``, then ``00 00``
    ``str``            0x31   UTF-8 (``surrogatepass``), escaped and terminated like bytes
    ``tuple``          0x40   each element's body, then ``00``
    ``list``           0x41   each element's body, then ``00``
    ``dict``           0x42   for each entry in key order: the key's ``str`` body, the
                              value's body; then ``00``. Keys must be ``str``.
    =================  =====  ===========================================================

    * Order: within a type, byte order is value order: numbers by value, strings by code
      point, datetimes by instant, tuples and lists element by element with a shorter one
      first, dicts by their sorted ``(key, value)`` sequences. Across types:
      None < bool < int < float < date < naive datetime < aware datetime < bytes < str <
      tuple < list < dict. ``store.items()`` therefore lists keys in natural order.
    * Canonical: equal keys of the same type give equal bytes, however they were built (no
      memo of shared objects as in pickle; dicts sorted). Kafka's partitioner therefore
      sends equal keys to one partition, and compaction keeps one value per key.
    * Prefix-free: no body is a proper prefix of another (fixed sizes, ``00 00``
      terminators that escaped content cannot contain, element tags are never ``00``), so
      ``KEY_FORMAT + body(k)`` is an exact RocksDB range prefix for keys stored "under" k.
    * Round trip: exact for the types above (tuples stay tuples, lists lists, ``True``
      stays ``True``). ``1``, ``1.0`` and ``True`` are three different keys. Subclasses of
      str/int/float/bytes/tuple/list/dict/datetime/date (``StrEnum``, ``IntEnum``,
      namedtuples, ``OrderedDict``...) and numpy scalars are encoded as their base Python
      type and come back as it. Anything else (sets, custom objects, dicts with non-str
      keys, ints of more than 2040 bits) raises ``CodecError`` naming the type.

    Windowed stores (kind ``"window"``: tumbling/hopping, key ``(group_key, window_start)``)
    encode the key as ``KEY_FORMAT + body(group_key) + start`` where start is 8 bytes
    big-endian with the sign bit flipped (no tag). All windows of one group key are one
    contiguous range sorted by window start: :func:`key_prefix` / :func:`window_range`
    give the byte bounds (format byte included) for "every window of k" and "windows of k
    starting in [a, b)". Other kinds (``"kv"``, ``"sliding"``, ``"session"``, ``"table"``, ``"join"``) key by the
    group key alone.

Values: ``None`` or ``VALUE_FORMAT`` (0x01) + msgpack
    ``None`` is encoded as ``None`` (a changelog tombstone / null Kafka value) and back.
    Anything else is msgpack (``use_bin_type``, ``strict_types``; str as UTF-8 with
    ``surrogatepass``, so lone surrogates round-trip) with
    these extension types for what msgpack lacks:

    ====  ======================  =============================================
    code  type                    payload
    ====  ======================  =============================================
    1     ``tuple``               msgpack array
    2     ``set``                 msgpack array
    3     ``frozenset``           msgpack array
    4     ``int`` beyond 64 bits  signed big-endian two's complement
    5     naive ``datetime``      ``>q`` microseconds since 1970-01-01 [+ fold byte 1]
    6     aware ``datetime``      ``>qq`` local wall time in us since 1970, utcoffset in us [+ fold]
    7     ``date``                ``>I`` ordinal
    8     naive ``time``          ``>q`` microseconds since midnight [+ fold byte 1]
    9     aware ``time``          ``>qq`` microseconds since midnight, utcoffset in us [+ fold]
    10    ``timedelta``           ``>iII`` days, seconds, microseconds
    11    ``decimal.Decimal``     ``str(d)`` in ASCII (sign, digits and exponent kept)
    12    ``uuid.UUID``           the 16 bytes
    ====  ======================  =============================================

    Round trips are exact (type included) for None, bool, int (any size), float, str,
    bytes, list, tuple, dict (any supported keys, tuple keys included), set, frozenset,
    datetime, date, time, timedelta, Decimal and UUID. ``bytearray``/``memoryview`` come
    back as ``bytes``; subclasses of those types and numpy scalars come back as the base
    Python type. An aware datetime/time keeps its utcoffset as a fixed-offset
    ``datetime.timezone`` (a ``ZoneInfo`` comes back as a fixed offset; a tzinfo whose
    ``utcoffset()`` is None counts as naive). Numpy arrays and other types raise
    ``CodecError``. msgpack's own timestamp extension (-1) is never written; if found, it
    decodes to an aware UTC datetime. Any other extension code is refused. Tuples, sets and
    frozensets may nest at most 16 deep in one another (lists and dicts between them do not
    count; msgpack itself limits plain list/dict nesting): each level is a nested msgpack
    call on the C stack, and deeper nesting is refused when writing and when reading.

Values need not be canonical (only keys are compared as bytes).

Speed and threads
    ``encode_value``/``encode_values`` use one msgpack ``Packer`` per thread (a Packer is not
    thread-safe, and per-call ``msgpack.packb`` is ~4x slower for small values); decoding
    calls ``msgpack.unpackb``. Lists, dicts and scalars are packed in C; each tuple, set,
    datetime... costs a Python call, so prefer lists in aggregate states. The str and
    ``(str, int)`` key paths are inlined.

Public API
    keys: ``encode_key``, ``decode_key``, ``encode_keys``, ``decode_keys``, ``is_reserved_key``;
    store keys: ``encode_store_key``, ``decode_store_key``, ``key_encoder``, ``key_decoder``,
    ``canonical_str_keys`` (a bulk check of untrusted key bytes),
    ``key_prefix``, ``window_range``, ``prefix_end``, ``KINDS``, ``WINDOWED_KINDS``;
    values: ``encode_value``, ``decode_value``, ``encode_values``, ``decode_values``,
    ``check_value``, ``check_values`` (of encoded values); ``KEY_FORMAT``, ``VALUE_FORMAT``.
    Errors: ``CodecError`` (a ``SerdeError``) with a plain-text message; callers add the operator/topic.
"""
from __future__ import annotations

import struct
import sys
import threading
import uuid
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from functools import lru_cache
from operator import itemgetter

import msgpack

from ..errors import CodecError
from ..kinds import StoreKind

__all__ = [
    "KEY_FORMAT", "VALUE_FORMAT", "KINDS", "WINDOWED_KINDS",
    "encode_key", "decode_key", "encode_keys", "decode_keys", "is_reserved_key",
    "encode_store_key", "decode_store_key", "key_encoder", "key_decoder", "canonical_str_keys",
    "key_prefix", "window_range", "prefix_end",
    "encode_value", "decode_value", "encode_values", "decode_values", "check_value", "check_values",
]

KEY_FORMAT = 0x01
VALUE_FORMAT = 0x01

KINDS = tuple(StoreKind)                           # every store kind, in StoreKind's order
WINDOWED_KINDS = frozenset({StoreKind.WINDOW})     # keys are (group_key, window_start)

_PICKLE_FIRST_BYTE = 0x80
_RESET_ADVICE = ("it was written by an older streamproc version in the pickle format, which this "
                 "version refuses to read (unpickling can run code); run `streamproc reset <topology>` "
                 "to start over")

_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_I64x2 = struct.Struct(">qq")
_U32 = struct.Struct(">I")
_F64 = struct.Struct(">d")
_TD = struct.Struct(">iII")
_FLIP = 1 << 63
_MASK64 = (1 << 64) - 1
_pack_u64 = _U64.pack
_unpack_u64_from = _U64.unpack_from

_EPOCH = datetime(1970, 1, 1)
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)
_MIN_US = (datetime.min - _EPOCH) // _US
_MAX_US = (datetime.max - _EPOCH) // _US


def _numpy():
    """The numpy module if it was imported by anyone (if not, no object can be a numpy one)."""
    return sys.modules.get("numpy")


def _show(data) -> str:
    """A short, safe description of (possibly hostile) bytes for an error message."""
    try:
        b = bytes(data[:24])
        more = " ..." if len(data) > 24 else ""
        return f"{len(data)} bytes: {b.hex(' ')}{more}"
    except Exception:
        return f"an object of type {type(data).__name__!r}"


def _reason(e: BaseException) -> str:
    if isinstance(e, (IndexError, struct.error)):
        return "truncated"
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return f"{type(e).__name__}: {e}"


# ===================================================================================== keys
T_NONE, T_FALSE, T_TRUE = 0x01, 0x02, 0x03
T_NEGBIG, T_INT, T_POSBIG = 0x0F, 0x10, 0x11
T_FLOAT = 0x20
T_DATE, T_DATETIME, T_DATETIME_TZ = 0x28, 0x29, 0x2A
T_BYTES, T_STR = 0x30, 0x31
T_TUPLE, T_LIST, T_DICT = 0x40, 0x41, 0x42
_END = b"\x00\x00"
_NAN_BODY = b"\x20" + _pack_u64(_unpack_u64_from(_F64.pack(float("nan")))[0] | _FLIP)

_KEY_TYPES_TEXT = ("keys may be str, bytes, int, float, bool, None, datetime, date, "
                   "or tuples/lists/dicts (str keys) of those")


class _BadKey(Exception):
    """Internal: a part of a key cannot be encoded (``what`` says which and why)."""

    def __init__(self, what: str):
        self.what = what


def _enc_str(s: str) -> bytes:
    return b"\x31" + s.encode("utf-8", "surrogatepass").replace(b"\x00", b"\x00\xff") + _END


def _enc_bytes(b: bytes) -> bytes:
    return b"\x30" + b.replace(b"\x00", b"\x00\xff") + _END


def _enc_int(i: int) -> bytes:
    if -_FLIP <= i < _FLIP:
        return b"\x10" + _pack_u64(i + _FLIP)
    if i > 0:
        n = (i.bit_length() + 7) // 8
        if n <= 255:
            return bytes((T_POSBIG, n)) + i.to_bytes(n, "big")
    else:
        n = ((-i).bit_length() + 7) // 8
        if n <= 255:
            return bytes((T_NEGBIG, 255 - n)) + ((-i) ^ ((1 << (8 * n)) - 1)).to_bytes(n, "big")
    raise _BadKey(f"an int of {i.bit_length()} bits (at most 2040 bits)")


def _enc_float(f: float) -> bytes:
    if f != f:
        return _NAN_BODY           # every NaN is one key
    if f == 0.0:
        f = 0.0                    # -0.0 == 0.0: one key, as in a dict
    u = _unpack_u64_from(_F64.pack(f))[0]
    u = (u ^ _MASK64) if u & _FLIP else (u | _FLIP)
    return b"\x20" + _pack_u64(u)


def _enc_date(d: date) -> bytes:
    return b"\x28" + _U32.pack(d.toordinal())


def _enc_datetime(dt: datetime) -> bytes:
    if dt.utcoffset() is None:
        return b"\x29" + _pack_u64((dt - _EPOCH) // _US + _FLIP)
    us = (dt - _EPOCH_UTC) // _US
    if not _MIN_US <= us <= _MAX_US:
        raise _BadKey("an aware datetime whose UTC instant is outside years 1..9999")
    return b"\x2a" + _pack_u64(us + _FLIP)


def _enc_tuple(t) -> bytes:
    return b"\x40" + b"".join([_enc(x) for x in t]) + b"\x00"


def _enc_list(t) -> bytes:
    return b"\x41" + b"".join([_enc(x) for x in t]) + b"\x00"


_first = itemgetter(0)


def _enc_dict(d: dict) -> bytes:
    items = []
    for k, v in dict.items(d):
        if type(k) is not str:
            if isinstance(k, str):
                k = str.__str__(k)
            else:
                raise _BadKey(f"a dict with a key of type {type(k).__qualname__!r} (dict keys must be str)")
        items.append((k, v))
    items.sort(key=_first)
    return b"\x42" + b"".join([_enc_str(k) + _enc(v) for k, v in items]) + b"\x00"


_KEY_ENC = {
    str: _enc_str,
    int: _enc_int,
    bytes: _enc_bytes,
    tuple: _enc_tuple,
    float: _enc_float,
    type(None): lambda _: b"\x01",
    bool: lambda b: b"\x03" if b else b"\x02",
    list: _enc_list,
    dict: _enc_dict,
    datetime: _enc_datetime,
    date: _enc_date,
}


def _as_datetime(d: datetime) -> datetime:
    return datetime(d.year, d.month, d.day, d.hour, d.minute, d.second, d.microsecond, d.tzinfo, fold=d.fold)


def _as_date(d: date) -> date:
    return date(d.year, d.month, d.day)


def _as_time(t: time) -> time:
    return time(t.hour, t.minute, t.second, t.microsecond, t.tzinfo, fold=t.fold)


def _as_timedelta(t: timedelta) -> timedelta:
    return timedelta(t.days, t.seconds, t.microseconds)


# base type -> conversion of an instance of a subclass to exactly that type (C-level where possible)
_KEY_BASES = (
    (str, str.__str__), (int, int.__int__), (float, float.__float__), (bytes, bytes.__bytes__),
    (tuple, lambda t: tuple.__getitem__(t, slice(None))), (list, list.copy),
    (dict, lambda d: dict(dict.items(d))), (datetime, _as_datetime), (date, _as_date),
)


def _to_key_base(k):
    """``k`` as an exact supported key type, or raise _BadKey naming its type."""
    np = _numpy()
    if np is not None and isinstance(k, np.generic):
        item = k.item()
        if type(item) in _KEY_ENC:
            return item
    for base, convert in _KEY_BASES:
        if isinstance(k, base):
            return convert(k)
    raise _BadKey(f"a value of type {type(k).__qualname__!r}")


def _enc(key) -> bytes:
    """The tagged body of ``key`` (no format byte)."""
    t = type(key)
    if t is str:                   # the common cases first, without a dict lookup
        return b"\x31" + key.encode("utf-8", "surrogatepass").replace(b"\x00", b"\x00\xff") + _END
    if t is int and -_FLIP <= key < _FLIP:
        return b"\x10" + _pack_u64(key + _FLIP)
    f = _KEY_ENC.get(t)
    if f is None:
        key = _to_key_base(key)
        f = _KEY_ENC[type(key)]
    return f(key)


def _key_error(key, e: BaseException) -> CodecError:
    name = type(key).__qualname__
    if isinstance(e, _BadKey):
        what = e.what
        if what == f"a value of type {name!r}":
            return CodecError(f"a key of type {name!r} cannot be stored: {_KEY_TYPES_TEXT}")
        return CodecError(f"a key of type {name!r} cannot be stored: {what} is not supported; {_KEY_TYPES_TEXT}")
    if isinstance(e, RecursionError):
        return CodecError(f"a key of type {name!r} cannot be stored: it is nested too deeply")
    return CodecError(f"a key of type {name!r} cannot be stored: {type(e).__name__}: {e}")


def encode_key(key) -> bytes:
    """The canonical, order-preserving bytes of ``key`` (``KEY_FORMAT`` + tagged body)."""
    if type(key) is str:
        return b"\x01\x31" + key.encode("utf-8", "surrogatepass").replace(b"\x00", b"\x00\xff") + b"\x00\x00"
    try:
        if type(key) is tuple:
            return b"\x01\x40" + b"".join([_enc(x) for x in key]) + b"\x00"
        return b"\x01" + _enc(key)
    except CodecError:
        raise
    except Exception as e:
        raise _key_error(key, e) from None


def _terminated(data: bytes, pos: int) -> tuple[bytes, int]:
    """The unescaped content starting at ``pos`` and the position after its ``00 00`` terminator."""
    end = data.index(b"\x00", pos)
    if data[end + 1] == 0:         # no 00 in the content: the common case
        return data[pos:end], end + 2
    end = data.index(_END, pos)    # escaped content never holds 00 00: every 00 is followed by FF
    seg = data[pos:end]
    if seg.count(b"\x00") != seg.count(b"\x00\xff"):
        raise CodecError("not a valid streamproc key: a 00 byte that is not escaped")
    return seg.replace(b"\x00\xff", b"\x00"), end + 2


def _dec(data: bytes, pos: int):
    """The key whose tagged body starts at ``pos`` and the position after it (common tags first)."""
    tag = data[pos]
    pos += 1
    if tag == T_STR:
        b, pos = _terminated(data, pos)
        return b.decode("utf-8", "surrogatepass"), pos
    if tag == T_INT:
        return _unpack_u64_from(data, pos)[0] - _FLIP, pos + 8
    if tag == T_TUPLE or tag == T_LIST:
        items = []
        while data[pos] != 0:
            x, pos = _dec(data, pos)
            items.append(x)
        return (tuple(items) if tag == T_TUPLE else items), pos + 1
    if tag == T_BYTES:
        return _terminated(data, pos)
    if tag == T_FLOAT:
        u = _unpack_u64_from(data, pos)[0]
        u = (u ^ _FLIP) if u & _FLIP else (u ^ _MASK64)
        return _F64.unpack(_pack_u64(u))[0], pos + 8
    if tag == T_NONE:
        return None, pos
    if tag == T_FALSE:
        return False, pos
    if tag == T_TRUE:
        return True, pos
    if tag == T_DICT:
        return _dec_dict(data, pos)
    if tag == T_DATETIME:
        return _EPOCH + timedelta(microseconds=_unpack_u64_from(data, pos)[0] - _FLIP), pos + 8
    if tag == T_DATETIME_TZ:
        return _EPOCH_UTC + timedelta(microseconds=_unpack_u64_from(data, pos)[0] - _FLIP), pos + 8
    if tag == T_DATE:
        return date.fromordinal(_U32.unpack_from(data, pos)[0]), pos + 4
    if tag == T_POSBIG or tag == T_NEGBIG:
        return _dec_bigint(data, pos, tag == T_POSBIG)
    raise CodecError(f"not a valid streamproc key: unknown tag 0x{tag:02x} at byte {pos - 1}")


def _dec_dict(data: bytes, pos: int):
    """The dict whose entries start at ``pos`` (after its tag) and the position after its ``00``."""
    d = {}
    prev = None
    while data[pos] != 0:
        if data[pos] != T_STR:
            raise CodecError(f"not a valid streamproc key: a dict key with tag 0x{data[pos]:02x} (not str)")
        b, pos = _terminated(data, pos + 1)
        k = b.decode("utf-8", "surrogatepass")
        if prev is not None and not prev < k:
            raise CodecError("not a valid streamproc key: dict keys not in strictly increasing order")
        d[k], pos = _dec(data, pos)
        prev = k
    return d, pos + 1


def _dec_bigint(data: bytes, pos: int, positive: bool):
    """An int beyond 64 bits (tag ``T_POSBIG``/``T_NEGBIG``, read before ``pos``) and the position after it."""
    n = data[pos] if positive else 255 - data[pos]
    mag = data[pos + 1:pos + 1 + n]
    if len(mag) != n:
        raise IndexError("truncated")
    i = int.from_bytes(mag, "big")
    return (i if positive else -(i ^ ((1 << (8 * n)) - 1))), pos + 1 + n


def _format_problem(first: int, what: str) -> str:
    if first == _PICKLE_FIRST_BYTE:
        return f"this {what} is a pickle: {_RESET_ADVICE}"
    if first == 0x00 and what == "key":
        return "this is a reserved key (a changelog metadata record), not a store key"
    return (f"unknown {what} format byte 0x{first:02x} (this streamproc reads format 0x01): it was "
            f"written by another streamproc version or is not streamproc data (if an older streamproc "
            f"wrote it, run `streamproc reset <topology>` to start over)")


def _decode_key_slow(data):
    if type(data) is not bytes:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise CodecError(f"a key must be bytes, not {type(data).__qualname__!r}")
        data = bytes(data)
    if not data:
        raise CodecError("not a valid streamproc key: empty")
    if data[0] != KEY_FORMAT:
        raise CodecError(f"{_format_problem(data[0], 'key')} ({_show(data)})")
    x, pos = _dec(data, 1)
    if pos != len(data):
        raise CodecError(f"not a valid streamproc key: {len(data) - pos} trailing bytes")
    return x


def _key_decode_error(data, e: BaseException) -> CodecError:
    if isinstance(e, CodecError):
        msg = e.reason
        if msg.startswith("not a valid streamproc key") and "bytes:" not in msg:
            msg = f"{msg} ({_show(data)})"
        return CodecError(msg)
    return CodecError(f"not a valid streamproc key ({_reason(e)}): {_show(data)}")


def decode_key(data: bytes):
    """The key encoded in ``data`` (exact inverse of :func:`encode_key`); CodecError if invalid."""
    try:                           # fast path: a str key without 00 bytes (01 31 <utf-8> 00 00)
        if data[1] == 0x31 and data[0] == 1 and data.find(b"\x00", 2) == len(data) - 2 and data[-1] == 0:
            return data[2:-2].decode("utf-8", "surrogatepass")
    except Exception:              # not bytes, too short, bad UTF-8: the checked path says what is wrong
        pass
    try:
        return _decode_key_slow(data)
    except Exception as e:
        raise _key_decode_error(data, e) from None


def encode_keys(keys: list) -> list:
    """:func:`encode_key` of each key; None stays None (a null Kafka key)."""
    return [None if k is None else
            b"\x01\x31" + k.encode("utf-8", "surrogatepass").replace(b"\x00", b"\x00\xff") + b"\x00\x00"
            if type(k) is str else encode_key(k) for k in keys]


def decode_keys(datas: list) -> list:
    """:func:`decode_key` of each byte string; None stays None."""
    return [None if d is None else decode_key(d) for d in datas]


def is_reserved_key(data: bytes) -> bool:
    """True for raw keys that are not encoded keys but the changelog's own records (first byte 0x00)."""
    return data[:1] == b"\x00"


# -------------------------------------------------------------------------- windowed keys
def _bad_window(key, e: BaseException | None = None) -> CodecError:
    if isinstance(e, CodecError):
        return e
    return CodecError(f"a windowed store key must be a (group_key, window_start) pair with an int64 "
                      f"window start; got a {type(key).__qualname__!r}"
                      + ("" if e is None else f" ({type(e).__name__}: {e})"))


def _enc_window(key) -> bytes:
    try:
        gk, start = key
        if type(gk) is str:        # inlined encode_key for the common case
            return (b"\x01\x31" + gk.encode("utf-8", "surrogatepass").replace(b"\x00", b"\x00\xff")
                    + b"\x00\x00" + _pack_u64(start + _FLIP))
        return encode_key(gk) + _pack_u64(start + _FLIP)
    except Exception as e:
        return _enc_window_slow(key, e)


def _enc_window_slow(key, e: BaseException) -> bytes:
    if isinstance(e, CodecError):
        raise e
    try:
        gk, start = key
    except Exception:
        raise _bad_window(key) from None
    if isinstance(start, (bool, float)) or not hasattr(start, "__index__"):
        raise _bad_window(key)
    try:
        start = start.__index__()
        return encode_key(gk) + _pack_u64(start + _FLIP)
    except CodecError:
        raise
    except Exception as e2:
        raise _bad_window(key, e2) from None


def _dec_window(data: bytes):
    try:                           # fast path: (str without 00 bytes, start)
        n = len(data) - 8
        if data[1] == 0x31 and data[0] == 1 and data.find(b"\x00", 2) == n - 2 and data[n - 1] == 0:
            return data[2:n - 2].decode("utf-8", "surrogatepass"), _unpack_u64_from(data, n)[0] - _FLIP
    except Exception:
        pass
    if type(data) is not bytes and isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    try:
        n = len(data) - 8
        if n < 2:
            raise CodecError(f"not a valid windowed store key: too short ({_show(data)})")
        return decode_key(data[:n]), _unpack_u64_from(data, n)[0] - _FLIP
    except CodecError as e:
        raise CodecError(e.reason) from None
    except Exception as e:
        raise CodecError(f"not a valid windowed store key ({_reason(e)}): {_show(data)}") from None


def key_encoder(kind: str):
    """The fastest ``key -> bytes`` function for stores of ``kind``."""
    return _enc_window if kind in WINDOWED_KINDS else encode_key


def key_decoder(kind: str):
    """The ``bytes -> key`` function for stores of ``kind`` (inverse of :func:`key_encoder`)."""
    return _dec_window if kind in WINDOWED_KINDS else decode_key


def canonical_str_keys(kind: str, keys: list) -> bool:
    """True when every one of ``keys`` is, byte for byte, the one encoding of a store key of ``kind`` whose
    group key is a str without NUL (what most stores hold): ``01 31 <UTF-8> 00 00`` (a windowed store: then
    8 bytes of window start, any 8 bytes being a valid start). Checked in bulk on the keys joined, without
    decoding a key (numpy finds each key's first bytes and terminator). False when not all are: then decode
    and re-encode each (:func:`key_decoder`, :func:`key_encoder`), which also says which one is wrong and why.

    Such a key is canonical: Python's strict UTF-8 decoder takes no overlong or other second form
    (``surrogatepass`` only adds lone surrogates, which encode back to the same bytes), and content
    without NUL needs no escape."""
    n = len(keys)
    if not n:
        return True
    import numpy as np

    tail = 10 if kind in WINDOWED_KINDS else 2       # the terminator 00 00, then a window's start
    try:
        joined = b"".join(keys)
        lens = np.fromiter(map(len, keys), dtype=np.int64, count=n)
    except TypeError:                                # a key that is not bytes
        return False
    if lens.min() < tail + 2:
        return False
    a = np.frombuffer(joined, dtype=np.uint8)
    ends = np.cumsum(lens)
    starts = ends - lens
    term = ends - tail
    if not ((a[starts] == 0x01).all() and (a[starts + 1] == T_STR).all() and (a[term] == 0).all()
            and (a[term + 1] == 0).all()):
        return False
    if tail > 2:                                     # a window start is any 8 bytes: leave them out
        joined = b"".join(map(itemgetter(slice(0, -8)), keys))
    # each key has its 00 00: no other 00 anywhere, so the text between the tags and the terminator has none
    if joined.count(b"\x00") != 2 * n:
        return False
    try:                                             # the texts lie between ASCII bytes: valid iff each is
        joined.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return False
    return True


def encode_store_key(kind: str, key) -> bytes:
    """Bytes of store key ``key`` in a store of kind ``kind`` (``kv``/``window``/``sliding``/``session``)."""
    return key_encoder(kind)(key)


def decode_store_key(kind: str, data: bytes):
    """The store key encoded in ``data`` (exact inverse of :func:`encode_store_key`)."""
    return key_decoder(kind)(data)


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string that starts with ``prefix``.

    None if there is none (``prefix`` is empty or all ``FF``): scan to the end.
    """
    p = prefix.rstrip(b"\xff")
    if not p:
        return None
    return p[:-1] + bytes((p[-1] + 1,))


def key_prefix(group_key) -> bytes:
    """Prefix shared by exactly the windows of ``group_key`` in a windowed store (and by nothing else)."""
    return encode_key(group_key)


def _start_bytes(start) -> bytes:
    try:
        return _pack_u64(start.__index__() + _FLIP)
    except Exception:
        raise CodecError(f"a window start must be an int64, not {start!r}") from None


def window_range(group_key, start_from: int | None = None, start_to: int | None = None
                 ) -> tuple[bytes, bytes | None]:
    """Byte range ``[lower, upper)`` of the windows of ``group_key`` with ``start_from <= start < start_to``.

    Either bound may be None (unbounded on that side, within the key). ``upper`` is None
    only when no byte string bounds the range (never for a real key encoding).
    """
    p = encode_key(group_key)
    lower = p if start_from is None else p + _start_bytes(start_from)
    upper = prefix_end(p) if start_to is None else p + _start_bytes(start_to)
    return lower, upper


# =================================================================================== values
X_TUPLE, X_SET, X_FROZENSET, X_BIGINT = 1, 2, 3, 4
X_DATETIME, X_DATETIME_TZ, X_DATE, X_TIME, X_TIME_TZ = 5, 6, 7, 8, 9
X_TIMEDELTA, X_DECIMAL, X_UUID = 10, 11, 12

_VALUE_TYPES_TEXT = ("values may be None, bool, int, float, str, bytes, list, tuple, dict, set, frozenset, "
                     "datetime, date, time, timedelta, Decimal or UUID (subclasses of those and numpy "
                     "scalars come back as the base type)")
# Each tuple/set/frozenset is an extension whose payload is unpacked by a nested msgpack call,
# which takes ~45 KB of C stack: deeper nesting could overflow a thread's stack (a crash, not
# an exception), so it is refused on both sides.
_MAX_NESTING = 16
_PACK_OPTS = dict(use_bin_type=True, strict_types=True)
# msgpack encodes str ~1.6x faster without an error handler: values are packed strictly first and
# packed again with "surrogatepass" only if a str holds a lone surrogate (the same bytes otherwise)
_PACK_OPTS_SP = dict(use_bin_type=True, strict_types=True, unicode_errors="surrogatepass")
_ExtType = msgpack.ExtType
_new_tuple = tuple.__new__
_unpackb = msgpack.unpackb


class _Local(threading.local):
    """Per-thread packers: a Packer is not thread-safe (its ``default`` hook releases the GIL)."""

    def __init__(self):
        self.pack = msgpack.Packer(default=_default, **_PACK_OPTS).pack
        # one packer per nesting level of tuples/sets (in use: popped); none left = too deep
        self.packers = [msgpack.Packer(default=_default, buf_size=256, **_PACK_OPTS)
                        for _ in range(_MAX_NESTING)]
        self.unpack_tokens = [None] * _MAX_NESTING     # the same limit when unpacking
        self.pack_sp = None                            # surrogatepass packers, made when first needed
        self.packers_sp = None


def _pack_surrogates(obj) -> bytes:
    """Pack ``obj`` with the ``surrogatepass`` error handler (a str in it holds a lone surrogate)."""
    tls = _tls
    if tls.pack_sp is None:
        tls.pack_sp = msgpack.Packer(default=_default, **_PACK_OPTS_SP).pack
        tls.packers_sp = [msgpack.Packer(default=_default, buf_size=256, **_PACK_OPTS_SP)
                          for _ in range(_MAX_NESTING)]
    strict = tls.packers
    tls.packers = tls.packers_sp       # what _default uses for tuples/sets inside obj
    try:
        return tls.pack_sp(obj)
    finally:
        tls.packers = strict


def _too_deep() -> CodecError:
    return CodecError(f"tuples/sets nested more than {_MAX_NESTING} deep in one another are not supported")


def _pack_nested(obj) -> bytes:
    packers = _tls.packers
    if not packers:
        raise _too_deep()
    p = packers.pop()
    try:
        return p.pack(obj)
    finally:
        packers.append(p)


def _ext(code: int, data: bytes):
    return _new_tuple(_ExtType, (code, data))      # ExtType() validates its arguments in Python: slow


def _x_tuple(t):
    return _ext(X_TUPLE, _pack_nested(list(t)))


def _x_set(s):
    return _ext(X_SET, _pack_nested(list(s)))


def _x_frozenset(s):
    return _ext(X_FROZENSET, _pack_nested(list(s)))


def _x_int(i):
    if -_FLIP <= i <= _MASK64:
        return i                       # only subclasses get here; msgpack packs it
    return _ext(X_BIGINT, i.to_bytes(i.bit_length() // 8 + 1, "big", signed=True))


def _x_datetime(dt):
    off = dt.utcoffset()
    if off is None:
        us = (dt - _EPOCH) // _US
        return _ext(X_DATETIME, _I64.pack(us) + b"\x01" if dt.fold else _I64.pack(us))
    b = _I64x2.pack((dt.replace(tzinfo=None) - _EPOCH) // _US, off // _US)
    return _ext(X_DATETIME_TZ, b + b"\x01" if dt.fold else b)


def _x_date(d):
    return _ext(X_DATE, _U32.pack(d.toordinal()))


def _x_time(t):
    us = ((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.microsecond
    off = t.utcoffset()
    if off is None:
        return _ext(X_TIME, _I64.pack(us) + b"\x01" if t.fold else _I64.pack(us))
    b = _I64x2.pack(us, off // _US)
    return _ext(X_TIME_TZ, b + b"\x01" if t.fold else b)


def _x_timedelta(td):
    return _ext(X_TIMEDELTA, _TD.pack(td.days, td.seconds, td.microseconds))


def _x_decimal(d):
    return _ext(X_DECIMAL, str(d).encode("ascii"))


def _x_uuid(u):
    return _ext(X_UUID, u.bytes)


_VALUE_EXT = {
    tuple: _x_tuple, int: _x_int, datetime: _x_datetime, date: _x_date, set: _x_set,
    frozenset: _x_frozenset, time: _x_time, timedelta: _x_timedelta, Decimal: _x_decimal,
    uuid.UUID: _x_uuid,
}
# natively packed by msgpack (with strict_types): returned as they are after a subclass conversion
_NATIVE = frozenset({type(None), bool, float, str, bytes, bytearray, list, dict})

_VALUE_BASES = (
    (str, str.__str__), (int, int.__int__), (float, float.__float__), (bytes, bytes.__bytes__),
    (bytearray, bytes), (list, list.copy), (tuple, lambda t: tuple.__getitem__(t, slice(None))),
    (dict, lambda d: dict(dict.items(d))), (datetime, _as_datetime), (date, _as_date),
    (time, _as_time), (timedelta, _as_timedelta), (Decimal, Decimal),
    (uuid.UUID, lambda u: uuid.UUID(int=u.int)), (set, set), (frozenset, frozenset),
)


def _unsupported_value(obj) -> CodecError:
    name = type(obj).__qualname__
    np = _numpy()
    if np is not None and isinstance(obj, np.ndarray):
        return CodecError(f"a value of type {name!r} (a numpy array) cannot be written to an internal topic "
                          f"or store: convert it with .tolist(); {_VALUE_TYPES_TEXT}")
    return CodecError(f"a value of type {name!r} cannot be written to an internal topic or store: "
                      f"{_VALUE_TYPES_TEXT}")


def _default(obj):
    """msgpack's hook for what it does not pack itself: must return something it packs natively."""
    if type(obj) is tuple:             # _x_tuple inlined: the most common case
        packers = _tls.packers
        if packers:
            p = packers.pop()
            try:
                return _new_tuple(_ExtType, (X_TUPLE, p.pack(list(obj))))
            finally:
                packers.append(p)
        raise _too_deep()
    f = _VALUE_EXT.get(type(obj))
    if f is not None:
        return f(obj)
    base = _to_value_base(obj)
    if type(base) in _NATIVE:
        return base
    return _VALUE_EXT[type(base)](base)


def _to_value_base(obj):
    np = _numpy()
    if np is not None and isinstance(obj, np.generic):
        item = obj.item()
        t = type(item)
        if t in _NATIVE or t in _VALUE_EXT:
            return item
    for base, convert in _VALUE_BASES:
        if isinstance(obj, base):
            return convert(obj)
    raise _unsupported_value(obj)


_tls = _Local()


def _value_encode_error(obj, e: BaseException) -> CodecError:
    if isinstance(e, CodecError):
        return e
    if isinstance(e, RecursionError) or (isinstance(e, ValueError) and "recursion limit" in str(e)):
        return CodecError(f"a value of type {type(obj).__qualname__!r} cannot be written to an internal topic "
                          f"or store: it is nested too deeply (or contains itself)")
    return CodecError(f"a value of type {type(obj).__qualname__!r} cannot be written to an internal topic "
                      f"or store: {type(e).__name__}: {e}")


def encode_value(obj) -> bytes | None:
    """``VALUE_FORMAT`` + msgpack of ``obj``; None for None (a tombstone). CodecError if unsupported."""
    if obj is None:
        return None
    try:
        return b"\x01" + _tls.pack(obj)
    except UnicodeEncodeError:
        pass
    except Exception as e:
        raise _value_encode_error(obj, e) from None
    try:
        return b"\x01" + _pack_surrogates(obj)
    except Exception as e:
        raise _value_encode_error(obj, e) from None


def encode_values(objs: list) -> list:
    """:func:`encode_value` of each object (None stays None)."""
    pack = _tls.pack
    try:
        return [None if o is None else b"\x01" + pack(o) for o in objs]
    except Exception:
        return [encode_value(o) for o in objs]     # raises the first item's CodecError


def check_value(obj) -> None:
    """Raise CodecError if ``obj`` cannot be written to an internal topic or store."""
    encode_value(obj)


def _unpack_list(data: bytes) -> list:
    tokens = _tls.unpack_tokens
    if not tokens:
        raise _too_deep()
    tok = tokens.pop()
    try:
        x = _unpackb(data, raw=False, strict_map_key=False, unicode_errors="surrogatepass",
                     ext_hook=_ext_hook, timestamp=3)
    finally:
        tokens.append(tok)
    if type(x) is not list:
        raise CodecError(f"extension payload is a {type(x).__name__}, not an array")
    return x


def _fold(data: bytes, n: int) -> int:
    if len(data) == n:
        return 0
    if len(data) == n + 1 and data[n] == 1:
        return 1
    raise CodecError(f"bad extension payload length {len(data)}")


@lru_cache(maxsize=512)
def _tz(off_us: int) -> timezone:
    return timezone.utc if off_us == 0 else timezone(timedelta(microseconds=off_us))


def _d_datetime(data):
    fold = _fold(data, 8)
    return (_EPOCH + timedelta(microseconds=_I64.unpack_from(data)[0])).replace(fold=fold)


def _d_datetime_tz(data):
    fold = _fold(data, 16)
    us, off = _I64x2.unpack_from(data)
    return (_EPOCH + timedelta(microseconds=us)).replace(tzinfo=_tz(off), fold=fold)


def _time_of(us: int, tz, fold: int) -> time:
    if not 0 <= us < 86_400_000_000:
        raise CodecError("time of day out of range")
    s, micro = divmod(us, 1_000_000)
    m, s = divmod(s, 60)
    h, m = divmod(m, 60)
    return time(h, m, s, micro, tz, fold=fold)


def _d_time(data):
    fold = _fold(data, 8)
    return _time_of(_I64.unpack_from(data)[0], None, fold)


def _d_time_tz(data):
    fold = _fold(data, 16)
    us, off = _I64x2.unpack_from(data)
    return _time_of(us, _tz(off), fold)


def _d_decimal(data):
    return Decimal(data.decode("ascii"))


_EXT_DECODERS = {
    X_TUPLE: lambda d: tuple(_unpack_list(d)),
    X_SET: lambda d: set(_unpack_list(d)),
    X_FROZENSET: lambda d: frozenset(_unpack_list(d)),
    X_BIGINT: lambda d: int.from_bytes(d, "big", signed=True),
    X_DATETIME: _d_datetime,
    X_DATETIME_TZ: _d_datetime_tz,
    X_DATE: lambda d: date.fromordinal(_U32.unpack(d)[0]),
    X_TIME: _d_time,
    X_TIME_TZ: _d_time_tz,
    X_TIMEDELTA: lambda d: timedelta(*_TD.unpack(d)),
    X_DECIMAL: _d_decimal,
    X_UUID: lambda d: uuid.UUID(bytes=d),
}


def _ext_hook(code: int, data: bytes):
    if code == X_TUPLE:
        return tuple(_unpack_list(data))
    f = _EXT_DECODERS.get(code)
    if f is None:
        raise CodecError(f"unknown extension type {code}")
    return f(data)


def _value_decode_error(data, e: BaseException | None) -> CodecError:
    try:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            return CodecError(f"a value must be bytes or None, not {type(data).__qualname__!r}")
        if len(data) == 0:
            return CodecError("not a valid streamproc value: empty (0 bytes)")
        first = data[0]
        if first != VALUE_FORMAT:
            return CodecError(f"{_format_problem(first, 'value')} ({_show(data)})")
        reason = e.reason if isinstance(e, CodecError) else _reason(e)
        return CodecError(f"not a valid streamproc value ({reason}): {_show(data)}")
    except Exception as e2:            # defensive: never let the error path raise something else
        return CodecError(f"not a valid streamproc value ({type(e2).__name__})")


def decode_value(data: bytes | None):
    """The value encoded in ``data`` (inverse of :func:`encode_value`); CodecError if invalid."""
    if data is None:
        return None
    try:
        if data[0] == 1:
            return _unpackb(data[1:], raw=False, strict_map_key=False, unicode_errors="surrogatepass",
                            ext_hook=_ext_hook, timestamp=3)
    except Exception as e:
        raise _value_decode_error(data, e) from None
    raise _value_decode_error(data, None)


#: A value that is a tuple starts with the header of its extension (``X_TUPLE``): ext 8 (``c7``, the payload's
#: length, the code) or fixext 1..16 (``d4``..``d8``, the code). Its payload size: ``_FIXEXT[header]``.
_FIXEXT = {0xd4: 1, 0xd5: 2, 0xd6: 4, 0xd7: 8, 0xd8: 16}


def decode_values(datas: list) -> list:
    """:func:`decode_value` of each byte string (None stays None).

    A value that is a tuple (aggregate states mostly are) is read without the extension hook's round
    trip: its payload, found from the extension header and checked to fill the value exactly, is
    unpacked directly, at the nesting depth the hook would count (the same tokens), so the result and
    every refusal are :func:`decode_value`'s."""
    try:
        return _decode_all(datas, [])
    except Exception:
        return [decode_value(d) for d in datas]    # raises the first bad item's CodecError


def check_values(datas: list) -> None:
    """Raise what :func:`decode_values` would (the first bad item's ``CodecError``), without keeping the values:
    a check of untrusted bytes that are stored as they are (a restore into RocksDB)."""
    try:
        _decode_all(datas, None)
    except Exception:
        for d in datas:
            decode_value(d)                         # the reference: raises the first bad item's CodecError


def _decode_all(datas: list, out: list | None) -> list | None:
    """Decode ``datas`` into ``out`` (None: only check them); any exception: some item is bad."""
    tokens = _tls.unpack_tokens
    for d in datas:
        if d is None:
            if out is not None:
                out.append(None)
            continue
        h = d[1]
        if h == 0xc7:                                   # ext 8: length, code, payload
            start = 4 if len(d) > 4 and d[2] == len(d) - 4 and d[3] == X_TUPLE else 0
        else:                                           # fixext: code, payload
            n = _FIXEXT.get(h)
            start = 3 if n is not None and n == len(d) - 3 and d[2] == X_TUPLE else 0
        if start and d[0] == 1 and tokens:
            tok = tokens.pop()
            try:
                x = _unpackb(d[start:], raw=False, strict_map_key=False, unicode_errors="surrogatepass",
                             ext_hook=_ext_hook, timestamp=3)
            finally:
                tokens.append(tok)
            if type(x) is not list:
                raise CodecError("extension payload is not an array")
            if out is not None:
                out.append(tuple(x))
        elif d[0] == 1:
            x = _unpackb(d[1:], raw=False, strict_map_key=False, unicode_errors="surrogatepass",
                         ext_hook=_ext_hook, timestamp=3)
            if out is not None:
                out.append(x)
        else:
            raise CodecError("not the value format")
    return out
