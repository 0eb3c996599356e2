"""Serdes: round trips, Java-compatible layouts, error messages, Avro schema
loading and the Confluent wire format, batch error indexes."""
from __future__ import annotations

import importlib.util
import math
import pickle
import struct
import textwrap
from io import BytesIO
from pathlib import Path

import fastavro
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc import serdes
from streamproc.errors import SerdeError

TESTS_DIR = Path(__file__).resolve().parent
SCHEMA_FILE = TESTS_DIR / "data" / "page_view.avsc"
SCHEMA_DICT = {
    "type": "record",
    "name": "PageView",
    "namespace": "streamproc.tests",
    "fields": [
        {"name": "user_id", "type": "string"},
        {"name": "page", "type": "string"},
        {"name": "ts", "type": "long"},
        {"name": "duration_ms", "type": "int"},
        {"name": "referrer", "type": ["null", "string"], "default": None},
    ],
}
VIEW = {"user_id": "u1", "page": "/", "ts": 1, "duration_ms": -1, "referrer": None}
# VIEW by hand in Avro binary: strings are zigzag length + UTF-8, long/int zigzag
# varints, a union is the zigzag branch index then the value.
VIEW_AVRO = b"\x04u1" + b"\x02/" + b"\x02" + b"\x01" + b"\x00"


def _views(n: int) -> list[dict]:
    return [{"user_id": f"user-{i}", "page": f"/p/{i % 7}", "ts": 1_715_000_000_000 + i,
             "duration_ms": i * 13, "referrer": None if i % 3 else f"https://r{i}.example"}
            for i in range(n)]


# ----------------------------------------------------------------- round trips
@given(st.text())
def test_string_round_trip_is_utf8(text):
    s = serdes.String()
    data = s.serialize(text)
    assert data == text.encode("utf-8")
    assert s.deserialize(data) == text


@given(st.binary())
def test_bytes_round_trip_is_identity(raw):
    s = serdes.Bytes()
    assert s.serialize(raw) == raw
    assert s.deserialize(raw) == raw
    assert s.serialize(bytearray(raw)) == raw
    assert s.serialize(memoryview(raw)) == raw
    assert type(s.deserialize(bytearray(raw))) is bytes


@pytest.mark.parametrize("bits", [16, 32, 64])
@given(data=st.data())
def test_int_round_trip_matches_java_big_endian(bits, data):
    value = data.draw(st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1))
    s = serdes.Int(bits=bits)
    raw = s.serialize(value)
    assert raw == value.to_bytes(bits // 8, "big", signed=True)
    assert s.deserialize(raw) == value


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_float64_round_trip_is_bit_exact(value):
    s = serdes.Float()
    raw = s.serialize(value)
    assert raw == struct.pack(">d", value)
    back = s.deserialize(raw)
    assert back == value or (math.isnan(back) and math.isnan(value))


@given(st.floats(width=32, allow_nan=False))
def test_float32_round_trip(value):
    s = serdes.Float(bits=32)
    raw = s.serialize(value)
    assert len(raw) == 4
    assert s.deserialize(raw) == value


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)


@given(_json_values)
def test_json_round_trip(value):
    s = serdes.Json()
    assert s.deserialize(s.serialize(value)) == value


@given(st.lists(st.none() | st.text(), max_size=30))
def test_batches_match_single_record_results(values):
    for s in (serdes.String(), serdes.Json()):
        raw = s.serialize_many(values)
        assert raw == [s.serialize(v) for v in values]
        assert s.deserialize_many(raw) == values


@given(st.lists(st.none() | st.integers(-(1 << 63), (1 << 63) - 1), max_size=30))
def test_int_batches_round_trip_with_tombstones(values):
    s = serdes.Int()
    raw = s.serialize_many(values)
    assert raw == [None if v is None else struct.pack(">q", v) for v in values]
    assert s.deserialize_many(raw) == values


def test_every_serde_passes_none_through_both_ways():
    for s in (serdes.String(), serdes.Bytes(), serdes.Int(), serdes.Float(), serdes.Json(),
              serdes.Avro(SCHEMA_DICT), serdes.Avro(SCHEMA_DICT, schema_id=1)):
        assert s.serialize(None) is None, s.name
        assert s.deserialize(None) is None, s.name
        assert s.serialize_many([None, None]) == [None, None], s.name
        assert s.deserialize_many([None]) == [None], s.name


