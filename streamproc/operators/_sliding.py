"""Sliding windows of one key as columns: per-window aggregates (as Kafka Streams keeps them) plus the
records that future windows still need.

Kafka Streams (``KStreamSlidingWindowAggregate``) stores one aggregate per window. A record at
``t`` creates its left window ``[t-d, t]`` and, when a record follows it within ``d``, its right
window ``[t+1, t+1+d]``; it also completes the right window of the record just before it; every
existing window containing ``t`` is updated with it. Kafka fills a new window by copying the
aggregate of a neighbouring window, which is exact only for records in order (out of order it
loses records, see tests/reference_model.py ``kafka_sliding_port``). Here a new window is folded
from the *records* in its range instead (exact in every order, and in arrival order for
order-sensitive aggregations); so each key also keeps its records, but only those a window that
can still open may contain (until ``Sliding.forget_time(ts)``).

The window rules (closing, lateness, the earliest window still open, when a record or a kept closed
window can go) are the ``Sliding`` spec's (``streamproc.windows``): :class:`SlidingLayout` takes them
once, as offsets from the spec's methods, and the per-record code adds them.

Per key, :class:`SlidingEntry` holds

* windows, sorted by start: ``start``, ``max_ts``, a "changed" flag (for ``emit="update"``), and
  per aggregation its state;
* records, sorted by timestamp: ``ts``, ``seq`` (arrival number, for arrival order) and the
  values of the fields the aggregations read (not the whole record value).

Two representations of the same thing. ``_Small`` (plain lists, bisect) serves the few windows
most keys have at a time. A key with more than ``BIG_WINDOWS`` windows becomes ``_Big``: numpy
columns in a buffer with room at both ends (``_Cols``): windows close from the front (a window's
close time grows with its start), a record's left window lands near the front and its right
window at the back, records arrive at the back, so inserts and drops move few cells. Counts,
sums, mins and maxes of plain ints and floats live in int64/float64 columns: adding a record to
the W windows that contain it is one numpy call per column, not W Python steps (a hot key with
thousands of records per window); any other value (or aggregation: first, last, collect, reduce)
lives in an object column and is folded with the aggregation's own ``add``, exactly as Python
would. Either way a record costs O(windows it touches + records of the windows it creates),
never O(everything the key holds), and the key holds only what window + grace need.

The stored value (``SlidingEntry.state()``, codec-ready lists) is::

    [due, next_seq, rec_ts, rec_seq, [rec values per field], win_start, win_max_ts, [win states per agg]]

plus, for a store with a retention longer than the default (``aggregate(..., retention=)``), a ninth
element while the key has closed windows kept: ``[[start, max_ts, [states per agg]], ...]`` by start,
each the window's final value, removed once ``stream_time >= start + retention`` (Kafka Streams'
window store retention, measured from the window start; never before the window closed:
``Sliding.expire_offset``).

``due`` first: the smallest stream time at which the key needs a visit (a window closes, its
last record expires, or a kept closed window expires); the backend indexes keys by it (``state.backend``).
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right

import numpy as np

from ..agg import Aggregation
from ..errors import StateError
from ..state.codec import check_value
from ..state.store import Deferred

_I64 = np.dtype(np.int64)
_F64 = np.dtype(np.float64)
_OBJ = np.dtype(object)
_SMALL = 1 << 31            # ints with |x| <= 2^31 are summed in int64 (2^32 of them cannot overflow)
_BIG = 1 << 62              # ints compared (min/max) or summed states kept in int64


def _obj_array(values: list, cap: int, lo: int) -> np.ndarray:
    a = np.empty(cap, dtype=object)
    for i, v in enumerate(values, lo):
        a[i] = v
    return a


def _num_dtype(values, small: bool, nan_ok: bool):
    """int64/float64 if every value is a plain int (within range) / a plain float, else object."""
    if not values:
        return None
    t0 = type(values[0])
    if t0 is int:
        lim = _SMALL if small else _BIG
        if all(type(v) is int and -lim <= v <= lim for v in values):
            return _I64
    elif t0 is float:
        if all(type(v) is float for v in values) and (nan_ok or not any(v != v for v in values)):
            return _F64
    return _OBJ


class _Cols:
    """Parallel arrays holding rows ``[lo, hi)`` of a buffer with free room at both ends."""

    __slots__ = ("arrs", "lo", "hi")

    def __init__(self, arrs: list, lo: int, hi: int):
        self.arrs = arrs
        self.lo = lo
        self.hi = hi

    @classmethod
    def build(cls, columns: list, dtypes: list) -> "_Cols":
        """From Python lists (one per column, equal lengths) with the given dtypes (None: int64)."""
        n = len(columns[0]) if columns else 0
        cap = max(8, 2 * n + 4)
        lo = (cap - n) // 2
        arrs = []
        for col, dt in zip(columns, dtypes):
            if dt is _OBJ:
                arrs.append(_obj_array(col, cap, lo))
            else:
                a = np.zeros(cap, dtype=dt or _I64)
                if n:
                    a[lo:lo + n] = col
                arrs.append(a)
        return cls(arrs, lo, lo + n)

    def __len__(self) -> int:
        return self.hi - self.lo

    def col(self, j: int) -> np.ndarray:
        return self.arrs[j][self.lo:self.hi]

    def insert(self, pos: int, row) -> int:
        """Insert ``row`` (one value per array) before row ``pos``; returns ``pos``."""
        lo, hi = self.lo, self.hi
        n = hi - lo
        cap = len(self.arrs[0])
        if lo > 0 and (pos <= n - pos or hi == cap):
            if pos:
                for a in self.arrs:
                    a[lo - 1:lo - 1 + pos] = a[lo:lo + pos]
            lo = self.lo = lo - 1
        elif hi < cap:
            if pos < n:
                for a in self.arrs:
                    a[lo + pos + 1:hi + 1] = a[lo + pos:hi]
            self.hi = hi + 1
        else:
            self._grow()
            return self.insert(pos, row)
        at = lo + pos
        for a, v in zip(self.arrs, row):
            a[at] = v
        return pos

    def _grow(self) -> None:
        n = len(self)
        cap = 2 * n + 8
        lo = (cap - n) // 2
        new = []
        for a in self.arrs:
            b = np.empty(cap, dtype=a.dtype) if a.dtype is _OBJ else np.zeros(cap, dtype=a.dtype)
            b[lo:lo + n] = a[self.lo:self.hi]
            new.append(b)
        self.arrs, self.lo, self.hi = new, lo, lo + n

    def drop_front(self, k: int) -> None:
        if k <= 0:
            return
        lo = self.lo
        for a in self.arrs:
            if a.dtype is _OBJ:
                a[lo:lo + k] = None
        self.lo = lo + k
        if self.lo == self.hi:                         # empty: re-centre
            self.lo = self.hi = len(self.arrs[0]) // 2

    def retype(self, j: int, dtype) -> None:
        """Convert array ``j`` to ``dtype`` (values kept exactly: int64/float64 -> Python objects)."""
        a = self.arrs[j]
        if a.dtype == dtype:
            return
        if dtype is _OBJ:
            self.arrs[j] = _obj_array(a[self.lo:self.hi].tolist(), len(a), self.lo)
        else:                                          # only while empty
            self.arrs[j] = np.zeros(len(a), dtype=dtype)


# ----------------------------------------------------------------------------- aggregations as columns

class _Handler:
    """One aggregation's window states as column(s). ``j``: its first array in the window ``_Cols``;
    ``rc``: its field's array in the record ``_Cols`` (None for count)."""

    nslots = 1
    nan_ok = True

    def __init__(self, agg: Aggregation, j: int, rc):
        self.agg = agg
        self.j = j
        self.rc = rc

    # --- typing
    def dtype_for(self, x):
        """The column dtype that holds this aggregation's state for a first value ``x``."""
        return _OBJ

    def fits(self, dtype, x) -> bool:
        return dtype is _OBJ

    def ensure(self, W: _Cols, x) -> None:
        a = W.arrs[self.j]
        if a.dtype is _OBJ or self.fits(a.dtype, x):
            return
        W.retype(self.j, self.dtype_for(x) if len(W) == 0 else _OBJ)

    # --- folding
    def grow(self, W: _Cols, i: int, j: int, x) -> None:
        """Add value ``x`` to windows ``[i, j)``."""
        a = W.arrs[self.j]
        add, xs = self.agg.add, [x]
        for p in range(W.lo + i, W.lo + j):
            a[p] = add(a[p], xs)

    def create(self, R: _Cols, ri: int, rj: int, ordered, x, with_x: bool, W: _Cols):
        """The state(s) of a new window holding records ``[ri, rj)`` (and ``x`` when ``with_x``), for
        the window columns ``W`` (retyped here if the state does not fit)."""
        xs = list(ordered(self.rc))
        if with_x:
            xs.append(x)
        a = self.agg
        return self._store(W, a.add(a.init(), xs))

    def _store(self, W: _Cols, state):
        dt = W.arrs[self.j].dtype
        if dt is not _OBJ and not self._state_fits(dt, state):
            W.retype(self.j, _OBJ)
        return (state,)

    def _state_fits(self, dtype, state) -> bool:
        if dtype is _I64:
            return type(state) is int and -_BIG <= state <= _BIG
        return type(state) is float and (self.nan_ok or state == state)

    # --- reading
    def states(self, W: _Cols) -> list:
        return W.col(self.j).tolist()

    def state_at(self, W: _Cols, p: int):
        return W.arrs[self.j][W.lo + p].item() if W.arrs[self.j].dtype is not _OBJ else W.arrs[self.j][W.lo + p]

    def arrays_from_states(self, states: list) -> tuple[list, list]:
        """``(columns, dtypes)`` for the window ``_Cols`` from stored states."""
        dt = _num_dtype(states, False, self.nan_ok) if self.dtype_for(0) is not _OBJ else _OBJ
        return [states], [dt or self.dtype_for(None)]


