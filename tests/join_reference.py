"""Reference model of DESIGN.md section 4's join semantics (and the table changes they read).

A deliberately naive, record-at-a-time model of ONE task.  It keeps every stored record in
a plain list and rescans it, so that each rule is a couple of readable lines.  It imports
nothing from ``streamproc``: the implementation is tested against it, never the other way round
(tests/test_join_semantics.py).

Outputs are lists of ``(key, value, timestamp)`` tuples.  The order of results inside one
batch is not part of the contract, so callers compare them as multisets.

Rules modelled
--------------
Stream time (:class:`StreamStreamJoin`): per task, over every input of the task (both join
sides and any table topic of the same task): the largest event timestamp seen so far, updated
BEFORE the record is processed.  A record dropped for its ``None`` key still advances it
(it is an input of the task; ``none_key_advances_time=False`` switches to the reading where it
does not).

Stream-stream join, ``JoinWindow(before, after, grace)`` (``after`` defaults to ``before``):

* a left record at ``tl`` matches a right record at ``tr`` iff ``tl - before <= tr <= tl + after``;
* a left record's window is closed when ``stream_time > tl + after + grace``, a right record's
  when ``stream_time > tr + before + grace``;
* per arriving record: (1) advance stream time; (2) every stored record (either side, any key)
  whose window is now closed is expired: under ``left``/``outer`` an expired left record that
  never matched emits ``joiner(v, None)`` with its own timestamp, under ``outer`` an expired
  right record that never matched emits ``joiner(None, v)``; (3) if the arriving record's own
  window is already closed it is late: dropped and counted; (4) otherwise it is joined with every
  stored record of the other side with the same key in range (all stored records are open after
  step 2), one result per match, timestamp ``max(tl, tr)``, and then stored;
* unmatched results are never emitted before the record's window closes (a window that never
  closes never emits);
* a record with key ``None`` is dropped and counted.

Stream-table and stream-global-table joins (:class:`StreamTableJoin`): each stream record is
joined with the table's current row for ``key_fn(k, v)`` (default: the stream key); inner
drops a record without a row, left emits ``joiner(v, None)``; result timestamp = the stream
record's; key ``None`` stream records are dropped and counted.

Tables (:class:`SourceTable`, :class:`FilterTable`, :class:`MapValuesTable`,
:class:`TableTableJoin`): each node holds a view ``{key: (value, ts)}`` and turns one batch of
input changes into one batch of output changes (``value None`` = the key left the view):

* per input change the node updates its view; a change is emitted when the key is in the view
  afterwards, or was before and is not any more (then as ``None``); a key that was not in the
  view and still is not emits nothing (so a tombstone for an absent key emits nothing, a
  filtered-out row of a key that never passed emits nothing);
* per batch a node emits one change per changed key, the latest; a key that was not in the view
  at the start of the batch and is not at its end emits nothing (inserted then deleted);
* filter: the view holds the rows that pass ``pred(k, v)``; map_values: ``fn`` applied to
  non-None values;
* table-table join: every change of either side recomputes the key's result from both sides'
  current rows: inner needs both, left needs the left, outer either; result timestamp =
  ``max(timestamp of the triggering change, the other side's row timestamp if it has a row)``,
  for a result that stops existing as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

LEFT, RIGHT = "left", "right"


def default_joiner(left_value, right_value):
    return {"left": left_value, "right": right_value}


# --------------------------------------------------------------------------- stream-stream


@dataclass
class _Stored:
    side: str
    key: Any
    value: Any
    ts: int
    matched: bool = False


class StreamStreamJoin:
    """One task running ``left.join(right, joiner, how=how, window=JoinWindow(before, after, grace))``."""

    def __init__(self, how: str, before: int, after: int | None = None, grace: int = 0,
                 joiner: Callable | None = None, *, none_key_advances_time: bool = True):
        if how not in ("inner", "left", "outer"):
            raise ValueError(how)
        self.how = how
        self.before = before
        self.after = before if after is None else after
        self.grace = grace
        self.joiner = joiner or default_joiner
        self.none_key_advances_time = none_key_advances_time
        self.stream_time: int | None = None
        self.stored: list[_Stored] = []
        self.late_records = 0
        self.dropped_none_key = 0

    # the rules, one line each
    def window_end(self, side: str, ts: int) -> int:
        return ts + (self.after if side == LEFT else self.before)

    def closed(self, side: str, ts: int) -> bool:
        return self.stream_time is not None and self.stream_time > self.window_end(side, ts) + self.grace

    def in_range(self, tl: int, tr: int) -> bool:
        return tl - self.before <= tr <= tl + self.after

    def advance(self, ts: int) -> list[tuple]:
        """Stream time moves to ``max(stream_time, ts)``; expire what that closes.  Also what a
        record of another input of the task (a table topic) does."""
        self.stream_time = ts if self.stream_time is None else max(self.stream_time, ts)
        out = []
        keep = []
        for e in self.stored:
            if not self.closed(e.side, e.ts):
                keep.append(e)
                continue
            if e.matched:
                continue
            if e.side == LEFT and self.how in ("left", "outer"):
                out.append((e.key, self.joiner(e.value, None), e.ts))
            elif e.side == RIGHT and self.how == "outer":
                out.append((e.key, self.joiner(None, e.value), e.ts))
        self.stored = keep
        return out

    def process(self, side: str, key, value, ts: int, judge_at: int | None = None) -> list[tuple]:
        """A record of ``side``. ``judge_at``: the record came through a repartition topic - it does not
        move stream time (its upstream tasks' watermarks do) and is judged at ``max(stream time,
        judge_at)``, its upstream task's stream time when it was written (DESIGN section 4)."""
        if side not in (LEFT, RIGHT):
            raise ValueError(side)
        if key is None:
            self.dropped_none_key += 1
            return self.advance(ts) if self.none_key_advances_time and judge_at is None else []
        if judge_at is None:
            out = self.advance(ts)
            now = self.stream_time
        else:
            out = []
            now = judge_at if self.stream_time is None else max(self.stream_time, judge_at)

        def closed(s, t):
            return now > self.window_end(s, t) + self.grace

        if closed(side, ts):
            self.late_records += 1
            return out
        matched = False
        for e in self.stored:
            if e.side == side or e.key != key or closed(e.side, e.ts):
                continue
            tl, tr = (ts, e.ts) if side == LEFT else (e.ts, ts)
            if not self.in_range(tl, tr):
                continue
            lv, rv = (value, e.value) if side == LEFT else (e.value, value)
            out.append((key, self.joiner(lv, rv), max(tl, tr)))
            e.matched = True
            matched = True
        self.stored.append(_Stored(side, key, value, ts, matched))
        return out

    def metrics(self) -> dict:
        return {"late_records": self.late_records, "dropped_none_key": self.dropped_none_key}


