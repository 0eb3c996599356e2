"""Micro-benchmark of streamproc.state.codec (keys and values of internal topics and stores).

Run: ``.venv/bin/python benchmarks/codec.py [--quick]``

Prints ns per key / per value (min over repeats of a timeit loop over 1,000 distinct items)
for the codec against pickle protocol 5 (what streamproc used for internal topics before 0.2),
plus orjson for values JSON can represent. (The order-preserving key encoding of 0.1,
``streamproc.state.keys``, measured within 2% of the codec's on encode and 20-30% slower on
decode when it was replaced.)
"""
from __future__ import annotations

import argparse
import pickle
import timeit

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from streamproc.state import codec

N_ITEMS = 1_000


def _ns_per_item(fn, items, repeat: int, min_time: float) -> float:
    """Min over ``repeat`` runs of ``[fn(x) for x in items]``, in ns per item."""
    stmt = lambda: [fn(x) for x in items]          # noqa: E731
    number = 1
    while True:                                     # calibrate: one run takes >= min_time
        t = timeit.timeit(stmt, number=number)
        if t >= min_time:
            break
        number *= 2
    best = min(timeit.repeat(stmt, number=number, repeat=repeat))
    return best / number / len(items) * 1e9


def _ns_batch(fn, items, repeat: int, min_time: float) -> float:
    """Like _ns_per_item for a function taking the whole list."""
    number = 1
    while timeit.timeit(lambda: fn(items), number=number) < min_time:
        number *= 2
    return min(timeit.repeat(lambda: fn(items), number=number, repeat=repeat)) / number / len(items) * 1e9


def _pickle_dumps(x):
    return pickle.dumps(x, 5)


def key_cases():
    str_keys = [f"user-{i:05d}" for i in range(N_ITEMS)]
    window_keys = [(f"user-{i:05d}", 1_700_000_000_000 + 60_000 * i) for i in range(N_ITEMS)]
    tuple_keys = [(f"region-{i % 7}", i, "web") for i in range(N_ITEMS)]
    new_w_enc, new_w_dec = codec.key_encoder("window"), codec.key_decoder("window")
    return [
        ("str key", str_keys, codec.encode_key, codec.decode_key),
        ("(str, int) window key", window_keys, new_w_enc, new_w_dec),
        ("(str, int, str) tuple key", tuple_keys, codec.encode_key, codec.decode_key),
    ]


def value_cases():
    ts = 1_700_000_000_000
    row = {"user": "u-1", "amount": 12, "ts": ts}
    return [
        ("[ts, count, sum]", [[ts + i, 42, 1234 + i] for i in range(N_ITEMS)]),
        ("[ts, [sum, count]]", [[ts + i, [1234.5 + i, 42]] for i in range(N_ITEMS)]),
        ("dict row", [{**row, "amount": i} for i in range(N_ITEMS)]),
        ("collect list of 20 rows", [[{**row, "amount": i + j} for j in range(20)] for i in range(N_ITEMS // 10)]),
        ("(ts, count) tuple state", [(ts + i, 42) for i in range(N_ITEMS)]),
    ]


def _fmt(ns: float | None) -> str:
    return "-" if ns is None else f"{ns:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (noisier)")
    args = ap.parse_args()
    repeat, min_time = (3, 0.02) if args.quick else (7, 0.1)
    console = Console(width=130)

    kt = Table(title="Keys: ns per key (lower is better)")
    for col in ("key", "op", "codec", "pickle 5", "codec / pickle"):
        kt.add_column(col, justify="left" if col in ("key", "op") else "right")
    for name, items, enc, dec in key_cases():
        for k in items[:50]:                                # sanity: it round-trips
            assert dec(enc(k)) == k
        new_e = _ns_per_item(enc, items, repeat, min_time)
        pk_e = _ns_per_item(_pickle_dumps, items, repeat, min_time)
        new_b, pk_b = [enc(k) for k in items], [_pickle_dumps(k) for k in items]
        new_d = _ns_per_item(dec, new_b, repeat, min_time)
        pk_d = _ns_per_item(pickle.loads, pk_b, repeat, min_time)
        kt.add_row(escape(name), "encode", _fmt(new_e), _fmt(pk_e), f"{new_e / pk_e:.2f}")
        kt.add_row("", "decode", _fmt(new_d), _fmt(pk_d), f"{new_d / pk_d:.2f}", end_section=True)
    keys_items = [f"user-{i:05d}" for i in range(N_ITEMS)]
    kt.add_row("str key", "encode_keys (batch)", _fmt(_ns_batch(codec.encode_keys, keys_items, repeat, min_time)),
               "-", "")
    kt.add_row("", "decode_keys (batch)",
               _fmt(_ns_batch(codec.decode_keys, codec.encode_keys(keys_items), repeat, min_time)), "-", "")
    console.print(kt)

    vt = Table(title="Values: ns per value (lower is better)")
    for col in ("value", "op", "codec (new)", "codec batch", "pickle 5", "orjson", "new / pickle", "bytes new/pickle"):
        vt.add_column(col, justify="left" if col in ("value", "op") else "right")
    for name, items in value_cases():
        for v in items[:20]:
            assert codec.decode_value(codec.encode_value(v)) == v
        try:
            orjson.dumps(items[0])
            json_ok = type(orjson.loads(orjson.dumps(items[0]))) is type(items[0])
        except TypeError:
            json_ok = False
        new_e = _ns_per_item(codec.encode_value, items, repeat, min_time)
        bat_e = _ns_batch(codec.encode_values, items, repeat, min_time)
        pk_e = _ns_per_item(_pickle_dumps, items, repeat, min_time)
        js_e = _ns_per_item(orjson.dumps, items, repeat, min_time) if json_ok else None
        new_b = [codec.encode_value(v) for v in items]
        pk_b = [_pickle_dumps(v) for v in items]
        new_d = _ns_per_item(codec.decode_value, new_b, repeat, min_time)
        bat_d = _ns_batch(codec.decode_values, new_b, repeat, min_time)
        pk_d = _ns_per_item(pickle.loads, pk_b, repeat, min_time)
        js_d = _ns_per_item(orjson.loads, [orjson.dumps(v) for v in items], repeat, min_time) if json_ok else None
        size = f"{sum(map(len, new_b)) / len(items):.0f}/{sum(map(len, pk_b)) / len(items):.0f}"
        vt.add_row(escape(name), "encode", _fmt(new_e), _fmt(bat_e), _fmt(pk_e), _fmt(js_e), f"{new_e / pk_e:.2f}", size)
        vt.add_row("", "decode", _fmt(new_d), _fmt(bat_d), _fmt(pk_d), _fmt(js_d), f"{new_d / pk_d:.2f}", "",
                   end_section=True)
    console.print(vt)
    console.print("orjson '-': JSON cannot represent the value exactly (tuples come back as lists). Each run keeps "
                  "its 1,000 results alive, as a producer batch does (orjson's per-call 1 KiB buffer then "
                  "costs a malloc + realloc: one value dumped in a tight loop takes ~80 ns).")


if __name__ == "__main__":
    main()
