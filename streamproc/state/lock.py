"""``TaskDirLock``: one process at a time in a task's state directory.

An exclusive ``flock`` on ``<task-dir>/LOCK``, which records the holder's pid and host. The
kernel drops the lock when the holder closes it or dies (SIGKILL included), so a crashed
worker never leaves a stale lock behind; the pid/host text is only for the message. A
second opener, in another process or in the same one, gets a :class:`StateError` naming
the holder. (RocksDB keeps its own files, and its own LOCK, in ``<task-dir>/rocksdb/``.)

The descriptor is close-on-exec, but a ``fork()`` without exec shares it: the lock then
lives until both processes have closed it. Start workers with ``spawn``, or release first.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import time

from ..errors import StateBusyError, StateError
from .layout import TASK_LOCK, task_lock_path

LOCK_NAME = TASK_LOCK


class TaskDirLock:
    def __init__(self, path):
        self.dir = os.path.abspath(os.fspath(path))
        self.path = task_lock_path(self.dir)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, timeout: float = 0.0, poll: float = 0.1) -> "TaskDirLock":
        """Take the lock, waiting up to ``timeout`` seconds for a holder to let go.

        Raises :class:`StateError` naming the holder if it is still held after ``timeout``.
        """
        if self._fd is not None:
            return self
        try:
            os.makedirs(self.dir, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise StateError(f"cannot create the state directory {self.dir}: {e.strerror}; "
                             f"use a writable --state-dir") from None
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise StateError(f"cannot lock the state directory {self.dir}: {e.strerror}") from None
                if time.monotonic() >= deadline:
                    os.close(fd)
                    pid, host = self._holder()
                    raise StateBusyError(
                        f"state directory {self.dir} is in use by process {pid} on {host}; "
                        f"stop it or use another --state-dir") from None
                time.sleep(poll)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def _holder(self) -> tuple[str, str]:
        try:
            with open(self.path) as f:
                parts = f.read().split()
        except OSError:
            parts = []
        pid = parts[0] if parts else "?"
        host = parts[1] if len(parts) > 1 else "?"
        return pid, host

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            # the file stays: unlinking a lock file races with a process that has just opened it
            os.close(fd)       # closing the only descriptor drops the flock

    def __enter__(self) -> "TaskDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False

    def __repr__(self) -> str:
        return f"TaskDirLock({self.dir!r}, held={self.held})"
