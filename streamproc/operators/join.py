"""THE join rules (DESIGN section 4), one operator per join kind.

Every join's result is keyed by the left (stream) side's key; ``joiner(left_value, right_value)``
builds its value (default ``{"left": ..., "right": ...}``), the missing side of a left/outer
result being ``None``. Records with a ``None`` key are dropped and counted (``dropped_none_key``).

stream-table
    Each stream record joins the table's row for its key *as of the moment it is processed*:
    the table's view reads the store through the task's write cache, and the task processes
    the records of its inputs in timestamp order (``Task.process_many``), so a table update
    that comes first is seen. inner drops a record without a row; left emits ``joiner(v, None)``.
    Result timestamp: the stream record's.

stream-global-table
    The same, with the row picked by ``key(k, v)`` (default: the stream key) in the worker's
    global store.

table-table
    Every change of either side re-computes the key's result from both sides' current rows:
    inner needs both, left the left, outer either. A key whose result stops existing flows as
    ``None``; a key that had and has no result flows nothing. Result timestamp: the larger of
    the two sides'. The join keeps no store of its own: it is a view over its sides.

stream-stream, ``JoinWindow(before, after, grace)``
    A left record at ``tl`` matches right records with ``tl - before <= tr <= tl + after``.
    The window rules (the match range, when a record's own window closes) are the
    ``JoinWindow``'s (``streamproc.windows``: ``match_range``, ``close_time``); the operator takes
    them once as offsets (``close_offset``, ``match_range(0, side)``) and adds them per record.
    Records are processed as if one at a time in processing order (both sides of one batch
    interleaved by position), each at its stream time ``st`` (the operator computes a whole
    batch at once, ``_join_match``, with the same outcome):

    1. *expire*: every stored record whose own window is closed at ``st`` (left:
       ``st > tl + after + grace``, right: ``st > tr + before + grace``) leaves its store; under
       left/outer a left record that never matched emits ``joiner(v, None)`` (outer: a right one
       ``joiner(None, v)``), timestamp its own. Never earlier: only closing emits it.
    2. *late*: a record whose own window is already closed is dropped and counted (``late_records``).
    3. *match*: the record joins every stored record of the other side with its key, in range and
       with an open window: one result per match, timestamp ``max(tl, tr)``, emitted at once.
    4. *store*: it is kept in its side's store until its window closes.

    Store layout (kind ``"join"``, one store per side): key -> ``[due, [ts, value, matched], ...]``,
    ``due`` = the earliest close time among the key's records (the backend's time index orders
    keys by it, so records stored before a restart are found when they close). State is bounded
    by the window plus grace.
"""
from __future__ import annotations

from itertools import chain, compress, filterfalse
from operator import itemgetter

import numpy as np

from ..errors import CodecError
from ..kinds import NodeKind, StoreKind
from ..state.codec import check_value
from .base import Operator
from .batch import Batch
from .table import TableView, view_of
from ._fold import BackendSweep
from ._join_known import Known
from ._join_match import Entries, expiry_points, pairs, processing_order

_MAXSEQ = np.iinfo(np.int64).max
_SKIP = object()        # a joiner raised and the processing-error policy dropped the result


def default_joiner(left, right):
    return {"left": left, "right": right}


def _moves_time(node) -> bool:
    """Whether the records reaching ``node`` move the task's stream time: not if any of them comes from
    a repartition topic (that input's time is its upstream tasks' watermarks)."""
    todo, seen = [node], set()
    while todo:
        n = todo.pop()
        if n.id in seen:
            continue
        seen.add(n.id)
        if n.kind == NodeKind.REPARTITION_SOURCE:
            return False
        todo.extend(n.parents)
    return True


