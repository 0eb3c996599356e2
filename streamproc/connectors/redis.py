"""Redis Streams as a source and a sink (DESIGN section 9), with the synchronous redis-py client.

Sink (``stream.to(RedisStream(url, stream="out"))``): every result becomes one stream entry, added
with ``XADD <stream> [MAXLEN ~ maxlen] * id <id> [key <key>] [value <value>]``: ``id`` is the
result's stable id (``<app>/<topic>/<partition>/<offset>``), ``key`` is absent when the record has no
key and ``value`` is absent for a tombstone. The write is *idempotent*: next to each target stream a
hash ``{<stream>}:streamproc-delivered`` maps ``"<topic>/<partition>"`` to the highest Kafka offset
written to that stream, and one Lua script per batch and stream adds only the entries above it and
moves the mark, atomically (a script runs alone on the server). The delivery publishes each
partition in offset order and re-publishes after a crash from the last committed position, so a
re-published prefix writes nothing twice: the stream sees every result exactly once. (The hash is
named with a ``{...}`` hash tag so that it lands in the stream's cluster slot; the client itself speaks
to one standalone server, Redis Cluster is not supported.)

Source (``topology.stream(RedisStream(url, stream="in", group="g"))``): the bridge reads with a
consumer group, ``XREADGROUP GROUP <group> <consumer> ...``, and acks (``XACK``) only after Kafka
confirmed the records. The group is created at :meth:`_Source.open` when missing, from the start of
the stream (id ``0``, ``MKSTREAM``), so entries added before the first run are read too. The order
of reading: this consumer's own pending entries first (what it read before a crash or a restart,
``redelivered=True``), then entries another consumer left pending for longer than ``claim_idle``
(``XAUTOCLAIM``: that consumer crashed or is gone, ``redelivered=True``), then new entries (``>``).
The body of an entry is the bytes of its ``field`` when one is given (an entry without that field
gives an empty body; a tombstone this sink wrote has no ``value`` field), otherwise the whole entry
as a JSON object of strings (``{"field": "value", ...}``, read with ``serdes.Json()``; bytes that are
not UTF-8 are replaced with U+FFFD, so give ``field=`` for binary payloads). ``Incoming.id`` is
``<stream>:<entry id>``. Redis Streams have no dead-letter route (``dead_letters`` is False). An
entry deleted (``XDEL``, trimming) while pending is dropped from the pending list: there is nothing
left to read.

Errors: connection refused, lost or timed out, a server loading its data (``LOADING``), running a
long script (``BUSY``), out of memory (``OOM``), read-only (a replica during a failover) ->
:class:`Unavailable` (the caller retries with a backoff); a key of the wrong type (``WRONGTYPE``),
missing permissions (``NOPERM``), failed authentication and anything else the server rejects ->
:class:`ConnectorError` with one paragraph naming the stream and the url (never the password).
"""
from __future__ import annotations

import logging
import re
import time
from urllib.parse import urlsplit, urlunsplit

import orjson
import redis as _redis
from redis import exceptions as _rx
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import ConnectorError, TopologyError
from ._base import Connector, Incoming, Outgoing, SinkClient, SourceClient, Unavailable

log = logging.getLogger(__name__)

