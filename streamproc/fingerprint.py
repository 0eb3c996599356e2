"""Deterministic identities of functions and store definitions (DESIGN section 5).

A stateful operator's store carries a fingerprint of its definition. It is stored with the
state and in the changelog, and a restart refuses state written by another definition, so the
fingerprint must be the same for the same definition in every process and on every machine
(whatever ``PYTHONHASHSEED``, file location or line numbers) and different when the definition
really changes.

API
---
``function_identity(fn) -> bytes``
    A canonical byte description of a callable.
``fingerprint_function(fn) -> str``
    The first 16 hex characters of the sha256 of ``function_identity(fn)``.
``fingerprint_value(x) -> str``
    The same for a captured value (plain data by value, functions by identity).
``digest(*parts) -> str``
    The first 16 hex characters of the sha256 of the canonical encoding of ``parts`` (str, bytes,
    int, float, bool, None and tuples/lists of those; a ``StrEnum`` member such as a
    ``streamproc.kinds.StoreKind`` is its plain string value, so ``digest(StoreKind.JOIN)`` is
    ``digest("join")``); combines a store's definition parts (kind, window description,
    aggregation fingerprints) into one fingerprint.

Encoding
--------
Every item is written as a one-byte type tag, an 8-byte big-endian length and a payload, so the
encoding is unambiguous. Nothing goes through ``repr()`` (which can hold memory addresses),
``hash()`` (seeded per process), file paths or line numbers. Set-like collections are written in
the order of their elements' encoded bytes, dicts in the order of their keys' encoded bytes.

What a function's identity includes
-----------------------------------
* Its code: ``co_code`` (on 3.11+ this is the de-specialised bytecode with zeroed inline caches,
  so it does not change when the interpreter quickens a hot function), ``co_consts`` recursively
  (nested code objects of comprehensions, generator expressions, lambdas and inner functions by the
  same rule plus their ``co_name``; frozenset constants such as ``x in {"a", "b"}`` sorted),
  ``co_names``, ``co_varnames``, ``co_freevars``, ``co_cellvars``, the argument counts,
  ``co_flags`` and ``co_exceptiontable``. Parameter and local variable names are in
  ``co_varnames``, so renaming one counts as a change (keyword callers can see parameter names).
* Its defaults and keyword defaults, and the contents of its closure cells (an empty cell by a tag).
* The globals its code (and nested code) names, looked up in ``fn.__globals__``: an immutable
  constant (None, bool, int, float, complex, str, bytes, tuples/frozensets of those) by value; a
  Python function of the same module (same ``__module__`` or same globals) by its identity,
  recursively. A ``functools.lru_cache``-style wrapper of such a function by the wrapped function.

Captured values (defaults, closure cells, partial arguments, bound ``__self__``) are written:
plain data (None, bool, int, float, complex, str, bytes, bytearray, Ellipsis, tuples, lists,
dicts, sets, frozensets) by value, recursively; functions by their identity; objects with a
``fingerprint()`` method returning a str (serdes, aggregations) by that string; modules by
``__name__``; classes by ``__module__`` + ``__qualname__``; enum members by class and name;
numpy scalars and numbers (``numbers.Integral``/``Rational``/``Real``) by class and value;
instances of a class with a Python ``__call__`` by class and the identity of that ``__call__``;
any other object by its class only (its contents cannot be hashed deterministically).

Other callables: a bound method is its ``__func__`` plus ``__self__`` (by the rules above, so a
plain instance by its class); ``functools.partial`` is its func plus args and keywords;
``operator.itemgetter``/``attrgetter``/``methodcaller`` are their ``__reduce__()`` arguments;
builtins and C functions (no ``__code__``) are ``__module__`` + ``__qualname__`` (plus a bound
``__self__``, e.g. the dict behind ``{...}.get``).

Cycles (a recursive inner function, a closure over itself, mutually recursive helpers, a list
holding itself) terminate: a function, list, dict, set or partial met again is written as a
reference to the position at which it was first written, so the traversal is linear and still
deterministic.

What is excluded, and why
-------------------------
* ``co_filename``, ``co_firstlineno``, ``co_linetable``/``co_lnotab``: where the code lives is
  not what it does (moving a file or adding a line above a function keeps its identity).
* The function's own ``co_name``/``__name__`` and every ``co_qualname``: renaming the variable a
  lambda is assigned to, or moving a function into another module or class, keeps its identity if the code is
  equal. (Nested code objects' ``co_name`` is kept; it is ``<genexpr>``, ``<lambda>`` or the inner
  function's name, which the outer code refers to anyway.)
* A docstring: a str at ``co_consts[0]`` that no instruction loads is written as None (what the
  compiler puts there when there is no docstring), so adding, editing or removing a docstring keeps
  the identity. A string the code does load is always included.
* The ``__future__`` compiler flags and ``CO_NESTED`` in ``co_flags``: they have no runtime effect
  beyond what the bytecode already shows (so a function defined in a factory or in a module with
  ``from __future__ import annotations`` is not treated differently). Annotations are excluded.
* ``co_stacksize`` and ``co_nlocals``: derived from the included parts.

What is NOT detected
--------------------
* Changes inside a non-plain object captured in a closure, default, partial or bound method
  (e.g. an attribute of a plain class instance): only its class is recorded. Give such objects a
  ``fingerprint()`` method to make them count.
* Changes in a global that is not an immutable constant or a same-module function: imported
  functions and modules, classes, mutable module-level lists/dicts, instances. Only the name
  is recorded (a change of a library's code is not a change of the topology's definition).
* Changes of attributes of the function object (``fn.__dict__``) or of its annotations.

Beware: the bytecode is the interpreter's, so a different Python minor version (or ``-O``,
which strips asserts) gives different identities; code compiled by Python 3.11+ is assumed
(``co_qualname`` keeps the enclosing function's name out of ``co_consts``).
"""
from __future__ import annotations

