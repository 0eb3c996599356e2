"""NATS JetStream as a source and a sink (DESIGN section 9).

``NatsJetStream(url, subject, ...)`` is a picklable definition; its clients speak to JetStream through
nats-py, which is asyncio-only. Each client therefore owns one private event loop running in one
private daemon thread, and its synchronous methods (the :class:`SourceClient` / :class:`SinkClient`
interface the bridge and the delivery call) submit a coroutine to that loop and wait for it with a
bounded timeout (``asyncio.run_coroutine_threadsafe(...).result(timeout)``).

Semantics (what a message looks like on the NATS side):

* sink: the payload is the serialized value (``b""`` for a tombstone); headers ``Nats-Msg-Id`` (the
  :class:`Outgoing` id, so JetStream drops a re-delivery within the stream's duplicate window, two
  minutes by default), ``Streamproc-Key`` (the serialized key, percent-encoded: every byte outside
  ``A-Za-z0-9-._~`` as ``%XX``, decode with ``urllib.parse.unquote_to_bytes``; absent when the key is
  None) and ``Streamproc-Tombstone: true`` when the value is None. With ``stream=`` the publish also
  carries ``Nats-Expected-Stream``, so JetStream refuses it unless that stream captures the subject.
* source: a durable pull consumer (explicit ack) filtered by ``subject``; ``Incoming.id`` is the
  ``Nats-Msg-Id`` header when present, else ``<stream>:<stream sequence>``; ``redelivered`` is
  ``num_delivered > 1``. A message not acked within ``ack_wait`` (a crash, a closed client) is
  delivered again. JetStream has no dead-letter route, so :attr:`dead_letters` is False.

Errors: connection refused or lost, a server restarting, JetStream answering 5xx or nothing in time
raise :class:`Unavailable` (the caller retries; the client reconnects by itself on its next call);
bad credentials, no stream capturing a subject, a stream or consumer that cannot be used as asked,
a message the server refuses (too big, bad subject) raise :class:`ConnectorError`.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import threading
import urllib.parse

from ..errors import ConnectorError, TopologyError
from ._base import Connector, Incoming, Outgoing, SinkClient, SourceClient, Unavailable

_CONNECT_TIMEOUT_S = 2.0     # one TCP connect + NATS handshake
_API_TIMEOUT_S = 5.0         # one JetStream API request (stream lookup, consumer info/create)
_ACK_TIMEOUT_S = 5.0         # no PubAck progress / no flush answer for this long: Unavailable
_MARGIN_S = 5.0              # the thread-side safety net on top of the loop-side timeouts
_MAX_IN_FLIGHT = 4000        # publishes awaiting their PubAck at once (bounded memory, pipelined)
_PROBE_S = 0.05              # expiry of the no-wait pull request that takes what is there now

_KEY_HEADER = "Streamproc-Key"
_TOMBSTONE_HEADER = "Streamproc-Tombstone"
_MSG_ID_HEADER = "Nats-Msg-Id"

_STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_SUBJECT = re.compile(r"^[^\s]+$")


def _sanitize(text: str, allowed: str = r"A-Za-z0-9._-") -> str:
    """``text`` with every character outside ``allowed`` replaced by ``_`` (names, durables)."""
    return re.sub(f"[^{allowed}]", "_", text)


def _is_wildcard(subject: str) -> bool:
    """A subject with ``*`` or ``>`` tokens: usable as a consumer filter, not as a publish target."""
    return any(token in ("*", ">") for token in subject.split("."))


def _servers(url: str) -> list[str]:
    """nats-py's server list from ``url`` (one URL, or several separated by commas)."""
    return [u.strip() for u in url.split(",") if u.strip()]


