"""A store's definition: the refusal to mix state written by two definitions of one operator.

Every store carries the fingerprint of the operator that writes it (``StoreSpec.fingerprint``,
see ``streamproc.fingerprint``) and its definition in words. Both are recorded where the
state lives - the RocksDB metadata family and the changelog's metadata record - and every
place that opens existing state compares them with the running topology's. A mismatch is
always the same refusal, built here.
"""
from __future__ import annotations

from ..errors import StateError

RESET_HINT = ("the changelog holds the old definition's state too, so stop every instance and run "
              "`streamproc reset <topology> --state-dir DIR --bootstrap-servers HOST:PORT`: it deletes the local "
              "state, the app's changelog and repartition topics and its consumer group, and the app then "
              "reprocesses its input from the beginning (or keep the old definition, or give the changed "
              "operator a new store name with name=...)")


def changed_definition(store: str, where: str, old_desc: str | None, new_desc: str | None,
                       old_fp: str | None, new_fp: str | None) -> str:
    """The paragraph that refuses ``store`` (found in ``where``) written by another definition."""
    old_desc, new_desc = old_desc or "?", new_desc or "?"
    fp = f" (fingerprint {old_fp} -> {new_fp})" if old_fp and new_fp else ""
    same = ("\n  (the definitions read the same: the code of a function the operator uses changed)"
            if old_desc == new_desc and old_desc != "?" else "")
    return (f"store {store!r} in {where} was written by a different definition of its operator{fp}:\n"
            f"  stored: {old_desc}\n"
            f"  now:    {new_desc}{same}\n"
            f"streamproc does not mix state written by two definitions. To start over, {RESET_HINT}. "
            f"The changelog was written by the old definition too: to keep the old state and start a "
            f"new one, give the operator a new store name (aggregate(..., name=...)).")


def check_definition(store: str, where: str, stored_fp: str | None, stored_desc: str | None,
                     spec) -> None:
    """Raise ``StateError`` when state recorded with ``stored_fp`` is not ``spec``'s (a StoreSpec)."""
    if stored_fp is not None and spec.fingerprint and stored_fp != spec.fingerprint:
        raise StateError(changed_definition(store, where, stored_desc, spec.description, stored_fp,
                                            spec.fingerprint))
