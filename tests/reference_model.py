"""Reference model of DESIGN.md section 4 (time and window semantics).

A deliberately naive, per-record model of ONE task (a single input partition)
running ``group_by_key().window(spec).aggregate(..., emit=...)``.  It keeps every
accepted record and recomputes aggregates from scratch, so that each rule of
DESIGN.md section 4 is a couple of readable lines.  It imports nothing from
``streamproc``: the implementation is tested against it, never the other way
round.

Input: records ``(key, value_dict, timestamp)`` in arrival order.  Each record
is one test-driver ``pipe`` call, i.e. one batch.

Output (:func:`run`): one list of :class:`Result` per input record (the results
that batch produces), plus drop counters.

Rules modelled (DESIGN.md section 4, Kafka Streams semantics):

* Stream time = max event timestamp seen so far by the task, updated BEFORE the
  record is processed.  DESIGN.md defines it per task, so a record that is
  dropped for having a ``None`` key still advances it (``none_key_advances_time``
  switches to the processor-local reading that Kafka Streams' own window
  processors use, where a null-key record returns before touching stream time).
* Tumbling / hopping: epoch-aligned half-open ``[start, end)``; hopping windows
  are ``[k*advance, k*advance + size)`` for every ``k >= 0`` containing ``ts``
  (no window with a negative start is created, as in Kafka Streams).  Closed
  when ``stream_time >= end + grace``.  A record is applied to each containing
  window that is not closed and is late (dropped) for each closed one.
* Sliding (max_difference ``d``): see :class:`_SlidingKey`.  Windows are both
  ends inclusive, closed when ``stream_time > end + grace``; a record is late
  (dropped entirely) when ``stream_time > ts + d + grace``.
* Session (gap ``g``): a record at ``ts`` merges every session of its key with
  ``end >= ts - g`` and ``start <= ts + g`` (DESIGN.md does not exclude closed
  sessions, so neither does the model); sessions are ``[first, last]``;
  closed when ``stream_time > end + g + grace``; a record whose merged session
  would already be closed is late (dropped, nothing changes).
* ``emit="final"``: after each record, every window that exists and is closed
  at the current stream time, and was not emitted before, is emitted once.
  Windows that never close (stream time does not advance far enough) are never
  emitted.  A session that was merged away before closing is never emitted.
* ``emit="update"``: after each record, the current value of every window that
  record changed (created, or applied to) -- once per window per batch.
  Merged-away sessions produce no record in the model (Kafka Streams sends a
  tombstone for them; DESIGN.md does not pin that, see the tests).
* Result: key = group key; value = ``{"window_start", "window_end", <aggs>}``;
  timestamp = the largest event timestamp that went into the window.
  ``window_end`` is exclusive for tumbling/hopping, inclusive (last ms) for
  sliding and session windows.
* Records with a ``None`` key are dropped (and counted).

Aggregates are given as ``{name: (op, field)}`` with op in ``count`` (field
None), ``sum``, ``min``, ``max``, ``mean``, ``first``, ``last``, ``collect``.
``first``/``last``/``collect`` follow arrival order (DESIGN.md does not say;
this is the Flink FIRST_VALUE/LAST_VALUE reading).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class Tumbling:
    size: int
    grace: int = 0


@dataclass(frozen=True)
class Hopping:
    size: int
    advance: int
    grace: int = 0


@dataclass(frozen=True)
class Sliding:
    max_difference: int
    grace: int = 0


@dataclass(frozen=True)
class Session:
    gap: int
    grace: int = 0


WindowSpec = Tumbling | Hopping | Sliding | Session

COUNT_SUM = {"n": ("count", None), "total": ("sum", "v")}


@dataclass(frozen=True)
class Result:
    key: Any
    value: dict
    timestamp: int


@dataclass(frozen=True)
class _Rec:
    seq: int  # arrival position in the input
    key: Any
    value: dict
    ts: int


@dataclass
class ModelOutput:
    batches: list[list[Result]]  # batches[i] = results of input record i
    none_key_drops: int = 0
    late_records: int = 0  # records applied to no window because of lateness
    late_window_drops: int = 0  # (record, window) pairs dropped as late

    @property
    def results(self) -> list[Result]:
        return [r for b in self.batches for r in b]


# --------------------------------------------------------------------------- aggregates


def aggregate(aggs: dict[str, tuple[str, Any]], recs: Iterable[_Rec]) -> dict:
    recs = sorted(recs, key=lambda r: r.seq)
    out: dict[str, Any] = {}
    for name, (op, f) in aggs.items():
        vals = [r.value[f] for r in recs] if f is not None else None
        if op == "count":
            out[name] = len(recs)
        elif op == "sum":
            out[name] = sum(vals)
        elif op == "min":
            out[name] = min(vals)
        elif op == "max":
            out[name] = max(vals)
        elif op == "mean":
            out[name] = sum(vals) / len(vals)
        elif op == "first":
            out[name] = vals[0]
        elif op == "last":
            out[name] = vals[-1]
        elif op == "collect":
            out[name] = list(vals)
        else:  # pragma: no cover
            raise ValueError(op)
    return out


def _result(key, start, end, recs, aggs) -> Result:
    value = {"window_start": start, "window_end": end}
    value.update(aggregate(aggs, recs))
    return Result(key, value, max(r.ts for r in recs))


# --------------------------------------------------------------------------- window kinds
#
# Every window kind keeps, per key, a dict  window-id -> list of applied records.
# A window "exists" once a record has been applied to it.  ``emitted`` holds the
# windows whose final result was sent.


@dataclass
class _Windows:
    content: dict = field(default_factory=dict)  # (key, start, end) -> [_Rec]
    emitted: set = field(default_factory=set)


def _time_windows(spec: Tumbling | Hopping, ts: int) -> list[tuple[int, int]]:
    size = spec.size
    advance = spec.advance if isinstance(spec, Hopping) else spec.size
    # every k >= 0 with k*advance <= ts < k*advance + size
    return [
        (k * advance, k * advance + size)
        for k in range(0, ts // advance + 1)
        if k * advance <= ts < k * advance + size
    ]


class _TimeKind:
    """Tumbling and hopping windows: [start, end), closed at stream_time >= end + grace."""

    def __init__(self, spec):
        self.spec = spec
        self.w = _Windows()

    def closed(self, end: int, st: int) -> bool:
        return st >= end + self.spec.grace

    def process(self, rec: _Rec, st: int, out: ModelOutput) -> set:
        changed = set()
        applied = False
        for start, end in _time_windows(self.spec, rec.ts):
            wid = (rec.key, start, end)
            if self.closed(end, st):
                out.late_window_drops += 1
                continue
            self.w.content.setdefault(wid, []).append(rec)
            changed.add(wid)
            applied = True
        if not applied:
            out.late_records += 1
        return changed

    def closed_windows(self, st: int):
        for wid in self.w.content:
            if wid not in self.w.emitted and self.closed(wid[2], st):
                yield wid


class _SlidingKind:
    """Kafka Streams SlidingWindows, steady state (all timestamps >= d).

    Kafka Streams (SlidingWindows javadoc; KIP-450; KStreamSlidingWindowAggregate)
    creates "a new window each time a record enters or drops out of the sliding
    window".  For the set R of (non-late) record timestamps of a key the windows
    are, both ends inclusive:

    * the LEFT window ``[t - d, t]`` of every record t in R (the window the
      record enters as the right edge reaches it), and
    * the RIGHT window ``[t + 1, t + 1 + d]`` of a record t when it is not empty,
      i.e. some record of R lies in ``(t, t + 1 + d]`` (the window just after t
      drops out of the left edge).  If that record is exactly ``t + d + 1`` the
      right window of t and the left window of the other record coincide; it is
      one window.

    Every window holds all records whose timestamp lies in it, except the ones
    that arrived when the window was already closed (``stream_time > end +
    grace``).  A window that would be created at a moment it is already closed is
    never created (Kafka: the record's left window is dropped as expired; the
    previous record's right window is not created).  A window created later than
    some of its records (a right window, or a left window of an out-of-order
    record) starts with every accepted record in its range: since stream time
    only grows and the new window is open now, all of them arrived while it was
    open.

    A record is late for all windows (dropped, counted) when
    ``stream_time > ts + d + grace``, i.e. when even its right-most possible
    window ``[ts, ts + d]`` is closed (Kafka: ``ts + 1 + d <= stream_time - grace``).

    Records with ts < d are handled by Kafka Streams with a special
    ``[0, d]`` "combined window" (``processEarly``); the model does not cover
    them and the generators keep timestamps >= d.

    Known deviation of Kafka Streams' incremental algorithm from this
    description: Kafka fills a newly created window by copying the aggregate of
    a neighbouring window; if that neighbour was already closed, records that
    reached the new window's range after the neighbour closed are missing from
    the copy (see :func:`kafka_sliding_port` and test_reference_model.py).
    """

    def __init__(self, spec: Sliding):
        self.spec = spec
        self.w = _Windows()
        self.accepted: dict[Any, list[_Rec]] = {}

    def closed(self, end: int, st: int) -> bool:
        return st > end + self.spec.grace

    def process(self, rec: _Rec, st: int, out: ModelOutput) -> set:
        d, grace = self.spec.max_difference, self.spec.grace
        if rec.ts < d:
            raise ValueError("model covers sliding windows only for timestamps >= max_difference")
        if st > rec.ts + d + grace:
            out.late_records += 1
            return set()
        acc = self.accepted.setdefault(rec.key, [])
        acc.append(rec)
        times = {r.ts for r in acc}
        defined = {(t - d, t) for t in times}
        defined |= {(t + 1, t + 1 + d) for t in times if any(t < u <= t + 1 + d for u in times)}
        changed = set()
        applied = False
        for start, end in defined:
            wid = (rec.key, start, end)
            if wid not in self.w.content:
                if self.closed(end, st):
                    continue  # born closed: never exists
                self.w.content[wid] = [r for r in acc if start <= r.ts <= end]
                changed.add(wid)
                applied |= start <= rec.ts <= end
            elif start <= rec.ts <= end:
                if self.closed(end, st):
                    out.late_window_drops += 1
                    continue
                self.w.content[wid].append(rec)
                changed.add(wid)
                applied = True
        if not applied:
            # accepted (it still defines windows), but it landed in no open window
            out.late_records += 1
        return changed

    def closed_windows(self, st: int):
        for wid in self.w.content:
            if wid not in self.w.emitted and self.closed(wid[2], st):
                yield wid


class _SessionKind:
    """Session windows [first, last], closed when stream_time > end + gap + grace.

    ``merge_closed=True`` (default) is the literal DESIGN.md reading: a record
    merges EVERY session of its key within the gap, closed ones included, and is
    late only if the merged session is closed.  ``merge_closed=False`` is the
    alternative reading (closed sessions are final and never merged; in Kafka
    Streams this is what the session store's default retention of gap + grace
    makes happen, roughly: expired sessions are not returned by findSessions).
    """

    def __init__(self, spec: Session, merge_closed: bool = True):
        self.spec = spec
        self.merge_closed = merge_closed
        self.w = _Windows()

    def closed(self, end: int, st: int) -> bool:
        return st > end + self.spec.gap + self.spec.grace

    def process(self, rec: _Rec, st: int, out: ModelOutput) -> set:
        gap, ts = self.spec.gap, rec.ts
        merging = [
            wid
            for wid in self.w.content
            if wid[0] == rec.key
            and wid[2] >= ts - gap
            and wid[1] <= ts + gap
            and (self.merge_closed or not self.closed(wid[2], st))
        ]
        start = min([ts] + [w[1] for w in merging])
        end = max([ts] + [w[2] for w in merging])
        if self.closed(end, st):
            out.late_records += 1
            return set()
        recs = [rec]
        for wid in merging:
            recs.extend(self.w.content.pop(wid))
        new = (rec.key, start, end)
        self.w.content[new] = recs
        return {new}

    def closed_windows(self, st: int):
        for wid in self.w.content:
            if wid not in self.w.emitted and self.closed(wid[2], st):
                yield wid


def _kind(spec: WindowSpec, session_merge_closed: bool = True):
    if isinstance(spec, (Tumbling, Hopping)):
        return _TimeKind(spec)
    if isinstance(spec, Sliding):
        return _SlidingKind(spec)
    if isinstance(spec, Session):
        return _SessionKind(spec, session_merge_closed)
    raise TypeError(spec)


# --------------------------------------------------------------------------- driver


def run(
    records: list[tuple[Any, dict, int]],
    spec: WindowSpec,
    aggs: dict[str, tuple[str, Any]] = COUNT_SUM,
    emit: str = "final",
    *,
    none_key_advances_time: bool = True,
    session_merge_closed: bool = True,
) -> ModelOutput:
    """Feed ``records`` one per batch; return the results of every batch."""
    assert emit in ("final", "update")
    kind = _kind(spec, session_merge_closed)
    out = ModelOutput(batches=[])
    stream_time = None
    for seq, (key, value, ts) in enumerate(records):
        if ts < 0:
            raise ValueError("negative timestamp")
        batch: list[Result] = []
        if key is None:
            out.none_key_drops += 1
            if none_key_advances_time:
                stream_time = ts if stream_time is None else max(stream_time, ts)
            changed = set()
        else:
            stream_time = ts if stream_time is None else max(stream_time, ts)
            changed = kind.process(_Rec(seq, key, value, ts), stream_time, out)
        if emit == "update":
            for wid in sorted(changed, key=repr):
                batch.append(_result(wid[0], wid[1], wid[2], kind.w.content[wid], aggs))
        elif stream_time is not None:
            for wid in sorted(kind.closed_windows(stream_time), key=repr):
                kind.w.emitted.add(wid)
                batch.append(_result(wid[0], wid[1], wid[2], kind.w.content[wid], aggs))
        out.batches.append(batch)
    return out


# --------------------------------------------------------------------------- Kafka port
#
# A transcription of Kafka Streams' KStreamSlidingWindowAggregate.processReverse /
# createWindows (apache/kafka, streams/src/main/java/org/apache/kafka/streams/
# kstream/internals/KStreamSlidingWindowAggregate.java) for timestamps >= d.
# It is NOT the reference the implementation is held to (that is _SlidingKind);
# it exists to (1) check that _SlidingKind reads Kafka's window set and
# contents correctly wherever Kafka's incremental algorithm is exact, and (2)
# explain a disagreement: "the implementation copies Kafka's algorithm" vs
# "the implementation is wrong".  Aggregates are immutable tuples of records,
# so "copy the neighbour's aggregate" behaves like Kafka with immutable Longs.


def kafka_sliding_port(
    records: list[tuple[Any, dict, int]],
    spec: Sliding,
    aggs: dict[str, tuple[str, Any]] = COUNT_SUM,
    emit: str = "final",
) -> ModelOutput:
    d, grace = spec.max_difference, spec.grace
    store: dict[Any, dict[int, tuple[tuple, int]]] = {}  # key -> start -> (recs, max_ts)
    emitted: set = set()
    out = ModelOutput(batches=[])
    st = None
    for seq, (key, value, ts) in enumerate(records):
        batch: list[Result] = []
        if key is None:
            out.none_key_drops += 1
            out.batches.append(batch)
            continue
        st = ts if st is None else max(st, ts)
        close_time = st - grace
        rec = _Rec(seq, key, value, ts)
        touched: set[int] = set()
        ks = store.setdefault(key, {})

        def update(start, vat):
            if start + d >= close_time:
                recs, mx = vat
                new_ts = ts if not recs else max(ts, mx)
                ks[start] = (recs + (rec,), new_ts)
                touched.add(start)
            else:
                out.late_window_drops += 1

        def body():
            if ts + 1 + d <= close_time:
                out.late_records += 1
                return
            assert ts >= d, "port covers timestamps >= max_difference only"
            starts = set()
            left_agg = right_agg = None
            left_created = right_created = False
            prev = None
            for start in sorted((s for s in ks if max(0, ts - 2 * d) <= s <= ts + 1), reverse=True):
                starts.add(start)
                end = start + d
                vat = ks[start]
                if start == ts + 1:
                    right_created = True
                elif end > ts:
                    if right_agg is None:
                        right_agg = vat
                    update(start, vat)
                elif end == ts:
                    left_created = True
                    update(start, vat)
                    if vat[1] < ts:
                        prev = vat[1]
                    else:
                        return
                else:  # end < ts
                    left_agg = vat
                    prev = vat[1]
                    break
            # createWindows
            if prev is not None:
                prs = prev + 1
                if prs not in starts and prs + d >= ts:
                    update(prs, ((), ts))
            if not left_created:
                if prev is not None and ts - d <= prev:
                    update(ts - d, (left_agg[0], ts))
                else:
                    update(ts - d, ((), ts))
            if not right_created and right_agg is not None and right_agg[1] > ts:
                ks[ts + 1] = right_agg
                touched.add(ts + 1)

        body()
        if emit == "update":
            for start in sorted(touched):
                recs, mx = ks[start]
                batch.append(_result(key, start, start + d, recs, aggs))
        else:
            for k2, wins in sorted(store.items(), key=lambda kv: repr(kv[0])):
                for start in sorted(wins):
                    if (k2, start) not in emitted and st > start + d + grace:
                        emitted.add((k2, start))
                        batch.append(_result(k2, start, start + d, wins[start][0], aggs))
        out.batches.append(batch)
    return out
