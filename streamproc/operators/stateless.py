"""Record-at-a-time user functions applied to whole batches."""
from __future__ import annotations

import numpy as np

from .base import Operator
from .batch import Batch


def _first_failure(op, fn, batch, call):
    """Re-run ``fn`` record by record to find the one that raised, and wrap it for a person."""
    for k, v in zip(batch.keys, batch.values):
        try:
            call(fn, k, v)
        except Exception as e:  # noqa: BLE001 - re-raised with context
            return op._fail(e, k)
    return None


class MapOp(Operator):
    def process(self, b: Batch) -> Batch:
        fn = self.node.params["fn"]
        try:
            pairs = [fn(k, v) for k, v in zip(b.keys, b.values)]
            keys = [p[0] for p in pairs]
            values = [p[1] for p in pairs]
            if any(len(p) != 2 for p in pairs):
                raise ValueError("map functions must return a (key, value) pair")
        except Exception as e:  # noqa: BLE001
            raise (_first_failure(self, fn, b, lambda f, k, v: _pair(f(k, v))) or self._fail(e, None)) from e
        return b.with_columns(keys, values)


def _pair(p):
    k, v = p
    return k, v


class MapValuesOp(Operator):
    def process(self, b: Batch) -> Batch:
        fn = self.node.params["fn"]
        try:
            values = [fn(v) for v in b.values]
        except Exception as e:  # noqa: BLE001
            raise (_first_failure(self, fn, b, lambda f, k, v: f(v)) or self._fail(e, None)) from e
        return b.with_columns(b.keys, values)


class SelectKeyOp(Operator):
    """``group_by(fn)``: the new key is ``fn(key, value)``."""

    def process(self, b: Batch) -> Batch:
        fn = self.node.params["fn"]
        try:
            keys = [fn(k, v) for k, v in zip(b.keys, b.values)]
        except Exception as e:  # noqa: BLE001
            raise (_first_failure(self, fn, b, lambda f, k, v: f(k, v)) or self._fail(e, None)) from e
        return b.with_columns(keys, b.values)


class FilterOp(Operator):
    def process(self, b: Batch) -> Batch:
        fn = self.node.params["fn"]
        try:
            mask = [bool(fn(k, v)) for k, v in zip(b.keys, b.values)]
        except Exception as e:  # noqa: BLE001
            raise (_first_failure(self, fn, b, lambda f, k, v: bool(f(k, v))) or self._fail(e, None)) from e
        return b.select(mask)


class PeekOp(Operator):
    def process(self, b: Batch) -> Batch:
        fn = self.node.params["fn"]
        for k, v in zip(b.keys, b.values):
            try:
                fn(k, v)
            except Exception as e:  # noqa: BLE001
                raise self._fail(e, k) from e
        return b


class FlatMapOp(Operator):
    def process(self, b: Batch) -> Batch:
        fn = self.node.params["fn"]
        keys, values, src = [], [], []
        for i, (k, v) in enumerate(zip(b.keys, b.values)):
            try:
                for nk, nv in fn(k, v):
                    keys.append(nk)
                    values.append(nv)
                    src.append(i)
            except Exception as e:  # noqa: BLE001
                raise self._fail(e, k) from e
        idx = np.asarray(src, dtype=np.int64)
        return Batch(keys, values, b.timestamps[idx], b.stream_times[idx], b.seq[idx])


class BranchOp(Operator):
    """Splits a batch: each record goes to the first predicate that holds (or nowhere)."""

    def process(self, b: Batch) -> list[Batch]:
        preds = self.node.params["predicates"]
        choice = []
        for k, v in zip(b.keys, b.values):
            c = -1
            try:
                for i, p in enumerate(preds):
                    if p(k, v):
                        c = i
                        break
            except Exception as e:  # noqa: BLE001
                raise self._fail(e, k) from e
            choice.append(c)
        return [b.select([c == i for c in choice]) for i in range(len(preds))]

    def nothing(self) -> list[Batch]:
        return [Batch.empty() for _ in self.node.params["predicates"]]

    def combine(self, outs: list) -> list[Batch]:
        return [Batch.concat([o[j] for o in outs if o is not None]) for j in range(len(self.node.params["predicates"]))]


class BranchOutOp(Operator):
    """Picks one output of its branch (the task hands it the list)."""

    def process(self, outs: list[Batch]) -> Batch:
        return outs[self.node.params["index"]]

    def step(self, inputs: list, process):
        return None if inputs[0] is None else self.process(inputs[0])


class MergeOp(Operator):
    def process(self, b: Batch) -> Batch:
        return b
