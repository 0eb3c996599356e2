"""Event time through repartition topics (DESIGN section 4): watermark records and input clocks.

A repartition partition interleaves the records of every upstream task that writes the topic, in
whatever order they happened to run. Were the downstream task's stream time the largest timestamp
it has seen, one upstream task running ahead (a backlog read a fetch at a time) would close windows
the others still feed. So time crosses a repartition topic as *watermarks*, as in Flink:

- **Writer.** At each checkpoint every task that feeds repartition topics writes its stream time as
  a watermark record to every partition of each of them, in the same transaction as its data: key
  :data:`WATERMARK_KEY` (reserved: encoded keys never start with 0x00), value the internal codec of
  ``{"v", "sub", "p", "t", "idle"}`` (upstream sub-topology, its partition, the time, and whether
  all of its inputs are caught up). A record whose own upstream stream time is ahead of its
  timestamp (it came out of order, or an aggregation emitted it) carries that time in a header
  (``operators/io.py`` ``STREAM_TIME_HEADER``); in-order records carry nothing. When every reader of
  the topic uses that time only to judge lateness for tumbling/hopping windows
  (``Placement.lateness_windows``, ``plan/placement.py``), a record carries it only when it closes one
  of the record's windows: below that, the reader decides the same without it.
- **Reader.** A task keeps, per repartitioned input, the newest watermark of each upstream task
  (:class:`InputClock`; their number is known from the plan). The input's time is the minimum over
  them once all have reported; idle upstream tasks do not hold it back (all idle: the largest). It
  never goes back and is persisted with the task's state. Watermark records are not records: they
  are never counted, never reach operators.
- **Lateness.** Each record is judged against ``max(task stream time, its upstream's stream time
  when it was written)``: late data is what is late in its own source partition (or behind a window
  the task already closed), whatever the interleaving. Closing windows uses the task's time alone.
"""
from __future__ import annotations

import logging

from ...errors import CodecError
from ...state.codec import decode_value, encode_value

log = logging.getLogger("streamproc.watermarks")

WATERMARK_KEY = b"\x00streamproc.watermark"
_FORMAT = 1

__all__ = ["WATERMARK_KEY", "encode", "decode", "InputClock"]


def encode(sub: int, partition: int, time: int, idle: bool) -> bytes:
    return encode_value({"v": _FORMAT, "sub": int(sub), "p": int(partition), "t": int(time), "idle": bool(idle)})


def decode(value: bytes | None) -> tuple[tuple[int, int], int, bool] | None:
    """``((upstream sub-topology, partition), time, idle)``, or None for bytes that are no watermark this
    streamproc writes (untrusted input: logged, never fatal - a watermark only moves time)."""
    try:
        d = decode_value(value)
    except CodecError as e:
        log.warning("ignoring an unreadable watermark record: %s", e)
        return None
    if (not isinstance(d, dict) or d.get("v") != _FORMAT or not all(
            type(d.get(f)) is int for f in ("sub", "p", "t")) or type(d.get("idle")) is not bool):
        log.warning("ignoring a watermark record of an unknown format: %.80r", d)
        return None
    return (d["sub"], d["p"]), d["t"], d["idle"]


class InputClock:
    """The time of one repartitioned input of a task (see the module doc)."""

    def __init__(self, upstreams: int, marks: list | None = None, time: int = -1):
        self.upstreams = upstreams
        self.marks: dict = {}              # (sub-topology, partition) -> [time, idle]
        for sub, p, t, idle in marks or ():
            self.marks[(sub, p)] = [t, idle]
        self.time = time

    def update(self, upstream: tuple, time: int, idle: bool) -> None:
        old = self.marks.get(upstream)
        self.marks[upstream] = [max(time, old[0]) if old is not None else time, idle]

    def advance(self) -> int:
        """Recompute the input's time from the marks; returns it (never lower than before)."""
        if self.upstreams and len(self.marks) >= self.upstreams:
            active = [t for t, idle in self.marks.values() if not idle]
            t = min(active) if active else max(t for t, _ in self.marks.values())
            if t > self.time:
                self.time = t
        return self.time

    def held_back_by(self) -> tuple | None:
        """The upstream task whose watermark holds this input back (None: none, or not all reported)."""
        active = [(t, k) for k, (t, idle) in self.marks.items() if not idle]
        return min(active)[1] if active and len(self.marks) >= self.upstreams else None

    def dump(self) -> list:
        return [[k[0], k[1], t, idle] for k, (t, idle) in sorted(self.marks.items())]
