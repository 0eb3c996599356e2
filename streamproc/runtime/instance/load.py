"""What worker processes need to find their feet: where the topology is (they re-import it with
``streamproc.loader``, never unpickle it), the persisted process id, and the lock that keeps two
instances off one state directory."""
from __future__ import annotations

import errno
import os
import uuid

from ...errors import StateBusyError
from ...loader import split_spec as _split
from ...state import layout


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
# (every path comes from ``streamproc.state.layout``)

def app_state_dir(state_dir: str, app_id: str) -> str:
    """``<state-dir>/<app-id>``, created if missing."""
    return layout.ensure_app_dir(state_dir, app_id)


def process_id(state_dir: str, app_id: str) -> str:
    """The uuid of this instance, persisted in ``<state-dir>/<app-id>/process-id``.

    It names the consumer group instance and the transactional id of every worker, so a
    restarted instance fences its own predecessor (and nobody else's).
    """
    app_state_dir(state_dir, app_id)
    path = layout.process_id_path(state_dir, app_id)
    try:
        with open(path) as f:
            pid = f.read().strip()
        if pid:
            return pid
    except FileNotFoundError:
        pass
    pid = uuid.uuid4().hex
    layout.write_atomic(path, pid + "\n")
    return pid


class StateDirLock:
    """An exclusive ``flock`` on ``<state-dir>/<app-id>/.lock`` for the life of an instance (or a reset).

    Two instances sharing a state dir would share a process id and fence each other forever.
    """

    def __init__(self, state_dir: str, app_id: str):
        app_state_dir(state_dir, app_id)
        self.path = layout.lock_path(state_dir, app_id)
        self._fd: int | None = None

    def acquire(self) -> "StateDirLock":
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
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
                    f"its own --state-dir; stop it before a reset.") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self, *, remove: bool = False) -> None:
        """Let go; ``remove``: delete the lock file first, while still holding it (``reset`` leaves none)."""
        if self._fd is not None:
            try:
                if remove:
                    try:
                        os.unlink(self.path)
                    except FileNotFoundError:
                        pass
                os.close(self._fd)
            finally:
                self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
