"""Serdes: how keys and values become bytes on Kafka and back.

Every serde has ``serialize(value) -> bytes | None`` and
``deserialize(data) -> value`` (``None`` passes through both ways: a tombstone),
batched ``serialize_many(list) -> list`` / ``deserialize_many(list) -> list``,
a ``name`` for error messages, ``describe()`` for topology descriptions and
``fingerprint()`` identifying the byte format. Failures raise
`streamproc.errors.SerdeError` naming the serde; batch failures carry
``.index``, the position of the failing item.

Byte layouts match the Java client's serializers so streamproc topics can be
shared with JVM applications: `Int` is Java's LongSerializer (or
IntegerSerializer / ShortSerializer with ``bits=32`` / ``16``), `Float` is
DoubleSerializer (FloatSerializer with ``bits=32``), `String` is
StringSerializer (UTF-8).
"""
from __future__ import annotations

import struct
from typing import Any, Iterable

import orjson

from streamproc.errors import SerdeError
from streamproc.serdes._avro import Avro
from streamproc.serdes._base import Serde, _preview, _type_name

__all__ = ["Serde", "String", "Bytes", "Int", "Float", "Json", "Avro", "SerdeError"]

_BYTES_LIKE = (bytes, bytearray, memoryview)


def _not_bytes(serde: Serde, data: Any) -> SerdeError:
    return serde._error(f"expected bytes to deserialize, got {_type_name(data)}")


# --------------------------------------------------------------------- String
class String(Serde):
    """UTF-8 text (Java StringSerializer). Serializing a non-``str`` is an error."""

    def describe(self) -> str:
        return "String (UTF-8)"

    def fingerprint(self) -> str:
        return "String(encoding=utf-8)"

    def serialize(self, value: Any) -> bytes | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._error(f"expected str, got {_type_name(value)} {_preview(value)}")
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise self._error(
                f"text cannot be encoded as UTF-8: {exc.reason} at character {exc.start}") from None

    def deserialize(self, data: bytes | None) -> str | None:
        if data is None:
            return None
        if not isinstance(data, _BYTES_LIKE):
            raise _not_bytes(self, data)
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self._error(f"invalid UTF-8 at byte {exc.start}: {exc.reason}") from None

    def serialize_many(self, values: Iterable[Any]) -> list:
        values = values if isinstance(values, (list, tuple)) else list(values)
        enc = str.encode  # unbound: rejects anything that is not a str
        try:
            return [None if v is None else enc(v) for v in values]
        except Exception:
            return self._one_by_one(self.serialize, values, "serialize")

    def deserialize_many(self, datas: Iterable[bytes | None]) -> list:
        datas = datas if isinstance(datas, (list, tuple)) else list(datas)
        dec = bytes.decode  # unbound: bytearray/memoryview take the slow path
        try:
            return [None if d is None else dec(d) for d in datas]
        except Exception:
            return self._one_by_one(self.deserialize, datas, "deserialize")


# ---------------------------------------------------------------------- Bytes
class Bytes(Serde):
    """Raw bytes, unchanged. Accepts bytes, bytearray and memoryview; returns bytes."""

    def describe(self) -> str:
        return "Bytes (raw)"

    def fingerprint(self) -> str:
        return "Bytes()"

    def serialize(self, value: Any) -> bytes | None:
        if value is None:
            return None
        if type(value) is bytes:
            return value
        if isinstance(value, _BYTES_LIKE):
            return bytes(value)
        raise self._error(
            f"expected bytes, bytearray or memoryview, got {_type_name(value)} {_preview(value)}")

    def deserialize(self, data: bytes | None) -> bytes | None:
        if data is None:
            return None
        if type(data) is bytes:
            return data
        if isinstance(data, _BYTES_LIKE):
            return bytes(data)
        raise _not_bytes(self, data)

    def serialize_many(self, values: Iterable[Any]) -> list:
        values = values if isinstance(values, (list, tuple)) else list(values)
        ser = self.serialize
        try:
            return [v if type(v) is bytes or v is None else ser(v) for v in values]
        except Exception:
            return self._one_by_one(ser, values, "serialize")

    def deserialize_many(self, datas: Iterable[bytes | None]) -> list:
        datas = datas if isinstance(datas, (list, tuple)) else list(datas)
        de = self.deserialize
        try:
            return [d if type(d) is bytes or d is None else de(d) for d in datas]
        except Exception:
            return self._one_by_one(de, datas, "deserialize")


