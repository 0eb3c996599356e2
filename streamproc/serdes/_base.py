"""The `Serde` base class and the helpers every serde shares.

A serde turns one value into bytes and back. `None` always passes through
unchanged in both directions (a Kafka tombstone). Every failure is raised as a
`SerdeError` that names the serde and says what was wrong; the batched
variants also set ``error.index`` to the position of the failing item so the
runtime can map it to an offset and call ``error.located(...)``.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from streamproc.errors import SerdeError

__all__ = ["Serde", "SerdeError"]


def _type_name(value: Any) -> str:
    t = type(value)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _preview(value: Any, limit: int = 60) -> str:
    """A short repr for error messages (never the whole record)."""
    try:
        text = repr(value)
    except Exception:  # pragma: no cover - a broken __repr__
        text = f"<{_type_name(value)}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Serde:
    """Base class of every serde.

    Subclasses implement `serialize` and `deserialize` (handling ``None`` and
    raising `SerdeError` through `_error`) and may override the batched
    variants with something faster. A user-defined subclass that only
    implements the two single-record methods gets correct batched variants,
    and any raw exception it raises is turned into a `SerdeError`.

    Subclasses that cache unpicklable helpers (bound methods of
    ``struct.Struct`` ...) keep them in attributes starting with ``_c_`` and
    rebuild them in `_bind`, so serdes survive pickling into worker processes.
    """

    # ----------------------------------------------------------- identity
    @property
    def name(self) -> str:
        """Short name used in error messages, e.g. ``"Json"``."""
        return type(self).__name__

    def describe(self) -> str:
        """One line for topology descriptions."""
        return self.name

    def fingerprint(self) -> str:
        """A stable string identifying the byte format (class and parameters).

        Two serdes with the same fingerprint read each other's bytes; a change
        of fingerprint on a store's key or value serde means old state cannot
        be read with the new definition.
        """
        return f"{type(self).__module__}.{type(self).__qualname__}()"

    def __repr__(self) -> str:
        return self.name

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Serde):
            return NotImplemented
        return type(self) is type(other) and self.fingerprint() == other.fingerprint()

    def __hash__(self) -> int:
        return hash((type(self), self.fingerprint()))

    # ----------------------------------------------------------- pickling
    def _bind(self) -> None:
        """(Re)build cached helpers; called by __init__ and after unpickling."""

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_c_")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._bind()

    # ----------------------------------------------------------- one record
    def serialize(self, value: Any) -> bytes | None:
        raise NotImplementedError(f"{type(self).__name__}.serialize")

    def deserialize(self, data: bytes | None) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.deserialize")

    # ----------------------------------------------------------- batches
    def serialize_many(self, values: Iterable[Any]) -> list:
        values = values if isinstance(values, (list, tuple)) else list(values)
        ser = self.serialize
        try:
            return [ser(v) for v in values]
        except Exception:
            pass
        return self._one_by_one(ser, values, "serialize")

    def deserialize_many(self, datas: Iterable[bytes | None]) -> list:
        datas = datas if isinstance(datas, (list, tuple)) else list(datas)
        de = self.deserialize
        try:
            return [de(d) for d in datas]
        except Exception:
            pass
        return self._one_by_one(de, datas, "deserialize")

    # ----------------------------------------------------------- helpers
    def _error(self, reason: str) -> SerdeError:
        return SerdeError(reason, serde=self.name)

    def _one_by_one(self, fn: Callable[[Any], Any], items: list | tuple, verb: str) -> list:
        """The slow path of a batch: run `fn` item by item.

        Used after the fast path failed (or could not handle an item, e.g. a
        tombstone in a path that does not check for None). Returns the full
        result when every item succeeds; otherwise raises the `SerdeError` of
        the first failing item with ``.index`` set. (Try blocks cost nothing
        in 3.11 until something raises.)
        """
        out: list = []
        append = out.append
        for i, item in enumerate(items):
            try:
                append(fn(item))
            except SerdeError as exc:
                raise _at_index(exc, i) from exc.__cause__
            except Exception as exc:
                raise _at_index(self._error(f"{verb} raised {type(exc).__name__}: {exc}"), i) from exc
        return out


def _at_index(exc: SerdeError, index: int) -> SerdeError:
    """`exc` re-issued for item `index` of a batch: the message says so and
    ``.index`` carries it for the caller (which maps it to an offset)."""
    err = SerdeError(f"{exc.reason} (batch item {index})", serde=exc.serde, topic=exc.topic,
                     partition=exc.partition, offset=exc.offset)
    err.index = index
    return err
