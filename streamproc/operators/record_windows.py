"""Sliding and session windows: windows defined by the records themselves.

Both are folded record by record (a record can create, grow or merge windows, which a
vectorised fold cannot express) against a per-batch working form of each touched key's state,
written back to the store once per batch. The store holds one value per group key: the key's
windows (and, for sliding windows, the records future windows still need), led by the key's
*due time*: the smallest stream time at which the key needs a visit (a window closes, records
expire). ``[due, ...]``.

The window rules (when a window closes, a record is late, a kept closed window expires) are the
window spec's (``streamproc.windows``): sessions call ``Session.close_time``/``expire_time``; sliding
windows take them as offsets once (``_sliding.SlidingLayout``).

Closing, without reading the store: the keys this operator writes go into its ``CloseIndex`` by
due time (in memory); the keys the store already held when the operator was built are found
through the backend's time index, which keeps every stored key by the due time at the head of
its value (``state.backend``; RocksDB reads it from the raw value bytes, so a restore indexes
what it writes without decoding it). Building the operator costs one index lookup
(``BackendSweep``); each batch visits the keys its stream time reached: closes their due
windows (emitting them in ``emit="final"``), drops expired records, and deletes a key with
nothing left.

Retention (``aggregate(..., retention=R)`` longer than the default, see ``streamproc.windows``): a
window that closes is kept in its key's value, apart from the open ones and with its final value,
until it expires (sliding: ``stream_time >= start + R``; session: ``stream_time >= end + R``, as
Kafka Streams' window and session stores measure it); the key's due time covers that expiry, so the
key is visited then and the window dropped (the key deleted, a tombstone, when nothing is left). A
kept closed window is never updated again, nor merged into a new session: closing is unchanged.
"""
from __future__ import annotations

from collections import OrderedDict
from operator import itemgetter

from ..agg import Aggregation
from ..errors import CodecError, StateError
from ..kinds import StoreKind
from ._fold import BackendSweep, CloseIndex
from ._sliding import SlidingEntry, SlidingLayout, check_rows
from .aggregate import _AggregateBase
from .batch import Batch

_LIVE_MAX = 4096          # sliding: working forms kept between batches (the hottest keys)


class _RecordWindowOp(_AggregateBase):
    """What sliding and session windows share: per-key working forms for a batch, and visiting keys
    by due time. Subclasses give ``_load``, ``_add``, ``_changed_results``, ``_close``, ``_is_empty``,
    ``_save``, ``_entry_due`` and ``_stored_due`` for their per-key state."""

    _kind: StoreKind              # the store's kind (its backend time index)

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self._simple = all(type(a).result is Aggregation.result for a in self.aggs)
        self._start_index()

    def _start_index(self) -> None:
        self.index = CloseIndex()              # keys written by this operator, by due time
        self._due_of: dict = {}                # key -> its due time in ``index``
        self._generation = self.store.generation
        self._sweep = BackendSweep(self.store, self._kind)
        if not self._sweep.indexed:            # a backend without a time index: read the store once
            for k, value in self.store.items():
                self._set_due(k, self._stored_due(k, value))

    def _set_due(self, k, due) -> None:
        old = self._due_of.get(k)
        if old == due:
            return
        if old is not None:
            self.index.remove(old, k)
        if due is None:
            self._due_of.pop(k, None)
        else:
            self._due_of[k] = due
            self.index.add(due, k)

    def _process(self, b: Batch) -> Batch:
        if self.store.generation != self._generation:     # the write cache was discarded
            self._forget()
            self._start_index()
        b = self._drop_none_keys(b)
        work: dict = {}
        cols = self._columns(b)
        ts_l, st_l = b.timestamps.tolist(), b.stream_times.tolist()
        codes = self._codes
        late = []
        for i, k in enumerate(b.keys):
            entry = work.get(k)
            if entry is None:
                if k not in codes:
                    codes.codes([k])         # a key the state cannot store fails here, once per new key
                entry = work[k] = self._load(k, [c[i] for c in cols])
            if not self._add(k, entry, ts_l[i], st_l[i], [c[i] for c in cols]):
                late.append(i)
        if late:
            self.ctx.drop("late", self.metric_label, len(late), int(b.seq[late[0]]))
            self._late(b, late)
        items: list = []
        if not self.emit_final:
            for k, entry in work.items():
                self._changed_results(k, entry, items)
        st = self.ctx.state.stream_time
        due_of = self._due_of
        visit = self.index.pop_closed(st) + self._sweep.due(st)
        for k in visit:
            due = due_of.get(k)
            if due is not None and due <= st:       # popped from the CloseIndex; set again below if kept
                del due_of[k]
        if visit:
            self._load_visits(visit, work)
        for k, entry in work.items():
            self._close(k, entry, st, items)
            if self._is_empty(entry):
                self.store.delete(k)
                self._set_due(k, None)
                self._dropped(k)
            else:
                self._save(k, entry)
                self._set_due(k, self._entry_due(entry))
        return self._output([i[0] for i in items], [i[1] for i in items], [i[2] for i in items], st)

    def _load_visits(self, keys: list, work: dict) -> None:
        """The working forms of the keys to visit, into ``work`` (the stored ones with one multi-get)."""
        todo = [k for k in dict.fromkeys(keys) if k not in work]
        cold = [k for k in todo if not self._cached(k)]
        found = dict(zip(cold, self.store.get_many(cold))) if cold else {}
        for k in todo:
            if k in found:
                value = found[k]
                if value is not None:
                    work[k] = self._load(k, None, value)
            else:
                entry = self._load(k, None)
                if entry is not None:
                    work[k] = entry

    def _cached(self, k) -> bool:
        return False

    def _columns(self, b: Batch) -> list:
        return [a.extract(b.values) if a.needs_column else b.values for a in self.aggs]

    def _forget(self) -> None:
        pass

    def _dropped(self, k) -> None:
        pass

    def _grow(self, w, t, xs) -> None:
        """Add one record to window state ``w`` = ``[.., max_ts, *states]`` (states at ``self._S``)."""
        s0 = self._S
        if t > w[s0 - 1]:
            w[s0 - 1] = t
        for j, a in enumerate(self.aggs):
            w[s0 + j] = a.add(w[s0 + j], [xs[j]])

    def _result_value(self, start, end, states) -> dict:
        value = {"window_start": start, "window_end": end}
        if self._simple:
            value.update(zip(self.names, states))
        else:
            value.update({n: a.result(x) for n, a, x in zip(self.names, self.aggs, states)})
        return value