class _JoinBase(Operator):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        p = node.params
        self.how = p["how"]
        self.joiner = p["joiner"] or default_joiner

    def step(self, inputs: list, process):
        """Joins take their sides separately and apply the processing-error policy per joined pair."""
        if self.runs_every_batch or any(b is not None and len(b) for b in inputs):
            return self.process_sides(inputs[0], inputs[1] if len(inputs) > 1 else None)
        return None

    def _join(self, k, lv, rv, seq=None):
        """``joiner(lv, rv)``; if it raises, the processing-error policy applies to the record at ``seq``
        (``fail`` raises; otherwise this result is dropped: ``_SKIP``)."""
        try:
            return self.joiner(lv, rv)
        except Exception as e:  # noqa: BLE001 - a user function
            self.ctx.processing_error(self, e, k, seq)
            return _SKIP

    def _drop_none_keys(self, b: Batch | None) -> Batch | None:
        if b is None or not len(b):
            return None
        if None in b.keys:
            mask = [k is not None for k in b.keys]
            self._drop("none_key", b, mask)
            b = b.select(mask)
        return b if len(b) else None

    def _lookup_join(self, b: Batch, keys: list, rows: list) -> Batch:
        """``b``'s records joined with one looked-up row each (``None``: no row)."""
        joiner = self.joiner
        missing = None in rows
        if missing and self.how == "inner":
            keep = [r is not None for r in rows]
            b = b.select(keep)
            rows = [r for r in rows if r is not None]
            missing = False
        try:
            if missing:
                values = [joiner(v, None if r is None else r[1]) for v, r in zip(b.values, rows)]
            else:
                values = [joiner(v, r[1]) for v, r in zip(b.values, rows)]
        except Exception:  # noqa: BLE001 - record by record: the policy applies to the one that raised
            values = [self._join(k, v, None if r is None else r[1], sq)
                      for k, v, r, sq in zip(b.keys, b.values, rows, b.seq.tolist())]
            keep = [v is not _SKIP for v in values]
            b = Batch(b.keys, values, b.timestamps, b.stream_times, b.seq).select(keep)
            return b
        return Batch(b.keys, values, b.timestamps, b.stream_times, b.seq)


class StreamTableJoinOp(_JoinBase):
    """``stream.join(table)``: each record joins the table's current row for its key."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.table: TableView = view_of(ctx, node.parents[1])

    def process_sides(self, left: Batch | None, right: Batch | None) -> Batch:
        b = self._drop_none_keys(left)         # the table's own changes (right) produce nothing
        if b is None:
            return Batch.empty()
        return self._lookup_join(b, b.keys, self.table.rows(b.keys))


class StreamGlobalJoinOp(_JoinBase):
    """``stream.join(global_table, key=fn)``: each record joins the global table's row ``fn(k, v)``."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.key_fn = node.params["key"]
        self.name = node.params["global"]

    def process_sides(self, left: Batch | None, right: Batch | None) -> Batch:
        b = self._drop_none_keys(left)
        if b is None:
            return Batch.empty()
        fn = self.key_fn
        if fn is None:
            keys = b.keys
        else:
            keys, keep = [], []
            for k, v, sq in zip(b.keys, b.values, b.seq.tolist()):
                try:
                    keys.append(fn(k, v))
                    keep.append(True)
                except Exception as e:  # noqa: BLE001 - a user function: the policy applies
                    self.ctx.processing_error(self, e, k, sq)
                    keep.append(False)
            if not all(keep):
                b = b.select(keep)
                if not len(b):
                    return Batch.empty()
        try:
            rows = self.ctx.globals[self.name].rows(keys)
        except TypeError as e:      # an unhashable table key from key=
            raise self._fail(e, b.keys[0]) from e
        return self._lookup_join(b, keys, rows)