# ----------------------------------------------------------------- Java layouts
def test_int_layouts_match_java_serializers():
    assert serdes.Int().serialize(1) == b"\x00" * 7 + b"\x01"            # LongSerializer
    assert serdes.Int().serialize(-1) == b"\xff" * 8
    assert serdes.Int().serialize(256) == b"\x00" * 6 + b"\x01\x00"
    assert serdes.Int(bits=32).serialize(1) == b"\x00\x00\x00\x01"       # IntegerSerializer
    assert serdes.Int(bits=32).serialize(-2) == b"\xff\xff\xff\xfe"
    assert serdes.Int(bits=16).serialize(258) == b"\x01\x02"             # ShortSerializer
    assert serdes.Int().deserialize(b"\x80" + b"\x00" * 7) == -(1 << 63)
    assert serdes.Int().serialize(np.int64(7)) == b"\x00" * 7 + b"\x07"


def test_float_layouts_match_java_serializers():
    assert serdes.Float().serialize(1.0) == bytes.fromhex("3ff0000000000000")   # DoubleSerializer
    assert serdes.Float().serialize(-2.5) == bytes.fromhex("c004000000000000")
    assert serdes.Float(bits=32).serialize(1.0) == bytes.fromhex("3f800000")    # FloatSerializer
    assert serdes.Float().serialize(3) == bytes.fromhex("4008000000000000")     # ints are fine
    assert serdes.Float().deserialize(bytes.fromhex("400921fb54442d18")) == math.pi


def test_string_is_utf8_not_latin1():
    assert serdes.String().serialize("héllo") == b"h\xc3\xa9llo"
    assert serdes.String().deserialize(b"h\xc3\xa9llo") == "héllo"


def test_json_serializes_numpy_scalars_arrays_and_non_str_keys():
    s = serdes.Json()
    value = {"n": np.int64(5), "x": np.float32(1.5), "ok": np.bool_(True), 1: "a",
             "arr": np.array([1, 2])}
    assert s.serialize(value) == b'{"n":5,"x":1.5,"ok":true,"1":"a","arr":[1,2]}'
    assert s.serialize_many([value])[0] == s.serialize(value)


# ----------------------------------------------------------------- errors
def _raises(fn, *args, match: str) -> SerdeError:
    with pytest.raises(SerdeError) as info:
        fn(*args)
    assert match in str(info.value), str(info.value)
    return info.value


def test_string_errors_name_the_serde_and_reason():
    s = serdes.String()
    err = _raises(s.deserialize, b"ok\xff", match="invalid UTF-8 at byte 2")
    assert str(err).startswith("String ")
    _raises(s.serialize, 5, match="expected str, got int")
    _raises(s.serialize, b"bytes", match="expected str, got bytes")
    _raises(s.serialize, "\ud800", match="cannot be encoded as UTF-8")
    _raises(s.deserialize, "text", match="expected bytes")


def test_bytes_errors_name_the_serde():
    s = serdes.Bytes()
    assert str(_raises(s.serialize, "text", match="expected bytes")).startswith("Bytes ")
    _raises(s.deserialize, 12, match="expected bytes to deserialize, got int")


def test_int_errors():
    err = _raises(serdes.Int().deserialize, b"\x01\x02\x03", match="expected 8 bytes, got 3")
    assert str(err).startswith("Int ")
    _raises(serdes.Int(bits=32).deserialize, b"\x00" * 8, match="expected 4 bytes, got 8")
    err = _raises(serdes.Int(bits=32).serialize, 1 << 31, match="out of range for a 32-bit")
    assert str(err).startswith("Int(bits=32) ")
    _raises(serdes.Int().serialize, 1 << 63, match="out of range for a 64-bit")
    _raises(serdes.Int().serialize, 1.5, match="expected an int, got float")
    _raises(serdes.Int().serialize, "1", match="expected an int, got str")
    with pytest.raises(SerdeError, match="bits must be one of 16, 32, 64"):
        serdes.Int(bits=8)


def test_float_errors():
    err = _raises(serdes.Float().deserialize, b"\x00", match="expected 8 bytes, got 1")
    assert str(err).startswith("Float ")
    _raises(serdes.Float().serialize, "1.0", match="expected a float, got str")
    _raises(serdes.Float(bits=32).serialize, 1e300, match="does not fit a 32-bit float")
    with pytest.raises(SerdeError, match="bits must be one of 32, 64"):
        serdes.Float(bits=16)