class SlidingAggregateOp(_RecordWindowOp):
    """Kafka Streams sliding windows (``max_difference`` d), both ends inclusive.

    Per key, a ``SlidingEntry`` (``_sliding.py``): one aggregate per window, by start (end = start +
    d), and the records a window that can still open may contain. A record at t

    * grows every open window containing t,
    * creates its left window ``[t-d, t]`` and, when records follow it within d, its right
      window ``[t+1, t+1+d]``, and the right window of the record just before it when that one
      lacks it (the only earlier record that can: any other has a record after it within d), each
      folded from the stored records in its range (in arrival order) and t,
    * is late when even ``[t, t+d]``, the last window it could join, is closed (``Sliding.is_late``).

    The working forms of the hottest keys stay in memory between batches (``_LIVE_MAX``); the
    store receives them as ``Deferred`` values, encoded only at the checkpoint.
    """

    _kind = StoreKind.SLIDING

    def __init__(self, node, ctx):
        p = node.params
        w = p["window"]
        self.layout = SlidingLayout(list(p["aggs"].values()), w, p["emit"] == "final", p.get("retention"))
        self._live: OrderedDict = OrderedDict()
        super().__init__(node, ctx)

    def _columns(self, b: Batch) -> list:
        return [a.extract(b.values) for a in self.layout.fields]

    def _forget(self) -> None:
        self._live = OrderedDict()

    def _dropped(self, k) -> None:
        self._live.pop(k, None)

    def _cached(self, k) -> bool:
        return k in self._live

    def _entry(self, value) -> SlidingEntry:
        return SlidingEntry.load(self.layout, value, _extract)

    def _stored_due(self, k, value):
        return self._entry(value).due()

    def _load(self, k, xs, value=None):
        live = self._live
        e = live.get(k)
        if e is not None:
            live.move_to_end(k)          # most recently used last
            return e
        if value is None:
            value = self.store.get(k)
        if value is not None:
            e = self._entry(value)
        elif xs is None:
            return None
        else:
            e = SlidingEntry.new(self.layout)
        live[k] = e
        if len(live) > _LIVE_MAX:
            live.popitem(last=False)
        return e

    def _add(self, k, entry, t, st, xs) -> bool:
        for x in xs:                     # record values are stored: fail now if the codec cannot write one
            if type(x) not in _PLAIN:
                self._storable([k], [x])
        return entry.add(t, st, xs)

    def _checked(self, k, rows) -> list:
        if rows and self.layout.check_reduce:
            try:
                check_rows(rows)
            except CodecError as e:
                raise CodecError(f"cannot store the state of key {k!r}: {e.reason}") from None
        return rows

    def _changed_results(self, k, entry, items) -> None:
        d = self.window.max_difference
        for start, mx, states in self._checked(k, entry.changed()):
            items.append((k, self._result_value(start, start + d, states), mx))

    def _close(self, k, entry, st, items) -> None:
        if self.emit_final and self.layout.check_reduce:
            self._checked(k, entry.changed())
        rows = entry.close(st, self.emit_final)
        if rows:
            d = self.window.max_difference
            for start, mx, states in rows:
                items.append((k, self._result_value(start, start + d, states), mx))
        entry.prune(st)

    @staticmethod
    def _is_empty(entry) -> bool:
        return entry.is_empty()

    def _save(self, k, entry) -> None:
        self.store.put_deferred(k, entry)

    @staticmethod
    def _entry_due(entry) -> int:
        return entry.due()


