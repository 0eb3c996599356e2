"""The built-in live page (``GET /`` of ``streamproc run --http-port``, ``static/live.html``) in a
real browser: headless Chromium, driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: commands on fd 3, answers on fd 4, JSON separated by NUL), no
Selenium and no extra package.

Why not ``chromium --headless --dump-dom`` alone: it dumps the DOM at the load event, before the
page's fetches and its EventSource have done anything; ``--timeout`` does not delay the dump, and
``--virtual-time-budget`` never ends while the page holds an SSE connection open.

``STREAMPROC_UPDATE_SCREENSHOT=1`` also writes ``docs/live-view.png`` (the README's picture).
Skipped when no Chromium is installed (Debian: ``apt-get install chromium``).
"""
from __future__ import annotations

import base64
import html.parser
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

import runtime_helpers as h
from streamproc import serdes

pytestmark = pytest.mark.broker

STR, JSON = serdes.String(), serdes.Json()
WIDTH, HEIGHT = 1200, 700
SCREENSHOT = os.path.join(h.ROOT, "docs", "live-view.png")

TOPO = '''
from streamproc import Topology, agg, serdes, windows
t = Topology("{app}")
views = t.stream("{src}", key=serdes.String(), value=serdes.Json())
(views.group_by_key()
      .aggregate(views=agg.count(), seconds=agg.sum("s"), name="page-stats")
      .to("{out}", value=serdes.Json()))
(views.group_by_key().window(windows.Tumbling("10s", grace="1h"))
      .aggregate(views=agg.count(), emit="update", name="views-per-10s")
      .to("{out}-w", value=serdes.Json()))
'''

PAGES = ["/home", "/pricing", "/docs/quickstart", "/blog/streaming-joins", "/signup", "/docs/windows", "/about"]
NEW_PAGES = ["/careers", "/docs/interactive-queries", "/changelog"]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


# ------------------------------------------------------------------------------------------ browser

_ON_FDS_3_AND_4 = ("import os, sys; r, w = int(sys.argv[1]), int(sys.argv[2]); os.dup2(r, 3); os.dup2(w, 4); "
                   "[os.close(fd) for fd in {r, w} - {3, 4}]; os.execv(sys.argv[3], sys.argv[3:])")


