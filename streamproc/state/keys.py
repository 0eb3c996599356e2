"""THE byte encodings of store keys and values in RocksDB. Every encoding lives here.

Values
    ``streamproc._codec`` (pickle protocol 5), the same bytes as the changelog value, so a
    restore stores changelog values as they are.

Keys
    A store key is a Python object; RocksDB orders keys by their bytes. The encoding is
    *tagged*, *order-preserving* and *prefix-free*:

    ===============  =====  =========================================================
    type             tag    body
    ===============  =====  =========================================================
    ``None``         0x01   -
    ``False/True``   0x02/3 -
    ``int`` < -2^63  0x0F   ``255 - n`` (1 byte), then the magnitude's n big-endian bytes inverted
    ``int`` 64-bit   0x10   8 bytes big-endian, sign bit flipped (``i + 2**63`` unsigned)
    ``int`` >= 2^63  0x11   n (1 byte), then the magnitude's n big-endian bytes
    ``float``        0x20   IEEE-754 big-endian; positive: sign bit flipped, negative: all bits inverted
    ``bytes``        0x30   the bytes, ``00`` escaped as ``00 FF``, then the terminator ``00 00``
    ``str``          0x31   UTF-8 (``surrogatepass``), escaped and terminated like bytes
    ``tuple``        0x40   each element's encoding, then ``00``
    anything else    0x7F   pickle (protocol 5, no memo), escaped and terminated like bytes
    ===============  =====  =========================================================

    * Order: within a type, the byte order is the value order (strings by code point,
      tuples element by element, shorter first); across types None < bool < int < float <
      bytes < str < tuple < other. ``store.items()`` and ``streamproc state`` therefore list
      keys in natural order.
    * Prefix-free: no key's encoding is a proper prefix of another's (fixed sizes,
      ``00 00`` terminators that escaped content cannot contain, element tags are never
      ``00``), so ``encode(k)`` is an exact range prefix for everything stored "under" k.
    * Canonical: equal keys of the same type give equal bytes. (Plain pickle is not
      canonical: it memoizes repeated *objects*, so ``("ab", "ab")`` pickles differently
      depending on whether both items are one object.) ``-0.0`` is stored as ``0.0``.
    * Exact round trip: tuples stay tuples, ints stay ints, ``True`` stays ``True``, a
      ``str`` subclass or a namedtuple comes back as itself (through the pickle tag).
      Unlike a dict, ``1``, ``1.0`` and ``True`` are three different keys: do not mix
      them within one store.

    Windowed stores (kind ``"window"``: tumbling/hopping, key ``(group_key, window_start)``)
    encode the key as ``encode(group_key) + start`` where start is 8 bytes big-endian with
    the sign bit flipped (no tag). All windows of one group key are therefore one
    contiguous range, sorted by window start: :func:`key_prefix` / :func:`window_range`
    give the byte bounds for "every window of k" and "windows of k starting in [a, b)".
    Other kinds (``"kv"`` tables, ``"sliding"``, ``"session"``) key by the group key alone.

Changelog keys are these same encodings (pickle is not canonical: equal keys can pickle to
different bytes, and compaction would then keep stale values), so a restore into RocksDB
copies changelog keys and values as they are. :func:`changelog_key_to_db` only converts
changelogs written by versions that used pickled keys (first byte 0x80).
"""
from __future__ import annotations

import io
import pickle
import struct

from .. import _codec

__all__ = [
    "encode_key", "decode_key", "key_encoder", "key_decoder", "encode_value", "decode_value",
    "key_prefix", "window_range", "prefix_end", "changelog_key_to_db", "WINDOWED_KINDS", "KINDS",
]

KINDS = ("kv", "window", "sliding", "session")
WINDOWED_KINDS = frozenset({"window"})     # keys are (group_key, window_start)

_U64 = struct.Struct(">Q")
_F64 = struct.Struct(">d")
_FLIP = 1 << 63
_pack_u64 = _U64.pack
_unpack_u64 = _U64.unpack

T_NONE, T_FALSE, T_TRUE = 0x01, 0x02, 0x03
T_NEGBIG, T_INT, T_POSBIG = 0x0F, 0x10, 0x11
T_FLOAT = 0x20
T_BYTES, T_STR = 0x30, 0x31
T_TUPLE = 0x40
T_PICKLE = 0x7F
_END = b"\x00\x00"


# ------------------------------------------------------------------------------------- values
encode_value = _codec.encode
decode_value = _codec.decode


# ------------------------------------------------------------------------------------- keys
def _escape(b: bytes) -> bytes:
    return b.replace(b"\x00", b"\x00\xff") + _END


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
        m = -i
        n = (m.bit_length() + 7) // 8
        if n <= 255:
            return bytes((T_NEGBIG, 255 - n)) + bytes(255 - x for x in m.to_bytes(n, "big"))
    return _enc_pickle(i)          # > 2040 bits: kept exactly, ordered among "other"


def _enc_float(f: float) -> bytes:
    if f == 0.0:
        f = 0.0                    # -0.0 == 0.0: one key, as in a dict
    u = _unpack_u64(_F64.pack(f))[0]
    u = (u ^ 0xFFFFFFFFFFFFFFFF) if u & _FLIP else (u | _FLIP)
    return b"\x20" + _pack_u64(u)


def _enc_tuple(t: tuple) -> bytes:
    return b"\x40" + b"".join([_enc(x) for x in t]) + b"\x00"