import __future__
import dis
import enum
import functools
import hashlib
import numbers
import operator
import struct
import types

__all__ = ["function_identity", "fingerprint_function", "digest"]

_MAGIC = b"streamproc-fn/1\x00"
_DIGEST_MAGIC = b"streamproc-digest/1\x00"

#: ``co_flags`` bits without runtime meaning beyond the bytecode: every __future__ compiler flag
#: (``nested_scopes`` is CO_NESTED, 0x10).
_IGNORED_FLAGS = functools.reduce(
    operator.or_, (getattr(__future__, name).compiler_flag for name in __future__.all_feature_names), 0)
_HASCONST = frozenset(dis.hasconst)
_OPERATOR_GETTERS = (operator.itemgetter, operator.attrgetter, operator.methodcaller)
_C_CALLABLES = (types.BuiltinFunctionType, types.MethodWrapperType, types.WrapperDescriptorType,
                types.MethodDescriptorType, types.ClassMethodDescriptorType)
_CONSTANT_TYPES = (type(None), bool, int, float, complex, str, bytes)


# -- low-level canonical encoding ---------------------------------------------------------------
def _frame(tag: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return tag + len(body).to_bytes(8, "big") + body


def _int_bytes(x: int) -> bytes:
    return x.to_bytes((x.bit_length() + 8) // 8, "big", signed=True)


def _text(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


def _str(s: str) -> bytes:
    return _frame(b"S", _text(s))


def _strs(tag: bytes, items) -> bytes:
    return _frame(tag, *(_str(s) for s in items))


def _scalar(x) -> bytes | None:
    """The encoding of an exact-type scalar, or None when ``x`` is not one."""
    t = type(x)
    if x is None:
        return _frame(b"N")
    if x is Ellipsis:
        return _frame(b"E")
    if t is bool:
        return _frame(b"?", b"\x01" if x else b"\x00")
    if t is int:
        return _frame(b"I", _int_bytes(x))
    if t is float:
        return _frame(b"D", struct.pack(">d", x))
    if t is complex:
        return _frame(b"C", struct.pack(">dd", x.real, x.imag))
    if t is str:
        return _str(x)
    if t is bytes:
        return _frame(b"B", x)
    return None


def _qualified(obj) -> bytes:
    """``__module__`` + ``__qualname__`` of a class or C callable (None where missing)."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(qualname, str):
        qualname = getattr(obj, "__name__", None)
    return _frame(b"Q", _str(module) if isinstance(module, str) else _frame(b"N"),
                  _str(qualname) if isinstance(qualname, str) else _frame(b"N"))


def _is_constant(v) -> bool:
    t = type(v)
    if t in _CONSTANT_TYPES:
        return True
    if t is tuple or t is frozenset:
        return all(_is_constant(e) for e in v)
    return False


def _docstring_unused(co: types.CodeType) -> bool:
    """``co_consts[0]`` is a str that no instruction loads (a docstring)."""
    if not co.co_consts or type(co.co_consts[0]) is not str:
        return False
    return not any(ins.opcode in _HASCONST and ins.arg == 0 for ins in dis.get_instructions(co))


def _code_names(co: types.CodeType, out: set) -> set:
    out.update(co.co_names)
    for c in co.co_consts:
        if isinstance(c, types.CodeType):
            _code_names(c, out)
    return out


# -- the encoder --------------------------------------------------------------------------------
class _Encoder:
    """One traversal. ``memo``: id -> position of the objects written so far (functions, lists,
    dicts, sets, partials); ``stack``: ids in progress (shared with the isolated sub-encoders
    that write set elements and dict keys, so they terminate too); ``keep`` holds every object
    whose id is recorded, so no id is reused during the traversal."""

    def __init__(self, stack: list | None = None, keep: list | None = None):
        self.memo: dict[int, int] = {}
        self.stack: list[int] = [] if stack is None else stack
        self.keep: list = [] if keep is None else keep

    # -- cycle guard -------------------------------------------------------------------------
    def _ref(self, x) -> bytes | None:
        i = id(x)
        if i in self.memo:
            return _frame(b"R", _int_bytes(self.memo[i]))
        if i in self.stack:        # in progress in an enclosing encoder: its depth
            return _frame(b"r", _int_bytes(self.stack.index(i)))
        return None

    def _enter(self, x) -> None:
        self.memo[id(x)] = len(self.memo)
        self.stack.append(id(x))
        self.keep.append(x)

    def _leave(self) -> None:
        self.stack.pop()

    def _isolated(self, x) -> bytes:
        """``x`` written independently of what was written before (for sorting)."""
        return _Encoder(self.stack, self.keep).value(x)

    # -- code ----------------------------------------------------------------------------------
    def code(self, co: types.CodeType, *, nested: bool) -> bytes:
        consts = co.co_consts
        parts = []
        if nested:
            parts.append(_frame(b"n", _text(co.co_name)))
        doc = _docstring_unused(co)
        parts += [
            _frame(b"b", co.co_code),
            _frame(b"k", *((_frame(b"N") if doc and i == 0 else self.const(c))
                           for i, c in enumerate(consts))),
            _strs(b"g", co.co_names),
            _strs(b"v", co.co_varnames),
            _strs(b"F", co.co_freevars),
            _strs(b"c", co.co_cellvars),
            _frame(b"#", _int_bytes(co.co_argcount), b"/", _int_bytes(co.co_posonlyargcount),
                   b"/", _int_bytes(co.co_kwonlyargcount)),
            _frame(b"L", _int_bytes(co.co_flags & ~_IGNORED_FLAGS)),
        ]
        table = getattr(co, "co_exceptiontable", None)
        if table is not None:
            parts.append(_frame(b"X", table))
        return _frame(b"K", *parts)

    def const(self, c) -> bytes:
        s = _scalar(c)
        if s is not None:
            return s
        t = type(c)
        if t is types.CodeType:
            return self.code(c, nested=True)
        if t is tuple:
            return _frame(b"t", *(self.const(e) for e in c))
        if t is frozenset:
            return _frame(b"z", *sorted(self.const(e) for e in c))
        return self.value(c)

    # -- functions -------------------------------------------------------------------------------
    def function(self, fn: types.FunctionType) -> bytes:
        ref = self._ref(fn)
        if ref is not None:
            return ref
        self._enter(fn)
        try:
            co = fn.__code__
            cells = []
            for cell in fn.__closure__ or ():
                try:
                    contents = cell.cell_contents
                except ValueError:
                    cells.append(_frame(b"0"))
                else:
                    cells.append(self.value(contents))
            return _frame(
                b"f",
                self.code(co, nested=False),
                _frame(b"d", self.value(fn.__defaults__)),
                _frame(b"w", self.value(fn.__kwdefaults__)),
                _frame(b"l", *cells),
                self.globals(fn, co),
            )
        finally:
            self._leave()

    def globals(self, fn: types.FunctionType, co: types.CodeType) -> bytes:
        g = fn.__globals__
        entries = []
        for name in sorted(_code_names(co, set())):
            if name not in g:
                continue                        # a builtin, or not defined (yet)
            v = g[name]
            if _is_constant(v):
                entries.append(_frame(b"=", _str(name), self.const(v)))
                continue
            target = v
            if not isinstance(target, types.FunctionType):
                wrapped = getattr(v, "__wrapped__", None) if callable(v) else None
                target = wrapped if isinstance(wrapped, types.FunctionType) else None
            if target is not None and (target.__module__ == fn.__module__ or target.__globals__ is g):
                entries.append(_frame(b"h", _str(name), self.function(target)))
        return _frame(b"G", *entries)

    # -- any value -------------------------------------------------------------------------------
    def value(self, x) -> bytes:
        s = _scalar(x)
        if s is not None:
            return s
        if isinstance(x, types.FunctionType):
            return self.function(x)
        if isinstance(x, types.MethodType):
            return _frame(b"m", self.value(x.__func__), self.value(x.__self__))
        if isinstance(x, type):
            return _frame(b"T", _qualified(x))
        if isinstance(x, types.ModuleType):
            return _frame(b"M", _text(x.__name__))
        if isinstance(x, enum.Enum):
            return _frame(b"e", _qualified(type(x)), self.value(x.name))
        if isinstance(x, types.CodeType):
            return self.code(x, nested=True)
        if isinstance(x, functools.partial):
            return self._guarded(x, lambda: _frame(
                b"p", _qualified(type(x)), self.value(x.func), self.value(x.args), self.value(x.keywords)))
        if type(x) in _OPERATOR_GETTERS:
            r = x.__reduce__()
            return _frame(b"o", _qualified(type(x)), self.value(r[0]), self.value(r[1]))
        if isinstance(x, _C_CALLABLES):
            parts = [_qualified(x)]
            owner = getattr(x, "__self__", None)
            if owner is not None:
                parts.append(self.value(owner))
            return _frame(b"c", *parts)
        if isinstance(x, (tuple, list, dict, set, frozenset, str, bytes, bytearray, int, float, complex)):
            return self.data(x)
        return self.obj(x)

    def _guarded(self, x, write) -> bytes:
        ref = self._ref(x)
        if ref is not None:
            return ref
        self._enter(x)
        try:
            return write()
        finally:
            self._leave()

    def data(self, x) -> bytes:
        """Built-in data types (and their subclasses, with the subclass recorded)."""
        t = type(x)
        sub = [] if t in (tuple, list, dict, set, frozenset, bytearray) else [_qualified(t)]
        if isinstance(x, tuple):
            return _frame(b"t", *sub, *(self.value(e) for e in x))
        if isinstance(x, frozenset):
            return _frame(b"z", *sub, *sorted(self._isolated(e) for e in x))
        if isinstance(x, list):
            return self._guarded(x, lambda: _frame(b"l", *sub, *(self.value(e) for e in x)))
        if isinstance(x, set):
            return self._guarded(x, lambda: _frame(b"s", *sub, *sorted(self._isolated(e) for e in x)))
        if isinstance(x, dict):
            def write():
                keyed = sorted(((self._isolated(k), k) for k in x), key=lambda kv: kv[0])
                return _frame(b"d", *sub, *(_frame(b":", kb, self.value(x[k])) for kb, k in keyed))
            return self._guarded(x, write)
        if isinstance(x, bytearray):
            return _frame(b"A", *sub, bytes(x))
        # subclasses of the scalar types (exact types were written by _scalar)
        for base in (int, float, complex, str, bytes):      # bool cannot be subclassed
            if isinstance(x, base):
                return _frame(b"U", *sub, _scalar(base.__new__(base, x)))
        raise AssertionError(t)  # pragma: no cover

    def obj(self, x) -> bytes:
        """An instance of some other class: its class, plus what can be known deterministically."""
        t = type(x)
        parts = [_qualified(t)]
        if t.__module__ == "numpy" and getattr(x, "ndim", None) == 0 and callable(getattr(x, "item", None)):
            parts.append(self.value(x.item()))          # a numpy scalar (np.bool_, np.int64, ...)
        elif isinstance(x, numbers.Number) and not isinstance(x, bool):
            try:
                if isinstance(x, numbers.Integral):
                    parts.append(_frame(b"I", _int_bytes(operator.index(x))))
                elif isinstance(x, numbers.Rational):
                    parts.append(_frame(b"/", _int_bytes(int(x.numerator)), _int_bytes(int(x.denominator))))
                elif isinstance(x, numbers.Real):
                    parts.append(_frame(b"D", struct.pack(">d", float(x))))
                elif isinstance(x, numbers.Complex):
                    parts.append(_frame(b"C", struct.pack(">dd", float(x.real), float(x.imag))))
            except (TypeError, ValueError, OverflowError):
                pass
        fp = getattr(x, "fingerprint", None)
        if callable(fp):
            try:
                declared = fp()
            except TypeError:           # some unrelated ``fingerprint(self, ...)`` method
                declared = None
            if isinstance(declared, str):
                parts.append(_frame(b"P", _text(declared)))
        call = getattr(t, "__call__", None)
        if isinstance(call, types.FunctionType):
            parts.append(_frame(b"(", self.function(call)))
        for attr in ("__qualname__", "__name__"):   # e.g. numpy ufuncs: np.add vs np.multiply
            name = getattr(x, attr, None)
            if isinstance(name, str):
                parts.append(_frame(b"@", _text(attr), _str(name)))
        return _frame(b"O", *parts)


# -- public API ---------------------------------------------------------------------------------
def function_identity(fn) -> bytes:
    """A canonical byte description of the callable ``fn`` (see the module docstring)."""
    if not callable(fn):
        raise TypeError(f"function_identity() needs a callable, got a {type(fn).__qualname__}")
    return _MAGIC + _Encoder().value(fn)


def fingerprint_function(fn) -> str:
    """16 hex characters identifying the definition of ``fn``."""
    return hashlib.sha256(function_identity(fn)).hexdigest()[:16]


def fingerprint_value(x) -> str:
    """16 hex characters identifying a captured value (e.g. ``agg.reduce``'s initial value), by the
    rules for closure values: plain data by value, sets sorted, functions by their identity."""
    return hashlib.sha256(_MAGIC + _Encoder().value(x)).hexdigest()[:16]


def _digest_part(x) -> bytes:
    if isinstance(x, enum.StrEnum):              # a kind (streamproc.kinds): its plain string, never its repr
        x = x.value
    s = _scalar(x) if type(x) in (type(None), bool, int, float, str, bytes) else None
    if s is not None:
        return s
    if type(x) in (tuple, list):                 # one sequence tag: lists and tuples agree
        return _frame(b"t", *(_digest_part(e) for e in x))
    raise TypeError(f"digest() takes str, bytes, int, float, bool, None and tuples/lists of those, "
                    f"not {type(x).__qualname__}")


def digest(*parts) -> str:
    """16 hex characters of the sha256 of the canonical encoding of ``parts``."""
    return hashlib.sha256(_DIGEST_MAGIC + _digest_part(parts)).hexdigest()[:16]