class Chromium:
    """Headless Chromium showing ``url``, driven over ``--remote-debugging-pipe``."""

    def __init__(self, binary: str, url: str, profile: str, log_path: str):
        cmd_r, self._cmd_w = os.pipe()      # we write commands, Chromium reads them on fd 3
        self._res_r, res_w = os.pipe()      # Chromium writes answers on fd 4
        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--no-default-browser-check", "--hide-scrollbars", "--mute-audio",
                f"--window-size={WIDTH},{HEIGHT}", f"--user-data-dir={profile}", "--remote-debugging-pipe", url]
        self.command = " ".join(args)
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(      # the pipes on fds 3 and 4, whatever their numbers here
                [sys.executable, "-c", _ON_FDS_3_AND_4, str(cmd_r), str(res_w), *args], pass_fds=(cmd_r, res_w),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        os.close(cmd_r)
        os.close(res_w)
        self._buf = b""
        self._id = 0
        self.session = None
        self.exceptions: list = []             # uncaught JavaScript exceptions of the page
        try:
            page = self._page_target(20)
            self.session = self.send("Target.attachToTarget", {"targetId": page, "flatten": True})["sessionId"]
            self.send("Runtime.enable", {}, self.session)
            self.send("Emulation.setDeviceMetricsOverride",
                      {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False}, self.session)
        except BaseException:
            self.close()
            raise

    def _page_target(self, timeout: float) -> str:
        end = time.monotonic() + timeout
        while True:
            pages = [t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page"]
            if pages:
                return pages[0]["targetId"]
            if time.monotonic() > end:
                raise AssertionError("Chromium opened no page")
            time.sleep(0.2)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        end = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buf:
                left = end - time.monotonic()
                if left <= 0 or not select.select([self._res_r], [], [], left)[0]:
                    raise AssertionError(f"Chromium did not answer {method} in {timeout:g} s")
                chunk = os.read(self._res_r, 1 << 20)
                if not chunk:
                    raise AssertionError(f"Chromium closed the pipe (exit {self.proc.poll()})")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("method") == "Runtime.exceptionThrown":
                self.exceptions.append(answer["params"]["exceptionDetails"])
            if answer.get("id") == self._id:          # anything else is an event
                if "error" in answer:
                    raise AssertionError(f"{method}: {answer['error']}")
                return answer["result"]

    def evaluate(self, expression: str):
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, self.session)
        if "exceptionDetails" in r:
            raise AssertionError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def text(self, element_id: str) -> str | None:
        """The text of the element with that id (None while there is none)."""
        return self.evaluate(f"(document.getElementById({json.dumps(element_id)}) || {{}}).textContent")

    def listening(self) -> bool:
        """Whether the page's EventSource (``source`` in live.html) is open."""
        return self.evaluate("typeof source !== 'undefined' && source !== null && source.readyState") == 1

    def dom(self) -> str:
        """The page's DOM now, as ``--dump-dom`` prints it."""
        return self.evaluate("document.documentElement.outerHTML")

    def screenshot(self) -> bytes:
        return base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"}, self.session)["data"])

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.send("Browser.close", timeout=5)
                except (AssertionError, OSError):
                    pass
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
            for fd in (self._cmd_w, self._res_r):
                try:
                    os.close(fd)
                except OSError:
                    pass


class _Rows(html.parser.HTMLParser):
    """``{data-key: [cell texts]}`` of the rows of the page's table (``<tr data-key=...>``)."""

    def __init__(self):
        super().__init__()
        self.rows: dict[str, list[str]] = {}
        self.order: list[str] = []
        self._row = None
        self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-key" in a:
            self._row = []
            self.order.append(a["data-key"])
            self._key = a["data-key"]
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.setdefault(self._key, []).append(self._row)
            self._row = None


def rows_of(dom: str) -> tuple[dict, list]:
    p = _Rows()
    p.feed(dom)
    return p.rows, p.order


# ------------------------------------------------------------------------------------------ app

def _free_port() -> int:
    return h.free_port()


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, None
    except OSError:
        return None, None


def _state(base: str, store: str) -> dict | None:
    status, body = _get(f"{base}/stores/{store}?limit=1000")
    return {it["key"]: it["value"] for it in body["items"]} if status == 200 else None


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            pass
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(10)


class _SlowClient:
    """An SSE client with a 4 kB receive buffer that reads nothing until :meth:`drain`."""

    def __init__(self, port: int, store: str):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(f"GET /stores/{store}/changes HTTP/1.1\r\nHost: x\r\n\r\n".encode())

    def drain(self, quiet_s: float = 1.5) -> list[tuple[int, dict]]:
        """Everything it was sent until the server is quiet: ``[(id, data)]`` of its change events."""
        self.sock.settimeout(quiet_s)
        raw = b""
        try:
            while True:
                b = self.sock.recv(1 << 16)
                if not b:
                    break
                raw += b
        except socket.timeout:
            pass
        finally:
            self.sock.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:100]
        text = b""
        while body:                               # chunked transfer encoding
            size, _, rest = body.partition(b"\r\n")
            n = int(size, 16)
            if n == 0 or len(rest) < n:
                text += rest[:n]
                break
            text += rest[:n]
            body = rest[n + 2:]
        out = []
        for block in text.split(b"\n\n"):
            fields = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line and
                          not line.startswith(b":"))
            if fields.get(b"event") == b"change":
                out.append((int(fields[b"id"]), json.loads(fields[b"data"])))
        return out