def test_json_errors_give_byte_offsets():
    s = serdes.Json()
    err = _raises(s.deserialize, b'{"a": 1,', match="invalid JSON at byte 8")
    assert str(err).startswith("Json ")
    # orjson counts characters; the message must count bytes ("é" is two).
    _raises(s.deserialize, '{"é": x}'.encode(), match="invalid JSON at byte 7")
    _raises(s.deserialize, b'{"a": "\xff"}', match="not UTF-8 at byte 7")
    _raises(s.deserialize, b"", match="empty input")
    _raises(s.serialize, {1, 2}, match="cannot encode as JSON")
    _raises(s.serialize, {"big": 1 << 70}, match="cannot encode as JSON")


def test_errors_are_never_raw_exceptions():
    cases = [
        (serdes.String(), [b"\xff", 3.5]), (serdes.Bytes(), ["x", object()]),
        (serdes.Int(), [b"", "x", 2.5]), (serdes.Float(), [b"12345", "x"]),
        (serdes.Json(), [b"{", "{", 5]), (serdes.Avro(SCHEMA_DICT), [b"\x02", "x", 7]),
    ]
    for s, bad in cases:
        for item in bad:
            with pytest.raises(SerdeError):
                s.deserialize(item)
            with pytest.raises(SerdeError):
                s.deserialize_many([item])


def test_located_adds_topic_partition_and_offset():
    with pytest.raises(SerdeError) as info:
        serdes.Int().deserialize(b"\x01")
    located = info.value.located(topic="page-views", partition=3, offset=1234)
    text = str(located)
    assert "Int" in text
    assert "topic 'page-views'" in text and "partition 3" in text and "offset 1234" in text
    assert "expected 8 bytes, got 1" in text


# ----------------------------------------------------------------- batch indexes
@pytest.mark.parametrize("serde, good, bad", [
    (serdes.String(), b"ok", b"\xff"),
    (serdes.Int(), b"\x00" * 8, b"\x00" * 3),
    (serdes.Float(bits=32), b"\x00" * 4, b"\x00" * 8),
    (serdes.Json(), b"{}", b"{"),
    (serdes.Bytes(), b"ok", "not bytes"),
    (serdes.Avro(SCHEMA_DICT), VIEW_AVRO, VIEW_AVRO[:-2]),
    (serdes.Avro(SCHEMA_DICT), VIEW_AVRO, VIEW_AVRO + b"\x00"),        # trailing byte
    (serdes.Avro(SCHEMA_DICT, schema_id=9), b"\x00\x00\x00\x00\x09" + VIEW_AVRO,
     b"\x00\x00\x00\x00\x08" + VIEW_AVRO),
], ids=["String", "Int", "Float32", "Json", "Bytes", "Avro-truncated", "Avro-trailing", "Avro-wire"])
def test_deserialize_many_reports_the_failing_index(serde, good, bad):
    batch = [good, None, good, bad, good, bad]
    with pytest.raises(SerdeError) as info:
        serde.deserialize_many(batch)
    err = info.value
    assert err.index == 3
    assert "batch item 3" in str(err)
    assert str(err).startswith(serde.name + " ")
    # the runtime maps the index to an offset
    located = err.located(topic="t", partition=0, offset=100 + err.index)
    assert "offset 103" in str(located) and serde.name in str(located)
    # and the same batch without the bad items decodes, tombstone in place
    ok = serde.deserialize_many([good, None, good])
    assert ok[1] is None and ok[0] == ok[2] == serde.deserialize(good)


def test_serialize_many_reports_the_failing_index():
    with pytest.raises(SerdeError) as info:
        serdes.Int(bits=32).serialize_many([1, None, 2, 1 << 40])
    assert info.value.index == 3
    with pytest.raises(SerdeError) as info:
        serdes.Avro(SCHEMA_DICT).serialize_many([VIEW, None, {"page": "/"}])
    assert info.value.index == 2
    assert "field 'user_id'" in str(info.value)