_PLAIN = frozenset({int, float, str, bool, bytes, type(None)})


def _extract(a, values):
    return a.extract(values)


class SessionAggregateOp(_RecordWindowOp):
    """Session windows. Per key the store holds ``[due, *sessions]``, each ``[start, end, max_ts, *states]``.

    A record at t merges every session of its key with ``end >= t - gap`` and ``start <= t + gap``
    that is still open when the record is processed, into one ``[min start, max end]``; if that
    merged session is already closed the record is late and nothing changes (a session is closed
    iff ``stream_time >= Session.close_time(end)``). A closed session
    has been emitted and is deleted from the store (tombstoned in the changelog) at the end of
    its batch; it never merges again. This is Kafka Streams' behaviour: its session store
    retention defaults to gap + grace, and a fetch never returns a session older than that, so
    every record counts in at most one final result and the store stays bounded.

    With a longer retention R the key's closed sessions are kept after the open ones, in a trailing
    ``{"closed": [session, ...]}`` (by start; written only while there are some), until
    ``stream_time >= end + R``. They are kept for reading only: unlike Kafka Streams, whose session
    store would hand a retained closed session to the merge of a later record (re-opening it), a kept
    session never merges again, so closing and emitting are those without a retention.
    """

    _S = 3   # session list layout: [start, end, max_ts, *states]
    _kind = StoreKind.SESSION

    def __init__(self, node, ctx):
        self.retention = node.params.get("retention")
        self.retains = node.params["window"].retains(self.retention)
        super().__init__(node, ctx)

    def _stored_due(self, k, value):
        sessions = self._sessions_of(value)
        return self._entry_due(sessions) if sessions or sessions.closed else None

    @staticmethod
    def _sessions_of(value) -> "_Sessions":
        return _sessions_of(value)

    def _load(self, k, xs, value=None):
        if value is None:
            value = self.store.get(k)
            if value is None and xs is None:
                return None
        return self._sessions_of(value)

    def _expire_time(self, s) -> int:
        return self.window.expire_time(s[0], s[1], self.retention)

    def _add(self, k, sessions, t, st, xs) -> bool:
        w = self.window
        gap, close = w.gap, w.close_time
        # closed sessions may still sit in the batch's working copy until the batch ends
        hit = [s for s in sessions if s[1] >= t - gap and s[0] <= t + gap and st < close(s[1])]
        start = min([t] + [s[0] for s in hit])
        end = max([t] + [s[1] for s in hit])
        if st >= close(end):
            return False
        hit.sort(key=lambda s: s[0])
        changed = self._changed.setdefault(k, {})
        if hit:
            states = hit[0][3:]
            max_ts = hit[0][2]
            for s in hit[1:]:
                states = [a.combine(x, y) for a, x, y in zip(self.aggs, states, s[3:])]
                max_ts = max(max_ts, s[2])
            for s in hit:
                changed.pop(s[0], None)
                sessions.remove(s)
            new = [start, end, max_ts] + list(states)
        else:
            new = [start, end, t] + [a.init() for a in self.aggs]
        self._grow(new, t, xs)
        sessions.append(new)
        sessions.sort(key=lambda s: s[0])
        changed[start] = None
        return True

    def _process(self, b: Batch) -> Batch:
        self._changed: dict = {}
        return super()._process(b)

    def _changed_results(self, k, sessions, items) -> None:
        for start in self._changed.get(k, ()):
            for s in sessions:
                if s[0] == start:
                    items.append((k, self._result_value(s[0], s[1], s[3:]), s[2]))
                    break

    def _close(self, k, sessions, st, items) -> None:
        close = self.window.close_time
        done = [s for s in sessions if close(s[1]) <= st]
        closed = sessions.closed
        if done:
            kept = []
            for s in sorted(done, key=lambda s: close(s[1])):
                sessions.remove(s)
                if self.emit_final:
                    items.append((k, self._result_value(s[0], s[1], s[3:]), s[2]))
                if self.retains and self._expire_time(s) > st:
                    kept.append(s)
            if kept:
                closed = sorted(closed + kept, key=_first)
        if closed:
            closed = [s for s in closed if self._expire_time(s) > st]
        sessions.closed = closed

    @staticmethod
    def _is_empty(sessions) -> bool:
        return not sessions and not sessions.closed

    def _entry_due(self, sessions) -> int:
        close, expire = self.window.close_time, self._expire_time
        return min([close(s[1]) for s in sessions] + [expire(s) for s in sessions.closed])

    def _save(self, k, sessions) -> None:
        if self._check_states:
            self._storable([k], [sessions])
        value = [self._entry_due(sessions)] + sessions
        if sessions.closed:
            value.append({"closed": sessions.closed})
        self.store.put(k, value)


