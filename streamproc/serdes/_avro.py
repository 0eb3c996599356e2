"""Avro serde (fastavro, schemaless binary; optional Confluent wire format)."""
from __future__ import annotations

import hashlib
import inspect
import os
import struct
from io import BytesIO
from itertools import repeat
from pathlib import Path
from typing import Any, Iterable

import fastavro
import orjson
from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import to_parsing_canonical_form
from fastavro.validation import ValidationError, validate

from streamproc.errors import SerdeError
from streamproc.serdes._base import Serde, _preview, _type_name

__all__ = ["Avro"]

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../streamproc
_MAGIC = 0
_HEADER = struct.Struct(">bI")
_tell = BytesIO.tell
_seek = BytesIO.seek


class Avro(Serde):
    """Avro binary encoding of one schema.

    ``Avro("schemas/page_view.avsc")`` reads the schema from a file: a relative
    path is tried against the current directory first, then against the
    directory of the Python file that constructed the serde (so a topology
    module can name a schema next to itself and run from anywhere).
    ``Avro({...})`` takes the schema as a dict.

    Without ``schema_id`` the bytes are the bare Avro body (fastavro's
    schemaless encoding). With ``schema_id=N`` they use the Confluent Schema
    Registry wire format: magic byte 0, the 4-byte big-endian id, then the
    body; deserializing checks both and refuses other ids (there is no registry
    client here to fetch another writer schema).

    Serializing drops dict keys the schema does not name (as fastavro does)
    and fills missing fields from their schema defaults; a missing field
    without a default is an error.
    """

    def __init__(self, schema: str | os.PathLike | dict | list, *, schema_id: int | None = None):
        if isinstance(schema, (str, os.PathLike)):
            source = os.fspath(schema)
            label = source
            path = _resolve_schema_path(source, f"Avro({source})")
            raw = _load_schema_file(path, f"Avro({source})")
        elif isinstance(schema, (dict, list)):
            path = None
            raw = schema
            label = _schema_label(schema)
        else:
            raise SerdeError(
                f"schema must be a path to an .avsc file or a dict, got {_type_name(schema)}",
                serde="Avro")
        if schema_id is not None and (isinstance(schema_id, bool) or not isinstance(schema_id, int)
                                      or not 0 <= schema_id <= 0x7FFFFFFF):
            raise SerdeError(f"schema_id must be an int between 0 and 2147483647, got {schema_id!r}",
                             serde=f"Avro({label})")
        self.label = label
        self.path: Path | None = path
        self.schema_id = schema_id
        try:
            self.schema = fastavro.parse_schema(raw)
        except Exception as exc:
            where = f" in {path}" if path else ""
            raise SerdeError(f"invalid Avro schema{where}: {type(exc).__name__}: {exc}",
                             serde=self.name) from None
        self.canonical_form: str = to_parsing_canonical_form(self.schema)
        self._bind()

    def _bind(self) -> None:
        self._c_prefix = None if self.schema_id is None else _HEADER.pack(_MAGIC, self.schema_id)

    # ------------------------------------------------------------- identity
    @property
    def name(self) -> str:
        if self.schema_id is None:
            return f"Avro({self.label})"
        return f"Avro({self.label}, schema_id={self.schema_id})"

    @property
    def record_name(self) -> str | None:
        """The full name of the top-level named type (None for e.g. a primitive schema)."""
        s = self.schema
        return s.get("name") if isinstance(s, dict) else None

    def describe(self) -> str:
        parts = []
        what = self.record_name or _schema_type_name(self.schema)
        if what != self.label:
            parts.append(f"record {what}" if self.record_name else what)
        if self.schema_id is not None:
            parts.append(f"Confluent wire format, schema id {self.schema_id}")
        return f"{self.name} [{', '.join(parts)}]" if parts else self.name

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.canonical_form.encode("utf-8")).hexdigest()
        return f"Avro(schema_id={self.schema_id}, pcf_sha256={digest})"

    # ------------------------------------------------------------- one record
    def serialize(self, value: Any) -> bytes | None:
        if value is None:
            return None
        bio = BytesIO()
        prefix = self._c_prefix
        if prefix is not None:
            bio.write(prefix)
        try:
            schemaless_writer(bio, self.schema, value)
        except Exception as exc:
            raise self._error(_write_reason(self.schema, value, exc)) from exc
        return bio.getvalue()

    def deserialize(self, data: bytes | None) -> Any:
        if data is None:
            return None
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise self._error(f"expected bytes to deserialize, got {_type_name(data)}")
        bio = BytesIO(data)
        if self._c_prefix is not None:
            self._check_header(data)
            bio.seek(5)
        try:
            record = schemaless_reader(bio, self.schema, None)
        except Exception as exc:
            raise self._error(_read_reason(data, exc)) from exc
        end = bio.tell()
        if end != len(data):
            raise self._error(
                f"{_plural(len(data) - end, 'byte')} left over after decoding the record "
                f"({len(data)} bytes in all): the data was written with a different schema "
                f"or is corrupt")
        return record

    def _check_header(self, data: bytes) -> None:
        if len(data) < 5:
            raise self._error(f"expected the 5-byte Confluent wire format header, "
                              f"got only {len(data)} bytes")
        if data[0] != _MAGIC:
            raise self._error(
                f"expected magic byte 0 (Confluent wire format), found 0x{data[0]:02x}; "
                f"the data is not in the Schema Registry wire format (plain Avro or JSON?)")
        found = int.from_bytes(data[1:5], "big")
        if found != self.schema_id:
            raise self._error(f"expected schema id {self.schema_id}, found schema id {found}")

    # ------------------------------------------------------------- batches
    # serialize_many: the base class's comprehension over `serialize` is as fast as
    # any hand-rolled loop here (measured), since fastavro's writer dominates.

    def deserialize_many(self, datas: Iterable[bytes | None]) -> list:
        datas = datas if isinstance(datas, (list, tuple)) else list(datas)
        try:
            try:
                lengths = list(map(len, datas))
            except TypeError:
                # Tombstones (or junk): decode the rest in one go, then put the Nones back.
                present = [d for d in datas if d is not None]
                if len(present) == len(datas):
                    raise _Slow from None
                decoded = iter(self._decode_all(present, list(map(len, present))))
                return [None if d is None else next(decoded) for d in datas]
            return self._decode_all(datas, lengths)
        except Exception:
            return self._one_by_one(self.deserialize, datas, "deserialize")

    def _decode_all(self, datas: list | tuple, lengths: list[int]) -> list:
        """Decode non-None items; raise (anything) on any problem."""
        # Everything but the decode itself runs in C-level passes.
        bios = list(map(BytesIO, datas))
        prefix = self._c_prefix
        if prefix is not None:
            if not all(map(bytes.startswith, datas, repeat(prefix))):
                raise _Slow
            list(map(_seek, bios, repeat(5)))
        read, schema = schemaless_reader, self.schema
        records = [read(b, schema, None) for b in bios]
        if list(map(_tell, bios)) != lengths:  # trailing bytes somewhere
            raise _Slow
        return records


