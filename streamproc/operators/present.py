"""How a store's entries are shown: the one presentation for HTTP queries and change streams,
``streamproc state`` and ``TopologyTestDriver.state``.

A stored value is shown as its operator emits it:

* ``table`` (a table read from a topic, a global table): the row's value;
* ``kv`` (a non-windowed aggregation): ``{<agg>: result}``;
* ``window`` (tumbling/hopping; one stored value per window): ``{"window_start", "window_end",
  <agg>: result}``, a closed window kept for the store's retention marked ``"closed": true``;
* ``sliding`` / ``session`` (one stored value per key holds its windows): the key's windows by
  start, each shown as above;
* ``join`` (one side of a stream-stream join): the records waiting in their window.

Two forms, for what each surface lists:

* :func:`presenter`: one stored value, shown (HTTP ``/stores/<store>/<key>`` and ranges, the SSE
  changes). A key of a windowed store is answered with the list of its windows.
* :func:`entries`: a store's contents as ``{entry key: shown}`` (the test driver's ``state()``,
  ``streamproc state``): a windowed store has one entry per window, keyed ``(key, window_start)``
  - ``(key, window_start, window_end)`` for a session store that keeps closed sessions, which
  may share a start with a later session of the key; other stores one entry per key.

Where the surfaces still differ (each is what its users see today; unifying them would change
one): a join store's records are ``{"timestamp": t, "value": v}`` objects over HTTP and in the
SSE changes, but ``[t, v]`` pairs in :func:`entries`; and an HTTP range lists a tumbling/hopping
store window by window but a sliding/session store key by key (its value: the key's windows).
"""
from __future__ import annotations

from ..kinds import StoreKind
from .record_windows import session_windows, sliding_windows

#: Stores whose entries are windows (an entry's key is ``(key, window start[, window end])``).
WINDOWED = frozenset({StoreKind.WINDOW, StoreKind.SLIDING, StoreKind.SESSION})


def to_json_key(k):
    """A store key as JSON data (tuples become lists)."""
    return list(k) if isinstance(k, tuple) else k


def presenter(st, spec):
    """``present(store_key, stored_value)`` for store ``spec`` of sub-topology ``st``: the value as the
    operator would emit it (``st`` may be None for a table)."""
    if spec.kind == StoreKind.TABLE:
        return lambda k, v: v[1]
    if spec.kind == StoreKind.JOIN:
        return lambda k, v: [{"timestamp": e[0], "value": e[1]} for e in v[1:]]
    if spec.kind == StoreKind.DEDUPE:             # a message id: when it is forgotten
        return lambda k, v: {"expires_at": v[0]}
    params = _node(st, spec).params
    if spec.kind == StoreKind.KV:
        results = _results(params)
        return lambda k, v: results(v)
    if spec.kind == StoreKind.WINDOW:
        return _window(params, spec.window.size)
    return _windows(spec, params)


def entries(st, spec, items) -> dict:
    """Store ``spec``'s contents as ``{entry key: shown}`` (see the module doc); ``items``: its
    ``(store key, stored value)`` pairs, e.g. ``Store.items()`` or ``Backend.items(name)``."""
    if spec.kind == StoreKind.JOIN:
        return {k: [[e[0], e[1]] for e in v[1:]] for k, v in items}
    present = presenter(st, spec)
    if spec.kind not in (StoreKind.SLIDING, StoreKind.SESSION):
        return {k: present(k, v) for k, v in items}
    params = _node(st, spec).params
    # a kept closed session and a later session of its key can start at the same time (a record at its start
    # extends an open session back to it without merging it): a store that keeps closed sessions shows them
    # by (key, start, end), as a Kafka Streams session store keys them
    by_end = spec.kind == StoreKind.SESSION and params["window"].retains(params.get("retention"))
    out = {}
    for k, v in items:
        for w in present(k, v):
            out[(k, w["window_start"], w["window_end"]) if by_end else (k, w["window_start"])] = w
    return out


def entry_key(spec, key):
    """The key an entry of :func:`entries` belongs to (a windowed store's: without its window)."""
    return key[0] if spec.kind in WINDOWED else key


def _node(st, spec):
    """The node of ``st`` that owns store ``spec``."""
    return next(n for n in st.nodes if any(s.name == spec.name for s in n.params.get("stores", ())))


def _results(params):
    aggs = params["aggs"]
    names, fns = list(aggs), list(aggs.values())
    return lambda state: {n: a.result(s) for n, a, s in zip(names, fns, state[1:])}


def _window(params, size: int):
    results = _results(params)
    width = 1 + len(params["aggs"])     # (max_ts, *states); a closed window kept for the retention: + (True,)

    def window(k, v):
        out = {"window_start": k[1], "window_end": k[1] + size, **results(v)}
        if len(v) > width:
            out["closed"] = True
        return out

    return window


def _windows(spec, params):
    """Sliding / session: the key's windows, by start, as the operator presents them (closed ones kept
    for the store's retention marked ``"closed": true``), like a tumbling window store's."""

    windows = (session_windows if spec.kind == StoreKind.SESSION else sliding_windows)(params)
    return lambda k, v: windows(v)
