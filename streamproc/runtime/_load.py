"""What worker processes need to find their feet: where the topology is (they re-import it with
``streamproc.loader``, never unpickle it), the persisted process id, and the lock that keeps two
instances off one state directory."""
from __future__ import annotations

import errno
import os
import uuid

from ..errors import StateBusyError, StateError
from ..loader import split_spec as _split


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
                raise StateBusyError(
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