class _CountH(_Handler):
    def dtype_for(self, x):
        return _I64

    def fits(self, dtype, x):
        return True

    def ensure(self, W, x):
        pass

    def grow(self, W, i, j, x):
        W.arrs[self.j][W.lo + i:W.lo + j] += 1

    def create(self, R, ri, rj, ordered, x, with_x, W):
        return (rj - ri + (1 if with_x else 0),)

    def arrays_from_states(self, states):
        return [states], [_I64]


class _SumH(_Handler):
    def dtype_for(self, x):
        if type(x) is int and -_SMALL <= x <= _SMALL:
            return _I64
        if type(x) is float:
            return _F64
        return _OBJ if x is not None else _I64

    def fits(self, dtype, x):
        if dtype is _I64:
            return type(x) is int and -_SMALL <= x <= _SMALL
        if dtype is _F64:
            return type(x) is float
        return True

    def grow(self, W, i, j, x):
        a = W.arrs[self.j]
        if a.dtype is not _OBJ:
            a[W.lo + i:W.lo + j] += x
            return
        s = sum([x])                  # state + sum(xs), as agg.sum / agg.mean add
        for p in range(W.lo + i, W.lo + j):
            a[p] = a[p] + s

    def create(self, R, ri, rj, ordered, x, with_x, W):
        if W.arrs[self.j].dtype is _I64 and R.arrs[self.rc].dtype is _I64:
            total = int(R.arrs[self.rc][R.lo + ri:R.lo + rj].sum()) if rj > ri else 0
            return self._store(W, total + x if with_x else total)
        return _Handler.create(self, R, ri, rj, ordered, x, with_x, W)   # floats: arrival order, as Python

    def arrays_from_states(self, states):
        return [states], [_num_dtype(states, False, True) or _I64]


