"""Aggregation functions for grouped and windowed streams.

An aggregation keeps a small *state* per group (per key, or per key and window) and
turns it into a *result* when the group is emitted. Each one can

* ``add(state, xs)``: fold a group's values, in arrival order, into the state;
* ``partials(col, starts)``: fold a whole batch at once, already sorted by group, with
  numpy (``col[starts[i]:starts[i+1]]`` is group i); ``None`` when it cannot;
* ``combine(a, b)``: merge two states, ``a`` holding the earlier records (session merges
  and merging a batch partial into the stored state); ``combine_ufunc`` does the same for
  whole columns of states when the states are plain numbers.

``order_sensitive`` aggregations (first/last/collect/reduce) depend on arrival order, so
operators keep records in arrival order inside each group only when one is present.

States are plain lists/numbers, so the internal codec (``state.codec``) writes them small and
exactly; aggregations whose state keeps record values (``holds_values``) are checked per batch.
"""
from __future__ import annotations

from operator import itemgetter as _itemgetter

import numpy as np

from ..errors import TopologyError
from ..fingerprint import fingerprint_function, fingerprint_value

__all__ = ["Aggregation", "count", "sum", "min", "max", "mean", "first", "last", "collect", "reduce"]

_builtin_sum, _builtin_min, _builtin_max = sum, min, max


class Aggregation:
    """Base class. ``field`` is a dict field name, a callable of the value, or None (the value itself)."""

    kind = ""
    needs_column = True
    order_sensitive = True
    holds_values = True         # the state keeps values of the records (checked for the codec per batch)
    combine_ufunc = None        # numpy ufunc merging columns of states, where states are numbers
    #: how the state folds as one int64 number per group (``operators/_fold.py``, ``WindowColumns``): "count",
    #: "sum", "min" or "max"; None: it does not (its state is not one number)
    columnar: str | None = None

    def __init__(self, field=None):
        if field is not None and not (isinstance(field, str) or callable(field)):
            raise TopologyError(f"agg.{self.kind}: field must be a field name or a callable, got {field!r}")
        self.field = field

    # -- column extraction -------------------------------------------------------------
    def column_key(self):
        return self.field if isinstance(self.field, str) or self.field is None else id(self.field)

    def extract(self, values: list) -> list:
        f = self.field
        if f is None:
            return values
        if isinstance(f, str):
            try:
                return list(map(_itemgetter(f), values))
            except (KeyError, TypeError, IndexError):
                for v in values:
                    try:
                        v[f]
                    except (KeyError, TypeError, IndexError):
                        raise AggregationInputError(
                            f"agg.{self.kind}({f!r}): value {v!r} has no field {f!r}") from None
                raise
        return [f(v) for v in values]

    # -- folding ----------------------------------------------------------------------
    def init(self):
        raise NotImplementedError

    def add(self, state, xs):
        raise NotImplementedError

    def partials(self, col: np.ndarray, starts: np.ndarray):
        return None

    def combine(self, a, b):
        raise NotImplementedError

    def result(self, state):
        return state

    # -- identity -----------------------------------------------------------------------
    def describe(self) -> str:
        f = self.field
        arg = "" if f is None else (repr(f) if isinstance(f, str) else getattr(f, "__qualname__", "fn"))
        return f"{self.kind}({arg})"

    def fingerprint(self) -> str:
        f = self.field
        fid = "" if f is None else (f if isinstance(f, str) else _code_id(f))
        return f"{self.kind}:{fid}"


class AggregationInputError(ValueError):
    """A value lacks the field an aggregation reads."""


def _code_id(fn) -> str:
    """A deterministic identity of a user function (its code, constants, closure; see ``streamproc.fingerprint``)."""
    return fingerprint_function(fn)


def _numeric(col: np.ndarray) -> bool:
    return col.dtype.kind in "iuf"


def _int_sum_safe(col: np.ndarray) -> bool:
    """An int64 sum of ``col`` cannot overflow (else fold with Python ints)."""
    if col.dtype.kind not in "iu" or not len(col):
        return True
    return int(np.abs(col).max()) * len(col) < (1 << 62)


class _Count(Aggregation):
    kind = "count"
    columnar = "count"
    holds_values = False
    needs_column = False
    order_sensitive = False
    combine_ufunc = np.add

    def __init__(self):
        super().__init__(None)

    def init(self):
        return 0

    def add(self, state, xs):
        return state + len(xs)

    def partials(self, col, starts):
        return np.diff(np.append(starts, len(col)))

    def combine(self, a, b):
        return a + b

    def describe(self):
        return "count()"


class _Sum(Aggregation):
    kind = "sum"
    columnar = "sum"
    holds_values = False
    order_sensitive = False
    combine_ufunc = np.add

    def init(self):
        return 0

    def add(self, state, xs):
        return state + _builtin_sum(xs)

    def partials(self, col, starts):
        if not _numeric(col) or not _int_sum_safe(col):
            return None
        return np.add.reduceat(col, starts)

    def combine(self, a, b):
        return a + b