def _enc_pickle(obj) -> bytes:
    buf = io.BytesIO()
    p = pickle.Pickler(buf, 5)
    p.fast = True                  # no memo: equal objects give equal bytes
    p.dump(obj)
    return b"\x7f" + _escape(buf.getvalue())


_ENC = {
    str: _enc_str,
    int: _enc_int,
    bytes: _enc_bytes,
    tuple: _enc_tuple,
    float: _enc_float,
    type(None): lambda _: b"\x01",
    bool: lambda b: b"\x03" if b else b"\x02",
}


def _enc(key) -> bytes:
    t = type(key)
    if t is str:                   # the common cases first, without a dict lookup
        return b"\x31" + key.encode("utf-8", "surrogatepass").replace(b"\x00", b"\x00\xff") + _END
    if t is int and -_FLIP <= key < _FLIP:
        return b"\x10" + _pack_u64(key + _FLIP)
    f = _ENC.get(t)
    return _enc_pickle(key) if f is None else f(key)


def _terminated(data: bytes, pos: int) -> tuple[bytes, int]:
    end = data.index(_END, pos)    # escaped content never holds 00 00: every 00 is followed by FF
    return data[pos:end].replace(b"\x00\xff", b"\x00"), end + 2


def _dec(data: bytes, pos: int):
    tag = data[pos]
    pos += 1
    if tag == T_STR:
        b, pos = _terminated(data, pos)
        return b.decode("utf-8", "surrogatepass"), pos
    if tag == T_INT:
        return _unpack_u64(data[pos:pos + 8])[0] - _FLIP, pos + 8
    if tag == T_TUPLE:
        items = []
        while data[pos] != 0:
            x, pos = _dec(data, pos)
            items.append(x)
        return tuple(items), pos + 1
    if tag == T_BYTES:
        return _terminated(data, pos)
    if tag == T_FLOAT:
        u = _unpack_u64(data[pos:pos + 8])[0]
        u = (u ^ _FLIP) if u & _FLIP else (u ^ 0xFFFFFFFFFFFFFFFF)
        return _F64.unpack(_pack_u64(u))[0], pos + 8
    if tag == T_NONE:
        return None, pos
    if tag == T_FALSE:
        return False, pos
    if tag == T_TRUE:
        return True, pos
    if tag == T_POSBIG:
        n = data[pos]
        return int.from_bytes(data[pos + 1:pos + 1 + n], "big"), pos + 1 + n
    if tag == T_NEGBIG:
        n = 255 - data[pos]
        mag = bytes(255 - x for x in data[pos + 1:pos + 1 + n])
        return -int.from_bytes(mag, "big"), pos + 1 + n
    if tag == T_PICKLE:
        b, pos = _terminated(data, pos)
        return pickle.loads(b), pos
    raise ValueError(f"not a streamproc store key: unknown tag 0x{tag:02x} at byte {pos - 1} of {data[:64]!r}")


def _dec_all(data: bytes):
    if data[0] == T_STR and data.endswith(_END) and data.find(_END, 1) == len(data) - 2:
        return data[1:-2].replace(b"\x00\xff", b"\x00").decode("utf-8", "surrogatepass")   # fast path
    x, pos = _dec(data, 0)
    if pos != len(data):
        raise ValueError(f"not a streamproc store key: {len(data) - pos} trailing bytes in {data[:64]!r}")
    return x


def _enc_window(key) -> bytes:
    gk, start = key
    if type(gk) is str:            # inlined _enc for the common case
        return (b"\x31" + gk.encode("utf-8", "surrogatepass").replace(b"\x00", b"\x00\xff") + b"\x00\x00"
                + _pack_u64(start + _FLIP))
    return _enc(gk) + _pack_u64(start + _FLIP)


def _dec_window(data: bytes):
    return _dec_all(data[:-8]), _unpack_u64(data[-8:])[0] - _FLIP


def key_encoder(kind: str):
    """The fastest ``key -> bytes`` function for stores of ``kind``."""
    return _enc_window if kind in WINDOWED_KINDS else _enc


def key_decoder(kind: str):
    """The ``bytes -> key`` function for stores of ``kind`` (inverse of :func:`key_encoder`)."""
    return _dec_window if kind in WINDOWED_KINDS else _dec_all


def encode_key(store_kind: str, key) -> bytes:
    """Bytes of store key ``key`` in a store of kind ``store_kind`` (``kv``/``window``/``sliding``/``session``)."""
    return key_encoder(store_kind)(key)


def decode_key(store_kind: str, data: bytes):
    """The store key encoded in ``data`` (exact inverse of :func:`encode_key`)."""
    return key_decoder(store_kind)(data)


# ------------------------------------------------------------------------------------- ranges
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
    return _enc(group_key)


def window_range(group_key, start_from: int | None = None, start_to: int | None = None
                 ) -> tuple[bytes, bytes | None]:
    """Byte range ``[lower, upper)`` of the windows of ``group_key`` with ``start_from <= start < start_to``.

    Either bound may be None (unbounded on that side, within the key). ``upper`` is None
    only when no byte string bounds the range (never for a real key encoding).
    """
    p = _enc(group_key)
    lower = p if start_from is None else p + _pack_u64(start_from + _FLIP)
    upper = prefix_end(p) if start_to is None else p + _pack_u64(start_to + _FLIP)
    return lower, upper


# ------------------------------------------------------------------------------------- restore
def changelog_key_to_db(store_kind: str, changelog_key: bytes) -> bytes:
    """DB key bytes for a changelog record key (a ``_codec`` pickle of the store key)."""
    return key_encoder(store_kind)(pickle.loads(changelog_key))
