"""Finding a user's Topology: ``path.py``, ``path.py:name`` or ``package.module:name``.

The CLI and the worker processes both load topologies here. ``name`` may be a Topology or a
zero-argument callable returning one. Every failure is a ``TopologyLoadError`` /
``TopologyError`` naming the file and line.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback

from .dsl import Topology
from .errors import StreamprocError, TopologyError, TopologyLoadError


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"dir/app.py:name"`` -> ``("dir/app.py", "name")``; a plain existing path has no name."""
    if os.path.exists(spec) or ":" not in spec:
        return spec, None
    path, _, name = spec.rpartition(":")
    return path, (name or None)


def load_topology(spec: str, app_id: str | None = None) -> Topology:
    """The Topology ``spec`` names. Without a name the module must hold exactly one (or exactly
    one with ``app_id``)."""
    path, name = split_spec(spec)
    if path.endswith(".py") or os.path.isfile(path):
        if not os.path.isfile(path):
            raise TopologyLoadError(f"topology file {path!r} does not exist (give the path to a .py file, "
                                    f"optionally followed by :name to pick a Topology object)")
        path = os.path.abspath(path)
        module = _import_file(path)
    else:
        try:
            module = importlib.import_module(path)
        except Exception as e:  # noqa: BLE001 - reported as one paragraph
            raise TopologyLoadError(f"cannot import topology module {path!r}: {type(e).__name__}: {e}") from None
    shown = _rel(path)
    if name is not None:
        obj = getattr(module, name, None)
        if obj is None:
            found = [k for k, v in vars(module).items() if isinstance(v, Topology)]
            hint = f"it defines: {', '.join(found)}" if found else "it defines no Topology"
            raise TopologyLoadError(f"{shown} has no Topology named {name!r} ({hint})")
        if not isinstance(obj, Topology) and callable(obj):
            obj = obj()
        if not isinstance(obj, Topology):
            raise TopologyLoadError(f"{shown}:{name} is not a Topology (got {type(obj).__name__})")
        return obj
    found = {id(v): k for k, v in vars(module).items() if isinstance(v, Topology)}
    objs = {id(v): v for v in vars(module).values() if isinstance(v, Topology)}
    if app_id is not None and len(objs) > 1:
        found = {i: k for i, k in found.items() if objs[i].app_id == app_id}
    if not found:
        raise TopologyLoadError(
            f"{shown} defines no Topology: create one at module level, e.g. "
            f"`topology = Topology(\"my-app\")`, and build the stream graph on it")
    if len(found) > 1:
        names = sorted(found.values())
        raise TopologyLoadError(
            f"{shown} defines several Topology objects ({', '.join(names)}): pick one with "
            f"{shown}:<name>, e.g. {shown}:{names[0]}")
    return objs[next(iter(found))]


def _import_file(path: str):
    mod_name = "streamproc_topology_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_").replace(".", "_")
    existing = sys.modules.get(mod_name)
    if existing is not None and os.path.abspath(getattr(existing, "__file__", "") or "") == path:
        return existing
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(module_spec)
    folder = os.path.dirname(path)
    sys.path.insert(0, folder)
    sys.modules[mod_name] = module
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        sys.modules.pop(mod_name, None)
        raise TopologyLoadError(
            f"{_rel(e.filename or path)}:{e.lineno}: syntax error: {e.msg}. Fix the line and run again.") from None
    except TopologyError as e:
        sys.modules.pop(mod_name, None)
        raise TopologyError(f"{_where(e, path)}: {e}") from None
    except StreamprocError as e:
        sys.modules.pop(mod_name, None)
        raise TopologyLoadError(f"{_where(e, path)}: {e}") from None
    except Exception as e:  # noqa: BLE001 - any import failure is reported as one paragraph
        sys.modules.pop(mod_name, None)
        raise TopologyLoadError(
            f"{_where(e, path)}: importing the topology failed with {type(e).__name__}: {e}. "
            f"Fix the module so that `python {_rel(path)}` imports cleanly.") from None
    finally:
        if sys.path and sys.path[0] == folder:
            sys.path.pop(0)
    return module


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
