"""The stream-stream join's batch arithmetic (``StreamStreamJoinOp``): which records pair, which close.

The operator's rules (``operators/join.py``, DESIGN section 4) are stated record at a time: each
record, in processing order and at its stream time, first expires what is closed, then (unless
late) joins every open stored record of the other side with its key and in range, then is stored.
Within one batch every one of these outcomes is a condition on a pair of records or on one record
and the batch's expiry points, so it is computed for the whole batch at once with numpy:

* *expiry points*: the places where an expiry runs: each record that moves the task's time to a
  new high (before it is processed), and the batch's end; their stream times increase. A stored
  record closes (``st >= close``) at the first point whose time reaches its close time: it is
  stored before that point (a record is stored only if its window is open at its own stream time,
  which is at least that of every point before it).
* *pairs*: a record joins an earlier record of the other side with its key (stored before the batch,
  or earlier in it) when it is not late, the other is in its match range and the other's window is
  open at its stream time (``st < close``; a record closed at that time has also left the store).
* *matched*: a record matched if it is in a pair (as either member); an unmatched one that closes
  emits under left/outer at its expiry point (a record pairs only while open, so before it closes).

Everything here works on *entries*: the stored records loaded for the batch's keys (position -1),
then the batch's records that are not late, by their position in processing order.
"""
from __future__ import annotations

import numpy as np

_I64 = np.int64


def processing_order(seq_l: np.ndarray, seq_r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(side, index)`` arrays of both sides' records in processing order: by ``seq``; a record that
    reaches both sides (a self-join) is processed as left first."""
    if not len(seq_r):
        return np.zeros(len(seq_l), dtype=np.int8), np.arange(len(seq_l), dtype=_I64)
    if not len(seq_l):
        return np.ones(len(seq_r), dtype=np.int8), np.arange(len(seq_r), dtype=_I64)
    nl = len(seq_l)
    seq = np.concatenate([seq_l, seq_r])
    side = np.concatenate([np.zeros(nl, dtype=np.int8), np.ones(len(seq_r), dtype=np.int8)])
    order = np.lexsort((side, seq))
    index = np.concatenate([np.arange(nl, dtype=_I64), np.arange(len(seq_r), dtype=_I64)])
    return side[order], index[order]


def expiry_points(st: np.ndarray, moves: np.ndarray, expired_to: int | None, st_end: int) -> tuple:
    """Where expiries run in a batch of records with stream times ``st`` (processing order; ``moves``:
    whether each record moves the task's time), given the time of the last expiry before it
    (``expired_to``, None: none yet) and the task's time at the batch's end ``st_end``.

    Returns ``(pos, times)``: the positions before which an expiry runs (``len(st)`` for the batch's
    end) and its stream time, both increasing."""
    n = len(st)
    floor = np.iinfo(_I64).min if expired_to is None else expired_to
    m = np.where(moves, st, np.iinfo(_I64).min) if n else st
    if n:
        before = np.empty(n, dtype=_I64)
        before[0] = floor
        if n > 1:
            np.maximum.accumulate(m[:-1], out=before[1:])
            np.maximum(before[1:], floor, out=before[1:])
        pos = np.flatnonzero(m > before)
        times = m[pos]
        last = int(max(floor, m.max()))
    else:
        pos = np.empty(0, dtype=_I64)
        times = np.empty(0, dtype=_I64)
        last = floor
    if st_end > last:
        pos = np.append(pos, n)
        times = np.append(times, st_end)
    return pos, times


class Entries:
    """The batch's entries as columns (see the module doc): ``side``, key ``code``, ``pos`` (-1 for
    a stored record), timestamp ``t``, ``close`` time, stored ``matched`` flag, and for batch records
    the stream time they are processed at (``st``; for stored ones: unused)."""

    __slots__ = ("side", "code", "pos", "t", "close", "matched", "st", "n_stored", "width")

    def __init__(self, side, code, pos, t, close, matched, st, n_stored: int):
        self.side, self.code, self.pos, self.t, self.close = side, code, pos, t, close
        self.matched, self.st, self.n_stored = matched, st, n_stored
        # entries sort by ``code * width + pos + 1``: above every position (late records have one too)
        self.width = int(pos.max()) + 2 if len(pos) else 2

    def __len__(self) -> int:
        return len(self.side)

    def by_key(self, side: int) -> np.ndarray:
        """The entries of ``side`` ordered by key code, then position (stored ones first, in their order)."""
        idx = np.flatnonzero(self.side == side)
        comb = self.code[idx] * self.width + (self.pos[idx] + 1)
        return idx[np.argsort(comb, kind="stable")]


def pairs(e: Entries, sorted_by_side: tuple, match: tuple) -> tuple[np.ndarray, np.ndarray]:
    """``(later, earlier)`` entry indices of every pair (module doc), ordered by the later one's position,
    then the earlier one's order in its key's records. ``sorted_by_side``: ``Entries.by_key`` of both
    sides; ``match[side]``: ``(lo, hi)`` offsets of the match range of a record of ``side``."""
    width = e.width
    later_all, earlier_all = [], []
    for side in (0, 1):
        cand = sorted_by_side[1 - side]
        me = np.flatnonzero((e.side == side) & (e.pos >= 0))
        if not len(me) or not len(cand):
            continue
        comb = e.code[cand] * width + (e.pos[cand] + 1)
        base = e.code[me] * width
        lo = np.searchsorted(comb, base, "left")
        hi = np.searchsorted(comb, base + e.pos[me] + 1, "left")
        cnt = hi - lo
        total = int(cnt.sum())
        if not total:
            continue
        later = np.repeat(me, cnt)
        first = np.repeat(lo - (np.cumsum(cnt) - cnt), cnt)
        earlier = cand[first + np.arange(total, dtype=_I64)]
        m_lo, m_hi = match[side]
        t_l, t_e = e.t[later], e.t[earlier]
        ok = (t_e >= t_l + m_lo) & (t_e <= t_l + m_hi) & (e.st[later] < e.close[earlier])
        later_all.append(later[ok])
        earlier_all.append(earlier[ok])
    if not later_all:
        return np.empty(0, dtype=_I64), np.empty(0, dtype=_I64)
    later, earlier = np.concatenate(later_all), np.concatenate(earlier_all)
    if len(later_all) > 1:
        order = np.argsort(e.pos[later], kind="stable")
        later, earlier = later[order], earlier[order]
    return later, earlier