class _ExtremeH(_Handler):
    nan_ok = False
    _reduce = None

    def dtype_for(self, x):
        if type(x) is int and -_BIG <= x <= _BIG:
            return _I64
        if type(x) is float and x == x:
            return _F64
        return _OBJ if x is not None else _I64

    def fits(self, dtype, x):
        if dtype is _I64:
            return type(x) is int and -_BIG <= x <= _BIG
        if dtype is _F64:
            return type(x) is float and x == x
        return True

    def grow(self, W, i, j, x):
        a = W.arrs[self.j]
        if a.dtype is _OBJ:
            return _Handler.grow(self, W, i, j, x)
        v = a[W.lo + i:W.lo + j]
        self._ufunc(v, x, out=v)

    def create(self, R, ri, rj, ordered, x, with_x, W):
        dt = W.arrs[self.j].dtype
        if dt is not _OBJ and R.arrs[self.rc].dtype is dt and rj > ri:
            m = self._ufunc.reduce(R.arrs[self.rc][R.lo + ri:R.lo + rj]).item()
            if with_x:
                m = self.agg._py(m, x)
            return self._store(W, m)
        return _Handler.create(self, R, ri, rj, ordered, x, with_x, W)

    def arrays_from_states(self, states):
        return [states], [_num_dtype(states, False, False) or _I64]


class _MinH(_ExtremeH):
    _ufunc = np.minimum


class _MaxH(_ExtremeH):
    _ufunc = np.maximum


class _MeanH(_SumH):
    """State ``[sum, count]``: a sum column and a count column."""

    nslots = 2

    def grow(self, W, i, j, x):
        _SumH.grow(self, W, i, j, x)
        W.arrs[self.j + 1][W.lo + i:W.lo + j] += 1

    def create(self, R, ri, rj, ordered, x, with_x, W):
        n = rj - ri + (1 if with_x else 0)
        if W.arrs[self.j].dtype is _I64 and R.arrs[self.rc].dtype is _I64:
            total = int(R.arrs[self.rc][R.lo + ri:R.lo + rj].sum()) if rj > ri else 0
            s = total + x if with_x else total
        else:
            xs = list(ordered(self.rc))
            if with_x:
                xs.append(x)
            s = self.agg.add(self.agg.init(), xs)[0]
        return _Handler._store(self, W, s) + (n,)

    def states(self, W):
        return [[s, c] for s, c in zip(W.col(self.j).tolist(), W.col(self.j + 1).tolist())]

    def state_at(self, W, p):
        return [_Handler.state_at(self, W, p), int(W.arrs[self.j + 1][W.lo + p])]

    def arrays_from_states(self, states):
        sums = [s[0] for s in states]
        return [sums, [s[1] for s in states]], [_num_dtype(sums, False, True) or _I64, _I64]