def redact_url(url: str) -> str:
    """``url`` without user, password or token (for messages and ``describe``)."""
    out = []
    for one in _servers(url):
        parts = urllib.parse.urlsplit(one if "://" in one else f"nats://{one}")
        netloc = parts.netloc.rsplit("@", 1)[-1]
        out.append(urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", "")))
    return ",".join(out)


def encode_key(key: bytes) -> str:
    """The ``Streamproc-Key`` header value of ``key``: percent-encoded, so any bytes survive a header."""
    return urllib.parse.quote(key, safe="-._~")


def decode_key(value: str) -> bytes:
    """The key bytes back from a ``Streamproc-Key`` header value."""
    return urllib.parse.unquote_to_bytes(value)


class NatsJetStream(Connector):
    """NATS JetStream: a sink publishing to ``subject`` or a source reading a durable pull consumer.

    ``NatsJetStream(url, subject=None, *, stream=None, durable=None, key=None, prefetch=1000,
    ack_wait="30s", name=None, partitions=None, dedupe=None, buffer=10_000, batch=None)``

    ``url``: ``nats://[user:password@]host:port`` (several separated by commas). As a sink,
    ``subject`` is where each result goes: a fixed string (no wildcards) or a function
    ``(key, value) -> str``; a stream must capture it (checked at open() for a fixed subject, and by
    the first publish for a computed one). As a source, ``subject`` (a string, wildcards allowed) filters
    the durable pull consumer ``durable`` (default: derived from ``name``, else from the subject) on
    ``stream`` (default: the stream whose subjects capture ``subject``, looked up at open()); the consumer
    is created at open() if missing (explicit ack, ``max_ack_pending=prefetch``, ``ack_wait``) and reused
    if it exists, so every instance shares it and JetStream spreads the messages among them.

    A definition is usable as a source when ``subject`` is a string and ``stream`` or ``durable`` is
    given (saying where to read from is what makes it a source); it is usable as a sink when ``subject``
    is a function or a string without wildcards. ``NatsJetStream(url, "orders", stream="ORDERS")`` is
    both: a sink publishing into ORDERS (the publish carries ``Nats-Expected-Stream: ORDERS``) and a
    source reading ``orders`` from it.
    """

    kind = "nats"

    def __init__(self, url, subject=None, *, stream=None, durable=None, key=None, prefetch=1000,
                 ack_wait="30s", name=None, partitions=None, dedupe=None, buffer=10_000, batch=None):
        from ..windows import parse_duration

        cls = type(self).__name__
        if not isinstance(url, str) or not _servers(url):
            raise TopologyError(f"{cls}: url= must be a string like 'nats://host:4222', got {url!r}")
        if not callable(subject) and not (isinstance(subject, str) and _SUBJECT.match(subject)):
            raise TopologyError(f"{cls}: subject= must be a subject string without spaces (like 'orders.new') "
                                f"or a function (key, value) -> str, got {subject!r}")
        for what, value in (("stream", stream), ("durable", durable)):
            if value is not None and (not isinstance(value, str) or not _STREAM_NAME.match(value)):
                raise TopologyError(f"{cls}: {what}= must be letters, digits, '_' or '-' (JetStream names "
                                    f"cannot hold '.', '*', '>' or spaces), got {value!r}")
        if durable is not None and not isinstance(subject, str):
            raise TopologyError(f"{cls}: durable= reads a source, and a source needs a fixed subject string "
                                f"to filter on, got subject={subject!r}")
        if not isinstance(prefetch, int) or isinstance(prefetch, bool) or prefetch < 1:
            raise TopologyError(f"{cls}: prefetch= must be a positive int, got {prefetch!r}")
        ack_wait_ms = parse_duration(ack_wait, "ack_wait")
        if ack_wait_ms < 1:
            raise TopologyError(f"{cls}: ack_wait= must be positive, got {ack_wait!r}")
        sinkable = callable(subject) or (isinstance(subject, str) and not _is_wildcard(subject))
        self._common(name=name, target=subject if sinkable else None, key=key, partitions=partitions,
                     dedupe=dedupe, buffer=buffer, batch=batch)
        self.url = url
        self.subject = subject
        self.stream = stream
        self._durable = durable
        self.prefetch = prefetch
        self.ack_wait_ms = ack_wait_ms

    @property
    def source(self) -> bool:
        """A string subject plus a stream or a durable: there is something to read."""
        return isinstance(self.subject, str) and (self.stream is not None or self._durable is not None)

    @property
    def durable(self) -> str:
        """The durable consumer's name: ``durable=``, else ``name=``, else derived from the subject."""
        if self._durable is not None:
            return self._durable
        return _sanitize(self.name or self.default_name(), r"A-Za-z0-9_-")

    def default_name(self) -> str:
        """``nats-<subject>`` (for a computed subject: ``nats-<stream or function name>``)."""
        if isinstance(self.subject, str):
            what = self.subject
        else:
            what = self.stream or getattr(self.subject, "__name__", "subject")
        return _sanitize(f"nats-{what}")

    def describe(self) -> str:
        """One line: the url without credentials, the subject, the stream and the durable."""
        subject = self.subject if isinstance(self.subject, str) else (
            f"<{getattr(self.subject, '__name__', 'function')}(key, value)>" if self.subject else "-")
        parts = [f"NATS JetStream {redact_url(self.url)}", f"subject {subject}"]
        if self.stream:
            parts.append(f"stream {self.stream}")
        if self.source:
            parts.append(f"durable {self.durable}")
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"NatsJetStream({self.describe()})"

    def source_client(self, consumer_name: str) -> SourceClient:
        if not self.source:
            raise TopologyError(f"{self.describe()} is not a source: give subject= as a string and "
                                f"stream= or durable=")
        return _Source(self, consumer_name)

    def sink_client(self) -> SinkClient:
        if not self.sink:
            raise TopologyError(f"{self.describe()} is not a sink: give subject= without wildcards, or a "
                                f"function (key, value) -> subject")
        return _Sink(self)


# --------------------------------------------------------------------------- errors


def _translate(exc: BaseException, what: str, where: str) -> BaseException:
    """The streamproc error for a nats-py failure of ``what`` against ``where`` (url without password).

    Retryable (Unavailable): connection refused/lost/closed, timeouts, JetStream answering 5xx (or not
    at all: no responders on its API), a 408/409 status. Everything else nats-py raises on purpose is a
    ConnectorError. Unknown exceptions (bugs) pass through unchanged."""
    import nats.errors as ne
    import nats.js.errors as je

    if isinstance(exc, (Unavailable, ConnectorError)):
        return exc
    if isinstance(exc, (ne.AuthorizationError, ne.InvalidUserCredentialsError)) or (
            isinstance(exc, ne.Error) and "authorization violation" in str(exc).lower()):
        return ConnectorError(f"{what} failed: the NATS server at {where} refused the credentials "
                              f"({exc}). Fix the user/password or token in url=.")
    if isinstance(exc, je.NotFoundError):
        return ConnectorError(f"{what} failed: JetStream at {where} says it does not exist ({exc}). "
                              f"Create it (nats stream add / nats consumer add) or fix the settings.")
    if isinstance(exc, je.APIError):
        code = exc.code or 0
        if code >= 500 or code in (408, 409):
            return Unavailable(f"{what} failed: JetStream at {where} is temporarily unavailable ({exc}); "
                               f"retrying.")
        return ConnectorError(f"{what} failed: JetStream at {where} refused it ({exc}). Fix the stream or "
                              f"consumer configuration, or the connector's settings.")
    if isinstance(exc, (ne.BadSubjectError, ne.MaxPayloadError, ne.BadHeaderError)):
        return ConnectorError(f"{what} failed: the NATS server at {where} will not take this message "
                              f"({type(exc).__name__}: {exc}). Fix the subject, or raise the server's "
                              f"max_payload / make the values smaller.")
    if isinstance(exc, (ne.Error, OSError, asyncio.TimeoutError, concurrent.futures.TimeoutError)):
        return Unavailable(f"{what} failed: the NATS server at {where} cannot be reached or did not answer "
                           f"in time ({type(exc).__name__}: {exc}); retrying.")
    return exc


# --------------------------------------------------------------------------- loop + connection


class _Loop:
    """One private asyncio event loop in one private daemon thread, for one client.

    nats-py is asyncio-only while the clients are called from plain threads; every call goes through
    :meth:`run`, which waits a bounded time so nothing hangs."""

    def __init__(self, label: str):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"streamproc-nats-{label}",
                                        daemon=True)
        self._thread.start()

    def run(self, coro, timeout_s: float, what: str, where: str):
        """Run ``coro`` on the loop and return its result; after ``timeout_s`` cancel it: Unavailable."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout_s)
        except BaseException as exc:   # noqa: BLE001 - translated, or re-raised unchanged
            if not future.done():      # the wait timed out (not the coroutine): give up on it
                future.cancel()
                raise Unavailable(f"{what} did not finish within {timeout_s:.0f} s against the NATS server "
                                  f"at {where}; retrying.") from None
            translated = _translate(exc, what, where)
            if translated is exc:
                raise
            raise translated from exc

    def stop(self) -> None:
        """Stop the loop and its thread (pending tasks are dropped: the connection is closed first)."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(_MARGIN_S)
        if not self._thread.is_alive():
            self.loop.close()