class _Slow(Exception):
    """Internal: leave the fast path of a batch."""


# ------------------------------------------------------------------ errors
def _read_reason(data: bytes, exc: Exception) -> str:
    n = len(data)
    if isinstance(exc, EOFError):
        detail = f" ({exc})" if str(exc) else ""
        return f"truncated or corrupt Avro data: ran past the end of the {n} bytes{detail}"
    if isinstance(exc, UnicodeDecodeError):
        return f"corrupt Avro data: a string field is not valid UTF-8 ({exc.reason})"
    if isinstance(exc, IndexError):
        return f"corrupt Avro data: a union or enum index is out of range ({n} bytes)"
    return f"corrupt Avro data ({n} bytes): {type(exc).__name__}: {exc}"


def _write_reason(schema: Any, value: Any, exc: Exception) -> str:
    """Name the offending field, using fastavro's validator to find it."""
    if isinstance(schema, dict) and schema.get("type") == "record" and not isinstance(value, dict):
        return f"expected a dict for record {schema.get('name')}, got {_type_name(value)} {_preview(value)}"
    missing = str(exc).startswith("no value and no default for ")
    try:
        validate(value, schema, raise_errors=True)
    except ValidationError as verr:
        errors = list(verr.errors)
        if errors:
            first = errors[0]
            path = first.field or ""
            same = [e for e in errors if e.field == first.field]
            expected = " or ".join(_schema_type_name(e.schema) for e in same)
            field = path.rsplit(".", 1)[-1] if path else ""
            where = f"field {field!r}" + (f" ({path})" if path and path != field else "")
            if not field:
                where = "value"
            if missing and first.datum is None:
                return f"{where} missing (type {expected}, no default)"
            return (f"{where}: expected {expected}, got {_type_name(first.datum)} "
                    f"{_preview(first.datum)}")
    except Exception:  # pragma: no cover - the validator itself failed
        pass
    if missing:
        field = str(exc)[len("no value and no default for "):]
        return f"field {field!r} missing (no default)"
    return f"does not match the schema: {type(exc).__name__}: {exc}"