class _FirstH(_Handler):
    def grow(self, W, i, j, x):
        pass                          # a window is never empty: its first value never changes

    def create(self, R, ri, rj, ordered, x, with_x, W):
        if rj > ri:                   # the record that arrived first
            p = R.lo + ri + int(R.arrs[1][R.lo + ri:R.lo + rj].argmin())
            v = R.arrs[self.rc][p]
            return ([v.item() if isinstance(v, np.generic) else v],)
        return ([x] if with_x else [],)


class _LastH(_Handler):
    def grow(self, W, i, j, x):
        if j > i:
            W.arrs[self.j][W.lo + i:W.lo + j].fill([x])

    def create(self, R, ri, rj, ordered, x, with_x, W):
        if with_x:                    # the current record arrived last
            return ([x],)
        if rj > ri:
            p = R.lo + ri + int(R.arrs[1][R.lo + ri:R.lo + rj].argmax())
            v = R.arrs[self.rc][p]
            return ([v.item() if isinstance(v, np.generic) else v],)
        return ([],)


_HANDLERS = {"count": _CountH, "sum": _SumH, "min": _MinH, "max": _MaxH, "mean": _MeanH,
             "first": _FirstH, "last": _LastH}


class SlidingLayout:
    """What every key's entry of one operator shares: the aggregations as columns, the record fields,
    and the ``Sliding`` window's rules as offsets (each rule is linear in time: ``rule(x) == x + rule(0)``,
    see ``streamproc.windows``), so the per-record code adds a constant instead of calling the spec."""

    def __init__(self, aggs: list, window, emit_final: bool = False, retention: int | None = None):
        self.aggs = aggs
        self.d = window.max_difference
        # the window [s, s + d] closes at stream time s + close_after; a record at t is late from t + close_after
        self.close_after = window.close_offset()
        self.open_from = window.first_open_start(0)       # at stream time st: open iff start >= st + open_from
        self.forget_after = window.forget_time(0)         # a record at ts can go at stream time ts + forget_after
        self.keep_for = window.expire_offset(retention)   # a closed window leaves the store at start + keep_for
        self.retains = window.retains(retention)          # ... later than when it closes
        self.fields: list = []             # record columns: one per distinct field (column_key)
        field_of: dict = {}
        self.handlers: list[_Handler] = []
        j = 3                              # window arrays: start, max_ts, dirty, then the aggregations'
        for a in aggs:
            rc = None
            if a.needs_column:
                ck = a.column_key()
                rc = field_of.get(ck)
                if rc is None:
                    rc = field_of[ck] = 2 + len(self.fields)    # record arrays: ts, seq, then the fields
                    self.fields.append(a)
            h = _HANDLERS.get(a.kind, _Handler)(a, j, rc)
            self.handlers.append(h)
            j += h.nslots
        # states built by user functions (reduce) are checked for the codec as they change; the others
        # hold record values, which are checked when the record arrives
        self.check_reduce = any(a.holds_values and a.kind not in _HANDLERS and a.kind != "collect" for a in aggs)
        self.track = not emit_final or self.check_reduce    # keep "changed since" flags (update; reduce checks)

    def field_dtype(self, x):
        if type(x) is int and -_SMALL <= x <= _SMALL:
            return _I64
        if type(x) is float and x == x:
            return _F64
        return _OBJ

    def field_fits(self, dtype, x) -> bool:
        if dtype is _I64:
            return type(x) is int and -_SMALL <= x <= _SMALL
        if dtype is _F64:
            return type(x) is float and x == x
        return True


BIG_WINDOWS = 24           # a key with more windows than this keeps them in numpy columns
BIG_RECORDS = 48