def test_user_subclass_raw_exceptions_become_serde_errors_with_index():
    class Upper(serdes.Serde):
        def serialize(self, value):
            return None if value is None else value.upper().encode()

        def deserialize(self, data):
            return None if data is None else data.decode("ascii")

    s = Upper()
    assert s.deserialize_many([b"a", None]) == ["a", None]
    with pytest.raises(SerdeError) as info:
        s.deserialize_many([b"a", b"\xff"])
    assert info.value.index == 1
    assert "Upper" in str(info.value) and "UnicodeDecodeError" in str(info.value)


# ----------------------------------------------------------------- Avro
def test_avro_encodes_schemaless_binary():
    s = serdes.Avro(SCHEMA_DICT)
    assert s.serialize(VIEW) == VIEW_AVRO
    assert s.deserialize(VIEW_AVRO) == VIEW
    with_ref = dict(VIEW, referrer="r")
    assert s.serialize(with_ref) == VIEW_AVRO[:-1] + b"\x02\x02r"   # union branch 1, "r"


def test_avro_file_and_dict_schemas_agree():
    from_file = serdes.Avro(SCHEMA_FILE)
    from_dict = serdes.Avro(SCHEMA_DICT)
    views = _views(50)
    assert from_file.serialize_many(views) == from_dict.serialize_many(views)
    assert from_file.deserialize_many(from_dict.serialize_many(views)) == views
    assert from_file.fingerprint() == from_dict.fingerprint()  # doc strings do not count
    assert from_file.path == SCHEMA_FILE
    assert from_dict.path is None
    assert from_dict.name == "Avro(streamproc.tests.PageView)"
    assert from_file.record_name == "streamproc.tests.PageView"


def test_avro_batches_with_tombstones_keep_positions():
    s = serdes.Avro(SCHEMA_FILE)
    views = _views(20)
    raw = s.serialize_many(views)
    raw[4] = raw[11] = None
    out = s.deserialize_many(raw)
    assert out[4] is None and out[11] is None
    assert [v for i, v in enumerate(out) if i not in (4, 11)] == \
           [v for i, v in enumerate(views) if i not in (4, 11)]


def test_avro_serialize_names_the_field():
    s = serdes.Avro(SCHEMA_DICT)
    missing = dict(VIEW)
    del missing["user_id"]
    _raises(s.serialize, missing, match="field 'user_id'")
    _raises(s.serialize, missing, match="missing")
    _raises(s.serialize, dict(VIEW, ts="soon"), match="field 'ts'")
    _raises(s.serialize, dict(VIEW, ts="soon"), match="expected long, got str")
    _raises(s.serialize, dict(VIEW, ts=1 << 70), match="field 'ts'")
    _raises(s.serialize, dict(VIEW, referrer=5), match="expected null or string")
    _raises(s.serialize, "not a record", match="expected a dict for record")
    # a missing field with a default is fine
    no_ref = dict(VIEW)
    del no_ref["referrer"]
    assert s.serialize(no_ref) == VIEW_AVRO


def test_avro_corrupt_bytes_are_serde_errors():
    s = serdes.Avro(SCHEMA_DICT)
    for cut in range(len(VIEW_AVRO)):
        err = _raises(s.deserialize, VIEW_AVRO[:cut], match="truncated or corrupt Avro data")
        assert str(err).startswith("Avro(streamproc.tests.PageView) ")
    _raises(s.deserialize, VIEW_AVRO + b"\x00\x00", match="2 bytes left over")
    _raises(s.deserialize, b"\x04u\xff" + VIEW_AVRO[3:], match="not valid UTF-8")
    _raises(s.deserialize, VIEW_AVRO[:-1] + b"\x08", match="union or enum index")
    _raises(s.deserialize, "text", match="expected bytes")


def test_avro_wire_format_round_trip():
    plain = serdes.Avro(SCHEMA_DICT)
    wire = serdes.Avro(SCHEMA_DICT, schema_id=42)
    raw = wire.serialize(VIEW)
    assert raw == b"\x00" + (42).to_bytes(4, "big") + VIEW_AVRO
    assert wire.deserialize(raw) == VIEW
    views = _views(30)
    raw_many = wire.serialize_many(views)
    assert all(r[:5] == b"\x00\x00\x00\x00\x2a" for r in raw_many)
    assert [r[5:] for r in raw_many] == plain.serialize_many(views)
    assert wire.deserialize_many(raw_many) == views
    assert wire.name == "Avro(streamproc.tests.PageView, schema_id=42)"
    assert wire.fingerprint() != plain.fingerprint()


