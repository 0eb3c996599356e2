"""Encoding of streamproc's own records: repartition topics and changelog topics.

Both are written and read only by the same application, so they use pickle (protocol 5):
it round-trips every key and aggregate state exactly (tuples stay tuples, ints stay ints) and
is several times faster than a JSON round trip. Users' own topics never use this codec.
Anyone who can write to an app's internal topics can run code in its workers: protect them
with ACLs like the rest of the app's topics.
"""
from __future__ import annotations

import pickle

_dumps = pickle.dumps
_loads = pickle.loads
_PROTO = 5


def encode(obj) -> bytes | None:
    return None if obj is None else _dumps(obj, _PROTO)


def decode(data: bytes | None):
    return None if data is None else _loads(data)


def encode_many(objs: list) -> list:
    return [None if o is None else _dumps(o, _PROTO) for o in objs]


def decode_many(datas: list) -> list:
    return [None if d is None else _loads(d) for d in datas]