#: how long a connect, and any reply, may take before the server counts as unavailable
_SOCKET_TIMEOUT_S = 5.0
_CONNECT_TIMEOUT_S = 3.0
#: the longest XREADGROUP BLOCK, kept well under the socket timeout (fetch may return [] sooner)
_MAX_BLOCK_S = 2.0
#: reply markers of transient server states (the rest of a ResponseError is permanent)
_TRANSIENT = ("BUSY ", "LOADING", "OOM", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")
_SCHEMES = ("redis://", "rediss://", "unix://")
_SANITIZE = re.compile(r"[^A-Za-z0-9._-]")
_DELIVERED_SUFFIX = "streamproc-delivered"

# KEYS[1]: the stream, KEYS[2]: its delivered hash. ARGV[1]: maxlen or "". Then 6 per message:
# "<topic>/<partition>", offset (decimal), id, flags ("k"/"-" then "v"/"-"), key, value.
# Offsets compare as decimal strings (length, then text) so that no offset loses precision in
# Lua's doubles. The mark moves right after each XADD, so even a script stopped half-way by an
# error leaves the hash and the stream consistent.
_SCRIPT = """
local stream, delivered, maxlen = KEYS[1], KEYS[2], ARGV[1]
local marks = {}
local written = 0
local function above(a, b)
  if not b then return true end
  if #a ~= #b then return #a > #b end
  return a > b
end
for i = 2, #ARGV, 6 do
  local tp, off = ARGV[i], ARGV[i + 1]
  local mark = marks[tp]
  if mark == nil then
    mark = redis.call('HGET', delivered, tp)
    marks[tp] = mark
  end
  if above(off, mark) then
    local args = {stream}
    if maxlen ~= '' then
      args[#args + 1] = 'MAXLEN'; args[#args + 1] = '~'; args[#args + 1] = maxlen
    end
    args[#args + 1] = '*'; args[#args + 1] = 'id'; args[#args + 1] = ARGV[i + 2]
    local flags = ARGV[i + 3]
    if string.sub(flags, 1, 1) == 'k' then
      args[#args + 1] = 'key'; args[#args + 1] = ARGV[i + 4]
    end
    if string.sub(flags, 2, 2) == 'v' then
      args[#args + 1] = 'value'; args[#args + 1] = ARGV[i + 5]
    end
    redis.call('XADD', unpack(args))
    redis.call('HSET', delivered, tp, off)
    marks[tp] = off
    written = written + 1
  end
end
return written
"""


class RedisStream(Connector):
    """A Redis stream: a sink (``stream=`` a name or a function ``(key, value) -> name``), a source
    (``stream=`` a name and ``group=`` a consumer group), or both. See the module docstring for the
    entry layout, the idempotent write and the reading order.

    ``url``: ``redis://[user:password@]host:port/db`` (or ``rediss://``, ``unix://``); ``maxlen``: trim
    the sink stream to about that many entries (``XADD MAXLEN ~``); ``field``: the entry field that is
    a source message's body (None: the whole entry as JSON); ``prefetch``: at most this many entries
    per read; ``claim_idle``: how long another consumer's pending entry stays untouched before this one
    takes it over (a duration: int ms, timedelta or ``"30s"``)."""

    kind = "redis"

    def __init__(self, url, stream=None, maxlen=None, *, group=None, field=None, key=None, prefetch=1000,
                 claim_idle="30s", name=None, partitions=None, dedupe=None, buffer=10_000, batch=None):
        from ..windows import parse_duration

        _check_args(url, stream, maxlen, group, field, prefetch)
        claim_ms = parse_duration(claim_idle, "RedisStream claim_idle")
        if claim_ms < 1:
            raise TopologyError(f"RedisStream: claim_idle= must be above zero (a live consumer's entries "
                                f"would be taken from it), got {claim_idle!r}")
        self.url = url
        self.stream = stream
        self.maxlen = maxlen
        self.group = group
        self.field = field
        self.prefetch = prefetch
        self.claim_idle_ms = claim_ms
        self._common(name=name, target=stream, key=key, partitions=partitions, dedupe=dedupe,
                     buffer=buffer, batch=batch)

    @property
    def source(self) -> bool:
        """Defined with a consumer group to read with."""
        return self.group is not None

    def default_name(self) -> str:
        """``redis-<stream>`` (a function target: ``redis-<function name>``), reduced to [A-Za-z0-9._-]."""
        s = self.stream if isinstance(self.stream, str) else getattr(self.stream, "__name__", "target")
        return _SANITIZE.sub("_", f"redis-{s}")

    def source_client(self, consumer_name: str) -> SourceClient:
        if not self.source:
            raise TopologyError(f"{self.describe()} has no group=, so it cannot be read")
        if not isinstance(consumer_name, str) or not consumer_name:
            raise TopologyError(f"RedisStream: the consumer name must be a non-empty string, got "
                                f"{consumer_name!r}")
        return _Source(self, consumer_name)

    def sink_client(self) -> SinkClient:
        return _Sink(self)

    def describe(self) -> str:
        """``redis stream 'orders' (group 'g') at redis://host:6379/0``, without the password."""
        s = repr(self.stream) if isinstance(self.stream, str) else f"<{self.default_name()[6:]}>"
        g = f" (group {self.group!r})" if self.group is not None else ""
        return f"redis stream {s}{g} at {_safe_url(self.url)}"


# ---------------------------------------------------------------------------------------------- helpers

def _check_args(url, stream, maxlen, group, field, prefetch) -> None:
    """TopologyError for settings that cannot work (checked when the topology is built)."""
    _check_url(url)
    if stream is not None and not callable(stream) and (not isinstance(stream, str) or not stream):
        raise TopologyError(f"RedisStream: stream= must be a non-empty string or a function "
                            f"(key, value) -> str, got {stream!r}")
    if group is not None and (not isinstance(group, str) or not group):
        raise TopologyError(f"RedisStream: group= must be a non-empty string (the consumer group), "
                            f"got {group!r}")
    if group is not None and not isinstance(stream, str):
        raise TopologyError("RedisStream: reading with group= needs stream= set to the name of one "
                            f"stream, got {stream!r}")
    if stream is None:
        raise TopologyError("RedisStream: give stream= (the stream to write, or to read with group=)")
    if field is not None and (not isinstance(field, str) or not field):
        raise TopologyError(f"RedisStream: field= must be a non-empty string (the entry field holding "
                            f"the body) or None (the whole entry as JSON), got {field!r}")
    for what, n in (("maxlen", maxlen), ("prefetch", prefetch)):
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise TopologyError(f"RedisStream: {what}= must be a positive int, got {n!r}")
    if prefetch is None:
        raise TopologyError("RedisStream: prefetch= must be a positive int, got None")


def _check_url(url) -> None:
    if not isinstance(url, str) or not url.startswith(_SCHEMES):
        raise TopologyError(f"RedisStream: url must be a string like 'redis://host:6379/0' "
                            f"(or rediss://, unix://), got {_safe_url(url) if isinstance(url, str) else url!r}")


def _safe_url(url: str) -> str:
    """The url without its password and query (user, host, port, db kept)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:              # the query may hold ?password=...: never shown
            return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{parts.username or ''}:***@{host}"
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<a redis url that cannot be parsed>"


def _delivered_key(stream: str) -> str:
    """The hash of delivered offsets for ``stream``, in the same cluster slot as the stream."""
    start = stream.find("{")
    if start >= 0:
        end = stream.find("}", start + 1)
        if end > start + 1:                      # the stream has a hash tag: keep it first
            return f"{stream}:{_DELIVERED_SUFFIX}"
    if "}" in stream:                            # cannot be wrapped in a tag (only matters on a cluster)
        return f"{stream}:{_DELIVERED_SUFFIX}"
    return f"{{{stream}}}:{_DELIVERED_SUFFIX}"   # slot of "{s}..." == slot of "s"


def _connect(url: str):
    """A client whose every call is bounded: connect and reply timeouts, one immediate retry after a
    lost connection (a pooled connection the server closed) but none after a timeout (a hung server
    must give Unavailable in one socket timeout), no backoff here (the caller backs off). Every
    command sent is safe to repeat: the write script is idempotent, XACK and XGROUP CREATE are, and
    entries an XREADGROUP delivered into a lost reply stay pending and are claimed later."""
    try:
        return _redis.Redis.from_url(url, socket_timeout=_SOCKET_TIMEOUT_S,
                                     socket_connect_timeout=_CONNECT_TIMEOUT_S,
                                     retry=Retry(NoBackoff(), 1, supported_errors=(_rx.ConnectionError,)),
                                     decode_responses=False)
    except ValueError as exc:
        raise ConnectorError(f"The redis url {_safe_url(url)} is not valid ({exc}). Give "
                             f"redis://[user:password@]host:port/db.") from None


def _translate(exc: Exception, what: str, conn: RedisStream) -> Exception:
    """The streamproc error for a redis-py error raised while doing ``what``."""
    where = f"{conn.describe()}"
    text = str(exc)
    if isinstance(exc, (_rx.AuthenticationError, _rx.AuthorizationError,
                        _rx.AuthenticationWrongNumberOfArgsError)):
        return ConnectorError(f"Redis refused the credentials while trying to {what} ({where}): {text}. "
                              f"Check the user name and password in the url (and the server's "
                              f"requirepass / ACL users).")
    if isinstance(exc, _rx.NoPermissionError) or text.startswith("NOPERM") or " NOPERM " in text:
        return ConnectorError(f"The redis user may not {what} ({where}): {text}. Grant the url's user "
                              f"the stream commands (XADD, EVALSHA, SCRIPT, HGET/HSET for a sink; XGROUP, "
                              f"XREADGROUP, XAUTOCLAIM, XACK for a source) on these keys.")
    if isinstance(exc, (_rx.ConnectionError, _rx.TimeoutError, _rx.BusyLoadingError, _rx.ReadOnlyError,
                        _rx.OutOfMemoryError, _rx.TryAgainError, _rx.ClusterDownError)) \
            or isinstance(exc, OSError) or text.startswith(_TRANSIENT):
        return Unavailable(f"Redis is not available to {what} ({where}): {text}")
    if "WRONGTYPE" in text:
        hashes = (repr(_delivered_key(conn.stream)) if isinstance(conn.stream, str)
                  else f"'{{<stream>}}:{_DELIVERED_SUFFIX}'")
        return ConnectorError(f"Could not {what} ({where}): a key it needs holds another type than "
                              f"expected ({text}). The stream key must be a stream (or absent) and "
                              f"{hashes} a hash (or absent): rename or delete the key in the way.")
    if isinstance(exc, _rx.MovedError) or text.startswith(("MOVED", "ASK")):
        return ConnectorError(f"Could not {what} ({where}): the server is a Redis Cluster node ({text}); "
                              f"RedisStream speaks to one standalone server. Point the url at a "
                              f"standalone Redis (or a proxy in front of the cluster).")
    return ConnectorError(f"Redis rejected the request to {what} ({where}): {text}. Check the server "
                          f"version (7.0 or later is needed for XAUTOCLAIM) and the stream's settings.")


def _fields(entry) -> dict:
    """An entry's field map from a RESP2 (flat list / dict) or RESP3 reply."""
    if entry is None or isinstance(entry, dict):
        return entry
    return {entry[i]: entry[i + 1] for i in range(0, len(entry), 2)}


def _entries(reply) -> list:
    """The ``[(id, fields), ...]`` of the one stream in an XREADGROUP reply (RESP2 list or RESP3 dict)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return next(iter(reply.values()), [[]])[0] if reply else []
    return reply[0][1]


def _text(b) -> str:
    return b.decode("utf-8", "replace") if isinstance(b, (bytes, bytearray)) else str(b)


# ----------------------------------------------------------------------------------------------- sink

class _Sink(SinkClient):
    """Writes batches with the idempotent script, one EVALSHA per target stream (see the module doc)."""

    def __init__(self, conn: RedisStream):
        self._conn = conn
        self._client = None
        self._sha: str | None = None
        self._maxlen = b"" if conn.maxlen is None else str(conn.maxlen).encode()

    def open(self) -> None:
        """Connect and load the script (so that publish runs it by its sha)."""
        self._client = _connect(self._conn.url)
        self._load()

    def _load(self) -> None:
        try:
            self._sha = self._client.script_load(_SCRIPT)
        except (_rx.RedisError, OSError) as exc:
            raise _translate(exc, "load the idempotent write script", self._conn) from None

    def publish(self, messages: list[Outgoing]) -> None:
        """Write ``messages`` (skipping those already written) and return once Redis replied."""
        if self._client is None:
            self.open()
        by_stream: dict[str, list] = {}
        for m in messages:
            by_stream.setdefault(m.target, []).append(m)
        for stream, batch in by_stream.items():
            self._write(stream, batch)

    def _write(self, stream: str, batch: list[Outgoing]) -> int:
        args = [self._maxlen]
        for m in batch:
            topic, partition, offset = m.position
            flags = (b"k" if m.key is not None else b"-") + (b"v" if m.value is not None else b"-")
            args += (f"{topic}/{partition}", str(int(offset)), m.id, flags,
                     m.key if m.key is not None else b"", m.value if m.value is not None else b"")
        keys = (stream, _delivered_key(stream))
        for attempt in (1, 2):
            try:
                return self._client.evalsha(self._sha, 2, *keys, *args)
            except _rx.NoScriptError:
                if attempt == 2:
                    raise Unavailable(f"Redis forgot the write script twice in a row "
                                      f"({self._conn.describe()}); retrying") from None
                self._load()                    # the server restarted or ran SCRIPT FLUSH
            except (_rx.RedisError, OSError) as exc:
                raise _translate(exc, f"write to stream {stream!r}", self._conn) from None
        return 0

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None


# --------------------------------------------------------------------------------------------- source

class _Source(SourceClient):
    """Reads one stream with a consumer group: own pending entries, then abandoned ones, then new ones."""

    dead_letters = False

    def __init__(self, conn: RedisStream, consumer: str):
        self._conn = conn
        self._stream = conn.stream
        self._group = conn.group
        self._consumer = consumer
        self._field = None if conn.field is None else conn.field.encode()
        self._client = None
        self._history = b"0"            # cursor through our own pending entries; None once read
        self._claim_cursor = b"0-0"
        self._next_claim = 0.0          # monotonic time of the next XAUTOCLAIM pass
        self._claim_every = max(conn.claim_idle_ms / 2000.0, 0.05)
        self._inflight: set[bytes] = set()   # handed out, not acked: never "claimed" back as abandoned

    def open(self) -> None:
        """Connect and create the group (from id 0, with MKSTREAM) when it is missing."""
        self._client = _connect(self._conn.url)
        self._history = b"0"
        self._claim_cursor = b"0-0"
        self._next_claim = 0.0
        self._inflight.clear()
        self._ensure_group()

    def _ensure_group(self) -> None:
        try:
            self._client.xgroup_create(self._stream, self._group, id="0", mkstream=True)
        except _rx.ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise _translate(exc, f"create consumer group {self._group!r}", self._conn) from None
        except (_rx.RedisError, OSError) as exc:
            raise _translate(exc, f"create consumer group {self._group!r}", self._conn) from None

    def fetch(self, max_messages: int, timeout_s: float) -> list[Incoming]:
        """Up to ``max_messages`` entries (at most ``prefetch``); waits at most ``timeout_s`` (capped at a
        couple of seconds) for new ones."""
        if self._client is None:
            self.open()
        count = max(1, min(int(max_messages), self._conn.prefetch))
        try:
            return self._fetch(count, timeout_s)
        except _rx.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise _translate(exc, "read", self._conn) from None
        except (_rx.RedisError, OSError) as exc:
            raise _translate(exc, "read", self._conn) from None
        # The stream (and its group with it) was deleted, or the server lost its data: start over
        # like open() does. Nothing pending survived, so nothing is read twice by this.
        log.warning("%s: consumer group %r is gone; creating it again from the start of the stream",
                    self._conn.describe(), self._group)
        self._ensure_group()
        self._history = b"0"
        self._claim_cursor = b"0-0"
        return []

    def _fetch(self, count: int, timeout_s: float) -> list[Incoming]:
        if self._history is not None:
            got = self._read_history(count)
            if got:
                return got
        if time.monotonic() >= self._next_claim:
            got = self._claim(count)
            if got:
                return got
        return self._read_new(count, timeout_s)

    def _read_history(self, count: int) -> list[Incoming]:
        """Our own pending entries, read again after a restart (the history of this consumer)."""
        while self._history is not None:
            reply = self._client.xreadgroup(self._group, self._consumer, {self._stream: self._history},
                                            count=count)
            entries = _entries(reply)
            if not entries:
                self._history = None
                break
            self._history = entries[-1][0]
            # deleted while pending (XDEL, trimming): Redis gives no fields (redis-py: {}), and an
            # entry always has at least one field; nothing is left to read, so ack it away
            gone = [eid for eid, f in entries if not f]
            if gone:
                self._client.xack(self._stream, self._group, *gone)
            got = self._incoming(entries, redelivered=True)
            if got:
                return got
        return []

    def _claim(self, count: int) -> list[Incoming]:
        """One XAUTOCLAIM step over entries other consumers left pending longer than ``claim_idle``."""
        reply = self._client.xautoclaim(self._stream, self._group, self._consumer,
                                        self._conn.claim_idle_ms, start_id=self._claim_cursor, count=count)
        cursor, entries = reply[0], reply[1]
        deleted = reply[2] if len(reply) > 2 else []
        if deleted:        # XAUTOCLAIM already dropped them from the pending list
            log.info("%s: %d pending entries were deleted from the stream before being read",
                     self._conn.describe(), len(deleted))
        self._claim_cursor = cursor
        if cursor in (b"0-0", "0-0"):
            self._next_claim = time.monotonic() + self._claim_every
        entries = [(eid, f) for eid, f in entries if eid not in self._inflight]
        return self._incoming(entries, redelivered=True)

    def _read_new(self, count: int, timeout_s: float) -> list[Incoming]:
        block_ms = int(min(max(timeout_s, 0.0), _MAX_BLOCK_S) * 1000)
        reply = self._client.xreadgroup(self._group, self._consumer, {self._stream: ">"}, count=count,
                                        block=block_ms if block_ms > 0 else None)
        return self._incoming(_entries(reply), redelivered=False)

    def _incoming(self, entries, redelivered: bool) -> list[Incoming]:
        out = []
        for eid, raw in entries:
            fields = _fields(raw)
            if not fields:                  # a deleted entry (see _read_history)
                continue
            if self._field is not None:
                body = fields.get(self._field, b"")
            else:
                body = orjson.dumps({_text(k): _text(v) for k, v in fields.items()})
            eid = bytes(eid) if not isinstance(eid, bytes) else eid
            self._inflight.add(eid)
            out.append(Incoming(body=body, id=f"{self._stream}:{eid.decode()}", redelivered=redelivered,
                                token=eid))
        return out

    def ack(self, messages: list[Incoming]) -> None:
        """One XACK for all of them."""
        if not messages:
            return
        ids = [m.token for m in messages]
        try:
            self._client.xack(self._stream, self._group, *ids)
        except (_rx.RedisError, OSError) as exc:
            raise _translate(exc, "ack", self._conn) from None
        self._inflight.difference_update(ids)

    def reject(self, messages: list[Incoming]) -> None:
        raise ConnectorError(f"{self._conn.describe()}: Redis Streams have no dead-letter route "
                             f"(dead_letters is False), so entries cannot be rejected.")

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None