class SlidingEntry(Deferred):
    """The windows and records of one key (see the module doc): ``_Small`` (Python lists: cheapest for
    the few windows most keys have) or ``_Big`` (numpy columns: a record updates the windows that
    contain it in one call per column), which a small entry becomes when it grows past
    ``BIG_WINDOWS``/``BIG_RECORDS``. Not a store value itself: it is a ``state.Deferred``, put with
    ``Store.put_deferred``; the store takes ``state()`` when it needs it.

    Rows handed out (``changed``, ``close``, ``rows``) are ``(start, max_ts, [state per agg])``.
    """

    __slots__ = ("L", "seq", "closed",
                 "ws", "wm", "wst", "dirty", "rts", "rseq", "rx", "shared",     # _Small
                 "W", "R")                                                      # _Big

    @staticmethod
    def new(L: SlidingLayout) -> "SlidingEntry":
        e = _Small()
        e.L, e.seq, e.shared, e.closed = L, 0, False, []
        e.ws, e.wm, e.wst, e.dirty = [], [], [[] for _ in L.aggs], set()
        e.rts, e.rseq, e.rx = [], [], [[] for _ in L.fields]
        return e

    @staticmethod
    def load(L: SlidingLayout, value, extract) -> "SlidingEntry":
        """From a stored value: this layout, or the one streamproc wrote before (``[records, windows]``)."""
        closed = []
        if type(value) is list and len(value) in (8, 9) and type(value[0]) is int:
            _, seq, rts, rseq, rfields, starts, maxts, wstates = value[:8]
            if len(value) == 9:
                closed = value[8]           # closed windows kept for the retention (never changed in place)
        elif type(value) is list and len(value) == 2 and isinstance(value[1], dict):
            recs, wins = value                                   # [[ts, value]...], {start: [max_ts, *states]}
            rts = [r[0] for r in recs]
            rseq = list(range(len(recs)))
            seq = len(recs)
            rfields = [extract(a, [r[1] for r in recs]) for a in L.fields]
            starts = sorted(wins)
            maxts = [wins[s][0] for s in starts]
            wstates = [[wins[s][1 + i] for s in starts] for i in range(len(L.aggs))]
        else:
            raise StateError(f"a sliding-window store value has an unknown layout ({str(value)[:80]})")
        if len(rfields) != len(L.fields) or len(wstates) != len(L.aggs):
            raise StateError("a sliding-window store value does not match the operator's aggregations")
        if len(starts) <= BIG_WINDOWS and len(rts) <= BIG_RECORDS:
            e = _Small()                   # the value's own lists, copied only before a change
            e.L, e.seq, e.shared, e.closed = L, seq, True, closed
            e.ws, e.wm, e.wst, e.dirty = starts, maxts, wstates, set()
            e.rts, e.rseq, e.rx = rts, rseq, rfields
            return e
        e = _Big.build(L, seq, rts, rseq, rfields, starts, maxts, wstates, ())
        e.closed = closed
        return e

    def due_of(self, first_start, last_ts) -> int:
        """Smallest stream time at which the key has something to do: its first window closes
        (``start + close_after``), its last record can go (``ts + forget_after``) or its first kept
        closed window expires (``start + keep_for``); see :class:`SlidingLayout`."""
        L = self.L
        if first_start is None:
            due = last_ts + L.forget_after if last_ts is not None else None
        else:
            due = first_start + L.close_after
            if last_ts is not None and last_ts + L.forget_after < due:
                due = last_ts + L.forget_after
        closed = self.closed
        if closed:
            c = closed[0][0] + L.keep_for
            if due is None or c < due:
                due = c
        return 0 if due is None else due

    def _keep(self, rows: list, st: int) -> None:
        """Keep the windows ``rows`` that just closed (``(start, max_ts, states)``, by start) until they
        expire (a new list: the old one may be shared with a stored value)."""
        keep_for = self.L.keep_for
        kept = [[s, m, list(states)] for s, m, states in rows if s + keep_for > st]
        if kept:
            self.closed = self.closed + kept

    def _expire(self, st: int) -> None:
        """Drop the kept closed windows that expired at stream time ``st``."""
        closed = self.closed
        if closed and closed[0][0] + self.L.keep_for <= st:
            keep_for = self.L.keep_for
            self.closed = [r for r in closed if r[0] + keep_for > st]

    def closed_rows(self) -> list:
        """The closed windows kept for the store's retention, ``(start, max_ts, states)`` by start."""
        return [(s, m, states) for s, m, states in self.closed]


