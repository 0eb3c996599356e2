"""The HTTP server of an instance (``streamproc run --http-port``): queries, live changes, health, metrics.

Design. The server runs in the supervisor, in a thread with its own asyncio loop (aiohttp),
never in a worker: the processing loops are not slowed by requests, and one port serves the
whole instance. It reads committed state only - local task databases through RocksDB
secondary instances (``queries.py``), changes from the changelogs (``changes.py``) - and it
learns which instance runs which task from ``<app-id>-instances`` (``directory.py``), where it
publishes its own tasks as its workers report them.

Endpoints (keys in URLs: a string key as it is, anything else as JSON; ``?as=string|json``
forces one reading):

* ``GET /health``: 200 while the instance runs. ``GET /ready``: 200 once every task of the
  instance is restored and running, else 503.
* ``GET /stores``: the stores. ``GET /stores/<store>/<key>`` (or ``?key=``): the key's value
  from the instance that holds it - this one, or a ``307`` redirect to the owner (``curl -L``
  follows it); windowed stores answer the key's windows. 404 for a missing key or store, 400
  for a bad request, 503 while no instance runs the key's task (a rebalance).
* ``GET /stores/<store>?from=&to=&limit=&after=``: entries in key order across all instances,
  ``{"items": [{"key", "value"}...], "next": cursor}``; pass ``after=<next>`` for the next page.
* ``GET /stores/<store>/changes[?keys=a,b&prefix=p]``: Server-Sent Events, one ``change`` event per
  committed change for a client that keeps up, the newest per key for one that is behind, ``reset``
  for one that fell out of the buffer (``fanout.py``); ``Last-Event-ID`` resumes within the buffer.
* ``GET /status``: the status figures as JSON; ``GET /metrics``: Prometheus text format.
* ``GET /``: a small built-in page (``static/live.html``): the stores, one as a live table.

A request line longer than :data:`MAX_REQUEST_LINE` bytes answers ``414``, a header field longer
than :data:`MAX_HEADER_FIELD` bytes (or more than :data:`MAX_HEADERS` headers) ``431``, any other
request that does not parse ``400`` - each with a JSON body ``{"error": ...}``, logged at debug level
only (the client's mistake, not the server's).

Stopping (:meth:`QueryServer.stop`, after the workers stopped): the server leaves the directory,
stops listening, ends every open change stream (the feeds stop; each SSE response ends with a
``: stopping`` comment and its last chunk), waits up to :data:`SHUTDOWN_TIMEOUT_S` for requests in
flight, then ends its event loop (``asyncio.run``: leftover tasks cancelled and awaited, the loop
closed by its own thread) - nothing is left for the interpreter to destroy at exit.

There is no authentication: keep the port on a private network or behind a proxy.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from urllib.parse import urlencode

import orjson

from ...errors import StreamprocError
from ...state.layout import task_id
from .changes import ChangeFeed
from .fanout import Fanout, Filter, LiveStats, Pacer
from ...operators.present import presenter, to_json_key
from .queries import QueryError, Stores, key_candidates

log = logging.getLogger("streamproc.http")

_STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_LIMIT = 1000
#: Seconds a stopping instance keeps its port open after leaving the directory (others follow it
#: within a fraction of a second; a client they redirected just before must still get an answer).
WITHDRAW_GRACE_S = 1.5
#: Seconds a stopping server waits for requests in flight (change streams end at once) before cancelling
#: them, and again for the cancelled ones (aiohttp's ``shutdown_timeout``).
SHUTDOWN_TIMEOUT_S = 3.0
#: Longest request line (the URL, with its query) and header field, in bytes; longer answers 414 / 431.
#: They differ so that aiohttp's ``LineTooLong`` (raised for both) tells which limit was hit.
MAX_REQUEST_LINE = 8190
MAX_HEADER_FIELD = 8192
MAX_HEADERS = 128


def default_url(port: int) -> str:
    return f"http://{socket.getfqdn() or socket.gethostname()}:{port}"


class QueryServer:
    def __init__(self, plan, options, counts: dict, observer, process_id: str, *, port: int,
                 advertised_url: str | None = None):
        from ...kafka.config import restore_consumer_config
        from .directory import InstanceDirectory

        self.plan = plan
        self.observer = observer
        self.port = port
        self.url = (advertised_url or default_url(port)).rstrip("/")
        self.stores = Stores(plan, options.state_dir, counts, state_backend=options.state_backend)
        self.directory = InstanceDirectory(options.bootstrap_servers, plan.app_id, process_id, self.url,
                                           options.client("admin"))
        self._consumer_conf = restore_consumer_config(options.bootstrap_servers, plan.app_id, options.client("restore"))
        self._counts = counts
        self._feeds: dict[str, ChangeFeed] = {}
        self._fanouts: dict[int, Fanout] = {}          # id(feed) -> its clients
        self.live = observer.live_streams if observer is not None else LiveStats()
        self.live.serving = True
        self._pacer = Pacer(self.live, getattr(options, "live_cpu_share", 0.25))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._stopping: asyncio.Event | None = None     # set (in the loop) by stop(): the server winds down
        self._withdrawn_at: float | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "QueryServer":
        self.directory.start()
        self._thread = threading.Thread(target=self._serve, name="streamproc-http", daemon=True)
        self._thread.start()
        self._started.wait(15)
        if self._error is not None:
            raise StreamprocError(f"cannot serve HTTP on port {self.port}: {self._error} (is the port in use? "
                                  f"pick another --http-port)")
        log.info("HTTP queries at %s (advertised as %s)", f"http://0.0.0.0:{self.port}/", self.url)
        return self

    def _serve(self) -> None:
        """The server thread: its own event loop, from start to close (``asyncio.run``), so that
        whatever is still pending when :meth:`_main` returns is cancelled and awaited here, and
        the loop is closed by the thread that ran it."""
        try:
            asyncio.run(self._main())
        except BaseException as e:  # noqa: BLE001 - before start-up: reported by start(); after: logged
            if not self._started.is_set():
                self._error = e
            else:
                log.warning("the HTTP server stopped on an error: %s", e)
        finally:
            self._started.set()

    async def _main(self) -> None:
        from aiohttp import web

        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        app = web.Application()
        app.add_routes([
            web.get("/", self._page), web.get("/health", self._health), web.get("/ready", self._ready),
            web.get("/status", self._status), web.get("/metrics", self._metrics), web.get("/stores", self._list),
            web.get("/stores/{store}", self._range), web.get("/stores/{store}/changes", self._changes),
            web.get("/stores/{store}/{key:.+}", self._get),
        ])
        # aiohttp's graceful stop: stop listening, close idle connections, on_shutdown (end the
        # change streams: they would otherwise run until shutdown_timeout), wait for the requests in
        # flight, cancel what is left.
        app.on_shutdown.append(self._end_streams)
        runner = _runner_class()(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S,
                                 max_line_size=MAX_REQUEST_LINE, max_field_size=MAX_HEADER_FIELD,
                                 max_headers=MAX_HEADERS)
        await runner.setup()
        try:
            await web.TCPSite(runner, "0.0.0.0", self.port, reuse_address=True).start()
            announcer = asyncio.create_task(self._announce(), name="streamproc-http-announce")
            self._pacer.start()
            try:
                self._started.set()
                await self._stopping.wait()
            finally:
                self._pacer.stop()
                announcer.cancel()
                try:
                    await announcer
                except asyncio.CancelledError:
                    pass
        finally:
            await runner.cleanup()

    async def _announce(self) -> None:
        """Publish this instance's tasks in the directory whenever they change."""
        while True:
            try:
                self.directory.publish(self.observer.running_tasks())
            except Exception as e:  # noqa: BLE001 - routing goes on with what others know
                log.debug("directory publish: %s", e)
            await asyncio.sleep(0.5)

    async def _end_streams(self, app) -> None:
        """``on_shutdown``: stop the change feeds; each tells its subscribers, whose streams then end."""
        for feed in list(self._feeds.values()):
            feed.stop()

    def withdraw(self) -> None:
        """The instance is stopping: tell the others (a directory tombstone) so they stop sending clients
        here; this server keeps answering from what it holds until :meth:`stop`."""
        if self._withdrawn_at is None:
            self._withdrawn_at = time.monotonic()
        self.directory.withdraw()

    def stop(self) -> None:
        """Stop serving (after the workers stopped): leave the directory, wait out the grace, end the
        change streams and the requests in flight, end the server thread and its loop."""
        self.withdraw()
        # a client redirected here just before the others read the tombstone still gets an answer
        left = WITHDRAW_GRACE_S - (time.monotonic() - self._withdrawn_at)
        if left > 0:
            time.sleep(left)
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is not None and thread.is_alive() and loop is not None and stopping is not None:
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:        # the loop ended on its own meanwhile
                pass
            thread.join(2 * SHUTDOWN_TIMEOUT_S + 5)
            if thread.is_alive():
                log.warning("the HTTP server did not stop within %.0f s; leaving it", 2 * SHUTDOWN_TIMEOUT_S + 5)
        for f in self._feeds.values():
            f.close()
        self.directory.close()
        self.stores.close()

    # ------------------------------------------------------------------ handlers
    async def _page(self, request):
        from aiohttp import web

        with open(os.path.join(_STATIC, "live.html"), "rb") as f:
            return web.Response(body=f.read(), content_type="text/html")

    async def _health(self, request):
        return _json({"status": "alive", "app": self.plan.app_id})

    async def _ready(self, request):
        f = self.observer.figures()
        ready = f["workers"] > 0 and f["restoring"] == 0 and f["running"] > 0
        return _json({"ready": ready, "running": f["running"], "restoring": f["restoring"]}, 200 if ready else 503)

    async def _status(self, request):
        return _json({**self.observer.figures(), "app": self.plan.app_id, "url": self.url})

    async def _metrics(self, request):
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from ..instance.observe import metrics_registry

        return web.Response(body=generate_latest(metrics_registry(self.observer)),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _list(self, request):
        return _json({"app": self.plan.app_id, "stores": self.stores.names()})

    async def _get(self, request):
        store = request.match_info["store"]
        return await self._lookup(request, store, request.match_info["key"])

    async def _lookup(self, request, store: str, text: str):
        """Find ``text`` read as each key it may mean (``key_candidates``): a local hit answers; a candidate
        held by another instance is redirected there (``307``, with ``as=`` fixing the reading) - when
        several readings are possible and one is remote, the owner is asked first (``probe=1``: it answers
        from its own state only) so the client is never sent to a 404 while another reading exists."""
        from aiohttp import web

        try:
            self.stores.spec(store)
            cands = _candidates(text, request.query.get("as"))
            probe = request.query.get("probe") == "1"
            local = self.observer.running_tasks()
            for i, key in enumerate(cands):
                try:
                    task = self.stores.task_of(store, key)
                except QueryError as e:
                    if e.status == 404:         # this reading cannot be a key of the store (its serde refuses it)
                        continue
                    raise
                as_ = "string" if isinstance(key, str) else "json"
                if task in local:
                    try:
                        value = self.stores.get(store, key)      # a few µs: no thread hand-off
                    except QueryError as e:
                        if e.status == 404:
                            continue
                        raise
                    return _json({"key": to_json_key(key), "value": value, "instance": self.url})
                if probe:                       # asked for this instance's own state only: not here (yet)
                    raise QueryError(503, f"task {task_id(*task)} does not run on this instance now")
                owner = self.directory.owner(task)
                if owner is None:
                    raise QueryError(503, f"no instance runs task {task_id(*task)} of store {store!r} right now "
                                          f"(a rebalance?); retry shortly")
                if owner == self.url:     # the directory is ahead of the workers' reports: retry shortly
                    raise QueryError(503, f"task {task_id(*task)} is being assigned to this instance; retry")
                target = f"{owner}/stores/{store}?{urlencode({'key': text, 'as': as_})}"
                if i < len(cands) - 1 and not await self._has(target):
                    continue
                raise web.HTTPTemporaryRedirect(target)
            raise QueryError(404, f"key {text!r} is not in store {store!r}")
        except QueryError as e:
            return _error(e.status, str(e))

    async def _has(self, url: str) -> bool:
        """Does the owner at ``url`` (a lookup URL) hold the key? (``probe=1``: it never redirects)."""
        import aiohttp

        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
                async with s.get(url + "&probe=1", allow_redirects=False) as r:
                    return r.status != 404      # 503 (not running there yet): let the client ask it
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return True             # unknown: let the client ask the owner itself

    async def _range(self, request):
        store = request.match_info["store"]
        q = request.query
        if "key" in q:
            return await self._lookup(request, store, q["key"])
        try:
            self.stores.spec(store)
            if q.get("as") not in (None, "string", "json"):
                raise QueryError(400, f"as= must be 'string' or 'json', got {q.get('as')!r}")
            try:
                limit = int(q.get("limit", "100"))
            except ValueError:
                raise QueryError(400, f"limit must be an integer, got {q.get('limit')!r}") from None
            if not 1 <= limit <= MAX_LIMIT:
                raise QueryError(400, f"limit must be 1..{MAX_LIMIT}, got {limit}")
            lo = _bound(q.get("from"), q.get("as"))
            hi = _bound(q.get("to"), q.get("as"))
            try:
                after = bytes.fromhex(q["after"]) if q.get("after") else None
            except ValueError:
                raise QueryError(400, "after must be the 'next' cursor of a previous page") from None
            local = self.observer.running_tasks()
            entries = await asyncio.to_thread(self.stores.range, store, local, lo, hi, after, limit)
            if q.get("scope") == "local":
                return _json({"items": [{**item, "sort": kb.hex()} for kb, item in entries]})
            merged = [(kb.hex(), item) for kb, item in entries]
            for url in self.directory.urls():
                if url != self.url:
                    merged += await self._remote_range(url, store, request.query, limit)
            merged.sort(key=lambda e: e[0])
            page = merged[:limit]
            nxt = page[-1][0] if len(merged) > limit or len(page) == limit else None
            return _json({"items": [item for _, item in page], "next": nxt})
        except QueryError as e:
            return _error(e.status, str(e))

    async def _remote_range(self, url: str, store: str, query, limit: int) -> list:
        import aiohttp

        params = {k: v for k, v in query.items() if k in ("from", "to", "after", "as")}
        params.update(scope="local", limit=str(limit))
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
                async with s.get(f"{url}/stores/{store}", params=params) as r:
                    if r.status != 200:
                        raise QueryError(503, f"instance {url} answered {r.status} for its part of {store!r}")
                    body = await r.json()
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise QueryError(503, f"instance {url} did not answer for its part of store {store!r}: {e}") from None
        return [(item.pop("sort"), item) for item in body["items"]]

    async def _changes(self, request):
        from aiohttp import web

        store = request.match_info["store"]
        try:
            spec = self.stores.spec(store)
        except QueryError as e:
            return _error(e.status, str(e))
        feed = self._feed(spec)
        last = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
        try:
            last_id = int(last) if last else None
        except ValueError:
            return _error(400, f"Last-Event-ID must be an event id, got {last!r}")
        flt = Filter(request.query.get("keys"), request.query.get("prefix"))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        fanout = self._fanouts.get(id(feed))
        if fanout is None:
            fanout = self._fanouts[id(feed)] = Fanout(feed, self.live, asyncio.get_running_loop())
        try:
            await resp.write(b": streamproc changes of " + store.encode() + b"\n\n")
            await fanout.serve(resp.write, last_id, flt)
            # the stream ends here: a comment saying why, then the last chunk (a clean end of the body)
            await resp.write(b": stopping\n\n")
            await resp.write_eof()
        except ConnectionError:         # the client went away (or was disconnected: it stopped reading)
            pass
        return resp

    def _feed(self, spec) -> ChangeFeed:
        old = self._feeds.get(spec.name)
        if old is not None and not old.failed:
            return old
        # the first client of the store, or its feed failed (logged): a new one, ids going on from the old
        st = next(s for s in self.plan.subtopologies if spec in s.stores)
        feed = self._feeds[spec.name] = ChangeFeed(self._consumer_conf, spec, presenter(st, spec),
                                                  self._counts[("task", st.id)],
                                                  first_id=old.next_id if old is not None else 1)
        return feed


_RUNNER = None


def _runner_class():
    """``web.AppRunner`` whose connections answer requests that do not parse (aiohttp raises
    ``LineTooLong`` / ``BadHttpMessage`` in the protocol, before any handler or middleware) with
    414 / 431 / 400 and a JSON body, logged at debug level - aiohttp logs them at ERROR with a
    traceback and answers plain text. aiohttp has no option for its protocol class: the runner's
    ``_make_server`` hands the server it built to a ``web.Server`` subclass that makes our protocol."""
    global _RUNNER
    if _RUNNER is not None:
        return _RUNNER
    from aiohttp import web
    from aiohttp.http_exceptions import HttpProcessingError
    from aiohttp.web_protocol import RequestHandler

    class Protocol(RequestHandler):
        __slots__ = ()

        def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                         message: str | None = None):
            if status >= 500 or not isinstance(exc, HttpProcessingError):   # a handler failed: aiohttp's 500
                return super().handle_error(request, status, exc, message)
            status, text = _refusal(exc, self.max_line_size, self.max_field_size, self.max_headers)
            log.debug("refused a request from %s: %s (%s)", request.remote, text, exc)
            resp = _error(status, text)
            resp.force_close()
            return resp

    class Server(web.Server):
        def __call__(self):
            return Protocol(self, loop=self._loop, **self._kwargs)

    class Runner(web.AppRunner):
        async def _make_server(self):
            base = await super()._make_server()
            return Server(base.request_handler, request_factory=base.request_factory,
                          handler_cancellation=base.handler_cancellation, loop=base._loop, **base._kwargs)

    _RUNNER = Runner
    return Runner


