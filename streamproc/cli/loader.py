"""Loading a user's topology module: ``path.py`` or ``path.py:name``.

Every failure becomes a ``TopologyLoadError`` / ``TopologyError`` naming the file and line.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import traceback

from ..dsl import Topology
from ..errors import StreamprocError, TopologyError, TopologyLoadError


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"dir/app.py:name"`` -> ``("dir/app.py", "name")``; a plain existing path has no name."""
    if os.path.exists(spec) or ":" not in spec:
        return spec, None
    path, _, name = spec.rpartition(":")
    return path, (name or None)


def load_topology(spec: str) -> Topology:
    """Import the module at ``spec`` and return its Topology (``path.py:name`` picks one)."""
    path, name = split_spec(spec)
    if not os.path.isfile(path):
        raise TopologyLoadError(f"topology file {path!r} does not exist (give the path to a .py file, "
                                f"optionally followed by :name to pick a Topology object)")
    path = os.path.abspath(path)
    mod_name = "streamproc_topology_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(module_spec)
    folder = os.path.dirname(path)
    sys.path.insert(0, folder)
    sys.modules[mod_name] = module
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise TopologyLoadError(
            f"{_rel(e.filename or path)}:{e.lineno}: syntax error: {e.msg}. Fix the line and run again.") from None
    except TopologyError as e:
        raise TopologyError(f"{_where(e, path)}: {e}") from None
    except StreamprocError as e:
        raise TopologyLoadError(f"{_where(e, path)}: {e}") from None
    except Exception as e:  # noqa: BLE001 - any import failure is reported as one paragraph
        raise TopologyLoadError(
            f"{_where(e, path)}: importing the topology failed with {type(e).__name__}: {e}. "
            f"Fix the module so that `python {_rel(path)}` imports cleanly.") from None
    finally:
        if sys.path and sys.path[0] == folder:
            sys.path.pop(0)

    found = {k: v for k, v in vars(module).items() if isinstance(v, Topology)}
    if name is not None:
        if name not in found:
            hint = f"it defines: {', '.join(found)}" if found else "it defines no Topology"
            raise TopologyLoadError(f"{_rel(path)} has no Topology named {name!r} ({hint})")
        return found[name]
    unique = {id(v): k for k, v in found.items()}
    if not unique:
        raise TopologyLoadError(
            f"{_rel(path)} defines no Topology: create one at module level, e.g. "
            f"`topology = Topology(\"my-app\")`, and build the stream graph on it")
    if len(unique) > 1:
        names = ", ".join(sorted(unique.values()))
        raise TopologyLoadError(
            f"{_rel(path)} defines several Topology objects ({names}): pick one with "
            f"{_rel(path)}:<name>, e.g. {_rel(path)}:{sorted(unique.values())[0]}")
    return next(iter(found.values()))


def _where(exc: BaseException, path: str) -> str:
    """``file:line`` of the deepest traceback frame inside the topology file (else the file)."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if os.path.abspath(frame.filename) == path:
            line = frame.lineno
    return f"{_rel(path)}:{line}" if line else _rel(path)


def _rel(path: str) -> str:
    try:
        r = os.path.relpath(path)
        return r if not r.startswith("..") else path
    except ValueError:
        return path


__all__ = ["load_topology", "split_spec", "TopologyError"]
