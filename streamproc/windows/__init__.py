"""Window specifications and THE window rules: closing, lateness, expiry, lifetime.

Every window kind answers these questions, and nothing else in streamproc decides them (the operators
and the runtime call the methods named here; see docs/design.md, "Where each rule lives"):

* which windows a record at event time ``ts`` belongs to (tumbling/hopping: computed
  from ``ts``; sliding/session: defined by the records themselves, see the operators);
* ``close_time(end)``: the smallest stream time at which a window ending at ``end``
  is closed. A window is closed iff ``stream_time >= close_time(end)`` (:meth:`WindowSpec.is_closed`):

  ===========  =================================  ===============================
  kind         window                              closed when
  ===========  =================================  ===============================
  Tumbling     ``[start, end)`` epoch aligned      ``stream_time >= end + grace``
  Hopping      ``[k*advance, k*advance + size)``   ``stream_time >= end + grace``
  Sliding      ``[start, end]`` both inclusive     ``stream_time >  end + grace``
  Session      ``[first, last]`` both inclusive    ``stream_time >  end + gap + grace``
  JoinWindow   a left record at ``tl`` matches      left: ``stream_time > tl + after + grace``
               rights in ``[tl-before, tl+after]``  right: ``stream_time > tr + before + grace``
  ===========  =================================  ===============================

A record that only belongs to closed windows is *late*.

Windows of a fixed length (tumbling, hopping, sliding: ``end_of(start)``) also read every rule by
start: :meth:`~_FixedWindow.close_offset`, :meth:`~_FixedWindow.last_closed_start`,
:meth:`~_FixedWindow.first_open_start`, :meth:`~_FixedWindow.expire_offset`,
:meth:`~_FixedWindow.last_expired_start` (and, for the records a sliding window keeps,
:meth:`Sliding.is_late`, :meth:`Sliding.forget_time`). Each of them is linear in time
(``rule(x) == x + rule(0)``), so an operator's per-record code adds ``rule(0)``, computed once from
the method, instead of calling it per record; a join record's window likewise
(:meth:`JoinWindow.close_offset`, :meth:`JoinWindow.match_range`).

Retention (``aggregate(..., retention=)``): how long a window store keeps a window, so queries and
``streamproc state`` can read recent closed windows. As in Kafka Streams, it is measured in stream
time from the window's *start* for time and sliding windows (a window store, whose fetches skip
windows with ``start <= stream_time - retention``) and from the session's *end* for sessions (a
session store, which skips sessions with ``end <= stream_time - retention``). The default, and the
minimum, is the window's size + grace (``default_retention``: tumbling/hopping ``size + grace``,
sliding ``max_difference + grace``, session ``gap + grace``): a closed window goes when it closes,
as without a retention. :meth:`WindowSpec.expire_time` is the smallest stream time at which a window
is removed: ``max(close_time(end), anchor + retention)`` - never before it closed. A retained closed
window holds its final value; it is never updated (a record for it is still late) nor, for sessions,
merged again, and ``emit="final"`` emitted it once, when it closed.

Lifetime (:meth:`WindowSpec.lifetime`): how long a stored window can live without being written
again, which the store's changelog ``retention.ms`` covers (``runtime/instance/app.py`` adds a margin).
"""
from __future__ import annotations

import datetime as _dt
import re

import numpy as np

from ..errors import TopologyError

__all__ = ["Tumbling", "Hopping", "Sliding", "Session", "JoinWindow", "WindowSpec", "parse_duration",
           "format_duration"]

_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")


