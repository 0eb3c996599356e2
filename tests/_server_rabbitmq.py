"""A private RabbitMQ node for tests: its own port, node name, epmd port, data and log dirs.

``start_rabbitmq(tmp_dir)`` starts Debian's ``rabbitmq-server`` on free loopback ports and returns a
:class:`RabbitServer` once an AMQP connection succeeds. ``stop()`` shuts it down gracefully (its data
stays), ``start()`` starts it again on the same port with the same data (restart tests), ``kill()``
kills it without a shutdown. Nothing it starts outlives ``stop()``: the broker runs in its own process
group, and the node uses a private epmd (``ERL_EPMD_PORT``), started as our child, that ``destroy()``
stops, so no system epmd or system node is touched.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
_EPMD = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
_START_TIMEOUT_S = 60.0


def available() -> str | None:
    """None when a RabbitMQ server can be started here, else why not (for pytest.skip)."""
    if not os.path.exists(_SERVER):
        return f"rabbitmq-server is not installed ({_SERVER} is missing)"
    if shutil.which("erl") is None:
        return "Erlang (erl) is not installed"
    return None


def _free_port() -> int:
    """A port below the ephemeral range (``runtime_helpers.free_port``): an ephemeral one can be taken by an
    outgoing connection or a dev broker of another test process between this check and the server's bind."""
    from runtime_helpers import free_port

    return free_port()


def _amqp_up(port: int) -> bool:
    """True when the broker answers the AMQP handshake (not only the TCP accept)."""
    import pika

    params = pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{port}/%2F"
                                "?connection_attempts=1&socket_timeout=1&stack_timeout=2")
    try:
        pika.BlockingConnection(params).close()
        return True
    except Exception:
        return False


class RabbitServer:
    """One private RabbitMQ node (see the module docstring)."""

    def __init__(self, tmp_dir):
        self.dir = Path(tmp_dir)
        self.port = _free_port()
        self.dist_port = _free_port()
        self.epmd_port = _free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"
        self.proc: subprocess.Popen | None = None
        self.epmd: subprocess.Popen | None = None
        self.startup_s: float | None = None
        for d in ("home", "mnesia", "log"):
            (self.dir / d).mkdir(parents=True, exist_ok=True)
        (self.dir / "enabled_plugins").write_text("[].\n")
        # loopback_users = none: the guest user may connect (it may anyway over 127.0.0.1).
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\nloopback_users = none\n")

    def _env(self) -> dict:
        d = self.dir
        env = dict(os.environ)
        env.update({
            "HOME": str(d / "home"),  # the Erlang cookie lives here
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODENAME": f"rabbit-{self.port}@localhost",
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),  # ignore /etc/rabbitmq's
            "RABBITMQ_PID_FILE": str(d / "rabbit.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        })
        return env

    def start(self) -> None:
        """Start the node (same port and data as before) and wait until AMQP connections succeed."""
        if self.proc is not None and self.proc.poll() is None:
            return
        t0 = time.monotonic()
        self._start_epmd()
        log = open(self.dir / "server.out", "ab")
        self.proc = subprocess.Popen([_SERVER], env=self._env(), cwd=self.dir, stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        while not _amqp_up(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited with {self.proc.returncode}; see "
                                   f"{self.dir / 'server.out'} and {self.dir / 'log'}")
            if time.monotonic() - t0 > _START_TIMEOUT_S:
                self.kill()
                raise RuntimeError(f"rabbitmq-server did not accept AMQP connections within "
                                   f"{_START_TIMEOUT_S:.0f} s; see {self.dir / 'log'}")
            time.sleep(0.1)
        self.startup_s = time.monotonic() - t0

    def _start_epmd(self) -> None:
        """Our own epmd in the foreground, as our child: erl finds it on ERL_EPMD_PORT and does not
        start a daemonized one (which would outlive the tests and be nobody's child to reap)."""
        if self.epmd is not None and self.epmd.poll() is None:
            return
        self.epmd = subprocess.Popen([_EPMD, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                                     env=self._env(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.epmd_port)) == 0:
                    return
            time.sleep(0.02)
        raise RuntimeError(f"epmd did not listen on port {self.epmd_port} within 10 s")

    def ctl(self, *args: str) -> str:
        """Run ``rabbitmqctl <args>`` against this node (users, permissions); its stdout."""
        ctl = os.path.join(os.path.dirname(_SERVER), "rabbitmqctl")
        out = subprocess.run([ctl, "-n", f"rabbit-{self.port}@localhost", *args], env=self._env(),
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {out.stderr or out.stdout}")
        return out.stdout

    def _signal(self, sig: int, wait_s: float) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        try:  # erl_child_setup and friends share the group; make sure nothing is left
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc = None

    def stop(self) -> None:
        """Graceful shutdown (SIGTERM: the node stops its apps and closes client connections)."""
        self._signal(signal.SIGTERM, 30)

    def kill(self) -> None:
        """Immediate death (SIGKILL): clients see the connection drop, nothing is closed cleanly."""
        self._signal(signal.SIGKILL, 10)

    def destroy(self) -> None:
        """Stop the node and its private epmd (fixture teardown)."""
        self.stop()
        epmd, self.epmd = self.epmd, None
        if epmd is not None and epmd.poll() is None:
            epmd.terminate()
            try:
                epmd.wait(10)
            except subprocess.TimeoutExpired:
                epmd.kill()
                epmd.wait(10)


def start_rabbitmq(tmp_dir) -> RabbitServer:
    """A started private RabbitMQ node (see the module docstring); call ``destroy()`` when done."""
    server = RabbitServer(tmp_dir)
    try:
        server.start()
    except BaseException:
        server.destroy()
        raise
    return server
