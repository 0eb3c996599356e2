"""Sliding and session windows: windows defined by the records themselves.

Both are folded record by record (a record can create, grow or merge windows, which a
vectorised fold cannot express), against a per-batch working copy of each touched key's
state that is written back to the store once per batch.
"""
from __future__ import annotations

import bisect

from ._fold import CloseIndex
from .aggregate import _AggregateBase
from .batch import Batch


class _RecordWindowOp(_AggregateBase):
    _stores_records = False

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.index = CloseIndex()
        for k, entry in self.store.items():
            for wkey, close in self._windows_of(k, entry):
                self.index.add(close, wkey)

    def _process(self, b: Batch) -> Batch:
        b = self._drop_none_keys(b)
        if self._stores_records:
            self._storable(b.keys, b.values)
        work: dict = {}
        changed: dict = {}
        cols = [a.extract(b.values) if a.needs_column else b.values for a in self.aggs]
        ts_l, st_l = b.timestamps.tolist(), b.stream_times.tolist()
        for i, k in enumerate(b.keys):
            entry = work.get(k)
            if entry is None:
                entry = work[k] = self._copy(self.store.get(k))
                if k not in self._codes:
                    self._codes.codes([k])   # a key the state cannot store fails here, once per new key
            xs = [c[i] for c in cols]
            if not self._add(k, entry, ts_l[i], st_l[i], b.values[i], xs, changed):
                self.ctx.count("late_records")
        items = []
        if not self.emit_final:
            for (k, wid) in changed:
                w = self._find(work[k], wid)
                if w is not None:
                    items.append(self._result(k, w))
        st = self.ctx.state.stream_time
        for wkey in self.index.pop_closed(st):
            k, wid = wkey
            entry = work.get(k)
            if entry is None:
                entry = work[k] = self._copy(self.store.get(k))
            w = self._remove(entry, wid)
            if w is not None and self.emit_final:
                items.append(self._result(k, w))
        for k, entry in work.items():
            self._prune(entry, st)
            if self._empty(entry):
                self.store.delete(k)
            else:
                if self._check_states:
                    self._storable([k], [entry])
                self.store.put(k, entry)
        return self._output([i[0] for i in items], [i[1] for i in items], [i[2] for i in items], st)

    def _snapshot_items(self):
        for k, entry in self.store.items():
            for wkey, _ in self._windows_of(k, entry):
                _, v, _ = self._result(k, self._find(entry, wkey[1]))
                yield wkey, v

    def _fold_new(self, pairs, extra_xs=None) -> list:
        """States for a new window from stored (value) records plus, optionally, the current record."""
        states = []
        for j, a in enumerate(self.aggs):
            vals = a.extract([v for v in pairs]) if a.needs_column else list(pairs)
            if extra_xs is not None:
                vals = vals + [extra_xs[j]]
            states.append(a.add(a.init(), vals))
        return states

    def _grow(self, w, t, xs) -> None:
        """Add one record to window state ``w`` = ``[.., max_ts, *states]`` (states at ``self._S``)."""
        s0 = self._S
        if t > w[s0 - 1]:
            w[s0 - 1] = t
        for j, a in enumerate(self.aggs):
            w[s0 + j] = a.add(w[s0 + j], [xs[j]])