class TableTableJoinOp(_JoinBase, TableView):
    """``table.join(table)``: a view over both sides; each changed key's result re-computed."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.left: TableView = view_of(ctx, node.parents[0])
        self.right: TableView = view_of(ctx, node.parents[1])
        ctx.views[node.id] = self

    def _exists(self, l, r) -> bool:
        how = self.how
        return (l is not None and r is not None) if how == "inner" else (
            l is not None if how == "left" else (l is not None or r is not None))

    def rows(self, keys):
        out = []
        for k, l, r in zip(keys, self.left.rows(keys), self.right.rows(keys)):
            if not self._exists(l, r):
                out.append(None)
                continue
            ts = max(x[0] for x in (l, r) if x is not None)
            v = self._join(k, None if l is None else l[1], None if r is None else r[1])
            out.append(None if v is _SKIP else [ts, v])
        return out

    def process_sides(self, left: Batch | None, right: Batch | None) -> Batch:
        changed = _changes(left, right)
        if not changed:
            return Batch.empty()
        keys = list(changed)
        out = []
        for k, l, r in zip(keys, self.left.rows(keys), self.right.rows(keys)):
            res = self._result(k, l, r, *changed[k])
            if res is not None:
                out.append(res)
        if not out:
            return Batch.empty()
        out_k, out_v, out_old, out_ts, out_st, out_seq = (list(c) for c in zip(*out))
        order = np.argsort(np.asarray(out_seq, dtype=np.int64), kind="stable")
        b = Batch(out_k, out_v, np.asarray(out_ts, dtype=np.int64), np.asarray(out_st, dtype=np.int64),
                  np.asarray(out_seq, dtype=np.int64), out_old)
        return b if (order == np.arange(len(order))).all() else b.take(order)

    def _result(self, k, l, r, lc, rc):
        """The change of key ``k``'s result, ``(k, new, old, ts, st, seq)``, from its rows ``l``/``r`` now
        and its sides' changes ``lc``/``rc`` (``(old value, ts, st, seq)`` or None); None: no change
        flows (it had and has no result, or the joiner failed and the policy dropped it)."""
        lv, rv = (None if l is None else l[1]), (None if r is None else r[1])
        lold = lv if lc is None else lc[0]
        rold = rv if rc is None else rc[0]
        had, has = self._exists(lold, rold), self._exists(lv, rv)
        if not had and not has:
            return None
        ts = max([c[1] for c in (lc, rc) if c is not None]
                 + [row[0] for row, c in ((l, lc), (r, rc)) if c is None and row is not None])
        last = max((c for c in (lc, rc) if c is not None), key=lambda c: c[3])
        new = self._join(k, lv, rv, last[3]) if has else None
        old = self._join(k, lold, rold, last[3]) if had else None
        if new is _SKIP:
            return None
        return k, new, None if old is _SKIP else old, ts, last[2], last[3]


def _changes(left: Batch | None, right: Batch | None) -> dict:
    """Per key the batch changed, ``[left change or None, right change or None]``; a change is
    ``(old value before the batch, ts, st, seq)`` of the side's last record for the key."""
    changed: dict = {}
    for side, b in ((0, left), (1, right)):
        if b is None or not len(b):
            continue
        olds = b.olds if b.olds is not None else [None] * len(b)
        for k, old, t, st, sq in zip(b.keys, olds, b.timestamps.tolist(), b.stream_times.tolist(),
                                     b.seq.tolist()):
            if k is None:
                continue
            c = changed.setdefault(k, [None, None])
            prev = c[side]
            c[side] = (old if prev is None else prev[0], t, st, sq)
    return changed