def test_avro_wire_format_mismatches_say_what_was_found():
    wire = serdes.Avro(SCHEMA_DICT, schema_id=42)
    err = _raises(wire.deserialize, VIEW_AVRO, match="expected magic byte 0")
    assert "found 0x04" in str(err)
    _raises(wire.deserialize, b"\x00\x00\x00\x00\x07" + VIEW_AVRO,
            match="expected schema id 42, found schema id 7")
    _raises(wire.deserialize, b"\x00\x00", match="5-byte Confluent wire format header, got only 2")
    _raises(wire.deserialize, b'{"user_id": "u1"}', match="found 0x7b")
    with pytest.raises(SerdeError, match="schema_id must be an int"):
        serdes.Avro(SCHEMA_DICT, schema_id=-1)


def test_avro_reads_what_fastavro_wrote_and_vice_versa():
    s = serdes.Avro(SCHEMA_FILE)
    parsed = fastavro.parse_schema(SCHEMA_DICT)
    for view in _views(5):
        buf = BytesIO()
        fastavro.schemaless_writer(buf, parsed, view)
        assert s.deserialize(buf.getvalue()) == view
        assert fastavro.schemaless_reader(BytesIO(s.serialize(view)), parsed) == view


def test_avro_fingerprint_follows_the_canonical_form():
    base = serdes.Avro(SCHEMA_DICT).fingerprint()
    reordered = {"fields": SCHEMA_DICT["fields"], "namespace": "streamproc.tests",
                 "name": "PageView", "type": "record", "doc": "different doc"}
    assert serdes.Avro(reordered).fingerprint() == base
    changed = dict(SCHEMA_DICT, fields=[dict(f) for f in SCHEMA_DICT["fields"]])
    changed["fields"][3]["type"] = "long"
    assert serdes.Avro(changed).fingerprint() != base
    assert base.startswith("Avro(schema_id=None, pcf_sha256=")


def test_avro_bad_schema_files(tmp_path):
    bad_json = tmp_path / "bad.avsc"
    bad_json.write_text("{not json")
    with pytest.raises(SerdeError, match="is not valid JSON") as info:
        serdes.Avro(bad_json)
    assert str(bad_json) in str(info.value)
    bad_type = tmp_path / "bad_type.avsc"
    bad_type.write_text('{"type": "record", "name": "X", "fields": [{"name": "a", "type": "strng"}]}')
    with pytest.raises(SerdeError, match="invalid Avro schema") as info:
        serdes.Avro(bad_type)
    assert "strng" in str(info.value)
    with pytest.raises(SerdeError, match="not found"):
        serdes.Avro(tmp_path / "absent.avsc")
    with pytest.raises(SerdeError, match="path to an .avsc file or a dict"):
        serdes.Avro(42)
    with pytest.raises(SerdeError, match="looks like JSON text"):
        serdes.Avro('{"type": "long"}')


def test_avro_primitive_schema():
    s = serdes.Avro({"type": "long"})
    assert s.name == "Avro(long)"
    assert s.serialize(-1) == b"\x01"
    assert s.deserialize_many([b"\x02", None, b"\x01"]) == [1, None, -1]
    _raises(s.serialize, "x", match="expected long, got str")


# ----------------------------------------------------------------- relative paths
def test_relative_schema_path_falls_back_to_the_calling_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # nothing here: found next to this test file
    s = serdes.Avro("data/page_view.avsc")
    assert s.path == SCHEMA_FILE
    assert s.name == "Avro(data/page_view.avsc)"
    assert s.deserialize(s.serialize(VIEW)) == VIEW


def test_relative_schema_path_prefers_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    local = tmp_path / "data" / "page_view.avsc"
    local.write_text('{"type": "record", "name": "Local", "fields": [{"name": "n", "type": "long"}]}')
    monkeypatch.chdir(tmp_path)
    s = serdes.Avro("data/page_view.avsc")
    assert s.path == local
    assert s.record_name == "Local"


