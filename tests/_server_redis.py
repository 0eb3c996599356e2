"""A throw-away redis-server on a loopback port for the Redis Streams connector tests.

``start_redis(tmp_dir)`` starts ``redis-server`` with an append-only file in ``tmp_dir`` (``--appendonly
yes``, no RDB snapshots), so :meth:`RedisServer.stop` followed by :meth:`RedisServer.start` (same port,
same directory) keeps the streams and consumer groups, like a production restart. :meth:`kill` is a
SIGKILL (a crash). ``redis_binary()`` is None when the binary is not installed (the fixture skips).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time


def redis_binary() -> str | None:
    """The path of redis-server, or None."""
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.path.exists(p)), None)


def _free_port() -> int:
    """A port below the ephemeral range (``runtime_helpers.free_port``): an ephemeral one can be taken by an
    outgoing connection or a dev broker of another test process between this check and the server's bind."""
    from runtime_helpers import free_port

    return free_port()


def _answers(port: int) -> bool:
    """The server answers PING with PONG (it has finished loading its data)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.settimeout(0.5)
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process; ``url`` stays the same across stop/start."""

    def __init__(self, binary: str, tmp_dir: str):
        self.binary = binary
        self.dir = os.path.join(str(tmp_dir), "redis-data")
        os.makedirs(self.dir, exist_ok=True)
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self._log = os.path.join(self.dir, "redis.log")

    def start(self, timeout_s: float = 15.0) -> None:
        """Start (again) on the same port and directory; returns once it answers PING."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--dir", self.dir, "--logfile", self._log, "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self._tail()}")
            if _answers(self.port):
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout_s}s: "
                           f"{self._tail()}")

    def stop(self) -> None:
        """A clean shutdown (SIGTERM: the append-only file is flushed)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: what a crash looks like."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def _tail(self) -> str:
        try:
            with open(self._log, encoding="utf-8", errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return "(no log)"


def start_redis(tmp_dir) -> RedisServer:
    """A started redis-server keeping its data in ``tmp_dir``. Raises RuntimeError if the binary is
    missing (callers check :func:`redis_binary` first and skip)."""
    binary = redis_binary()
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    server = RedisServer(binary, tmp_dir)
    server.start()
    return server