# --------------------------------------------------------------------------- tables


def _collapse(changes: list[tuple], existed_at_start: dict) -> list[tuple]:
    """One change per changed key per batch, the latest; nothing for a key that was not in the
    view at the batch start and is not at its end."""
    last: dict = {}
    for k, v, ts in changes:
        last[k] = (k, v, ts)
    return [c for k, c in last.items() if not (c[1] is None and not existed_at_start[k])]


class _TableNode:
    """A table view ``{key: (value, ts)}``; ``batch(changes)`` -> the batch's output changes."""

    def __init__(self):
        self.view: dict = {}

    def get(self, key):
        """``(value, ts)`` or None."""
        return self.view.get(key)

    def _change(self, key, new: tuple | None) -> tuple | None:
        """Set the key's view entry to ``new`` (``(value, ts)`` or None); the output change or None."""
        old = self.view.get(key)
        if new is not None:
            self.view[key] = new
            return (key, new[0], new[1])
        if old is not None:
            del self.view[key]
            return "deleted"
        return None

    def batch(self, changes: Iterable[tuple]) -> list[tuple]:
        changes = list(changes)
        existed = {}
        out = []
        for k, v, ts in changes:
            existed.setdefault(k, k in self.view)
            out.extend(self._apply(k, v, ts))
        return _collapse(out, existed)

    def _apply(self, key, value, ts) -> list[tuple]:
        raise NotImplementedError