# --------------------------------------------------------------- Int / Float
class _Fixed(Serde):
    """A fixed-width big-endian number (shared by Int and Float)."""

    _formats: dict[int, str] = {}
    _java: dict[int, str] = {}
    _default_bits = 64

    def __init__(self, bits: int = 64):
        if isinstance(bits, bool) or bits not in self._formats:
            allowed = ", ".join(str(b) for b in self._formats)
            raise SerdeError(f"bits must be one of {allowed}, got {bits!r}",
                             serde=type(self).__name__)
        self.bits = bits
        self.size = bits // 8
        self._bind()

    def _bind(self) -> None:
        st = struct.Struct(">" + self._formats[self.bits])
        self._c_pack = st.pack
        self._c_unpack = st.unpack

    @property
    def name(self) -> str:
        cls = type(self).__name__
        return cls if self.bits == self._default_bits else f"{cls}(bits={self.bits})"

    def describe(self) -> str:
        return f"{self.name} ({self.bits}-bit big-endian, Java {self._java[self.bits]})"

    def fingerprint(self) -> str:
        return f"{type(self).__name__}(bits={self.bits}, byteorder=big)"

    def deserialize(self, data: bytes | None) -> Any:
        if data is None:
            return None
        if not isinstance(data, _BYTES_LIKE):
            raise _not_bytes(self, data)
        if len(data) != self.size:
            raise self._error(f"expected {self.size} bytes, got {len(data)}")
        return self._c_unpack(data)[0]

    def serialize_many(self, values: Iterable[Any]) -> list:
        values = values if isinstance(values, (list, tuple)) else list(values)
        pack = self._c_pack
        try:
            return [None if v is None else pack(v) for v in values]
        except Exception:
            return self._one_by_one(self.serialize, values, "serialize")

    def deserialize_many(self, datas: Iterable[bytes | None]) -> list:
        datas = datas if isinstance(datas, (list, tuple)) else list(datas)
        unpack = self._c_unpack  # struct checks the length exactly
        try:
            return [None if d is None else unpack(d)[0] for d in datas]
        except Exception:
            return self._one_by_one(self.deserialize, datas, "deserialize")


class Int(_Fixed):
    """A signed big-endian integer: ``bits=64`` (default, Java LongSerializer),
    ``32`` (IntegerSerializer) or ``16`` (ShortSerializer). Accepts ``int``
    (``bool`` counts as 0/1, as in Python) and numpy integers."""

    _formats = {16: "h", 32: "i", 64: "q"}
    _java = {16: "ShortSerializer", 32: "IntegerSerializer", 64: "LongSerializer"}

    def serialize(self, value: Any) -> bytes | None:
        if value is None:
            return None
        try:
            return self._c_pack(value)
        except struct.error:
            pass
        if isinstance(value, float) or not hasattr(value, "__index__"):
            raise self._error(f"expected an int, got {_type_name(value)} {_preview(value)}")
        lo, hi = -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        raise self._error(f"{int(value)} is out of range for a {self.bits}-bit signed integer "
                          f"({lo}..{hi})")


class Float(_Fixed):
    """IEEE 754 big-endian: ``bits=64`` (default, Java DoubleSerializer) or ``32``
    (FloatSerializer). Accepts float, int and numpy floating/integer scalars."""

    _formats = {32: "f", 64: "d"}
    _java = {32: "FloatSerializer", 64: "DoubleSerializer"}

    def serialize(self, value: Any) -> bytes | None:
        if value is None:
            return None
        try:
            return self._c_pack(value)
        except (struct.error, OverflowError, TypeError) as exc:
            if isinstance(value, (str, bytes)) or not hasattr(value, "__float__"):
                raise self._error(
                    f"expected a float, got {_type_name(value)} {_preview(value)}") from None
            raise self._error(
                f"{_preview(value)} does not fit a {self.bits}-bit float ({exc})") from None


# ----------------------------------------------------------------------- Json
_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


class Json(Serde):
    """JSON via orjson (UTF-8, compact). Non-string dict keys are written as
    strings; numpy scalars and arrays serialize. Note that ``None`` is a
    tombstone, not the JSON text ``null`` (deserializing ``b"null"`` gives None)."""

    def describe(self) -> str:
        return "Json (orjson, UTF-8)"

    def fingerprint(self) -> str:
        return "Json(encoding=utf-8)"

    def serialize(self, value: Any) -> bytes | None:
        if value is None:
            return None
        try:
            return orjson.dumps(value, option=_JSON_OPTIONS)
        except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
            raise self._error(f"cannot encode as JSON: {exc}") from None

    def deserialize(self, data: bytes | None) -> Any:
        if data is None:
            return None
        if not isinstance(data, _BYTES_LIKE):
            raise _not_bytes(self, data)
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise self._error(_json_reason(bytes(data), exc)) from None

    def serialize_many(self, values: Iterable[Any]) -> list:
        values = values if isinstance(values, (list, tuple)) else list(values)
        dumps, opt = orjson.dumps, _JSON_OPTIONS
        try:
            return [None if v is None else dumps(v, option=opt) for v in values]
        except Exception:
            return self._one_by_one(self.serialize, values, "serialize")

    def deserialize_many(self, datas: Iterable[bytes | None]) -> list:
        datas = datas if isinstance(datas, (list, tuple)) else list(datas)
        loads = orjson.loads
        try:
            return [None if d is None else loads(d) for d in datas]
        except Exception:
            return self._one_by_one(self.deserialize, datas, "deserialize")


def _json_reason(data: bytes, exc: orjson.JSONDecodeError) -> str:
    if not data:
        return "invalid JSON: empty input"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as uexc:
        return f"invalid JSON: not UTF-8 at byte {uexc.start}"
    # orjson reports a character position in the decoded text; turn it into a byte offset.
    byte = len(exc.doc[: exc.pos].encode("utf-8", "surrogatepass"))
    return f"invalid JSON at byte {byte}: {exc.msg}"