def _tail(path: str, n: int = 30) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def test_the_live_page_shows_a_store_and_its_changes_in_a_browser(tmp_path, request):
    binary = _chromium()
    if binary is None:          # checked before the broker fixture: no broker started for nothing
        pytest.skip("no Chromium binary (chromium, chromium-browser, google-chrome) on PATH; "
                    "on Debian: apt-get install chromium")
    bootstrap = request.getfixturevalue("kafka")[0]
    app = h.unique("live")
    src, out = f"{app}-views", f"{app}-out"
    h.create(bootstrap, [src, out, f"{out}-w"], 2)
    ref = h.write_topology(tmp_path / f"{app.replace('-', '_')}.py", TOPO.format(app=app, src=src, out=out))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = str(tmp_path / "app.log")
    env = dict(os.environ, PYTHONPATH=h.ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log, "ab") as lf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamproc", "run", ref, "-b", bootstrap, "--state-dir", str(tmp_path / "state"),
             "--http-port", str(port), "--advertised-url", base, "--log-format", "text", "--max-runtime", "600",
             "--config", "consumer.session.timeout.ms=6000"],
            env=env, stdout=lf, stderr=subprocess.STDOUT, start_new_session=True)
    browser = None
    expected: dict[str, dict] = {}
    ts = [int(time.time() * 1000)]

    def produce(pairs):
        recs = []
        for page, s in pairs:
            ts[0] += 150
            recs.append((page, {"s": s}, ts[0]))
            e = expected.setdefault(page, {"views": 0, "seconds": 0})
            e["views"] += 1
            e["seconds"] += s
        h.produce(bootstrap, src, recs, key_serde=STR, value_serde=JSON)

    try:
        h.wait_until(lambda: proc.poll() is None and _get(f"{base}/ready")[0] == 200, 90,
                     what=f"the app to be ready\n{_tail(log)}")
        # some state before the page loads: the "loaded" rows
        produce([(PAGES[i % len(PAGES)], 5 + i % 40) for i in range(60)])
        h.wait_until(lambda: all(_get(f"{base}/stores/page-stats?key={urllib.request.quote(p)}")[1] ==
                                 {"key": p, "value": expected[p], "instance": base} for p in PAGES), 60,
                     what="the first records to be queryable")
        loaded = {p: dict(v) for p, v in expected.items()}

        browser = Chromium(binary, f"{base}/?store=page-stats", str(tmp_path / "profile"),
                           str(tmp_path / "chromium.log"))
        h.wait_until(lambda: "live changes follow" in (browser.text("info") or ""), 30,
                     what="the page to load the store")
        h.wait_until(browser.listening, 15, what="the page's EventSource to open")
        rows, order = rows_of(browser.dom())
        assert set(rows) == set(PAGES), rows
        for p in PAGES:
            (key, value, updated), = rows[p]
            assert key == p and json.loads(value) == loaded[p] and updated == "loaded", rows[p]
        assert order == sorted(PAGES)                   # loaded in key order

        # a slow client on the same store next to the page: a tiny receive buffer, read only at the end
        slow = _SlowClient(port, "page-stats")
        # records for a few seconds: known pages change, new pages appear, all over SSE
        for batch in range(8):
            produce([(p, 10 + batch) for p in PAGES[:3] + NEW_PAGES])
            time.sleep(0.4)

        def shown():
            rows, _ = rows_of(browser.dom())
            if set(rows) != set(expected):
                return None
            if any(len(r) != 1 or json.loads(r[0][1]) != expected[k] for k, r in rows.items()):
                return None
            return rows

        try:
            rows = h.wait_until(shown, 10, interval=0.25, what="the page to show every change")
        except AssertionError:
            raise AssertionError(f"the page shows {rows_of(browser.dom())[0]}\nexpected {expected}\n"
                                 f"{_tail(log)}") from None
        live = _get(f"{base}/status")[1]["live"]
        assert live["clients"] >= 2 and live["sent"] > 0, live          # the page and the slow client
        # the slow client, read at last: ids in order, and for every key the newest value is the store's
        events = slow.drain()
        ids = [i for i, _ in events]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        newest = {d["key"]: d["value"] for _, d in events}
        assert {k: newest[k] for k in PAGES[:3] + NEW_PAGES} == {k: expected[k] for k in PAGES[:3] + NEW_PAGES}
        for p in PAGES[:3] + NEW_PAGES:                  # changed: the time of the change, not "loaded"
            updated = rows[p][0][2]
            assert updated != "loaded" and len(updated) == 12 and updated[2] == ":" and updated[8] == ".", rows[p]
        for p in PAGES[3:]:
            assert rows[p][0][2] == "loaded" and json.loads(rows[p][0][1]) == loaded[p]
        assert browser.text("app") == app
        assert browser.text("title") == "page-stats"
        assert browser.evaluate("[...document.querySelectorAll('nav a')].map(a => a.dataset.store)") == \
            ["page-stats", "views-per-10s"]
        status = browser.text("status")
        assert "tasks" in status and "running" in status, status

        png = browser.screenshot()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (WIDTH, HEIGHT)
        (tmp_path / "live-view.png").write_bytes(png)
        if os.environ.get("STREAMPROC_UPDATE_SCREENSHOT") == "1":
            os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
            with open(SCREENSHOT, "wb") as f:
                f.write(png)

        # the other store through the page's own navigation: one row per key and window. The page loads
        # a store from the instance's RocksDB, which can be a few hundred ms behind the changelog the SSE
        # follows, and a change in between is never shown (see the report): wait until it caught up.
        h.wait_until(lambda: _state(base, "page-stats") == expected, 15, what="the local state to catch up")
        browser.evaluate("document.querySelector('nav a[data-store=\"views-per-10s\"]').click()")
        h.wait_until(lambda: browser.evaluate("location.search") == "?store=views-per-10s"
                     and "live changes follow" in (browser.text("info") or ""), 20, what="the windowed store to load")
        h.wait_until(browser.listening, 15, what="the windowed store's EventSource to open")
        new_window = (ts[0] // 10_000 + 6) * 10_000       # a window of its own, after the page loaded
        ts[0] = new_window + 1_000
        produce([(NEW_PAGES[0], 1)] * 3)

        def windows():
            _, body = _get(f"{base}/stores/views-per-10s?limit=1000")
            return {f"{it['key']} @{it['value']['window_start']}": it["value"] for it in body["items"]}

        def windows_shown():
            want = windows()
            rows, _ = rows_of(browser.dom())
            cells = {r[0]: (json.loads(r[1]), r[2]) for rs in rows.values() for r in rs}
            if f"{NEW_PAGES[0]} @{new_window}" not in want or {c: v for c, (v, _) in cells.items()} != want:
                return None
            return cells

        try:
            cells = h.wait_until(windows_shown, 15, interval=0.25, what="the windowed rows and their changes")
        except AssertionError:
            want = windows()
            rows, _ = rows_of(browser.dom())
            shown = {r[0]: json.loads(r[1]) for rs in rows.values() for r in rs}
            wrong = [(c, shown[c], want[c]) for c in want if c in shown and shown[c] != want[c]]
            raise AssertionError(f"the page differs from the store (new window {new_window}): missing "
                                 f"{sorted(set(want) - set(shown))[:8]}, extra {sorted(set(shown) - set(want))[:8]}, "
                                 f"wrong {wrong[:4]}") from None
        value, updated = cells[f"{NEW_PAGES[0]} @{new_window}"]
        assert value["views"] == 3 and value["window_end"] == new_window + 10_000 and updated != "loaded"
        assert len(cells) > len(expected)                 # several windows per page
        assert not browser.exceptions, browser.exceptions
    finally:
        if browser is not None:
            browser.close()
        _stop(proc)
