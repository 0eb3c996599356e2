"""Shared machinery of the aggregate operators: key codes, vectorised folds, open windows held as
columns (``WindowColumns``), the close index and the sweep of the backend's time index."""
from __future__ import annotations

import heapq
from collections import deque
from itertools import repeat

import numpy as np

from ..errors import StreamprocError
from ..state import Deferred
from ..state.codec import encode_key

_VECTORISED = {"count", "sum", "min", "max", "mean"}


class KeyCodes(dict):
    """Dense int codes for keys, kept across batches (a hit is one C-level dict lookup).

    Codes only need to agree within one batch, so the table is simply cleared when it grows
    past ``limit`` distinct keys: memory stays bounded on high-cardinality keys.
    """

    limit = 1 << 20

    @property
    def full(self) -> bool:
        """The next :meth:`codes` starts the table again (codes given so far mean nothing after it)."""
        return len(self) > self.limit

    def __missing__(self, k):
        encode_key(k)              # a key the state cannot store fails here, once per new key
        v = self[k] = len(self)
        return v

    def codes(self, keys: list) -> np.ndarray:
        if len(self) > self.limit:
            self.clear()
        try:
            return np.fromiter(map(self.__getitem__, keys), dtype=np.int64, count=len(keys))
        except TypeError as e:
            bad = next(k for k in keys if not _hashable(k))
            raise StreamprocError(
                f"group key {bad!r} is not hashable ({e}); group_by must return a hashable key "
                f"such as a str, int or tuple") from None


def _hashable(k) -> bool:
    try:
        hash(k)
        return True
    except TypeError:
        return False


def group_sorted(comp: np.ndarray, stable: bool = True):
    """Sort positions by group id (``stable``: arrival order kept inside each group).

    Returns ``(order, starts)``: ``order`` are positions sorted by group, ``starts`` the offsets
    in ``order`` where each group begins.
    """
    order = np.argsort(comp, kind="stable" if stable else "quicksort")
    sc = comp[order]
    if len(sc) == 0:
        return order, np.empty(0, dtype=np.int64)
    flags = np.empty(len(sc), dtype=bool)
    flags[0] = True
    np.not_equal(sc[1:], sc[:-1], out=flags[1:])
    return order, np.flatnonzero(flags)


class GroupValues(list):
    """Per group, the values to fold in arrival order (for aggregations numpy cannot fold)."""


def fold_groups(aggs: list, values: list, rec: np.ndarray, starts: np.ndarray) -> list:
    """Per aggregation, what the batch contributes to each group.

    ``rec`` are record indices into ``values`` sorted by group, ``starts`` where each group
    begins in ``rec``. Built-in numeric aggregations fold each group with numpy into a partial
    state (merged later with ``combine``); every other aggregation gets ``GroupValues``: the
    group's values in arrival order, folded later from the stored state with ``add`` (so
    ``reduce`` sees one sequential fold whatever the batching).
    """
    columns: dict = {}
    out = []
    sorted_rec = None
    for a in aggs:
        if not a.needs_column:
            out.append(a.partials(rec, starts))
            continue
        ck = a.column_key()
        col = columns.get(ck)
        if col is None:
            col = columns[ck] = a.extract(values)
        partial = None
        if a.kind in _VECTORISED:
            try:
                arr = np.asarray(col)
            except (OverflowError, ValueError):
                arr = None
            if arr is not None and arr.ndim == 1 and arr.dtype.kind in "iuf":
                partial = a.partials(arr[rec], starts)
        if partial is None:
            if sorted_rec is None:
                bounds = np.append(starts, len(rec)).tolist()
                sorted_rec = rec.tolist()
            vals = [col[i] for i in sorted_rec]
            partial = GroupValues(vals[bounds[g]:bounds[g + 1]] for g in range(len(starts)))
        out.append(partial)
    return out


class GroupFoldError(Exception):
    """A user function raised while folding group ``index``."""

    def __init__(self, index: int, cause: Exception):
        super().__init__(str(cause))
        self.index = index
        self.cause = cause


def _failing_group(add, init, j, olds, groups) -> int:
    for i, (o, vs) in enumerate(zip(olds, groups)):
        try:
            add(init() if o is None else o[j], vs)
        except Exception:  # noqa: BLE001
            return i
    return -1


_INT64_SAFE = 1 << 62