class SourceTable(_TableNode):
    """``topology.table(topic)``: latest value per key by arrival; ``None`` deletes."""

    def _apply(self, key, value, ts):
        r = self._change(key, None if value is None else (value, ts))
        if r is None:
            return []
        return [(key, None, ts)] if r == "deleted" else [r]


class FilterTable(_TableNode):
    """``table.filter(pred)``: the view holds the rows that pass."""

    def __init__(self, pred: Callable):
        super().__init__()
        self.pred = pred

    def _apply(self, key, value, ts):
        passes = value is not None and self.pred(key, value)
        r = self._change(key, (value, ts) if passes else None)
        if r is None:
            return []
        return [(key, None, ts)] if r == "deleted" else [r]


class MapValuesTable(_TableNode):
    """``table.map_values(fn)``: ``fn`` applied to non-None values."""

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def _apply(self, key, value, ts):
        r = self._change(key, None if value is None else (self.fn(value), ts))
        if r is None:
            return []
        return [(key, None, ts)] if r == "deleted" else [r]


class TableTableJoin(_TableNode):
    """``left_table.join(right_table, joiner, how=how)``.  Feed it the changes of one side
    with :meth:`left_batch` / :meth:`right_batch`."""

    def __init__(self, how: str, joiner: Callable | None = None):
        super().__init__()
        if how not in ("inner", "left", "outer"):
            raise ValueError(how)
        self.how = how
        self.joiner = joiner or default_joiner
        self.left: dict = {}
        self.right: dict = {}
        self._side = None

    def left_batch(self, changes):
        self._side = LEFT
        return self.batch(changes)

    def right_batch(self, changes):
        self._side = RIGHT
        return self.batch(changes)

    def _apply(self, key, value, ts):
        mine, other = (self.left, self.right) if self._side == LEFT else (self.right, self.left)
        if value is None:
            mine.pop(key, None)
        else:
            mine[key] = (value, ts)
        lrow, rrow = self.left.get(key), self.right.get(key)
        exists = {"inner": lrow is not None and rrow is not None,
                  "left": lrow is not None,
                  "outer": lrow is not None or rrow is not None}[self.how]
        orow = other.get(key)
        rts = ts if orow is None else max(ts, orow[1])
        if exists:
            v = self.joiner(None if lrow is None else lrow[0], None if rrow is None else rrow[0])
            r = self._change(key, (v, rts))
        else:
            r = self._change(key, None)
        if r is None:
            return []
        return [(key, None, rts)] if r == "deleted" else [r]


# --------------------------------------------------------------------------- stream-table


class StreamTableJoin:
    """``stream.join(table, joiner, how=how[, key=key_fn])`` against a table node's view
    (a :class:`SourceTable` for ``Table`` and ``GlobalTable`` alike)."""

    def __init__(self, table: _TableNode, how: str, joiner: Callable | None = None,
                 key_fn: Callable | None = None):
        if how not in ("inner", "left"):
            raise ValueError(how)
        self.table = table
        self.how = how
        self.joiner = joiner or default_joiner
        self.key_fn = key_fn
        self.dropped_none_key = 0

    def process(self, key, value, ts) -> list[tuple]:
        if key is None:
            self.dropped_none_key += 1
            return []
        tkey = key if self.key_fn is None else self.key_fn(key, value)
        row = self.table.get(tkey)
        if row is None:
            return [(key, self.joiner(value, None), ts)] if self.how == "left" else []
        return [(key, self.joiner(value, row[0]), ts)]

    def metrics(self) -> dict:
        return {"late_records": 0, "dropped_none_key": self.dropped_none_key}