def _refusal(exc, max_line: int, max_field: int, max_headers: int) -> tuple[int, str]:
    """The status and message for a request aiohttp could not parse."""
    from aiohttp.http_exceptions import LineTooLong

    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        if limit == max_line:
            return 414, f"the request line (URL) is longer than {max_line} bytes"
        return 431, f"a request header is longer than {max_field} bytes"
    text = " ".join((getattr(exc, "message", "") or str(exc)).split())     # llhttp's messages span lines
    if text.startswith("Too many headers"):
        return 431, f"the request has more than {max_headers} headers"
    return (exc.code if 400 <= exc.code < 500 else 400), f"bad request: {text}"


def _candidates(text: str, as_: str | None) -> list:
    if as_ == "string":
        return [text]
    if as_ == "json":
        try:
            v = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise QueryError(400, f"the key {text!r} is not JSON (as=json)") from None
        return [tuple(v) if isinstance(v, list) else v]
    if as_ is not None:
        raise QueryError(400, f"as= must be 'string' or 'json', got {as_!r}")
    return key_candidates(text)


def _bound(text: str | None, as_: str | None):
    if text is None:
        return None
    return _candidates(text, as_ or "string" if as_ != "json" else "json")[0]


def _json(data, status: int = 200):
    from aiohttp import web

    return web.Response(body=orjson.dumps(data, default=repr, option=orjson.OPT_NON_STR_KEYS), status=status,
                        content_type="application/json")


def _error(status: int, message: str):
    return _json({"error": message, "status": status}, status)