class StreamStreamJoinOp(_JoinBase):
    """``stream.join(stream, window=JoinWindow(...))`` (see the module doc for the rules).

    A batch is joined at once (``_join_match``: its pairs, and where each record closes), then each
    changed key's records are written back to its side's store as a new value. Only a value the write
    cache holds (put since the last checkpoint) is changed in place; what the backend or a checkpoint
    holds never is (the memory backend keeps the very objects). Between batches the records live only
    in the stores (write cache, then backend); the operator keeps, per side, what it knows of the keys
    the store holds (``_join_known.Known``: due times, keys by due time), so it finds what closes
    without reading the store and never looks up a key the store cannot hold. Keys stored before it
    was built are found through the backend's time index (``BackendSweep``); until that sweep is
    done, every key of a batch is looked up.
    """

    runs_every_batch = True              # stream time may have closed join windows (left/outer results)

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        w = node.params["window"]
        self.window = w
        left, right = node.params["stores"]
        self.stores = (ctx.state.store(left.name), ctx.state.store(right.name))
        # per side (0 left, 1 right), the window rules as offsets from a record's timestamp t: its window
        # closes at t + close_after[side]; it matches the other side's records in t + match[side]
        self.close_after = (w.close_offset("left"), w.close_offset("right"))
        self.match = (w.match_range(0, "left"), w.match_range(0, "right"))
        self._close_arr = np.asarray(self.close_after, dtype=np.int64)
        self.emit_unmatched = (self.how in ("left", "outer"), self.how == "outer")
        # a side read from a repartition topic does not move the task's time (its watermarks do): its
        # records are judged at their own stream time but expire nothing (runtime/watermarks.py)
        self._moves = tuple(_moves_time(p) for p in node.parents)
        self._start_index()

    def _start_index(self) -> None:
        """What the operator knows of its stores (``_join_known.Known``, per side). Built again when the
        write caches were discarded (what it knew may have been undone)."""
        self._known = tuple(Known(self.emit_unmatched[side]) for side in (0, 1))
        self._expired_to: int | None = None
        self._generation = tuple(s.generation for s in self.stores)
        self._sweeps = [BackendSweep(s, StoreKind.JOIN) for s in self.stores]
        for side, (store, sweep) in enumerate(zip(self.stores, self._sweeps)):
            if not sweep.indexed:                 # a backend without a time index: read the store once
                self._known[side].read(store.items())

    # ------------------------------------------------------------------ batch
    def process_sides(self, left: Batch | None, right: Batch | None) -> Batch:
        if tuple(s.generation for s in self.stores) != self._generation:   # write caches discarded
            self._start_index()
        arr = _Arrivals(self._drop_none_keys(left), self._drop_none_keys(right), self._moves, self._close_arr)
        # st_end: the batch's last stream time (its sources stamped it)
        exp_pos, exp_st = expiry_points(arr.st, arr.moves, self._expired_to, self.ctx.state.stream_time)
        if arr.n_late:
            self.ctx.drop("late", self.metric_label, arr.n_late, arr.first_late_seq)
        self._storable(arr.keys, arr.values)          # records are stored: fail now if the codec cannot
        bound = int(exp_st[-1]) if len(exp_st) else None
        codes = dict.fromkeys(arr.keys)
        batch_keys = dict.fromkeys(codes)
        stored = _Stored()
        for side in (0, 1):
            keys = self._to_load(side, batch_keys, bound)
            if keys:
                stored.add(side, keys, self.stores[side].get_many(keys), codes)
        e, keys_of = self._entries(arr, stored, codes)
        by_side = (e.by_key(0), e.by_key(1))
        later, earlier = pairs(e, by_side, self.match)
        matched = e.matched.copy()
        matched[later] = True
        matched[earlier] = True
        closes_at = np.searchsorted(exp_st, e.close, "left")
        out = self._results(arr, e, stored.values + arr.values, keys_of, later, earlier, matched, closes_at,
                            exp_pos, exp_st)
        if bound is not None:
            self._expired_to = bound
        flags = (matched, closes_at < len(exp_st))
        for side in (0, 1):
            self._write_back(side, e, by_side[side], stored, arr, keys_of, flags)
        return out

    def _to_load(self, side: int, batch_keys: dict, bound: int | None) -> list:
        """The keys of ``side`` to read: the batch's keys the store may hold, and those due by ``bound``
        (a due key whose one record closes and emits nothing is deleted unread)."""
        known, sweep = self._known[side], self._sweeps[side]
        known.sync(self.stores[side])
        if sweep.upto is None:                       # every key the store holds is known
            keys = list(filter(known.due.__contains__, batch_keys))
        else:
            keys = list(batch_keys)
        if bound is not None:
            closing, gone = known.closing(bound, batch_keys)
            if gone:
                known.delete(self.stores[side], gone)
            closing += sweep.due(bound)
            if closing:
                keys = list(dict.fromkeys(keys + closing))
        return keys

    def _entries(self, arr: "_Arrivals", stored: "_Stored", codes: dict):
        """The batch's entries (``_join_match.Entries``): the stored records read, then the arrivals that
        are not late; and the keys by code."""
        for i, k in enumerate(codes):
            codes[k] = i
        keys_of = list(codes)
        n_st = len(stored.t)
        counts = np.asarray(stored.counts, dtype=np.int64)
        code = np.concatenate([np.repeat(np.fromiter(map(codes.__getitem__, stored.keys), dtype=np.int64,
                                                     count=len(stored.keys)), counts),
                               np.fromiter(map(codes.__getitem__, arr.keys), dtype=np.int64, count=len(arr.keys))])
        side = np.concatenate([np.repeat(np.asarray(stored.sides, dtype=np.int8), counts), arr.side_kept])
        t = np.concatenate([np.asarray(stored.t, dtype=np.int64), arr.t_kept])
        pos = np.concatenate([np.full(n_st, -1, dtype=np.int64), arr.pos])
        st = np.concatenate([np.zeros(n_st, dtype=np.int64), arr.st_kept])
        matched = np.concatenate([np.asarray(stored.m, dtype=bool), np.zeros(len(arr.keys), dtype=bool)])
        return Entries(side, code, pos, t, t + self._close_arr[side], matched, st, n_st), keys_of

    def _results(self, arr, e, values: list, keys_of: list, later, earlier, matched, closes_at,
                 exp_pos, exp_st) -> Batch:
        """The batch's results in processing order: at each expiry point the records closing unmatched
        (left/outer), then at each record its matches."""
        emit = np.asarray(self.emit_unmatched, dtype=bool)
        un = np.flatnonzero((closes_at < len(exp_st)) & ~matched & emit[e.side])
        un = un[np.argsort(e.close[un], kind="stable")]
        at = closes_at[un]
        none = len(values)                               # index of None in ``values`` below
        left_of_pair = np.where(e.side[later] == 0, later, earlier)
        right_of_pair = np.where(e.side[later] == 0, earlier, later)
        un_left = e.side[un] == 0
        li = np.concatenate([np.where(un_left, un, none), left_of_pair])
        ri = np.concatenate([np.where(un_left, none, un), right_of_pair])
        if not len(li):
            return Batch.empty()
        un_pos = exp_pos[at]
        pair_pos = e.pos[later]
        seq_ext = np.append(arr.seq, _MAXSEQ)
        order = np.argsort(np.concatenate([un_pos * 2, pair_pos * 2 + 1]), kind="stable")
        li, ri = li[order], ri[order]
        code = np.concatenate([e.code[un], e.code[later]])[order]
        ts = np.concatenate([e.t[un], np.maximum(e.t[later], e.t[earlier])])[order]
        st = np.concatenate([exp_st[at], e.st[later]])[order]
        seq = np.concatenate([seq_ext[un_pos], seq_ext[pair_pos]])[order]
        is_pair = order >= len(un)
        values = values + [None]
        keys = [keys_of[c] for c in code.tolist()]
        joiner = self.joiner
        li_l, ri_l = li.tolist(), ri.tolist()
        try:
            out = [joiner(values[a], values[b]) for a, b in zip(li_l, ri_l)]
        except Exception:  # noqa: BLE001 - result by result: the policy applies to the one that raised
            out = [self._join(k, values[a], values[b], sq if p else None)
                   for k, a, b, sq, p in zip(keys, li_l, ri_l, seq.tolist(), is_pair.tolist())]
            keep = [v is not _SKIP for v in out]
            if not all(keep):
                return Batch(keys, out, ts, st, seq).select(keep)
        return Batch(keys, out, ts, st, seq)

    def _write_back(self, side: int, e, idx: np.ndarray, stored: "_Stored", arr, keys_of: list, flags) -> None:
        """Write the changed keys of ``side`` (``idx``: its entries by key): a key with records left gets a
        new value ``[due, [ts, value, matched], ...]``, one left without any is deleted."""
        if not len(idx):
            return
        matched, closed = flags
        code = e.code[idx]
        starts = np.flatnonzero(np.concatenate([[True], code[1:] != code[:-1]]))
        new = e.pos[idx] >= 0
        flipped = matched[idx] != e.matched[idx]
        renewed = np.logical_or.reduceat(new | closed[idx], starts)      # records added or closed
        changed = renewed | np.logical_or.reduceat(flipped, starts)
        store = self.stores[side]
        if not renewed.all():
            changed &= ~self._flip_in_place(store, idx, starts, changed & ~renewed, flipped, keys_of, code, stored)
        keep = ~closed[idx]
        due = np.minimum.reduceat(np.where(keep, e.close[idx], _MAXSEQ), starts)
        left = due < _MAXSEQ                             # the key still holds records
        had = np.logical_or.reduceat(~new, starts)       # it had records in the store
        puts = np.flatnonzero(changed & left)
        counts = np.add.reduceat(keep.astype(np.int64), starts)
        if len(puts):
            in_put = np.repeat(changed & left, np.diff(np.append(starts, len(idx))))
            sel = idx[in_put & keep]
            ents = self._entry_lists(e, sel, stored, arr, matched)
            put_keys = [keys_of[c] for c in code[starts[puts]].tolist()]
            put_dues = due[puts].tolist()
            if not had[puts].all():
                self._known[side].created(store, list(compress(put_keys, (~had[puts]).tolist())))
            if len(ents) == len(puts):                      # one record per key
                store.put_many(put_keys, [[d, x] for d, x in zip(put_dues, ents)])
            else:
                bounds = np.concatenate([[0], np.cumsum(counts[puts])]).tolist()
                store.put_many(put_keys, [[d] + ents[a:b] for d, a, b in zip(put_dues, bounds, bounds[1:])])
        dels = np.flatnonzero(changed & ~left & had)
        if len(dels):
            gone = [keys_of[c] for c in code[starts[dels]].tolist()]
            self._known[side].delete(store, gone)
            self._known[side].forget(gone)
        held = np.flatnonzero(left)                       # written, or read and known from now on
        unmatched = np.logical_or.reduceat(keep & ~matched[idx], starts)[held]
        self._known[side].learn([keys_of[c] for c in code[starts[held]].tolist()], due[held],
                                counts[held] > 1, unmatched)

    @staticmethod
    def _flip_in_place(store, idx, starts, flip_only, flipped, keys_of, code, stored) -> np.ndarray:
        """Mark matched, in place, the records of keys whose only change is that (``flip_only``) and whose
        value the write cache holds (a list put since the last checkpoint: the operator's own until the
        checkpoint takes it). A record's list may be shared with the backend's value (values reuse the
        unchanged records they were read with): it is replaced in the key's value, never changed.
        Returns which keys were done so (they need no new value)."""
        done = np.zeros(len(starts), dtype=bool)
        groups = np.flatnonzero(flip_only)
        if not len(groups):
            return done
        keys = [keys_of[c] for c in code[starts[groups]].tolist()]
        mine = np.fromiter(store.holds(keys), dtype=bool, count=len(groups))
        if not mine.any():
            return done
        done[groups[mine]] = True
        sizes = np.diff(np.append(starts, len(idx)))
        rank = np.arange(len(idx)) - np.repeat(starts, sizes)           # place among the key's records
        at = np.flatnonzero(np.repeat(done, sizes) & flipped)
        group_of = np.repeat(np.arange(len(starts)), sizes)
        key_of_group = dict(zip(groups[mine].tolist(), compress(keys, mine.tolist())))
        entries = stored.entries
        for j, i, g in zip(rank[at].tolist(), idx[at].tolist(), group_of[at].tolist()):
            e = entries[i]
            store.get(key_of_group[g])[1 + j] = [e[0], e[1], 1]
        return done

    @staticmethod
    def _entry_lists(e, sel: np.ndarray, stored: "_Stored", arr, matched) -> list:
        """The stored records ``[ts, value, matched]`` of entries ``sel``: a stored one as read unless it
        just matched; a new list for the others."""
        n_st = e.n_stored
        fresh = (sel >= n_st) | (matched[sel] != e.matched[sel])
        if not fresh.any():
            return [stored.entries[i] for i in sel.tolist()]
        sel_l = sel.tolist()
        ents = [stored.entries[i] if i < n_st else None for i in sel_l]
        t = e.t[sel].tolist()
        m = matched[sel].astype(np.int64).tolist()
        for j in np.flatnonzero(fresh).tolist():
            i = sel_l[j]
            ents[j] = [t[j], stored.values[i] if i < n_st else arr.values[i - n_st], m[j]]
        return ents

    def _storable(self, keys: list, values: list) -> None:
        """CodecError (naming the join and the key) for the first value the store could not hold. One
        check of all the values together (a list holds what each of its elements can), record by
        record only if that fails."""
        try:
            check_value([v for v in values if type(v) not in _PLAIN])
            return
        except CodecError:
            pass
        for k, v in zip(keys, values):
            try:
                check_value(v)
            except CodecError as e:
                where = f" (defined at {self.node.where})" if self.node.where else ""
                raise CodecError(f"join {self.node.label!r}{where} cannot store the record of key {k!r}: "
                                 f"{e.reason}") from None