def _fits_int64(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype.kind not in "iu" or b.dtype.kind not in "iu" or not len(a):
        return True
    return int(np.abs(a).max()) + int(np.abs(b).max()) < _INT64_SAFE


def merge_states(aggs: list, maxts: np.ndarray, partials: list, olds: list) -> list[tuple]:
    """New states ``(max_ts, *agg_states)`` per group from the stored states ``olds`` (None for a
    group seen for the first time) and what ``fold_groups`` made of the batch.

    Columns of plain numbers merge with one numpy call each; other states merge one by one.
    """
    cols = [maxts]
    for j, (a, p) in enumerate(zip(aggs, partials), 1):
        if isinstance(p, GroupValues):          # sequential fold from the stored state
            cols.append(_fold_from_stored(a, j, olds, p))
        else:
            cols.append(p)
    exist = [i for i, o in enumerate(olds) if o is not None]
    if exist:
        rows = [olds[i] for i in exist]
        ufuncs = [np.maximum] + [a.combine_ufunc for a in aggs]
        combs = [None] + [a.combine for a in aggs]
        merged_cols = []
        for j, col in enumerate(cols):
            if j and isinstance(partials[j - 1], GroupValues):
                merged_cols.append(col)         # already folded from the stored state
                continue
            merged_cols.append(_merge_column(col, [r[j] for r in rows], exist, ufuncs[j], combs[j]))
        cols = merged_cols
    return list(zip(*[c.tolist() if isinstance(c, np.ndarray) else c for c in cols]))


def _fold_from_stored(a, j: int, olds: list, groups: "GroupValues") -> list:
    """Aggregation ``a`` (state ``j`` of a stored row) folded over each group's values, from the stored
    state (or ``init()`` for a new group)."""
    add, init = a.add, a.init
    try:
        return [add(init() if o is None else o[j], vs) for o, vs in zip(olds, groups)]
    except Exception as e:  # noqa: BLE001 - say which group's fold failed
        raise GroupFoldError(_failing_group(add, init, j, olds, groups), e) from e


def _merge_column(col, old: list, exist: list, uf, combine):
    """Column ``col`` (one state per group) with the stored states ``old`` of the groups ``exist``
    merged in: one numpy call ``uf`` when both are plain numbers, else ``combine`` one by one."""
    if uf is not None and isinstance(col, np.ndarray):
        try:
            old_arr = np.asarray(old)
        except (OverflowError, ValueError):
            old_arr = None
        if old_arr is not None and old_arr.dtype.kind in "iuf" and _fits_int64(old_arr, col):
            m = uf(old_arr, col[exist])
            col = col.astype(np.result_type(col, m), copy=True)
            col[exist] = m
            return col
    col = col.tolist() if isinstance(col, np.ndarray) else list(col)
    for i, o in zip(exist, old):
        col[i] = combine(o, col[i])
    return col


class CloseIndex:
    """Open windows ordered by the stream time at which they close (given by the operator, from
    ``WindowSpec.close_time``: this index only orders them)."""

    def __init__(self):
        self._buckets: dict[int, dict] = {}
        self._heap: list[int] = []

    def add(self, close_time: int, wkey) -> None:
        b = self._buckets.get(close_time)
        if b is None:
            b = self._buckets[close_time] = {}
            heapq.heappush(self._heap, close_time)
        b[wkey] = None

    def add_many(self, close_times: np.ndarray, wkeys: list) -> None:
        """``add`` for many windows at once (``close_times`` an int array, one per key): one bucket
        update per distinct close time."""
        n = len(wkeys)
        if n == 0:
            return
        if n == 1 or close_times[0] == close_times[-1] and (close_times == close_times[0]).all():
            self._bucket(int(close_times[0])).update(dict.fromkeys(wkeys))
            return
        order = np.argsort(close_times, kind="stable")
        ct = close_times[order]
        cuts = np.flatnonzero(ct[1:] != ct[:-1]) + 1
        ks = [wkeys[i] for i in order.tolist()]
        bounds = [0] + cuts.tolist() + [n]
        for a, b, t in zip(bounds, bounds[1:], ct[bounds[:-1]].tolist()):
            self._bucket(t).update(dict.fromkeys(ks[a:b]))

    def _bucket(self, close_time: int) -> dict:
        b = self._buckets.get(close_time)
        if b is None:
            b = self._buckets[close_time] = {}
            heapq.heappush(self._heap, close_time)
        return b

    def remove(self, close_time: int, wkey) -> None:
        b = self._buckets.get(close_time)
        if b is not None:
            b.pop(wkey, None)

    def pop_closed(self, stream_time: int) -> list:
        """Every window whose close time is <= ``stream_time``, earliest first; removed from the index."""
        out = []
        heap = self._heap
        while heap and heap[0] <= stream_time:
            out.extend(self._buckets.pop(heapq.heappop(heap)))
        return out

    def __len__(self):
        return sum(len(b) for b in self._buckets.values())


class BackendSweep:
    """The part of a store's backend time index (``Backend.index_range``) an operator still has to visit.

    Built with the operator, it costs one lookup (``index_max``): nothing is read from the store.
    What the backend held then is visited as stream time passes it, by bounded range scans
    (``due(bound)``: the keys with time in ``(last bound, bound]``); everything the operator writes
    afterwards it indexes itself (``CloseIndex``), so once the sweep has passed the largest time
    stored at construction, the backend is never scanned again. ``indexed`` is False when the
    backend keeps no time index: the operator must then index the store by reading it.
    """

    __slots__ = ("store", "indexed", "swept", "upto")

    def __init__(self, store, kind: str):
        """``kind``: the store's ``StoreKind`` (the backend keeps a time index for the windowed kinds)."""
        self.store = store
        self.indexed = store.declare_index(kind)
        self.swept = None
        self.upto = store.index_max() if self.indexed else None

    def due(self, bound: int) -> list:
        """Stored keys with time ``<= bound`` not returned before (nor deleted by the write cache)."""
        upto = self.upto
        if upto is None:
            return []
        hi = bound if bound < upto else upto
        if self.swept is not None and hi <= self.swept:
            return []
        keys = self.store.index_range(self.swept, hi)
        self.swept = hi
        if hi >= upto:
            self.upto = None
        return keys


class _Cell(Deferred):
    """One key's state in a :class:`WindowColumns` window, as the store sees it: read from the columns when
    the store is read or checkpointed (once per checkpoint), which also tells the window that the next
    change of the key must be put again."""

    __slots__ = ("win", "i")

    def __init__(self, win: "_Window", i: int):
        self.win = win
        self.i = i

    def state(self):
        w, i = self.win, self.i
        w.dirty[i] = False
        return (int(w.maxts[i]), *[int(c[i]) for c in w.cols])


class _Window:
    """The keys of one window start held as columns: key code (``KeyCodes``) -> slot, slot -> store key."""

    __slots__ = ("slot", "wkeys", "cells", "maxts", "cols", "dirty")

    def __init__(self, fields: int, capacity: int = 64):
        self.slot: dict = {}              # key code -> slot
        self.wkeys: list = []             # slot -> store key
        self.cells: list = []             # slot -> _Cell
        self.maxts = np.empty(capacity, dtype=np.int64)
        self.cols = [np.empty(capacity, dtype=np.int64) for _ in range(fields)]
        self.dirty = np.zeros(capacity, dtype=bool)

    def grow(self, n: int) -> None:
        cap = len(self.maxts)
        if n <= cap:
            return
        while cap < n:
            cap *= 2
        self.maxts = _grown(self.maxts, cap)
        self.cols = [_grown(c, cap) for c in self.cols]
        self.dirty = _grown(self.dirty, cap, False)

    def add(self, codes: list, wkeys: list) -> range:
        """New slots for keys ``codes`` (store keys ``wkeys``), returned; their columns are to be set."""
        n = len(self.wkeys)
        new = range(n, n + len(wkeys))
        self.grow(new.stop)
        self.slot.update(zip(codes, new))
        self.wkeys += wkeys
        self.cells += map(_Cell, repeat(self), new)
        self.dirty[n:new.stop] = False
        return new


def _grown(a: np.ndarray, cap: int, fill=0) -> np.ndarray:
    out = np.full(cap, fill, dtype=a.dtype)
    out[:len(a)] = a
    return out


_I64_MIN, _I64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)
#: what each columnar kind starts a new group's column at, and how it merges a batch's partials into it
_START = {"count": 0, "sum": 0, "min": _I64_MAX, "max": _I64_MIN}
_PARTIAL = {"sum": np.add, "min": np.minimum, "max": np.maximum}