class _Connection:
    """The client's NATS connection, made again on the next call after it was lost.

    nats-py's own reconnect is off: a lost connection fails every pending call at once (Unavailable
    within seconds instead of buffering publishes), and the next call connects afresh."""

    def __init__(self, url: str, label: str):
        self._url = url
        self._label = label
        self.nc = None
        self.js = None
        self.lost: asyncio.Event | None = None
        self.denied: str | None = None      # the last "Permissions Violation" the server sent

    def check_denied(self, what: str, where: str) -> None:
        """ConnectorError when the server refused a subject to these credentials (it then just drops
        the publish or subscription, so the caller would only see a timeout)."""
        if self.denied:
            raise ConnectorError(f"{what}: the NATS server at {where} refused it to these credentials "
                                 f"({self.denied}). Grant the user publish/subscribe permission on the "
                                 f"subject, the JetStream API ($JS.API.>) and _INBOX.>.")

    @property
    def usable(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def ensure(self) -> bool:
        """Connect if not connected; True when a new connection was made."""
        if self.usable:
            return False
        await self.close()
        import nats

        lost = asyncio.Event()
        self.denied = None

        async def _quiet(exc) -> None:      # nats-py logs a traceback per error by default
            if "permissions violation" in str(exc).lower():
                self.denied = str(exc)      # the server refused one subject; the connection stays

        async def _on_lost() -> None:
            lost.set()

        self.nc = await asyncio.wait_for(nats.connect(
            servers=_servers(self._url), name=f"streamproc-{self._label}", allow_reconnect=False,
            connect_timeout=_CONNECT_TIMEOUT_S, max_reconnect_attempts=1, reconnect_time_wait=0.1,
            flush_timeout=_ACK_TIMEOUT_S, error_cb=_quiet, disconnected_cb=_on_lost, closed_cb=_on_lost),
            timeout=2 * _CONNECT_TIMEOUT_S * max(1, len(_servers(self._url))) + 1)
        self.lost = lost
        self.js = self.nc.jetstream(timeout=_API_TIMEOUT_S, publish_async_max_pending=_MAX_IN_FLIGHT)
        return True

    def jetstream_enabled(self) -> bool:
        """What the server's INFO says (False when it does not say: then JetStream is off there)."""
        info = getattr(self.nc, "_server_info", None) or {}
        return bool(info.get("jetstream", False))

    async def close(self) -> None:
        nc, self.nc, self.js = self.nc, None, None
        if nc is not None and not nc.is_closed:
            try:
                await asyncio.wait_for(nc.close(), _CONNECT_TIMEOUT_S)
            except Exception:   # noqa: BLE001 - closing a broken connection: nothing left to do
                pass


class _Client:
    """What sink and source share: the private loop, the connection, bounded calls."""

    def __init__(self, definition: NatsJetStream, label: str):
        self._d = definition
        self._label = label
        self._where = redact_url(definition.url)
        self._loop: _Loop | None = None
        self._conn = _Connection(definition.url, label)

    def _run(self, coro, timeout_s: float, what: str):
        if self._loop is None:
            coro.close()
            raise ConnectorError(f"{what}: the client for {self._d.describe()} is not open; call open() first")
        return self._loop.run(coro, timeout_s, what, self._where)

    def _start(self) -> None:
        if self._loop is None:
            self._loop = _Loop(self._label)

    def close(self) -> None:
        """Close the connection (unacked source messages come again after ack_wait) and stop the loop."""
        if self._loop is None:
            return
        try:
            self._loop.run(self._conn.close(), _CONNECT_TIMEOUT_S + _MARGIN_S, "closing", self._where)
        except Exception:   # noqa: BLE001 - close never fails: the server forgets a dead connection
            pass
        self._loop.stop()
        self._loop = None

    async def _no_jetstream(self, exc: BaseException, what: str) -> BaseException:
        """ConnectorError when the server has no JetStream at all, else ``exc`` unchanged."""
        import nats.js.errors as je

        if isinstance(exc, je.ServiceUnavailableError) and not self._conn.jetstream_enabled():
            return ConnectorError(f"{what} failed: the NATS server at {self._where} does not have JetStream "
                                  f"enabled. Start it with -js (or jetstream {{}} in its configuration).")
        return exc


# --------------------------------------------------------------------------- sink


def _headers(message: Outgoing) -> dict[str, str]:
    headers = {}
    if message.id:
        headers[_MSG_ID_HEADER] = message.id
    if message.key is not None:
        headers[_KEY_HEADER] = encode_key(message.key)
    if message.value is None:
        headers[_TOMBSTONE_HEADER] = "true"
    return headers


class _Sink(_Client, SinkClient):
    """Publishes batches to JetStream, pipelined: all publishes go out, then every PubAck is awaited."""

    def __init__(self, definition: NatsJetStream):
        super().__init__(definition, f"sink-{definition.name or definition.default_name()}")
        self._acks: _PubAcks | None = None
        self._checked = None      # the connection on which the fixed subject's stream was checked

    def open(self) -> None:
        self._start()
        self._run(self._connect(), 2 * _API_TIMEOUT_S + 4 * _CONNECT_TIMEOUT_S + _MARGIN_S,
                  f"opening the JetStream sink {self._d.describe()}")

    async def _connect(self) -> None:
        """Connect; for a fixed subject check (once per connection) that a stream captures it, so a
        typo fails at open() rather than at the first publish."""
        await self._conn.ensure()
        subject = self._d.subject
        if not isinstance(subject, str) or self._checked is self._conn.nc:
            return
        import nats.js.errors as je

        what = f"looking up the stream for subject {subject!r}"
        try:
            stream = await self._conn.js.find_stream_name_by_subject(subject)
        except je.NotFoundError:
            raise self._no_stream(subject) from None
        except je.ServiceUnavailableError as exc:
            raise await self._no_jetstream(exc, what) from exc
        if self._d.stream is not None and stream != self._d.stream:
            raise ConnectorError(f"The JetStream sink {self._d.describe()}: subject {subject!r} is captured by "
                                 f"stream {stream!r}, not {self._d.stream!r}. Fix stream= or the streams' "
                                 f"subjects.")
        self._checked = self._conn.nc

    def _no_stream(self, subject: str) -> ConnectorError:
        return ConnectorError(f"No JetStream stream at {self._where} captures subject {subject!r}, so a publish "
                              f"there is not stored. Create a stream whose subjects include it (nats stream "
                              f"add --subjects {subject!r} ...) or fix the sink's subject.")

    def publish(self, messages: list[Outgoing]) -> None:
        """Publish in order; return once JetStream stored (or, a duplicate id, had stored) every one."""
        if not messages:
            return
        # the loop-side deadline is progress-based (_ACK_TIMEOUT_S without a PubAck); the thread-side one
        # only catches a loop that stopped answering, so it grows with the batch
        budget = 2 * _ACK_TIMEOUT_S + 4 * _CONNECT_TIMEOUT_S + _MARGIN_S + len(messages) / 1000
        self._run(self._publish(messages), budget,
                  f"publishing {len(messages)} messages to {self._d.describe()}")

    async def _publish(self, messages: list[Outgoing]) -> None:
        """Send every publish without waiting (at most _MAX_IN_FLIGHT unconfirmed at once), then wait
        for the PubAcks in order. One connection keeps the order of the publishes."""
        await self._connect()
        acks = self._acks
        if acks is None or acks.nc is not self._conn.nc:
            self._acks = acks = await _PubAcks.start(self._conn, self._where)
        nc, expected = self._conn.nc, self._d.stream
        pending: list[tuple[str, asyncio.Future]] = []
        try:
            for i, m in enumerate(messages):
                if i >= _MAX_IN_FLIGHT:
                    await self._settle(*pending[i - _MAX_IN_FLIGHT])
                headers = _headers(m)
                if expected is not None:
                    headers["Nats-Expected-Stream"] = expected
                future, reply = acks.expect()
                pending.append((m.target, future))
                await nc.publish(m.target, b"" if m.value is None else m.value, reply=reply, headers=headers)
            for target, future in pending[max(0, len(pending) - _MAX_IN_FLIGHT):]:
                await self._settle(target, future)
        finally:
            for _target, future in pending:
                acks.forget(future)

    async def _settle(self, target: str, future: asyncio.Future) -> None:
        """Wait for one PubAck (at most _ACK_TIMEOUT_S, not past the connection's loss); raise its error."""
        import nats.js.errors as je

        if not future.done():
            await self._acks.wait(future)
        try:
            future.result()
        except je.NoStreamResponseError:
            raise self._no_stream(target) from None

    def close(self) -> None:
        self._acks = None
        super().close()


class _PubAcks:
    """Pipelined JetStream publishes: one reply subscription per connection, one future per publish.

    (nats-py's own ``publish_async`` never resolves a publish JetStream answers with an error - its
    reply handler raises instead of failing the future - so this is done here.)"""

    def __init__(self, conn: _Connection, where: str):
        self._conn = conn
        self.nc = conn.nc
        self._lost = conn.lost
        self._where = where
        self._prefix = self.nc.new_inbox() + "."
        self._futures: dict[str, asyncio.Future] = {}
        self._tokens: dict[asyncio.Future, str] = {}
        self._next = 0

    @classmethod
    async def start(cls, conn: _Connection, where: str) -> "_PubAcks":
        acks = cls(conn, where)
        await acks.nc.subscribe(acks._prefix + "*", cb=acks._on_reply)
        return acks

    def expect(self) -> tuple[asyncio.Future, str]:
        """A future for the next publish's PubAck and the reply subject to publish it with."""
        self._next += 1
        token = str(self._next)
        future = asyncio.get_running_loop().create_future()
        self._futures[token] = future
        self._tokens[future] = token
        return future, self._prefix + token

    def forget(self, future: asyncio.Future) -> None:
        token = self._tokens.pop(future, None)
        if token is not None:
            self._futures.pop(token, None)
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()          # retrieved: no "exception was never retrieved" noise

    async def wait(self, future: asyncio.Future) -> None:
        waiter = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait((future, waiter), timeout=_ACK_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if future.done():
            return
        if self._lost.is_set():
            raise Unavailable(f"The connection to the NATS server at {self._where} was lost before JetStream "
                              f"confirmed the batch; retrying.")
        self._conn.check_denied("publishing", self._where)
        raise Unavailable(f"JetStream at {self._where} sent no PubAck within {_ACK_TIMEOUT_S:.0f} s; retrying.")

    async def _on_reply(self, msg) -> None:
        import nats.js.errors as je

        future = self._futures.pop(msg.subject[len(self._prefix):], None)
        if future is None or future.done():
            return
        self._tokens.pop(future, None)
        status = msg.headers.get("Status") if msg.headers else None
        if status == "503":                      # no responders: no stream captures the subject
            future.set_exception(je.NoStreamResponseError())
            return
        try:
            reply = json.loads(msg.data) if msg.data else {}
        except ValueError:
            reply = {"error": {"code": 500, "description": f"unreadable PubAck {msg.data[:200]!r}"}}
        if status and "error" not in reply:
            reply = {"error": {"code": int(status) if status.isdigit() else 500,
                               "description": (msg.headers or {}).get("Description", "status " + status)}}
        error = reply.get("error")
        if error:
            future.set_exception(je.APIError(code=error.get("code"), err_code=error.get("err_code"),
                                             description=error.get("description")))
        else:
            future.set_result(reply)


# --------------------------------------------------------------------------- source


class _Source(_Client, SourceClient):
    """Reads a durable pull consumer: fetch in batches, ack after Kafka confirmed."""

    dead_letters = False

    def __init__(self, definition: NatsJetStream, consumer_name: str):
        super().__init__(definition, f"source-{definition.durable}-{_sanitize(str(consumer_name))}")
        self._sub = None
        self._inbox = ""
        self._next_subject = ""
        self._max_batch = definition.prefetch
        self.stream: str | None = None

    def open(self) -> None:
        self._start()
        self._run(self._bind(), 4 * _API_TIMEOUT_S + 4 * _CONNECT_TIMEOUT_S + _MARGIN_S,
                  f"opening the JetStream source {self._d.describe()}")

    async def _bind(self) -> None:
        """Connect if needed; on a new connection find the stream, make sure the consumer is there and
        subscribe to it again (the old subscription died with the old connection)."""
        if not await self._conn.ensure() and self._sub is not None:
            return
        self._sub = None
        import nats.js.errors as je

        what = f"opening the JetStream source {self._d.describe()}"
        try:
            self.stream = await self._find_stream()
            self._max_batch = await self._ensure_consumer(self.stream)
        except je.ServiceUnavailableError as exc:
            raise await self._no_jetstream(exc, what) from exc
        nc = self._conn.nc
        self._inbox = nc.new_inbox()
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self._d.durable}"
        self._sub = await nc.subscribe(self._inbox)

    async def _find_stream(self) -> str:
        import nats.js.errors as je

        js, d = self._conn.js, self._d
        if d.stream is not None:
            try:
                await js.stream_info(d.stream)
            except je.NotFoundError:
                raise ConnectorError(f"JetStream stream {d.stream!r} does not exist at {self._where}. Create it "
                                     f"(nats stream add {d.stream} --subjects {d.subject!r}) or fix stream=.") from None
            return d.stream
        try:
            return await js.find_stream_name_by_subject(d.subject)
        except je.NotFoundError:
            raise ConnectorError(f"No JetStream stream at {self._where} captures subject {d.subject!r}, so there "
                                 f"is nothing to read. Create one (nats stream add --subjects {d.subject!r}), "
                                 f"or give stream=.") from None

    async def _ensure_consumer(self, stream: str) -> int:
        """Reuse the durable if it exists (it must be a pull consumer on our subject), else create it;
        returns its max_ack_pending (no fetch can get more than that at once)."""
        import nats.js.api as api
        import nats.js.errors as je

        js, d = self._conn.js, self._d
        try:
            info = await js.consumer_info(stream, d.durable)
        except je.NotFoundError:
            config = api.ConsumerConfig(
                durable_name=d.durable, ack_policy=api.AckPolicy.EXPLICIT, deliver_policy=api.DeliverPolicy.ALL,
                max_ack_pending=d.prefetch, ack_wait=d.ack_wait_ms / 1000, filter_subject=d.subject)
            try:
                return (await js.add_consumer(stream, config)).config.max_ack_pending or d.prefetch
            except je.BadRequestError as exc:
                try:                               # another instance created it first?
                    info = await js.consumer_info(stream, d.durable)
                except je.NotFoundError:
                    raise exc from None
        config = info.config
        if config.deliver_subject:
            raise ConnectorError(f"JetStream consumer {d.durable!r} on stream {stream!r} at {self._where} is a push "
                                 f"consumer; this source needs a pull consumer. Delete it or choose another "
                                 f"durable=.")
        if config.filter_subject != d.subject:
            raise ConnectorError(f"JetStream consumer {d.durable!r} on stream {stream!r} at {self._where} filters "
                                 f"{config.filter_subject!r}, not {d.subject!r}. Delete it, or choose another "
                                 f"durable= (or name=).")
        return config.max_ack_pending if config.max_ack_pending and config.max_ack_pending > 0 else 1_000_000

    def fetch(self, max_messages: int, timeout_s: float) -> list[Incoming]:
        """Up to ``max_messages``, waiting at most ``timeout_s`` for the first; [] when none came."""
        timeout_s = max(float(timeout_s), 0.01)
        return self._run(self._fetch(max_messages, timeout_s),
                         timeout_s + 4 * _API_TIMEOUT_S + 4 * _CONNECT_TIMEOUT_S + _MARGIN_S,
                         f"fetching from {self._d.describe()}")

    async def _fetch(self, max_messages: int, timeout_s: float) -> list[Incoming]:
        await self._bind()
        msgs = await self._pull(max(1, min(int(max_messages), self._max_batch)), timeout_s)
        if not msgs:
            self._conn.check_denied(f"fetching from {self._d.describe()}", self._where)
        return [self._incoming(m) for m in msgs]

    async def _pull(self, batch: int, timeout_s: float) -> list:
        """Up to ``batch`` messages: first what JetStream has now (a short no-wait request), and only if
        that was nothing, a request for one message lingering until the deadline, then again what
        JetStream has now.

        Why not one request for the whole batch lingering until the deadline: JetStream holds a request
        it cannot fill (fewer messages, or the consumer's max_ack_pending reached because other clients
        hold unacked messages) until it expires, without a word, so the fetch would last the whole
        timeout; and every such request stays open on the server after we returned. A no-wait request
        ends with a status right after the available messages (at its short expiry when
        max_ack_pending blocks it), and the lingering one asks for a single message. Messages a request
        delivers after we returned wait in our subscription and are returned by the next fetch (or, if
        the client closes first, come again after ack_wait)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        msgs = await self._take_queued(batch)
        if len(msgs) < batch:
            msgs += await self._collect(batch - len(msgs), deadline, no_wait=True)
        if not msgs and loop.time() < deadline:
            msgs = await self._collect(1, deadline, no_wait=False)
            if msgs and batch > 1 and loop.time() < deadline:
                msgs += await self._collect(batch - 1, deadline, no_wait=True)
        return msgs

    async def _collect(self, n: int, deadline: float, *, no_wait: bool) -> list:
        """Send one pull request for ``n`` and gather its messages until ``n`` came, the request ended
        (a status; for the lingering request only a timeout ends it) or the deadline passed."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        end = min(deadline, now + _PROBE_S) if no_wait else deadline
        request = {"batch": n, "expires": max(int((end - now) * 1e9), 1_000_000)}
        if no_wait:
            request["no_wait"] = True
        await self._conn.nc.publish(self._next_subject, json.dumps(request).encode(), reply=self._inbox)
        msgs: list = []
        wait_until = min(deadline, end + _PROBE_S) if no_wait else deadline    # the status may come late
        while len(msgs) < n:
            wait = wait_until - loop.time()
            if wait <= 0:
                break
            msg = await self._next(wait)
            if msg is None:
                break
            status = msg.headers.get("Status") if msg.headers else None
            if status is None:
                msgs.append(msg)
            elif status == "409":
                self._sub = None     # consumer deleted or changed: bind (and check) it again next time
                if not msgs:
                    import nats.js.errors as je
                    raise je.APIError(code=409, description=msg.headers.get("Description", ""))
                break
            elif no_wait and status in ("404", "408"):
                break                # the request ended (or an older one did: then we just return early)
        return msgs

    async def _take_queued(self, batch: int) -> list:
        """Messages already delivered to our inbox (by an earlier request), skipping status messages."""
        msgs = []
        while len(msgs) < batch and self._sub.pending_msgs > 0:
            msg = await self._sub.next_msg(timeout=_ACK_TIMEOUT_S)    # queued: returns at once
            if not (msg.headers and msg.headers.get("Status")):
                msgs.append(msg)
        return msgs

    async def _next(self, wait_s: float):
        """The next message on our inbox within ``wait_s`` (None when none came); Unavailable when the
        connection is lost meanwhile."""
        import nats.errors as ne

        try:
            return await self._sub.next_msg(timeout=wait_s)
        except ne.TimeoutError:
            if not self._conn.usable:
                raise Unavailable(f"The connection to the NATS server at {self._where} was lost while "
                                  f"fetching; retrying.") from None
            return None

    def _incoming(self, msg) -> Incoming:
        meta = msg.metadata
        headers = msg.headers or {}
        msg_id = headers.get(_MSG_ID_HEADER) or f"{meta.stream}:{meta.sequence.stream}"
        return Incoming(body=msg.data, id=msg_id, redelivered=meta.num_delivered > 1, token=msg)

    def ack(self, messages: list[Incoming]) -> None:
        """Ack every message (pipelined on the current connection, then one flush round trip).

        An ack that is lost (a crash between publish and flush) only means a redelivery, which the
        source contract allows; so no ack_sync round trip per message."""
        if not messages:
            return
        self._run(self._ack(messages), _ACK_TIMEOUT_S + 4 * _CONNECT_TIMEOUT_S + _MARGIN_S,
                  f"acking {len(messages)} messages of {self._d.describe()}")

    async def _ack(self, messages: list[Incoming]) -> None:
        # a message fetched over an older connection is acked over this one: the ack is a plain publish
        # to the message's reply subject, which JetStream accepts from any connection of the account
        await self._bind()
        nc = self._conn.nc
        for m in messages:
            await nc.publish(m.token.reply, b"+ACK")
        await nc.flush(timeout=_ACK_TIMEOUT_S)

    def reject(self, messages: list[Incoming]) -> None:
        raise ConnectorError(f"{self._d.describe()}: JetStream has no dead-letter route, so this source cannot "
                             f"reject messages (dead_letters is False).")

    def close(self) -> None:
        self._sub = None
        super().close()

