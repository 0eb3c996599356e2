"""Clean stops of an instance serving HTTP, and requests that do not parse (DESIGN section 8, issue 15 item 4).

Real ``streamproc run --http-port`` instances (``Instance`` of ``test_http_queries``, with stderr kept
apart) of a small app on the test broker, started once for the module and started together:

* a request line over 8 KiB answers ``414``, a 10 KiB header ``431``, too many headers ``431``, each
  with a JSON body ``{"error": ...}``; nothing at ERROR, no traceback; the server goes on answering;
* SIGTERM (and SIGINT) of an instance with open change streams (``GET /stores/<store>/changes``):
  the streams end cleanly (their last chunk, after a ``: stopping`` comment), the process exits 0,
  and its stderr has no traceback, no ``Event loop is closed``, no ``Task was destroyed``, nothing at
  ERROR.
"""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time

import pytest

import runtime_helpers as h
from streamproc import serdes
from test_http_queries import Instance, _env, get

pytestmark = pytest.mark.broker

STR, JSON = serdes.String(), serdes.Json()

TOPO = '''
from streamproc import Topology, serdes
t = Topology("{app}")
t.stream("{src}", key=serdes.String(), value=serdes.Json()).group_by_key().count(name="counts").to(
    "{out}", value=serdes.Json())
'''
#: What a clean stop never prints (``" ERROR "``: the text log format's level column).
NEVER = ("Traceback", "Event loop is closed", "Task was destroyed", "Exception ignored", " ERROR ")


class _Instance(Instance):
    """An instance whose stderr (logs, tracebacks) goes to a file of its own."""

    def start(self) -> "_Instance":
        self.err_path = self.log_path + ".stderr"
        with open(self.log_path, "ab") as out, open(self.err_path, "ab") as err:
            self.proc = subprocess.Popen(self.cmd, env=_env(), stdout=out, stderr=err, start_new_session=True)
        return self

    def stderr(self) -> str:
        with open(self.err_path, errors="replace") as f:
            return f.read()

    def log_tail(self, n: int = 40) -> str:
        return f"--- {self.name} stderr:\n" + "".join(self.stderr().splitlines(True)[-n:])


class _App:
    def __init__(self, bootstrap: str, workdir, name: str):
        self.bootstrap = bootstrap
        self.app_id = h.unique(f"stop-{name}")
        self.src, out = f"{self.app_id}-in", f"{self.app_id}-out"
        h.create(bootstrap, [self.src, out], 1)
        ref = h.write_topology(workdir / f"{self.app_id.replace('-', '_')}.py",
                               TOPO.format(app=self.app_id, src=self.src, out=out))
        self.inst = _Instance(name, ref, bootstrap, workdir).start()

    def produce(self, keys) -> None:
        h.produce(self.bootstrap, self.src, [(k, {"x": 1}, int(time.time() * 1000)) for k in keys], key_serde=STR, value_serde=JSON)


class _Stream:
    """``GET /stores/<store>/changes`` on a raw socket, read in a thread to the connection's end.
    (``http.client`` reads a chunked body cut short as a clean end: here ``clean`` says whether the
    body ended with its last chunk.)"""

    def __init__(self, port: int, store: str):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.sendall(f"GET /stores/{store}/changes HTTP/1.1\r\nHost: x\r\n"
                          f"Accept: text/event-stream\r\n\r\n".encode())
        self.raw = b""
        self.error: BaseException | None = None
        self.done = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self.raw += chunk
        except OSError as e:
            self.error = e
        finally:
            self.sock.close()
            self.done.set()

    def _body(self) -> tuple[bytes, bool]:
        """The body so far (chunked transfer decoded) and whether its last chunk has come."""
        head, sep, rest = self.raw.partition(b"\r\n\r\n")
        if not sep:
            return b"", False
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"transfer-encoding: chunked" in head.lower(), head
        body = b""
        while True:
            size_line, sep, tail = rest.partition(b"\r\n")
            if not sep:
                return body, False
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                return body, tail.startswith(b"\r\n")
            if len(tail) < size + 2:
                return body, False
            body, rest = body + tail[:size], tail[size + 2:]

    @property
    def clean(self) -> bool:
        return self._body()[1]

    def lines(self) -> list[str]:
        return self._body()[0].decode().split("\n")

    def comments(self) -> list[str]:
        return [ln[1:].strip() for ln in self.lines() if ln.startswith(":")]

    def changes(self) -> list[dict]:
        return [json.loads(ln[5:]) for ln in self.lines() if ln.startswith("data:")]