class WindowColumns:
    """The open windows of a tumbling/hopping aggregation whose aggregations all keep one number
    (``Aggregation.columnar``: count, sum, min, max) of integers, held as int64 columns: per window
    start one array per state field, one slot per key. A batch folds into them with a few numpy calls
    per window, whatever the number of keys; no per-key Python object is made for a key already held.

    The store still holds every window: each key's slot is a ``Deferred`` value (``_Cell``), put once per
    checkpoint (again after the checkpoint took it) and read from the columns when the store is read or
    checkpointed, so the changelog, the backend and every reader see exactly the state the plain fold
    (``fold_groups``/``merge_states``) makes: ``(max_ts, *agg_states)`` of Python ints.

    :meth:`fold` takes a batch only when every column is int64 and no sum can leave the int64-safe range
    (and every stored state it meets is such a tuple); otherwise it returns None having changed nothing,
    and the operator gives the windows back to the store (:meth:`evict`) and folds the plain way from then
    on. Windows are dropped when they close (:meth:`closed`).
    """

    def __init__(self, aggs: list, store):
        self.kinds = [a.columnar for a in aggs]
        self.aggs = aggs
        self.store = store
        self.windows: dict[int, _Window] = {}

    @staticmethod
    def supports(aggs: list) -> bool:
        return all(a.columnar is not None for a in aggs)

    def _columns(self, values: list) -> list | None:
        """Per aggregation, its column of ``values`` as int64 (None for count), or None when one is not
        integers in the safe range."""
        cols, by_key = [], {}
        for a, kind in zip(self.aggs, self.kinds):
            if kind == "count":
                cols.append(None)
                continue
            ck = a.column_key()
            arr = by_key.get(ck)
            if arr is None:
                col = a.extract(values)                # a user function may raise: before anything changed
                try:
                    arr = np.asarray(col)
                except (OverflowError, ValueError):
                    return None
                if arr.ndim != 1 or arr.dtype.kind not in "iu":
                    return None
                if len(arr) and max(-int(arr.min()), int(arr.max())) * len(arr) >= _INT64_SAFE:
                    return None
                by_key[ck] = arr = arr.astype(np.int64, copy=False)
            cols.append(arr)
        return cols

    def fold(self, b, codes: np.ndarray, rec: np.ndarray, wstart: np.ndarray, adv: int) -> list | None:
        """Fold records ``rec`` of ``b`` (key codes ``codes`` of the whole batch) into windows ``wstart``.
        Returns the windows created, ``(key, start)``, each start's in key code order (the order the plain
        fold gives the windows of one start, i.e. of one close time), or None when the batch cannot be
        folded as columns (nothing was changed)."""
        cols = self._columns(b.values)
        if cols is None:
            return None
        codes = codes[rec]
        lo, hi = int(wstart.min()), int(wstart.max())
        comp = codes * ((hi - lo) // adv + 1) + (wstart - lo) // adv
        order, starts = group_sorted(comp, stable=False)
        rs = rec[order]
        gcode, gstart, first = codes[order][starts], wstart[order][starts], rs[starts]   # per group
        maxts = np.maximum.reduceat(b.timestamps[rs], starts)
        partials = [np.diff(np.append(starts, len(rs))) if c is None else _PARTIAL[k].reduceat(c[rs], starts)
                    for c, k in zip(cols, self.kinds)]
        parts = []                                     # per window: (group indices or None: all, window, slots, created)
        for start, gi in _by_start(gstart, lo, hi, adv):
            found = self._slots(b, start, gcode if gi is None else gcode[gi], first if gi is None else first[gi])
            if found is None:
                return None
            parts.append((gi,) + found)
        if not all(self._fits(win, slots, partials if gi is None else [p[gi] for p in partials])
                   for gi, win, slots, _ in parts):
            return None
        created = []
        for gi, win, slots, new in parts:               # everything checked: only now anything changes
            self._merge(win, slots, maxts if gi is None else maxts[gi],
                        partials if gi is None else [p[gi] for p in partials])
            created += new
        return created

    def _fits(self, win: "_Window", slots: np.ndarray, partials: list) -> bool:
        """No sum of window ``win`` leaves the int64-safe range when ``partials`` are added at ``slots``."""
        return all(k != "sum" or int(np.abs(c[slots]).max()) + int(np.abs(p).max()) < _INT64_SAFE
                   for c, k, p in zip(win.cols, self.kinds, partials))

    def _slots(self, b, start: int, gcode: np.ndarray, first: np.ndarray):
        """``(window, slots, created)`` for the groups with key codes ``gcode`` in window ``start`` (``first``:
        a record of each): slots of keys met before, new slots loaded from the store for the others (a key
        with no stored state is a window ``created``: ``[(key, start)]``). None when a stored state
        is not one this class can hold."""
        win = self.windows.get(start)
        if win is None:
            win = self.windows[start] = _Window(len(self.kinds))
        codes_l = gcode.tolist()
        slots = np.fromiter(map(win.slot.get, codes_l, repeat(-1)), dtype=np.int64, count=len(codes_l))
        miss = np.flatnonzero(slots < 0)
        if not len(miss):
            return win, slots, []
        mcodes = gcode[miss].tolist()
        wks = list(zip(map(b.keys.__getitem__, first[miss].tolist()), repeat(start)))
        olds = self.store.get_many(wks)
        stored = [] if olds.count(None) == len(olds) else [j for j, o in enumerate(olds) if o is not None]
        width = 1 + len(self.kinds)
        if stored and not all(_int_state(olds[j], width) for j in stored):
            return None
        new = win.add(mcodes, wks)
        win.maxts[new.start:new.stop] = _I64_MIN
        for c, k in zip(win.cols, self.kinds):
            c[new.start:new.stop] = _START[k]
        if stored:
            at = np.asarray(stored, dtype=np.int64) + new.start
            table = np.asarray([olds[j] for j in stored], dtype=np.int64)
            win.maxts[at] = table[:, 0]
            for j, c in enumerate(win.cols, 1):
                c[at] = table[:, j]
            created = [wk for wk, o in zip(wks, olds) if o is None]
        else:
            created = wks
        slots[miss] = np.arange(new.start, new.stop, dtype=np.int64)
        return win, slots, created

    def _merge(self, win: _Window, slots: np.ndarray, maxts: np.ndarray, partials: list) -> None:
        np.maximum(win.maxts[slots], maxts, out=maxts)
        win.maxts[slots] = maxts
        for c, k, p in zip(win.cols, self.kinds, partials):
            c[slots] = (c[slots] + p) if k in ("count", "sum") else _PARTIAL[k](c[slots], p)
        fresh = slots[~win.dirty[slots]]
        if len(fresh):
            win.dirty[fresh] = True
            fl = fresh.tolist()
            deque(map(self.store.put_deferred, [win.wkeys[i] for i in fl], [win.cells[i] for i in fl]), 0)

    def states(self, wkeys: list) -> list:
        """The states of store keys ``wkeys`` held here (None for the others), read from the columns at once.
        The usual ``wkeys``, closing windows (``CloseIndex`` order), are whole windows in slot order."""
        out: list = []
        pos = 0
        for start in sorted(self.windows):            # whole windows first, as long as they come in order
            win = self.windows[start]
            n = len(win.wkeys)
            if not n or wkeys[pos:pos + n] != win.wkeys:
                break
            out += zip(win.maxts[:n].tolist(), *[c[:n].tolist() for c in win.cols])
            pos += n
        if pos == len(wkeys):
            return out
        rest = wkeys[pos:]
        out += [None] * len(rest)
        by_start: dict = {}
        for i, wk in enumerate(rest, pos):
            by_start.setdefault(wk[1], []).append(i)
        for start, idx in by_start.items():
            win = self.windows.get(start)
            if win is None:
                continue
            at = dict(zip(win.wkeys, range(len(win.wkeys))))
            pairs = [(i, at[wkeys[i]]) for i in idx if wkeys[i] in at]
            if pairs:
                sl = np.asarray([s for _, s in pairs], dtype=np.int64)
                for (i, _), row in zip(pairs, zip(win.maxts[sl].tolist(), *[c[sl].tolist() for c in win.cols])):
                    out[i] = row
        return out

    def closed(self, last_closed_start: int) -> None:
        """The windows starting at or before ``last_closed_start`` closed (the operator emitted and deleted
        them through the store): forget them."""
        for start in [s for s in self.windows if s <= last_closed_start]:
            del self.windows[start]

    def evict(self) -> None:
        """Give every window back to the store as plain states (before the plain fold takes over, or the key
        codes start again)."""
        for win in self.windows.values():
            idx = np.flatnonzero(win.dirty[:len(win.wkeys)]).tolist()
            if idx:
                self.store.put_many([win.wkeys[i] for i in idx], [win.cells[i].state() for i in idx])
        self.windows.clear()

    def reset(self) -> None:
        """The store's write cache was discarded (a rollback): what the columns held is gone with it."""
        self.windows.clear()


def _by_start(gstart: np.ndarray, lo: int, hi: int, adv: int):
    """``(start, indices of the groups in it)`` for each window start of groups ``gstart`` (``lo``..``hi``, a
    multiple of ``adv`` apart); indices None: every group (one start)."""
    if lo == hi:
        yield lo, None
        return
    starts = range(lo, hi + 1, adv) if (hi - lo) // adv < 8 else np.unique(gstart).tolist()
    for start in starts:
        gi = np.flatnonzero(gstart == start)
        if len(gi):
            yield start, gi


def _int_state(o, width: int) -> bool:
    """``o`` is a stored open-window state of ``width`` Python ints in the int64-safe range."""
    if not isinstance(o, (tuple, list)) or len(o) != width:
        return False
    for x in o:
        if type(x) is not int or not -_INT64_SAFE < x < _INT64_SAFE:
            return False
    return True