def test_topology_module_finds_its_schema_from_another_directory(tmp_path, monkeypatch):
    topo_dir = tmp_path / "project" / "topologies"
    (topo_dir / "schemas").mkdir(parents=True)
    (topo_dir / "schemas" / "click.avsc").write_text(
        '{"type": "record", "name": "Click", "fields": [{"name": "x", "type": "int"}]}')
    module_file = topo_dir / "clicks.py"
    module_file.write_text(textwrap.dedent("""
        from streamproc import serdes
        VALUE = serdes.Avro("schemas/click.avsc")
    """))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = importlib.util.spec_from_file_location("sp_test_clicks_topology", module_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.VALUE.path == topo_dir / "schemas" / "click.avsc"
    assert module.VALUE.serialize({"x": -1}) == b"\x01"


def test_topology_module_finds_a_schema_at_its_project_root(tmp_path, monkeypatch):
    # the repo layout: <root>/topologies/x.py says Avro("schemas/y.avsc"), schema in <root>/schemas
    root = tmp_path / "repo"
    (root / "schemas").mkdir(parents=True)
    (root / "topologies").mkdir()
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (root / "schemas" / "view.avsc").write_text(
        '{"type": "record", "name": "RootView", "fields": [{"name": "n", "type": "long"}]}')
    module_file = root / "topologies" / "views.py"
    module_file.write_text('from streamproc import serdes\nVALUE = serdes.Avro("schemas/view.avsc")\n')
    monkeypatch.chdir(root / "topologies")        # run from the module's own folder
    spec = importlib.util.spec_from_file_location("sp_test_views_topology", module_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.VALUE.path == root / "schemas" / "view.avsc"
    assert module.VALUE.record_name == "RootView"


def test_missing_relative_schema_names_both_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SerdeError) as info:
        serdes.Avro("nope/missing.avsc")
    text = str(info.value)
    assert "Avro(nope/missing.avsc)" in text
    assert str(tmp_path / "nope" / "missing.avsc") in text
    assert str(TESTS_DIR / "nope" / "missing.avsc") in text


# ----------------------------------------------------------------- identity
def test_names_and_descriptions():
    assert serdes.String().name == "String"
    assert serdes.Json().name == "Json"
    assert serdes.Int().name == "Int"
    assert serdes.Int(bits=32).name == "Int(bits=32)"
    assert serdes.Float(bits=32).name == "Float(bits=32)"
    assert "LongSerializer" in serdes.Int().describe()
    assert "IntegerSerializer" in serdes.Int(bits=32).describe()
    assert "DoubleSerializer" in serdes.Float().describe()
    wire = serdes.Avro(SCHEMA_FILE, schema_id=3)
    assert wire.describe() == (f"Avro({SCHEMA_FILE}, schema_id=3) [record streamproc.tests.PageView, "
                               f"Confluent wire format, schema id 3]")
    assert serdes.Avro(SCHEMA_DICT).describe() == "Avro(streamproc.tests.PageView)"


def test_fingerprints_are_stable_and_distinguish_formats():
    assert serdes.Int().fingerprint() == "Int(bits=64, byteorder=big)"
    assert serdes.String().fingerprint() == "String(encoding=utf-8)"
    prints = {s.fingerprint() for s in (serdes.String(), serdes.Bytes(), serdes.Int(),
                                        serdes.Int(bits=32), serdes.Float(), serdes.Float(bits=32),
                                        serdes.Json(), serdes.Avro(SCHEMA_DICT))}
    assert len(prints) == 8
    assert serdes.Int(bits=32) == serdes.Int(bits=32) and serdes.Int() != serdes.Int(bits=32)


@pytest.mark.parametrize("serde", [serdes.String(), serdes.Bytes(), serdes.Int(bits=32),
                                   serdes.Float(), serdes.Json(), serdes.Avro(SCHEMA_FILE, schema_id=5)],
                         ids=lambda s: s.name)
def test_serdes_survive_pickling_into_workers(serde):
    samples = {"String": "x", "Bytes": b"x", "Int(bits=32)": 5, "Float": 0.5, "Json": {"a": [1]}}
    value = samples.get(serde.name, VIEW)
    clone = pickle.loads(pickle.dumps(serde))
    assert clone.fingerprint() == serde.fingerprint()
    assert clone.serialize(value) == serde.serialize(value)
    assert clone.deserialize_many([serde.serialize(value)]) == [value]


@settings(max_examples=25)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=40))
def test_avro_batch_equals_single(durations):
    s = serdes.Avro(SCHEMA_DICT)
    views = [dict(VIEW, duration_ms=d) for d in durations]
    raw = s.serialize_many(views)
    assert raw == [s.serialize(v) for v in views]
    assert s.deserialize_many(raw) == views