class _Extreme(Aggregation):
    order_sensitive = False
    _ufunc = None
    _py = None

    def init(self):
        return None

    def add(self, state, xs):
        if not xs:
            return state
        m = self._py(xs)
        return m if state is None else self._py(state, m)

    def partials(self, col, starts):
        if not _numeric(col) or (col.dtype.kind == "f" and np.isnan(col).any()):
            return None
        return self._ufunc.reduceat(col, starts)

    def combine(self, a, b):
        if a is None:
            return b
        if b is None:
            return a
        return self._py(a, b)


class _Min(_Extreme):
    kind = "min"
    columnar = "min"
    _ufunc = combine_ufunc = np.minimum
    _py = staticmethod(_builtin_min)


class _Max(_Extreme):
    kind = "max"
    columnar = "max"
    _ufunc = combine_ufunc = np.maximum
    _py = staticmethod(_builtin_max)


class _Mean(Aggregation):
    kind = "mean"
    holds_values = False
    order_sensitive = False

    def init(self):
        return [0, 0]

    def add(self, state, xs):
        return [state[0] + _builtin_sum(xs), state[1] + len(xs)]

    def partials(self, col, starts):
        if not _numeric(col) or not _int_sum_safe(col):
            return None
        sums = np.add.reduceat(col, starts).tolist()
        counts = np.diff(np.append(starts, len(col))).tolist()
        return [[s, c] for s, c in zip(sums, counts)]

    def combine(self, a, b):
        return [a[0] + b[0], a[1] + b[1]]

    def result(self, state):
        return state[0] / state[1] if state[1] else None


class _First(Aggregation):
    kind = "first"

    def init(self):
        return []

    def add(self, state, xs):
        return state if state or not xs else [xs[0]]

    def combine(self, a, b):
        return a if a else b

    def result(self, state):
        return state[0] if state else None


class _Last(Aggregation):
    kind = "last"

    def init(self):
        return []

    def add(self, state, xs):
        return [xs[-1]] if xs else state

    def combine(self, a, b):
        return b if b else a

    def result(self, state):
        return state[0] if state else None


class _Collect(Aggregation):
    kind = "collect"

    def init(self):
        return []

    def add(self, state, xs):
        return state + list(xs)

    def combine(self, a, b):
        return a + b

    def result(self, state):
        return list(state)


class _Reduce(Aggregation):
    """``fn(acc, x)`` folded from ``initial``; without an initial the first value starts the fold.

    Sequential by nature: it is never vectorised, and ``combine`` (only needed when sessions
    merge) replays nothing, so it requires ``fn`` to be associative for session windows.
    """

    kind = "reduce"
    _NO_INITIAL = object()

    def __init__(self, fn, initial=_NO_INITIAL, field=None):
        if not callable(fn):
            raise TopologyError(f"agg.reduce needs a function fn(acc, value), got {fn!r}")
        super().__init__(field)
        self.fn = fn
        self.initial = initial

    def init(self):
        return [] if self.initial is self._NO_INITIAL else [self.initial]

    def add(self, state, xs):
        fn = self.fn
        it = iter(xs)
        if state:
            acc = state[0]
        else:
            try:
                acc = next(it)
            except StopIteration:
                return state
        for x in it:
            acc = fn(acc, x)
        return [acc]

    def combine(self, a, b):
        if not a:
            return b
        if not b:
            return a
        return [self.fn(a[0], b[0])]

    def result(self, state):
        return state[0] if state else None

    def fingerprint(self):
        init = "" if self.initial is self._NO_INITIAL else fingerprint_value(self.initial)
        return f"reduce:{_code_id(self.fn)}:{init}:{super().fingerprint()}"

    def describe(self):
        return f"reduce({getattr(self.fn, '__qualname__', 'fn')})"


def count() -> Aggregation:
    """Number of records."""
    return _Count()


def sum(f=None) -> Aggregation:  # noqa: A001 - the public name is agg.sum
    """Sum of a field (name) or of ``f(value)``."""
    return _Sum(f)


def min(f=None) -> Aggregation:  # noqa: A001
    """Smallest value of a field or of ``f(value)``."""
    return _Min(f)


def max(f=None) -> Aggregation:  # noqa: A001
    """Largest value of a field or of ``f(value)``."""
    return _Max(f)


def mean(f=None) -> Aggregation:
    """Arithmetic mean of a field or of ``f(value)`` (None for an empty group)."""
    return _Mean(f)


def first(f=None) -> Aggregation:
    """The first value seen (arrival order)."""
    return _First(f)


def last(f=None) -> Aggregation:
    """The last value seen (arrival order)."""
    return _Last(f)


def collect(f=None) -> Aggregation:
    """All values, in arrival order, as a list."""
    return _Collect(f)


def reduce(fn, initial=_Reduce._NO_INITIAL, f=None) -> Aggregation:  # noqa: A001
    """Fold ``fn(acc, value)`` starting from ``initial`` (or from the first value)."""
    return _Reduce(fn, initial, f)