def parse_duration(value, what: str = "duration") -> int:
    """Milliseconds from an int (ms), a ``timedelta`` or a string like ``"500ms"``, ``"10s"``, ``"5m"``."""
    if isinstance(value, bool):
        raise TopologyError(f"{what} must be a duration, got {value!r}")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, _dt.timedelta):
        ms = value // _dt.timedelta(milliseconds=1)
    elif isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise TopologyError(
                f"{what} {value!r} is not a duration: use int milliseconds, a timedelta, "
                f"or a string like '500ms', '10s', '5m', '1h', '1d'")
        ms = int(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise TopologyError(f"{what} must be int milliseconds, a timedelta or a string like '10s', got {value!r}")
    if ms < 0:
        raise TopologyError(f"{what} must not be negative, got {value!r}")
    return ms


class WindowSpec:
    """Base of the window kinds: each states its rules once, in the methods below."""

    kind: str = ""
    grace: int = 0

    def close_time(self, end):
        """Smallest stream time at which the window ending at ``end`` is closed (works on arrays)."""
        raise NotImplementedError

    def is_closed(self, end, stream_time):
        """True when the window ending at ``end`` is closed at ``stream_time``: ``stream_time >=
        close_time(end)``; a record for a closed window is late (works on arrays)."""
        return stream_time >= self.close_time(end)

    def params(self) -> dict:
        raise NotImplementedError

    @property
    def default_retention(self) -> int:
        """The store retention without ``retention=``, and the shortest allowed: size + grace."""
        raise NotImplementedError

    def expire_time(self, start, end, retention: int | None):
        """Smallest stream time at which a window ``[start, end]`` is removed from a store kept for
        ``retention`` (None: the default): ``max(close_time(end), anchor + retention)``, the anchor being
        the window start (time and sliding windows) or the session end (see the module doc)."""
        close = self.close_time(end)
        if retention is None:
            return close
        t = self._anchor(start, end) + retention
        return t if t > close else close

    def _anchor(self, start, end):
        """Where a store's retention is measured from: the window start (Kafka Streams' window stores)."""
        return start

    def retains(self, retention: int | None) -> bool:
        """True if a store kept for ``retention`` keeps windows after they close (a retention longer
        than the default); False: a window is removed when it closes."""
        return retention is not None and self.expire_time(0, self._end_of(0), retention) > self.close_time(
            self._end_of(0))

    def _end_of(self, start: int) -> int:
        return start

    def lifetime(self, retention: int | None = None) -> int:
        """How long (in stream time) a stored window can live without being written again: the kind's own
        (``_lifetime``) or the store's ``retention`` when longer. A windowed store's changelog keeps its
        records that long (plus a margin, ``runtime/instance/app.py``), as Kafka Streams' do."""
        life = self._lifetime()
        return retention if retention is not None and retention > life else life

    def _lifetime(self) -> int:
        raise NotImplementedError

    def check_retention(self, retention, store: str | None = None) -> int:
        """``retention`` in milliseconds, or ``TopologyError`` when it is not a duration or is shorter than
        :attr:`default_retention`."""
        ms = parse_duration(retention, "retention")
        floor = self.default_retention
        if ms < floor:
            name = f" of store {store!r}" if store else ""
            raise TopologyError(
                f"retention {_fmt(ms)}{name} is shorter than the window's size + grace ({_fmt(floor)} for "
                f"{self.describe()}): a window store keeps every window at least until it closes, so give "
                f"retention >= {_fmt(floor)} or leave it out")
        return ms

    def describe(self) -> str:
        return f"{self.kind}(" + ", ".join(f"{k}={_fmt(v)}" for k, v in self.params().items()) + ")"

    def __eq__(self, other):
        return type(self) is type(other) and self.params() == other.params()

    def __hash__(self):
        return hash((type(self), tuple(self.params().items())))

    def __repr__(self):
        return self.describe()


class _FixedWindow(WindowSpec):
    """Windows whose end follows from their start (tumbling, hopping, sliding), so every rule also reads
    by start. Each is linear in time (``rule(x) == x + rule(0)``): per-record code adds ``rule(0)``."""

    def end_of(self, start):
        """``window_end`` of the window starting at ``start`` (works on arrays)."""
        raise NotImplementedError

    def _end_of(self, start: int) -> int:
        return self.end_of(start)

    def close_offset(self) -> int:
        """The window starting at ``s`` closes at stream time ``s + close_offset()``:
        ``close_time(end_of(s)) - s``."""
        return self.close_time(self.end_of(0))

    def last_closed_start(self, stream_time):
        """The latest start of a window closed at ``stream_time``: the windows starting at or before it
        are closed, the others open (``start + close_offset() <= stream_time``)."""
        return stream_time - self.close_offset()

    def first_open_start(self, stream_time):
        """The earliest start of a window still open at ``stream_time`` (``last_closed_start + 1``)."""
        return self.last_closed_start(stream_time) + 1

    def expire_offset(self, retention: int | None) -> int:
        """A window starting at ``s`` leaves a store kept for ``retention`` at stream time
        ``s + expire_offset(retention)`` (:meth:`expire_time`; never before it closed)."""
        return self.expire_time(0, self.end_of(0), retention)

    def last_expired_start(self, stream_time, retention: int | None):
        """The latest start of a window expired at ``stream_time`` from a store kept for ``retention``."""
        return stream_time - self.expire_offset(retention)


class _TimeWindow(_FixedWindow):
    """Epoch-aligned half-open windows ``[k*advance, k*advance + size)``."""

    size: int
    advance: int

    def close_time(self, end):
        return end + self.grace

    @property
    def default_retention(self) -> int:
        return self.size + self.grace

    def _lifetime(self) -> int:
        """A window is written until it closes, ``size + grace`` after its start."""
        return self.size + self.grace

    def end_of(self, start):
        return start + self.size

    def assign(self, ts: np.ndarray):
        """Window starts for each timestamp, as (record_index, start) arrays.

        Every window ``[start, start+size)`` with ``start >= 0`` containing the timestamp.
        """
        size, adv = self.size, self.advance
        last = ts - ts % adv                      # the latest window start <= ts
        if size == adv:                           # tumbling: exactly one window
            return np.arange(len(ts)), last
        idx, starts = [], []
        n_max = -(-size // adv)                   # ceil(size / advance)
        base = np.arange(len(ts))
        for j in range(n_max):
            s = last - j * adv
            ok = (s > ts - size) & (s >= 0)
            idx.append(base[ok])
            starts.append(s[ok])
        return np.concatenate(idx), np.concatenate(starts)


class Tumbling(_TimeWindow):
    """Fixed-size, non-overlapping windows ``[k*size, (k+1)*size)``."""

    kind = "tumbling"

    def __init__(self, size, grace=0):
        self.size = parse_duration(size, "window size")
        if self.size <= 0:
            raise TopologyError("a tumbling window's size must be positive")
        self.advance = self.size
        self.grace = parse_duration(grace, "grace")

    def params(self):
        return {"size": self.size, "grace": self.grace}


class Hopping(_TimeWindow):
    """Overlapping windows of ``size`` starting every ``advance``."""

    kind = "hopping"

    def __init__(self, size, advance, grace=0):
        self.size = parse_duration(size, "window size")
        self.advance = parse_duration(advance, "advance")
        self.grace = parse_duration(grace, "grace")
        if self.size <= 0 or self.advance <= 0:
            raise TopologyError("a hopping window's size and advance must be positive")
        if self.advance > self.size:
            raise TopologyError(
                f"a hopping window's advance ({self.advance} ms) must not exceed its size ({self.size} ms)")

    def params(self):
        return {"size": self.size, "advance": self.advance, "grace": self.grace}


class Sliding(_FixedWindow):
    """Kafka Streams sliding windows: defined by records, ``[t - max_difference, t]`` inclusive.

    A record at ``t`` can belong to the windows starting in ``[t - max_difference, t]`` and is needed to
    build the windows starting up to ``t + 1`` (its right window ``[t + 1, t + 1 + max_difference]``)."""

    kind = "sliding"

    def __init__(self, max_difference, grace=0):
        self.max_difference = parse_duration(max_difference, "max_difference")
        if self.max_difference <= 0:
            raise TopologyError("a sliding window's max_difference must be positive")
        self.grace = parse_duration(grace, "grace")

    def close_time(self, end):
        return end + self.grace + 1

    @property
    def default_retention(self) -> int:
        # Kafka Streams asks 2 x max_difference + grace of a sliding window store, because it builds a new
        # window from the stored aggregate of an older one; here new windows are folded from the key's
        # stored records, so the store need not keep closed windows for that
        return self.max_difference + self.grace

    def _lifetime(self) -> int:
        """``2 x max_difference + grace``, as Kafka Streams sizes a sliding window store (see
        ``default_retention``)."""
        return 2 * self.max_difference + self.grace

    def end_of(self, start):
        return start + self.max_difference

    def is_late(self, ts, stream_time):
        """True when a record at ``ts`` joins no open window: even ``[ts, ts + max_difference]``, the last
        window it can belong to, is closed at ``stream_time``."""
        return self.is_closed(self.end_of(ts), stream_time)

    def forget_time(self, ts):
        """Smallest stream time at which a record at ``ts`` can be forgotten: no window that can still be
        created holds it, nor starts right after it (its right window, ``ts + 1``, is closed)."""
        return self.close_time(self.end_of(ts + 1))

    def params(self):
        return {"max_difference": self.max_difference, "grace": self.grace}


class Session(WindowSpec):
    """Sessions of activity separated by gaps longer than ``gap``; ``[first, last]`` inclusive."""

    kind = "session"

    def __init__(self, gap, grace=0):
        self.gap = parse_duration(gap, "session gap")
        if self.gap <= 0:
            raise TopologyError("a session window's gap must be positive")
        self.grace = parse_duration(grace, "grace")

    def close_time(self, end):
        return end + self.gap + self.grace + 1

    @property
    def default_retention(self) -> int:
        return self.gap + self.grace

    def _anchor(self, start, end):
        """A session store's retention is measured from the session's end (Kafka Streams' session stores)."""
        return end

    def _lifetime(self) -> int:
        """A session is written until it closes, ``gap + grace`` after its end."""
        return self.gap + self.grace

    def params(self):
        return {"gap": self.gap, "grace": self.grace}


class JoinWindow(WindowSpec):
    """The window of a stream-stream join: a left record at ``tl`` matches right records with
    ``tl - before <= tr <= tl + after`` (``after`` defaults to ``before``; :meth:`match_range`).

    Each side's record keeps its *own* join window: the left record's closes when
    ``stream_time > tl + after + grace``, the right record's when ``stream_time > tr + before + grace``
    (:meth:`close_time` with ``side``). A record whose own window is closed on arrival is late.
    """

    kind = "join"

    def __init__(self, before, after=None, grace=0):
        self.before = parse_duration(before, "join window 'before'")
        self.after = self.before if after is None else parse_duration(after, "join window 'after'")
        self.grace = parse_duration(grace, "grace")

    def reach(self, side: str) -> int:
        """How far after its own timestamp a record of ``side`` ("left"/"right") can still be matched."""
        return self.after if side == "left" else self.before

    def match_range(self, ts, side: str = "left") -> tuple:
        """``(lo, hi)``: a record of ``side`` at ``ts`` matches the other side's records with
        ``lo <= t <= hi`` (left: ``[ts - before, ts + after]``; right: ``[ts - after, ts + before]``)."""
        other = "right" if side == "left" else "left"
        return ts - self.reach(other), ts + self.reach(side)

    def close_time(self, end, side: str = "left"):
        """Smallest stream time at which the window of a ``side`` record at timestamp ``end`` is closed."""
        return end + self.reach(side) + self.grace + 1

    def is_closed(self, end, stream_time, side: str = "left"):
        """True when the window of a ``side`` record at ``end`` is closed at ``stream_time``."""
        return stream_time >= self.close_time(end, side)

    def close_offset(self, side: str = "left") -> int:
        """The window of a ``side`` record at ``ts`` closes at stream time ``ts + close_offset(side)``."""
        return self.close_time(0, side)

    def _lifetime(self) -> int:
        """``before + after + grace``, as Kafka Streams sizes a join window store."""
        return self.before + self.after + self.grace

    def params(self):
        return {"before": self.before, "after": self.after, "grace": self.grace}


def format_duration(ms: int) -> str:
    """``ms`` in the largest unit that divides it: ``"1h"``, ``"90s"``, ``"0ms"``."""
    return _fmt(ms)


def _fmt(ms: int) -> str:
    for unit, n in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % n == 0:
            return f"{ms // n}{unit}"
    return f"{ms}ms"
