"""What worker processes need to find their feet: the topology (re-imported, never pickled),
the persisted process id, and the lock that keeps two instances off one state directory."""
from __future__ import annotations

import errno
import importlib
import importlib.util
import os
import sys
import uuid

from ..dsl import Topology
from ..errors import StateError, TopologyLoadError


# --------------------------------------------------------------------------- topology references

def topology_ref_of(plan) -> str | None:
    """A reference the workers can import, derived from ``plan.where`` (``file.py:line``), if any."""
    where = getattr(plan, "where", "") or ""
    path = where.rpartition(":")[0] if ":" in where else where
    if path and path.endswith(".py") and os.path.isfile(path):
        return os.path.abspath(path)
    return None


def absolute_ref(ref: str) -> str:
    """``ref`` with a file path made absolute (spawned workers may not share our idea of ``.``)."""
    path, name = _split(ref)
    if os.path.isfile(path):
        path = os.path.abspath(path)
        return f"{path}:{name}" if name else path
    return ref


def _split(ref: str) -> tuple[str, str | None]:
    if os.path.exists(ref) or ":" not in ref:
        return ref, None
    path, _, name = ref.rpartition(":")
    return path, (name or None)


def load_topology(ref: str, app_id: str | None = None) -> Topology:
    """The Topology named by ``ref``.

    ``ref`` is ``path/to/file.py``, ``path/to/file.py:name`` or ``package.module:name``; ``name``
    may be a Topology or a zero-argument callable returning one. Without a name the module must
    hold exactly one Topology (or exactly one with ``app_id``).
    """
    path, name = _split(ref)
    if path.endswith(".py") or os.path.isfile(path):
        if not os.path.isfile(path):
            raise TopologyLoadError(f"topology file {path!r} does not exist")
        module = _import_file(os.path.abspath(path))
    else:
        try:
            module = importlib.import_module(path)
        except Exception as e:  # noqa: BLE001 - reported as one paragraph
            raise TopologyLoadError(f"cannot import topology module {path!r}: {type(e).__name__}: {e}") from None
    if name is not None:
        obj = getattr(module, name, None)
        if obj is None:
            raise TopologyLoadError(f"{path} has no attribute {name!r}")
        if not isinstance(obj, Topology) and callable(obj):
            obj = obj()
        if not isinstance(obj, Topology):
            raise TopologyLoadError(f"{path}:{name} is not a Topology (got {type(obj).__name__})")
        return obj
    found = list({id(v): v for v in vars(module).values() if isinstance(v, Topology)}.values())
    if app_id is not None and len(found) > 1:
        found = [t for t in found if t.app_id == app_id]
    if len(found) != 1:
        raise TopologyLoadError(
            f"{path} defines {len(found) or 'no'} Topology objects"
            f"{' with app id ' + repr(app_id) if app_id else ''}: name one with {path}:<name>")
    return found[0]


def _import_file(path: str):
    mod_name = "streamproc_topology_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_").replace(".", "_")
    existing = sys.modules.get(mod_name)
    if existing is not None and os.path.abspath(getattr(existing, "__file__", "") or "") == path:
        return existing
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    folder = os.path.dirname(path)
    sys.path.insert(0, folder)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001
        sys.modules.pop(mod_name, None)
        raise TopologyLoadError(f"{path}: importing the topology failed with {type(e).__name__}: {e}") from None
    finally:
        if sys.path and sys.path[0] == folder:
            sys.path.pop(0)
    return module


# --------------------------------------------------------------------------- state directory

def app_state_dir(state_dir: str, app_id: str) -> str:
    d = os.path.join(os.path.abspath(state_dir), app_id)
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as e:
        raise StateError(f"cannot create the state directory {d!r}: {e.strerror}. "
                         f"Pick a writable --state-dir.") from None
    return d


def process_id(state_dir: str, app_id: str) -> str:
    """The uuid of this instance, persisted in ``<state-dir>/<app-id>/process-id``.

    It names the consumer group instance and the transactional id of every worker, so a
    restarted instance fences its own predecessor (and nobody else's).
    """
    d = app_state_dir(state_dir, app_id)
    path = os.path.join(d, "process-id")
    try:
        with open(path) as f:
            pid = f.read().strip()
        if pid:
            return pid
    except FileNotFoundError:
        pass
    pid = uuid.uuid4().hex
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(pid + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return pid


class StateDirLock:
    """An exclusive ``flock`` on ``<state-dir>/<app-id>/.lock`` for the life of an instance.

    Two instances sharing a state dir would share a process id and fence each other forever.
    """

    def __init__(self, state_dir: str, app_id: str):
        self.path = os.path.join(app_state_dir(state_dir, app_id), ".lock")
        self._fd: int | None = None

    def acquire(self) -> "StateDirLock":
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                holder = ""
                try:
                    with open(self.path) as f:
                        holder = f.read().strip()
                except OSError:
                    pass
                raise StateError(
                    f"the state directory {os.path.dirname(self.path)!r} is in use by another streamproc "
                    f"instance{' (pid ' + holder + ')' if holder else ''}. Each instance on one machine needs "
                    f"its own --state-dir.") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            finally:
                self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
