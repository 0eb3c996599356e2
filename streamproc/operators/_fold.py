"""Shared machinery of the aggregate operators: key codes, vectorised folds, the close index and the
sweep of the backend's time index."""
from __future__ import annotations

import heapq

import numpy as np

from ..errors import StreamprocError
from ..state.codec import encode_key

_VECTORISED = {"count", "sum", "min", "max", "mean"}


class KeyCodes(dict):
    """Dense int codes for keys, kept across batches (a hit is one C-level dict lookup).

    Codes only need to agree within one batch, so the table is simply cleared when it grows
    past ``limit`` distinct keys: memory stays bounded on high-cardinality keys.
    """

    limit = 1 << 20

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