@pytest.fixture(scope="module")
def apps(kafka, tmp_path_factory):
    """Two apps of one instance each, started together: one stopped with SIGTERM, one with SIGINT."""
    workdir = tmp_path_factory.mktemp("stop")
    made = {}
    try:
        for sig in ("SIGTERM", "SIGINT"):
            made[sig] = _App(kafka[0], workdir, sig.lower())
        for sig in list(made):
            for attempt in range(3):
                a = made[sig]
                try:
                    h.wait_until(lambda: a.inst.proc.poll() is not None or _ready(a.inst), 60, interval=0.25)
                except AssertionError:
                    pass
                # the free port the test picked was taken before the instance bound it (another process's
                # client connection or broker, under xdist): start it again on a fresh port
                if a.inst.alive() or "cannot serve HTTP" not in a.inst.log_tail() or attempt == 2:
                    break
                a.inst.stop()
                made[sig] = _App(kafka[0], workdir, f"{sig.lower()}{attempt + 1}")
            assert a.inst.alive() and _ready(a.inst), f"{a.inst.name} is not ready\n{a.inst.log_tail()}"
        yield made
    finally:
        for a in made.values():
            a.inst.stop()


def _ready(inst) -> bool:
    try:
        return get(f"{inst.url}/ready", timeout=2).status == 200
    except OSError:
        return False


def _raw(port: int, request: bytes) -> tuple[int, dict, bytes]:
    """Send ``request`` as it is; the answer's status, headers and body (the server closes the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def test_requests_that_do_not_parse_answer_414_and_431_in_json_without_an_error_log(apps):
    inst = apps["SIGTERM"].inst
    url = "/stores/counts/" + "a" * (9 * 1024)
    status, headers, body = _raw(inst.port, f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status == 414, (status, body)
    assert headers["content-type"].startswith("application/json")
    assert "longer than" in json.loads(body)["error"]

    big = "b" * (10 * 1024)
    status, headers, body = _raw(inst.port, f"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n".encode())
    assert status == 431, (status, body)
    assert headers["content-type"].startswith("application/json")
    assert "header" in json.loads(body)["error"]

    many = "".join(f"X-H{i}: v\r\n" for i in range(200))
    status, _, body = _raw(inst.port, f"GET /health HTTP/1.1\r\nHost: x\r\n{many}\r\n".encode())
    assert status == 431, (status, body)
    assert json.loads(body)["error"]

    status, headers, body = _raw(inst.port, b"GET /health HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
    assert status == 400 and headers["content-type"].startswith("application/json"), (status, body)
    assert json.loads(body)["error"]

    # a URL just under the limit is served as usual, and so is everything after the refusals
    a = get(f"{inst.url}/stores/counts/{'c' * 8000}")
    assert a.status == 404 and a.json["error"], a
    assert get(f"{inst.url}/health").status == 200
    err = inst.stderr()
    assert not [w for w in NEVER if w in err], err[-3000:]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_stop_ends_the_change_streams_and_exits_0_without_a_traceback(apps, sig):
    app = apps[sig]
    inst = app.inst
    assert inst.alive(), inst.log_tail()
    streams = [_Stream(inst.port, "counts") for _ in range(2)]
    h.wait_until(lambda: all("streamproc changes of counts" in s.comments() for s in streams), 10,
                 what="the change streams to open")
    app.produce(["k1", "k2", "k1"])
    # a checkpoint writes one change per changed key: k1 may show once or twice
    h.wait_until(lambda: all({c["key"] for c in s.changes()} == {"k1", "k2"} for s in streams), 30, interval=0.1,
                 what=f"the changes on the streams\n{inst.log_tail()}")
    idle = socket.create_connection(("127.0.0.1", inst.port), timeout=10)   # a keep-alive connection, idle

    t0 = time.monotonic()
    inst.proc.send_signal(getattr(signal, sig))
    code = inst.proc.wait(30)
    took = time.monotonic() - t0
    idle.close()
    assert code == 0, inst.log_tail()
    err = inst.stderr()
    assert f"received {sig}: stopping" in err, err[-3000:]
    assert not [w for w in NEVER if w in err], err[-3000:]
    for s in streams:
        assert s.done.wait(5), "the change stream did not end"
        assert s.error is None and s.clean, f"the change stream did not end with its last chunk: {s.raw[-300:]!r}"
        assert s.comments()[-1] == "stopping", s.lines()[-5:]
    assert took < 20, f"the stop took {took:.1f} s"