class _Small(SlidingEntry):
    """Python lists, by column: windows ``ws`` (starts, sorted), ``wm`` (max ts), ``wst`` (per
    aggregation, the windows' states), ``dirty`` (starts changed since ``changed()``); records
    ``rts`` (sorted), ``rseq``, ``rx`` (per field, the records' values).

    The stored value is made of these very lists (``state()``: nothing copied at the checkpoint,
    where a cold key would pay for it), and an entry loaded from the store uses the value's lists:
    they are ``shared``. ``add`` copies them before it changes anything (copy on write); ``close``
    and ``prune`` never change a list in place (they keep the remaining slice), so a backend that
    keeps the value as it is (the memory backend) never sees a change that was not checkpointed."""

    __slots__ = ()

    def state(self) -> list:
        self.shared = True
        v = [self.due(), self.seq, self.rts, self.rseq, self.rx, self.ws, self.wm, self.wst]
        if self.closed:
            v.append(self.closed)
        return v

    def _own(self) -> None:
        self.rts, self.rseq, self.ws, self.wm = self.rts[:], self.rseq[:], self.ws[:], self.wm[:]
        self.rx = [c[:] for c in self.rx]
        self.wst = [c[:] for c in self.wst]
        self.shared = False

    def due(self) -> int:
        return self.due_of(self.ws[0] if self.ws else None, self.rts[-1] if self.rts else None)

    def is_empty(self) -> bool:
        return not self.ws and not self.rts and not self.closed

    def add(self, t: int, st: int, xs: list) -> bool:
        L = self.L
        if st >= t + L.close_after:                      # late: even [t, t+d] is closed (Sliding.is_late)
            return False
        if self.shared:
            self._own()
        d = L.d
        lo_open = st + L.open_from                       # a window is open iff its start >= lo_open
        rts, ws = self.rts, self.ws
        r_left, r_at = bisect_left(rts, t - d), bisect_left(rts, t)
        r_after, r_rend = bisect_right(rts, t), bisect_left(rts, t + 2 + d)
        p = rts[r_at - 1] if r_at else None
        n = len(ws)
        i, j = bisect_left(ws, t - d if t - d > lo_open else lo_open), bisect_left(ws, t + 1)
        k = bisect_left(ws, t - d)
        has_left = k < n and ws[k] == t - d
        has_right = j < n and ws[j] == t + 1
        if p is not None:
            k = bisect_left(ws, p + 1)
            has_prev_right = k < n and ws[k] == p + 1
        else:
            has_prev_right = True
        if i < j:                                        # every open window containing t
            self._grow(i, j, t, xs)
        if not has_left and t - d >= lo_open:
            self._create(t - d, r_left, r_after, t, xs, True)
        if not has_right and r_rend > r_after:
            self._create(t + 1, r_after, r_rend, None, xs, False)
        if not has_prev_right and p >= t - d - 1 and p + 1 >= lo_open and p + 1 != t - d:
            self._create(p + 1, bisect_left(rts, p + 1), bisect_left(rts, p + 2 + d), t, xs, True)
        rts.insert(r_after, t)
        self.rseq.insert(r_after, self.seq)
        for col, x in zip(self.rx, xs):
            col.insert(r_after, x)
        self.seq += 1
        if len(ws) > BIG_WINDOWS or len(rts) > BIG_RECORDS:
            self._to_big()
        return True

    def _grow(self, i: int, j: int, t: int, xs: list) -> None:
        """Add the record ``t``/``xs`` to windows ``[i, j)``."""
        L = self.L
        wm = self.wm
        for q in range(i, j):
            if wm[q] < t:
                wm[q] = t
        for h, col in zip(L.handlers, self.wst):
            add, vals = h.agg.add, [xs[h.rc - 2] if h.rc is not None else None]
            for q in range(i, j):
                col[q] = add(col[q], vals)
        if L.track:
            self.dirty.update(self.ws[i:j])

    def _create(self, start, ri, rj, t, xs, with_x) -> None:
        L = self.L
        rseq = self.rseq
        if rj - ri > 1 and any(rseq[q] > rseq[q + 1] for q in range(ri, rj - 1)):
            idx = sorted(range(ri, rj), key=rseq.__getitem__)     # arrival order
        else:
            idx = None                                              # time order is arrival order
        pos = bisect_left(self.ws, start)
        n = rj - ri + (1 if with_x else 0)
        for h, col in zip(L.handlers, self.wst):
            a = h.agg
            if h.rc is None:
                vals = [None] * n
            else:
                f = h.rc - 2
                rc = self.rx[f]
                vals = rc[ri:rj] if idx is None else [rc[q] for q in idx]
                if with_x:
                    vals.append(xs[f])
            col.insert(pos, a.add(a.init(), vals))
        mx = self.rts[rj - 1] if rj > ri else None
        if with_x and (mx is None or t > mx):
            mx = t
        self.ws.insert(pos, start)
        self.wm.insert(pos, mx)
        if L.track:
            self.dirty.add(start)

    def _to_big(self) -> None:
        big = _Big.build(self.L, self.seq, self.rts, self.rseq, self.rx, self.ws, self.wm, self.wst, self.dirty)
        self.__class__ = _Big                  # same slots: the entry changes representation in place
        self.W, self.R = big.W, big.R
        self.ws = self.wm = self.wst = self.dirty = self.rts = self.rseq = self.rx = None

    def changed(self) -> list:
        dirty = self.dirty
        if not dirty:
            return []
        ws = self.ws
        out = []
        for s in sorted(dirty):
            q = bisect_left(ws, s)
            if q < len(ws) and ws[q] == s:
                out.append((s, self.wm[q], [c[q] for c in self.wst]))
        dirty.clear()
        return out

    def close(self, st: int, rows: bool) -> list:
        L = self.L
        ws = self.ws
        if not ws or ws[0] + L.close_after > st:         # the first window is still open
            return []
        n = bisect_right(ws, st - L.close_after)         # the windows with start + close_after <= st
        out = self._rows(0, n) if rows or L.retains else []
        if L.retains:
            self._keep(out, st)
            if not rows:
                out = []
        if self.dirty:
            self.dirty.difference_update(ws[:n])
        if n == len(ws):                               # new lists: the old ones may be shared
            self.ws, self.wm, self.wst = [], [], [[] for _ in self.wst]
        else:
            self.ws, self.wm = ws[n:], self.wm[n:]
            self.wst = [c[n:] for c in self.wst]
        return out

    def _rows(self, lo: int, hi: int) -> list:
        if hi - lo == 1:
            return [(self.ws[lo], self.wm[lo], [c[lo] for c in self.wst])]
        return [(s, m, list(states)) for s, m, states in
                zip(self.ws[lo:hi], self.wm[lo:hi], zip(*[c[lo:hi] for c in self.wst]))]

    def prune(self, st: int) -> None:
        self._expire(st)
        rts = self.rts
        last_gone = st - self.L.forget_after               # records with ts + forget_after <= st can go
        if rts and rts[0] <= last_gone:
            cut = bisect_right(rts, last_gone)
            self.rts, self.rseq = rts[cut:], self.rseq[cut:]     # new lists: the old ones may be shared
            self.rx = [c[cut:] for c in self.rx]

    def rows(self) -> list:
        return self._rows(0, len(self.ws))