def _schema_type_name(s: Any) -> str:
    if isinstance(s, str):
        return s
    if isinstance(s, list):
        return "|".join(_schema_type_name(x) for x in s)
    if isinstance(s, dict):
        return str(s.get("name") or s.get("logicalType") or s.get("type"))
    return repr(s)


# ------------------------------------------------------------------ schema files
def _schema_label(schema: dict | list) -> str:
    if isinstance(schema, dict):
        name = schema.get("name")
        if isinstance(name, str):
            ns = schema.get("namespace")
            return f"{ns}.{name}" if ns and "." not in name else name
        t = schema.get("type")
        return t if isinstance(t, str) else "schema"
    return "union"


def _caller_file() -> str | None:
    """The file of the innermost frame outside the streamproc package (and
    outside importlib's frozen frames): the module that built the serde."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            filename = frame.f_code.co_filename
            if filename.startswith("<frozen"):
                frame = frame.f_back
                continue
            if filename.startswith("<"):
                return None  # <stdin>, <string>: no directory to look in
            full = os.path.abspath(filename)
            if not (full == _PACKAGE_DIR or full.startswith(_PACKAGE_DIR + os.sep)):
                return full
            frame = frame.f_back
        return None
    finally:
        del frame


_PROJECT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", ".git")


def _project_root(start: Path) -> Path | None:
    """The nearest ancestor of `start` (itself excluded) that looks like a project root."""
    for parent in start.parents:
        if any((parent / marker).exists() for marker in _PROJECT_MARKERS):
            return parent
    return None


def _resolve_schema_path(source: str, serde_name: str) -> Path:
    """Find a schema file.

    An absolute path is used as is. A relative one is tried against, in order:
    the current directory; the directory of the Python file that constructed
    the serde; and, when that file sits below a project root (a directory
    holding pyproject.toml, setup.py, setup.cfg or .git), that root. The last
    makes ``topologies/x.py`` with ``Avro("schemas/y.avsc")`` and the schema
    in ``<repo>/schemas/`` work whatever the current directory is.
    """
    if source.lstrip().startswith(("{", "[")):
        raise SerdeError("the schema looks like JSON text, not a file path: pass a dict "
                         "(json.loads(text)) or the path of an .avsc file", serde="Avro")
    given = Path(source).expanduser()
    if given.is_absolute():
        if given.is_file():
            return given
        raise SerdeError(f"schema file {str(given)!r} not found", serde=serde_name)
    candidates = [(Path.cwd() / given, "relative to the current directory")]
    caller = _caller_file()
    if caller is not None:
        caller_dir = Path(caller).parent
        candidates.append((caller_dir / given, f"relative to {caller}"))
        root = _project_root(caller_dir)
        if root is not None:
            candidates.append((root / given, f"relative to the project root {root}"))
    tried: list[str] = []
    seen: set[Path] = set()
    for candidate, why in candidates:
        if candidate in seen:
            continue
        seen.add(candidate)
        if candidate.is_file():
            return candidate
        tried.append(f"{candidate} ({why})")
    listed = tried[0] if len(tried) == 1 else ", ".join(tried[:-1]) + " and " + tried[-1]
    raise SerdeError(f"schema file {source!r} not found: tried {listed}", serde=serde_name)


def _load_schema_file(path: Path, serde_name: str) -> Any:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise SerdeError(f"cannot read schema file {path}: {exc.strerror or exc}",
                         serde=serde_name) from None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise SerdeError(f"schema file {path} is not valid JSON: {exc}", serde=serde_name) from None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