_first = itemgetter(0)
_bounds = itemgetter(0, 1)


class _Sessions(list):
    """A key's open sessions (the list itself) and ``closed``: its closed sessions kept for the store's
    retention (by start)."""

    __slots__ = ("closed",)

    def __init__(self, sessions=()):
        super().__init__(sessions)
        self.closed = []


def _sessions_of(value) -> _Sessions:
    """A session store value as the operator works on it (see ``SessionAggregateOp``)."""
    if not value:
        return _Sessions()
    if type(value[0]) is int:                 # [due, *sessions] (+ {"closed": [...]})
        body = value[1:]
        if body and type(body[-1]) is dict:
            out = _Sessions(list(s) for s in body[:-1])
            out.closed = [list(s) for s in body[-1].get("closed", ())]
            return out
        return _Sessions(list(s) for s in body)
    if isinstance(value[0], list):            # the layout before due times: [*sessions]
        return _Sessions(list(s) for s in value)
    raise StateError(f"a session store value has an unknown layout ({str(value)[:80]})")


# ------------------------------------------------------------------------------ presentation
# One presentation of a key's stored windows for the operator's snapshot (TopologyTestDriver.state,
# ``streamproc state``) and the HTTP queries (runtime.queries): a list of window dicts by start (then
# end), each as the operator emits the window, plus ``"closed": True`` for a closed window kept for the
# store's retention.

def _window_dict(names, aggs, simple, start, end, states, closed=False) -> dict:
    value = {"window_start": start, "window_end": end}
    if simple:
        value.update(zip(names, states))
    else:
        value.update({n: a.result(x) for n, a, x in zip(names, aggs, states)})
    if closed:
        value["closed"] = True
    return value


def _names_aggs(params):
    aggs = params["aggs"]
    fns = list(aggs.values())
    return list(aggs), fns, all(type(a).result is Aggregation.result for a in fns)


def session_windows(params):
    """``present(value) -> [window, ...]`` for the stored values of a session store."""
    names, aggs, simple = _names_aggs(params)

    def present(value) -> list:
        sessions = _sessions_of(value)
        out = [(s[0], s[1], _window_dict(names, aggs, simple, s[0], s[1], s[3:], True)) for s in sessions.closed]
        out += [(s[0], s[1], _window_dict(names, aggs, simple, s[0], s[1], s[3:])) for s in sessions]
        out.sort(key=_bounds)
        return [w for _, _, w in out]

    return present


def sliding_windows(params):
    """``present(value) -> [window, ...]`` for the stored values of a sliding-window store."""
    names, aggs, simple = _names_aggs(params)
    w = params["window"]
    d = w.max_difference
    layout = SlidingLayout(aggs, w, params["emit"] == "final", params.get("retention"))

    def present(value) -> list:
        e = SlidingEntry.load(layout, value, _extract)
        return ([_window_dict(names, aggs, simple, s, s + d, states, True) for s, _, states in e.closed_rows()]
                + [_window_dict(names, aggs, simple, s, s + d, states) for s, _, states in e.rows()])

    return present