class _Big(SlidingEntry):
    """numpy columns: ``W`` windows (start, max_ts, dirty, then the aggregations' arrays), ``R``
    records (ts, seq, then one array per field)."""

    __slots__ = ()

    @staticmethod
    def build(L, seq, rts, rseq, rfields, starts, maxts, wstates, dirty) -> "_Big":
        flags = [s in dirty for s in starts] if dirty else [False] * len(starts)
        wcols, wdt = [list(starts), list(maxts), flags], [_I64, _I64, np.dtype(bool)]
        for h, states in zip(L.handlers, wstates):
            cols, dts = h.arrays_from_states(list(states))
            wcols += cols
            wdt += dts
        rcols, rdt = [list(rts), list(rseq)], [_I64, _I64]
        for vals in rfields:
            vals = list(vals)
            rcols.append(vals)
            rdt.append((_num_dtype(vals, True, False) or _I64) if vals else _I64)
        e = _Big()
        e.L, e.seq, e.closed = L, seq, []
        e.W, e.R = _Cols.build(wcols, wdt), _Cols.build(rcols, rdt)
        return e

    def state(self) -> list:
        W, R, L = self.W, self.R, self.L
        v = [self.due(), self.seq, R.col(0).tolist(), R.col(1).tolist(),
             [R.col(2 + i).tolist() for i in range(len(L.fields))],
             W.col(0).tolist(), W.col(1).tolist(), [h.states(W) for h in L.handlers]]
        if self.closed:
            v.append(self.closed)
        return v

    def due(self) -> int:
        W, R = self.W, self.R
        return self.due_of(int(W.arrs[0][W.lo]) if len(W) else None, int(R.arrs[0][R.hi - 1]) if len(R) else None)

    def is_empty(self) -> bool:
        return len(self.W) == 0 and len(self.R) == 0 and not self.closed

    def add(self, t: int, st: int, xs: list) -> bool:
        L = self.L
        if st >= t + L.close_after:                   # late: even [t, t+d] is closed (Sliding.is_late)
            return False
        d = L.d
        W, R = self.W, self.R
        for h in L.handlers:
            if h.rc is not None:
                h.ensure(W, xs[h.rc - 2])
        for i, x in enumerate(xs):
            a = R.arrs[2 + i]
            if a.dtype is not _OBJ and not L.field_fits(a.dtype, x):
                R.retype(2 + i, L.field_dtype(x) if len(R) == 0 else _OBJ)
        lo_open = st + L.open_from                    # a window is open iff its start >= lo_open
        rts = R.col(0)
        r_left, r_at, r_after, r_rend = rts.searchsorted([t - d, t, t + 1, t + 2 + d]).tolist()
        p = int(rts[r_at - 1]) if r_at > 0 else None  # the record just before t
        ws = W.col(0)
        probes = [max(t - d, lo_open), t - d, t + 1] + ([p + 1] if p is not None else [])
        found = ws.searchsorted(probes).tolist()
        i, j = found[0], found[2]
        n = len(ws)
        has_left = found[1] < n and ws[found[1]] == t - d
        has_right = j < n and ws[j] == t + 1
        has_prev_right = p is None or (found[3] < n and ws[found[3]] == p + 1)
        if i < j:                                     # every open window containing t
            self._grow(i, j, t, xs)
        if not has_left and t - d >= lo_open:         # left window [t-d, t]: the stored records in it, and t
            self._create(t - d, r_left, r_after, t, xs, True)
        if not has_right and r_rend > r_after:        # right window [t+1, t+1+d] when records follow t
            self._create(t + 1, r_after, r_rend, None, xs, False)
        if not has_prev_right and p >= t - d - 1 and p + 1 >= lo_open and p + 1 != t - d:
            # the right window of the record before t: t is the first record after it
            pr_lo, pr_hi = R.col(0).searchsorted([p + 1, p + 2 + d]).tolist()
            self._create(p + 1, pr_lo, pr_hi, t, xs, True)
        R.insert(r_after, [t, self.seq] + list(xs))
        self.seq += 1
        return True

    def _grow(self, i: int, j: int, t: int, xs: list) -> None:
        """Add the record ``t``/``xs`` to windows ``[i, j)``: one numpy call per column."""
        W, L = self.W, self.L
        lo = W.lo
        mx = W.arrs[1][lo + i:lo + j]
        np.maximum(mx, t, out=mx)
        if L.track:
            W.arrs[2][lo + i:lo + j] = True
        for h in L.handlers:
            h.grow(W, i, j, xs[h.rc - 2] if h.rc is not None else None)

    def _create(self, start: int, ri: int, rj: int, t, xs: list, with_x: bool) -> None:
        """Insert window ``[start, start+d]`` holding stored records ``[ri, rj)`` (and the current
        record ``t``/``xs`` when ``with_x``)."""
        W, R, L = self.W, self.R, self.L
        order = None

        def ordered(rc):                          # the records' values of field rc in arrival order
            nonlocal order
            if order is None:
                order = np.argsort(R.arrs[1][R.lo + ri:R.lo + rj], kind="stable")
            return R.arrs[rc][R.lo + ri:R.lo + rj][order].tolist()

        mx = int(R.arrs[0][R.lo + rj - 1]) if rj > ri else None
        if with_x:
            mx = t if mx is None or t > mx else mx
        row = [start, mx, L.track]
        for h in L.handlers:
            row += h.create(R, ri, rj, ordered, xs[h.rc - 2] if h.rc is not None else None, with_x, W)
        W.insert(int(W.col(0).searchsorted(start)), row)

    def changed(self) -> list:
        W = self.W
        dirty = W.col(2)
        idx = np.flatnonzero(dirty).tolist()
        if not idx:
            return []
        dirty[:] = False
        starts, maxts = W.col(0), W.col(1)
        return [(int(starts[p]), int(maxts[p]), [h.state_at(W, p) for h in self.L.handlers]) for p in idx]

    def close(self, st: int, rows: bool) -> list:
        L = self.L
        W = self.W
        if not len(W) or int(W.arrs[0][W.lo]) + L.close_after > st:     # the first window is still open
            return []
        n = int(W.col(0).searchsorted(st - L.close_after, side="right"))  # start + close_after <= st
        out = self._rows(0, n) if rows or L.retains else []
        if L.retains:
            self._keep(out, st)
            if not rows:
                out = []
        W.drop_front(n)
        return out

    def _rows(self, lo: int, hi: int) -> list:
        W, L = self.W, self.L
        starts = W.col(0)[lo:hi].tolist()
        maxts = W.col(1)[lo:hi].tolist()
        sub = _Cols(W.arrs, W.lo + lo, W.lo + hi)
        cols = [h.states(sub) for h in L.handlers]
        return [(s, m, [c[i] for c in cols]) for i, (s, m) in enumerate(zip(starts, maxts))]

    def rows(self) -> list:
        return self._rows(0, len(self.W))

    def prune(self, st: int) -> None:
        """Drop records no window that can still open contains (nor needs as its right window's
        left edge): ``Sliding.forget_time(ts) <= st``; and the kept closed windows that expired."""
        self._expire(st)
        R = self.R
        if not len(R):
            return
        last_gone = st - self.L.forget_after           # records with ts + forget_after <= st can go
        if int(R.arrs[0][R.lo]) > last_gone:
            return
        R.drop_front(int(R.col(0).searchsorted(last_gone, side="right")))


def check_rows(rows) -> None:
    """Raise ``CodecError`` if a window state in ``rows`` cannot be stored (states built by reduce)."""
    for _, _, states in rows:
        check_value(states)