_PLAIN = frozenset({str, int, float, bool, type(None), bytes})


class _Arrivals:
    """Both sides' records of a batch in processing order (``_join_match.processing_order``), as columns:
    ``side``, ``t``, ``st``, ``seq`` and ``moves`` of every record (late ones too: they move time), and
    for the records that are not late, ``keys``, ``values``, their position ``pos`` and ``side_kept``,
    ``t_kept``, ``st_kept``."""

    __slots__ = ("side", "t", "st", "seq", "moves", "keys", "values", "pos", "side_kept", "t_kept", "st_kept",
                 "n_late", "first_late_seq")

    def __init__(self, left: Batch | None, right: Batch | None, moves: tuple, close_after: np.ndarray):
        left = Batch.empty() if left is None else left
        right = Batch.empty() if right is None else right
        side, index = processing_order(left.seq, right.seq)
        flat = index + np.where(side == 1, len(left), 0)         # index into both sides' columns joined
        self.t = np.concatenate([left.timestamps, right.timestamps])[flat]
        self.st = np.concatenate([left.stream_times, right.stream_times])[flat]
        self.seq = np.concatenate([left.seq, right.seq])[flat]
        self.side = side
        self.moves = np.asarray(moves, dtype=bool)[side]
        late = self.st >= self.t + close_after[side]
        self.n_late = int(late.sum())
        self.first_late_seq = int(self.seq[np.argmax(late)]) if self.n_late else None
        kept = np.flatnonzero(~late)
        keys, values = left.keys + right.keys, left.values + right.values
        at = flat[kept].tolist()
        self.keys = [keys[i] for i in at]
        self.values = [values[i] for i in at]
        self.pos = kept
        self.side_kept, self.t_kept, self.st_kept = side[kept], self.t[kept], self.st[kept]




