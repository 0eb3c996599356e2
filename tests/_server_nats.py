"""A throw-away nats-server with JetStream for the connector tests.

``start_nats(tmp_dir)`` runs ``nats-server -js -a 127.0.0.1 -p PORT -sd DIR`` on a free loopback port and
returns once a TCP client gets the server's INFO line. ``stop()`` ends it gracefully, ``kill()`` with
SIGKILL (a crash), ``start()`` runs it again on the same port with the same store directory, so streams,
consumers and unacked messages survive a restart.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time


def _free_port() -> int:
    """A port below the ephemeral range (``runtime_helpers.free_port``): an ephemeral one can be taken by an
    outgoing connection or a dev broker of another test process between this check and the server's bind."""
    from runtime_helpers import free_port

    return free_port()


def _answers(port: int) -> bool:
    """The server accepts a connection and greets it with INFO (JetStream is up before it listens)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.settimeout(0.5)
            return s.recv(4).startswith(b"INFO")
    except OSError:
        return False


class NatsServer:
    """One nats-server process; ``url`` stays the same across stop()/start()."""

    def __init__(self, binary: str, store_dir: str, port: int | None = None):
        self.binary = binary
        self.store_dir = store_dir
        self.port = port or _free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self._log = os.path.join(store_dir, "nats-server.log")

    def start(self, timeout_s: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        os.makedirs(self.store_dir, exist_ok=True)
        with open(self._log, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", self.store_dir],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}; see {self._log}")
            if _answers(self.port):
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"nats-server did not answer on port {self.port} within {timeout_s} s; see {self._log}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM), waiting until the process is gone."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: the server dies as in a crash."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


def nats_binary() -> str | None:
    """The nats-server executable, or None when it is not installed."""
    return shutil.which("nats-server") or next(
        (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if os.access(p, os.X_OK)), None)


def start_nats(tmp_dir) -> NatsServer:
    """A running JetStream server storing under ``tmp_dir``; raises RuntimeError without the binary."""
    binary = nats_binary()
    if binary is None:
        raise RuntimeError("nats-server is not installed (apt-get install nats-server)")
    server = NatsServer(binary, os.path.join(str(tmp_dir), "jetstream"))
    server.start()
    return server