class SlidingAggregateOp(_RecordWindowOp):
    """Kafka Streams sliding windows (``max_difference`` d), both ends inclusive.

    Per key the store holds ``[records, windows]``: the accepted records ``[ts, value]``
    still inside some window that could be open, sorted by time, and the windows by start:
    ``{start: [max_ts, *states]}`` (end = start + d). A record at t
    * grows every open window containing t,
    * creates its left window ``[t-d, t]`` and, when records follow it within d, its right
      window ``[t+1, t+1+d]``, and the right window of every earlier record within d + 1
      that lacks one (their contents folded from the stored records),
    * is late when even ``[t, t+d]``, the last window it could join, is closed.
    """

    _S = 1   # window list layout: [max_ts, *states]
    _stores_records = True     # the store keeps the records' values: each is checked for the codec once

    def _windows_of(self, k, entry):
        d = self.window.max_difference
        return [((k, s), self.window.close_time(s + d)) for s in entry[1]]

    @staticmethod
    def _copy(entry):
        if entry is None:
            return [[], {}]
        return [list(entry[0]), {s: list(w) for s, w in entry[1].items()}]

    @staticmethod
    def _remove(entry, start):
        w = entry[1].pop(start, None)
        return None if w is None else (start, w)

    def _find(self, entry, start):
        w = entry[1].get(start)
        return None if w is None else (start, w)

    def _add(self, k, entry, t, st, value, xs, changed) -> bool:
        spec = self.window
        d = spec.max_difference
        close = spec.close_time
        if st >= close(t + d):
            return False
        recs, wins = entry
        for s, w in wins.items():                      # existing windows containing t
            if s <= t <= s + d and st < close(s + d):
                self._grow(w, t, xs)
                changed[(k, s)] = None
        rts = [r[0] for r in recs]

        def create(s, include_current):
            lo, hi = bisect.bisect_left(rts, s), bisect.bisect_right(rts, s + d)
            inside = recs[lo:hi]
            if not inside and not include_current:
                return
            mx = max([r[0] for r in inside] + ([t] if include_current else []))
            wins[s] = [mx] + self._fold_new([r[1] for r in inside], xs if include_current else None)
            self.index.add(close(s + d), (k, s))
            changed[(k, s)] = None

        if t - d not in wins and st < close(t):                      # left window
            create(t - d, True)
        if t + 1 not in wins and st < close(t + 1 + d):              # right window
            create(t + 1, False)
        lo = bisect.bisect_left(rts, t - d - 1)
        for r_ts in sorted(set(rts[lo:bisect.bisect_left(rts, t)])):  # earlier records' right windows
            s = r_ts + 1
            if s not in wins and st < close(s + d):
                create(s, True)
        bisect.insort_right(recs, [t, value], key=lambda r: r[0])
        return True

    def _prune(self, entry, st):
        # a record at r is still needed while a window containing it, or its own right window
        # [r+1, r+1+d] (created when a later record arrives), can be open
        horizon = st - self.window.grace - self.window.max_difference - 1
        recs = entry[0]
        cut = bisect.bisect_left([r[0] for r in recs], horizon)
        if cut:
            del recs[:cut]

    @staticmethod
    def _empty(entry):
        return not entry[0] and not entry[1]

    def _result(self, k, found):
        start, w = found
        value = {"window_start": start, "window_end": start + self.window.max_difference}
        value.update(self._results(w))
        return k, value, w[0]


class SessionAggregateOp(_RecordWindowOp):
    """Session windows. Per key the store holds the open sessions ``[start, end, max_ts, *states]``.

    A record at t merges every session of its key with ``end >= t - gap`` and ``start <= t + gap``
    that is still open when the record is processed, into one ``[min start, max end]``; if that
    merged session is already closed the record is late and nothing changes. A closed session
    has been emitted and is deleted from the store (tombstoned in the changelog) at the end of
    its batch; it never merges again. This is Kafka Streams' behaviour: its session store
    retention defaults to gap + grace, and a fetch never returns a session older than that, so
    every record counts in at most one final result and the store stays bounded.
    """

    _S = 3   # session list layout: [start, end, max_ts, *states]

    def _windows_of(self, k, sessions):
        return [((k, s[0]), self.window.close_time(s[1])) for s in sessions]

    @staticmethod
    def _copy(sessions):
        return [] if sessions is None else [list(s) for s in sessions]

    @staticmethod
    def _find(sessions, start):
        for s in sessions:
            if s[0] == start:
                return s
        return None

    @staticmethod
    def _remove(sessions, start):
        for i, s in enumerate(sessions):
            if s[0] == start:
                return sessions.pop(i)
        return None

    def _add(self, k, sessions, t, st, value, xs, changed) -> bool:
        w = self.window
        gap, close = w.gap, w.close_time
        # closed sessions may still sit in the batch's working copy until the batch ends
        hit = [s for s in sessions if s[1] >= t - gap and s[0] <= t + gap and st < close(s[1])]
        start = min([t] + [s[0] for s in hit])
        end = max([t] + [s[1] for s in hit])
        if st >= close(end):
            return False
        hit.sort(key=lambda s: s[0])
        if hit:
            states = hit[0][3:]
            max_ts = hit[0][2]
            for s in hit[1:]:
                states = [a.combine(x, y) for a, x, y in zip(self.aggs, states, s[3:])]
                max_ts = max(max_ts, s[2])
            for s in hit:
                self.index.remove(close(s[1]), (k, s[0]))
                changed.pop((k, s[0]), None)
                sessions.remove(s)
            new = [start, end, max_ts] + list(states)
        else:
            new = [start, end, t] + [a.init() for a in self.aggs]
        self._grow(new, t, xs)
        sessions.append(new)
        sessions.sort(key=lambda s: s[0])
        self.index.add(close(end), (k, start))
        changed[(k, start)] = None
        return True

    def _prune(self, sessions, st):
        pass

    @staticmethod
    def _empty(sessions):
        return not sessions

    def _result(self, k, s):
        value = {"window_start": s[0], "window_end": s[1]}
        value.update(self._results(s[2:]))
        return k, value, s[2]