class _Stored:
    """The stored records read for a batch, flattened: per key its side, key and record count; per
    record its timestamp, value, matched flag and the stored list itself."""

    __slots__ = ("sides", "keys", "counts", "t", "values", "m", "entries")

    def __init__(self):
        self.sides, self.keys, self.counts = [], [], []
        self.t, self.values, self.m, self.entries = [], [], [], []

    def add(self, side: int, keys: list, found: list, codes: dict) -> None:
        """The values ``found`` for ``keys`` of ``side`` (None: the store holds no such key)."""
        if None in found:
            has = [v is not None for v in found]
            keys, found = list(compress(keys, has)), list(compress(found, has))
        if not keys:
            return
        codes.update(dict.fromkeys(filterfalse(codes.__contains__, keys)))
        sizes = np.fromiter(map(len, found), dtype=np.int64, count=len(found))
        self.sides += [side] * len(keys)
        self.keys += keys
        self.counts += (sizes - 1).tolist()
        if (sizes == 2).all():                                        # one record each: [due, record]
            ents = list(map(_second, found))
        else:
            record = np.ones(int(sizes.sum()), dtype=bool)
            record[np.cumsum(sizes) - sizes] = False                  # the due times
            ents = list(compress(chain.from_iterable(found), record.tolist()))
        self.entries += ents
        self.t += map(_first, ents)
        self.values += map(_second, ents)
        self.m += map(_third, ents)


_first, _second, _third = itemgetter(0), itemgetter(1), itemgetter(2)
