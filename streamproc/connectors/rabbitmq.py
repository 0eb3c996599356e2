"""RabbitMQ connector (AMQP 0-9-1 through pika's BlockingConnection), DESIGN section 9.

As a sink, ``RabbitMQ(url, exchange, routing_key="..." or fn(key, value))`` publishes each result to
``exchange`` with publisher confirms, as a persistent message (``delivery_mode=2``) with
``mandatory=True``:

* ``message_id`` is :attr:`Outgoing.id` (``<app>/<topic>/<partition>/<offset>``), the same on every
  re-delivery, so a consumer can drop duplicates by it;
* the body is the serialized value; the serialized key travels in the header ``streamproc-key`` as an
  AMQP byte array (``bytes`` in pika, ``byte[]`` in Java): keys are bytes from a serde and may not be
  text, so they are passed through unchanged rather than guessed at; no key, no header;
* a tombstone (value None) is an empty body with the header ``streamproc-tombstone: true`` (an empty
  value that is not a tombstone has no such header);
* :meth:`_Sink.publish` sends the whole batch, then waits for the confirms (one wait per batch, not a
  round trip per message) and returns only when every message is confirmed.

As a source, ``RabbitMQ(url, queue, key=fn, prefetch=1000)`` consumes ``queue`` (which must exist: it
creates nothing) with ``basic.qos(prefetch)`` and manual acks: ``Incoming.id`` is the message's
``message_id`` ("" when it has none), ``redelivered`` is RabbitMQ's redelivered flag. Unacked messages
go back to the queue when the client closes or dies and come again with ``redelivered=True``.
``Incoming.token`` is ``(connection generation, delivery tag)``: a tag is only meaningful on the
channel that delivered it, so acks of messages from an earlier connection are ignored (RabbitMQ
redelivers those anyway) instead of acking whatever the new channel numbered the same. ``ack`` sends
one ``basic.ack(multiple=True)`` when the messages are exactly the oldest unacked ones (the usual
case), else one ack each. ``reject`` rejects without requeue, so the queue's dead-letter exchange
receives them; whether the queue has one (``dead_letters``) is forced by ``dead_letter=True/False``
or detected by ``open()`` from the queue's ``x-dead-letter-exchange`` argument (a DLX set by a
*policy* cannot be seen by an AMQP client, nor can a user without configure permission on the queue
detect anything: pass ``dead_letter=True`` then).

Connections: every wait is bounded (connect 5 s, handshake 10 s, a batch's confirms 30 s, and a
broker that stops answering is noticed by 10 s heartbeats; a URL query such as ``?heartbeat=30``
overrides these). After an
:class:`Unavailable` the client reconnects on its next ``publish``/``fetch`` (so does a client whose
idle connection the broker dropped, before it sends anything); ``close()`` + ``open()`` works too.

Errors: :class:`Unavailable` for what a retry can fix (connection refused, lost or closed by a
stopping broker, a timeout, a confirm not received in time, a message nacked by the broker: e.g. a
full queue with ``x-overflow=reject-publish`` or a queue without a quorum);
:class:`~streamproc.errors.ConnectorError` for what needs a person (bad credentials or vhost, a missing
queue or exchange, access refused, a message returned as unroutable because no queue is bound for its
routing key: publishing it again would lose it again).
"""
from __future__ import annotations

import logging
import re
import time
from urllib.parse import urlsplit

from ..errors import ConnectorError, TopologyError
from ._base import Connector, Incoming, Outgoing, SinkClient, SourceClient, Unavailable

log = logging.getLogger(__name__)

KEY_HEADER = "streamproc-key"
TOMBSTONE_HEADER = "streamproc-tombstone"

_CONNECT_TIMEOUT_S = 5.0      # TCP connect / socket operations
_STACK_TIMEOUT_S = 10.0       # whole AMQP handshake
_HEARTBEAT_S = 10             # a silent dead peer is noticed within ~2 heartbeats
_BLOCKED_TIMEOUT_S = 30.0     # broker resource alarm (connection.blocked) longer than this: Unavailable
_RPC_TIMEOUT_S = 10.0         # confirm.select
_CONFIRM_TIMEOUT_S = 30.0     # all confirms of one batch
_DLX_PROBE = "\x00streamproc-dlx-probe"
_MAX_SHORTSTR = 255

_DEFAULT_TIMEOUTS = {"socket_timeout": _CONNECT_TIMEOUT_S, "stack_timeout": _STACK_TIMEOUT_S,
                     "heartbeat": _HEARTBEAT_S, "blocked_connection_timeout": _BLOCKED_TIMEOUT_S,
                     "connection_attempts": 1}


def redact(url: str) -> str:
    """``url`` without user and password: ``amqp://host:port/vhost``."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    except ValueError:
        return "<unparseable url>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port}{parts.path or '/'}"


def _params(url: str):
    """pika connection parameters for ``url`` with bounded timeouts unless the URL sets its own."""
    import pika

    params = pika.URLParameters(url)
    query = urlsplit(url).query
    for name, value in _DEFAULT_TIMEOUTS.items():
        if name + "=" not in query:
            setattr(params, name, value)
    return params


class RabbitMQ(Connector):
    """A RabbitMQ queue to read from and/or an exchange to publish to (see the module docstring).

    ``where`` is the exchange when used as a sink and the queue when used as a source;
    ``exchange=``/``queue=`` name them explicitly (``exchange=""`` is the default exchange, where the
    routing key names the queue)."""

    kind = "rabbitmq"

    def __init__(self, url, where=None, *, exchange=None, queue=None, routing_key="", key=None,
                 prefetch=1000, dead_letter=None, name=None, partitions=None, dedupe=None,
                 buffer=10_000, batch=None):
        _check_url(url)
        if where is not None and exchange is not None and queue is not None:
            raise TopologyError(f"RabbitMQ: the second argument {where!r} would be ignored because both "
                                f"exchange= and queue= are given; drop one of them.")
        self.url = url
        self.exchange = exchange if exchange is not None else where
        self.queue = queue if queue is not None else where
        _check_name("exchange", self.exchange, allow_empty=True)
        _check_name("queue", self.queue, allow_empty=False)
        if self.exchange is None and self.queue is None:
            raise TopologyError("RabbitMQ: give a queue to read from (RabbitMQ(url, queue) or queue=) "
                                "and/or an exchange to publish to (exchange=, \"\" for the default "
                                "exchange).")
        if routing_key is None:
            raise TopologyError("RabbitMQ: routing_key= must be a string (\"\" is fine for fanout "
                                "exchanges) or a function (key, value) -> str, got None.")
        if isinstance(routing_key, str) and len(routing_key.encode()) > _MAX_SHORTSTR:
            raise TopologyError(f"RabbitMQ: routing_key= is longer than {_MAX_SHORTSTR} bytes.")
        if not isinstance(prefetch, int) or isinstance(prefetch, bool) or not 1 <= prefetch <= 65535:
            raise TopologyError(f"RabbitMQ: prefetch= must be an int from 1 to 65535 (how many unacked "
                                f"messages RabbitMQ sends ahead), got {prefetch!r}.")
        if dead_letter not in (None, True, False):
            raise TopologyError(f"RabbitMQ: dead_letter= must be True (the queue has a dead-letter "
                                f"exchange), False (it has none) or None (detect it), got {dead_letter!r}.")
        self.prefetch = prefetch
        self.dead_letter = dead_letter
        self._common(name=name, target=routing_key, key=key, partitions=partitions, dedupe=dedupe,
                     buffer=buffer, batch=batch)

    @property
    def source(self) -> bool:
        return self.queue is not None

    @property
    def sink(self) -> bool:
        return self.exchange is not None

    def default_name(self) -> str:
        where = self.queue if self.queue is not None else (self.exchange or "default-exchange")
        return "rabbitmq-" + re.sub(r"[^A-Za-z0-9._-]", "-", where)

    def describe(self) -> str:
        parts = [f"RabbitMQ {redact(self.url)}"]
        if self.queue is not None:
            parts.append(f"queue={self.queue}")
        if self.exchange is not None:
            parts.append(f"exchange={self.exchange or '(default)'}")
        return " ".join(parts)

    def source_client(self, consumer_name: str) -> "_Source":
        if self.queue is None:
            raise TopologyError(f"{self.describe()} has no queue, so it cannot be read from; give "
                                f"RabbitMQ(url, queue) or queue=.")
        return _Source(self.url, self.queue, self.prefetch, self.dead_letter, consumer_name)

    def sink_client(self) -> "_Sink":
        if self.exchange is None:
            raise TopologyError(f"{self.describe()} has no exchange, so it cannot be published to; give "
                                f"RabbitMQ(url, exchange) or exchange= (\"\" for the default exchange).")
        return _Sink(self.url, self.exchange)


def _check_url(url) -> None:
    if not isinstance(url, str) or not url.startswith(("amqp://", "amqps://")):
        raise TopologyError(f"RabbitMQ: the url must be a string starting with amqp:// or amqps://, "
                            f"got {redact(url) if isinstance(url, str) else repr(url)}.")
    try:
        import pika
    except ImportError:
        raise TopologyError("RabbitMQ: the connector needs the pika package; pip install pika.") from None
    try:
        pika.URLParameters(url)
    except Exception as e:
        raise TopologyError(f"RabbitMQ: the url {redact(url)} is not valid: {e}.") from None


def _check_name(what, value, *, allow_empty) -> None:
    if value is None:
        return
    if not isinstance(value, str) or (not value and not allow_empty):
        raise TopologyError(f"RabbitMQ: {what} must be a non-empty string, got {value!r}.")
    if len(value.encode()) > _MAX_SHORTSTR:
        raise TopologyError(f"RabbitMQ: the {what} name {value[:40]!r}... is longer than "
                            f"{_MAX_SHORTSTR} bytes.")


# ---------------------------------------------------------------------------------------------------
# errors


def _translate(e: BaseException, where: str):
    """The streamproc error for a pika/socket error ``e`` that happened while doing ``where``."""
    import pika.exceptions as px

    if isinstance(e, (ConnectorError, Unavailable)):
        return e
    if isinstance(e, (px.ProbableAuthenticationError, px.AuthenticationError)):
        return ConnectorError(f"{where}: RabbitMQ refused the credentials ({e}). Check the user and "
                              f"password in the url.")
    if isinstance(e, px.ProbableAccessDeniedError):
        return ConnectorError(f"{where}: RabbitMQ refused access to the virtual host ({e}). Check that "
                              f"the vhost in the url exists and that the user may use it.")
    if isinstance(e, px.ChannelClosedByBroker):
        return _translate_channel_close(e.reply_code, e.reply_text, where)
    if isinstance(e, px.ConnectionClosedByBroker) and e.reply_code in (402, 403, 530):
        return ConnectorError(f"{where}: RabbitMQ closed the connection: {e.reply_code} {e.reply_text}. "
                              f"Check the url's user, password and vhost.")
    if isinstance(e, (px.AMQPError, OSError, EOFError)):
        return Unavailable(f"{where}: RabbitMQ is not reachable or dropped the connection "
                           f"({type(e).__name__}: {e}); retrying.")
    return e


def _translate_channel_close(code: int, text: str, where: str):
    if code == 404:
        return ConnectorError(f"{where}: {text}. streamproc does not create queues or exchanges; "
                              f"declare it in RabbitMQ (or fix the name) and restart.")
    if code == 403:
        return ConnectorError(f"{where}: {text}. Give the user configure/write/read permission on it.")
    if code in (405, 406):
        return ConnectorError(f"{where}: {text}.")
    return Unavailable(f"{where}: RabbitMQ closed the channel: {code} {text}; retrying.")


class _Connection:
    """One BlockingConnection with one channel, with bounded waits and error translation."""

    def __init__(self, url: str, what: str):
        self.url = url
        self.what = what
        self.conn = None
        self.channel = None
        self.closed_reason = None     # the exception that closed self.channel, once it is closed

    def open(self) -> None:
        import pika

        try:
            self.conn = pika.BlockingConnection(_params(self.url))
            self.channel = self.conn.channel()
        except Exception as e:
            self.close()
            raise _translate(e, f"connecting to {self.what}") from e
        self.channel._impl.add_on_close_callback(self._on_close)

    def _on_close(self, _channel, reason) -> None:
        self.closed_reason = reason
        self.wake()

    def wake(self) -> None:
        """Make a running ``process_data_events`` return now: callbacks of the channel's asynchronous
        side (confirms, returns) are not events BlockingConnection waits for, a queued callback is."""
        conn = self.conn
        if conn is not None and conn.is_open:
            conn.add_callback_threadsafe(_noop)

    def pump(self, done, timeout_s: float, doing: str) -> None:
        """Process I/O until ``done()`` or ``timeout_s`` passed (then Unavailable); raises what closed
        the channel or the connection."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.check(doing)
            if done():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable(f"{doing}: no answer from RabbitMQ within {timeout_s:.0f} s; retrying.")
            try:
                self.conn.process_data_events(time_limit=min(left, 1.0))
            except Exception as e:
                raise _translate(e, doing) from e

    def healthy(self) -> bool:
        """Open and usable: processes pending I/O first, so a connection the broker dropped while
        this client sat idle (missed heartbeats, a restart) shows up here rather than mid-batch."""
        if self.conn is None or not self.conn.is_open or self.closed_reason is not None:
            return False
        try:
            self.conn.process_data_events(time_limit=0)
        except Exception:
            return False
        return self.conn.is_open and self.channel.is_open and self.closed_reason is None

    def check(self, doing: str) -> None:
        if self.closed_reason is not None:
            raise _translate(self.closed_reason, doing)
        if self.conn is None or not self.conn.is_open:
            raise Unavailable(f"{doing}: the connection to RabbitMQ is closed; retrying.")

    def close(self) -> None:
        conn, self.conn, self.channel, self.closed_reason = self.conn, None, None, None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception:   # closing a broken connection: nothing left to save
                pass


def _noop() -> None:
    pass


# ---------------------------------------------------------------------------------------------------
# sink


class _Sink(SinkClient):
    """Publishes batches to one exchange with publisher confirms (see the module docstring)."""

    def __init__(self, url: str, exchange: str):
        self.url = url
        self.exchange = exchange
        self.where = f"RabbitMQ {redact(url)} exchange {exchange or '(default)'!r}"
        self._c = _Connection(url, self.where)
        self._seq = 0           # delivery tag of the last message published on this channel
        self._pending: dict[int, Outgoing] = {}
        self._nacked: list[Outgoing] = []
        self._returned: list[tuple[str, str, str]] = []     # (message id, routing key, reply text)

    def open(self) -> None:
        self.close()
        self._c.open()
        self._seq = 0
        self._pending.clear()
        if self.exchange:
            self._check_exchange()
        impl = self._c.channel._impl
        impl.add_on_return_callback(self._on_return)
        selected = []
        try:
            # Through the channel's asynchronous side: BlockingChannel.confirm_delivery() would make
            # every basic_publish wait for its own confirm (a round trip per message).
            impl.confirm_delivery(ack_nack_callback=self._on_confirm,
                                  callback=lambda frame: (selected.append(frame), self._c.wake()))
            self._c.pump(lambda: selected, _RPC_TIMEOUT_S, f"enabling publisher confirms on {self.where}")
        except BaseException:
            self.close()
            raise

    def _check_exchange(self) -> None:
        """ConnectorError now if the exchange does not exist (on a throwaway channel, since the broker
        closes the channel of a failed passive declare)."""
        try:
            ch = self._c.conn.channel()
            ch.exchange_declare(self.exchange, passive=True)
            ch.close()
        except Exception as e:
            self.close()
            raise _translate(e, f"checking {self.where}") from e

    def _on_confirm(self, frame) -> None:
        import pika.spec

        m = frame.method
        if m.multiple:   # tags ascend in insertion order: stop at the first one past delivery_tag
            tags = []
            for t in self._pending:
                if t > m.delivery_tag:
                    break
                tags.append(t)
        else:
            tags = [m.delivery_tag]
        for tag in tags:
            msg = self._pending.pop(tag, None)
            if msg is not None and isinstance(m, pika.spec.Basic.Nack):
                self._nacked.append(msg)
        if not self._pending:
            self._c.wake()

    def _on_return(self, _channel, method, properties, _body) -> None:
        self._returned.append((properties.message_id or "", method.routing_key,
                               f"{method.reply_code} {method.reply_text}"))

    def publish(self, messages: list[Outgoing]) -> None:
        if not messages:
            return
        if not self._c.healthy():
            self.open()         # never opened, or dropped since (idle, broker restart): reconnect now
        try:
            self._publish(messages)
        except Unavailable:
            self.close()        # a clean channel for the retry: no late confirms of this batch
            raise

    def _publish(self, messages: list[Outgoing]) -> None:
        import pika

        impl = self._c.channel._impl
        self._nacked.clear()
        self._returned.clear()
        doing = f"publishing to {self.where}"
        try:
            for msg in messages:
                headers = {}
                if msg.key is not None:
                    headers[KEY_HEADER] = bytes(msg.key)
                if msg.value is None:
                    headers[TOMBSTONE_HEADER] = True
                props = pika.BasicProperties(message_id=msg.id, delivery_mode=2, headers=headers or None)
                self._c.check(doing)
                impl.basic_publish(self.exchange, msg.target, msg.value or b"", props, mandatory=True)
                self._seq += 1
                self._pending[self._seq] = msg
        except (ConnectorError, Unavailable):
            raise
        except Exception as e:
            err = _translate(e, doing)
            if err is e:
                raise ConnectorError(f"{doing}: a message could not be sent ({e}); check the routing "
                                     f"key function's results.") from e
            raise err from e
        self._c.pump(lambda: not self._pending, _CONFIRM_TIMEOUT_S, f"waiting for confirms from {self.where}")
        if self._returned:
            mid, rk, why = self._returned[0]
            raise ConnectorError(
                f"{doing}: RabbitMQ returned {len(self._returned)} message(s) as unroutable ({why}), e.g. "
                f"message {mid!r} with routing key {rk!r}: no queue is bound to the exchange for that "
                f"routing key, so they would be lost. Bind a queue for it (or fix routing_key=) and "
                f"restart; the batch is delivered again then.")
        if self._nacked:
            raise Unavailable(f"{doing}: RabbitMQ nacked {len(self._nacked)} message(s) (e.g. "
                              f"{self._nacked[0].id!r}): it could not take them now (a full queue "
                              f"with reject-publish, a queue without a quorum); retrying.")

    def close(self) -> None:
        self._c.close()
        self._pending.clear()


# ---------------------------------------------------------------------------------------------------
# source


class _Source(SourceClient):
    """Consumes one queue with manual acks (see the module docstring)."""

    def __init__(self, url: str, queue: str, prefetch: int, dead_letter, consumer_name: str):
        self.url = url
        self.queue = queue
        self.prefetch = prefetch
        self.dead_letter = dead_letter
        self.consumer_tag = (consumer_name or "streamproc")[:200]
        self.where = f"RabbitMQ {redact(url)} queue {queue!r}"
        self._c = _Connection(url, self.where)
        self._gen = 0                  # connection generation: tokens of an older one are ignored
        self._buffer: list = []        # delivered, not yet handed out
        self._unacked: set[int] = set()
        self.dead_letters = bool(dead_letter)

    def open(self) -> None:
        self.close()
        self._gen += 1
        self._buffer = []
        self._unacked = set()
        self._c.open()
        ch = self._c.channel
        doing = f"consuming {self.where}"
        try:
            if self.dead_letter is None:
                self.dead_letters = self._detect_dead_letters()
            ch.basic_qos(prefetch_count=self.prefetch)
            ch.basic_consume(self.queue, self._on_message, auto_ack=False, consumer_tag=self.consumer_tag)
            ch._impl.add_on_cancel_callback(self._on_cancel)
        except Exception as e:
            self.close()
            raise _translate(e, doing) from e

    def _on_message(self, _channel, method, properties, body) -> None:
        self._unacked.add(method.delivery_tag)
        self._buffer.append(Incoming(body=body, id=properties.message_id or "",
                                     redelivered=bool(method.redelivered),
                                     token=(self._gen, method.delivery_tag)))

    def _on_cancel(self, _frame) -> None:
        """The broker cancelled our consumer (the queue was deleted, or it failed over): Unavailable, and
        the next open() finds out which (a missing queue is a ConnectorError there)."""
        self._c.closed_reason = Unavailable(f"consuming {self.where}: RabbitMQ cancelled the consumer "
                                            f"(queue deleted or moved); reconnecting.")

    def fetch(self, max_messages: int, timeout_s: float) -> list[Incoming]:
        doing = f"fetching from {self.where}"
        if not self._c.healthy():
            self.open()   # never opened, or dropped since: reconnect (unacked messages come again)
        try:
            if not self._buffer:
                deadline = time.monotonic() + timeout_s
                while not self._buffer:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    # returns as soon as a delivery was dispatched to _on_message
                    self._c.conn.process_data_events(time_limit=left)
                    self._c.check(doing)
            if len(self._buffer) < max_messages:
                self._c.conn.process_data_events(time_limit=0)   # take what already arrived
        except (ConnectorError, Unavailable):
            raise
        except Exception as e:
            raise _translate(e, doing) from e
        self._c.check(doing)
        out, self._buffer = self._buffer[:max_messages], self._buffer[max_messages:]
        return out

    def _tags(self, messages: list[Incoming]) -> list[int]:
        """The delivery tags of ``messages`` still unacked on this connection, ascending."""
        return sorted({m.token[1] for m in messages
                       if m.token[0] == self._gen and m.token[1] in self._unacked})

    def ack(self, messages: list[Incoming]) -> None:
        tags = self._tags(messages)
        if not tags:
            return
        doing = f"acking on {self.where}"
        self._c.check(doing)
        ch = self._c.channel
        try:
            lo, hi = tags[0], tags[-1]
            # one multiple-ack when the tags are exactly every unacked tag up to hi
            if hi - lo + 1 == len(tags) and min(self._unacked) == lo:
                ch.basic_ack(hi, multiple=True)
            else:
                for tag in tags:
                    ch.basic_ack(tag)
        except Exception as e:
            raise _translate(e, doing) from e
        self._unacked.difference_update(tags)

    def reject(self, messages: list[Incoming]) -> None:
        tags = self._tags(messages)
        if not tags:
            return
        doing = f"rejecting on {self.where}"
        self._c.check(doing)
        try:
            for tag in tags:
                self._c.channel.basic_reject(tag, requeue=False)
        except Exception as e:
            raise _translate(e, doing) from e
        self._unacked.difference_update(tags)

    def close(self) -> None:
        self._buffer = []
        self._unacked = set()
        self._c.close()

    def _detect_dead_letters(self) -> bool:
        """Whether the queue has an ``x-dead-letter-exchange`` argument.

        AMQP has no "describe queue": a non-passive declare whose arguments differ from the queue's
        fails with PRECONDITION_FAILED naming the first differing argument and the queue's value, and
        changes nothing. So: declare with a probe DLX on a throwaway channel, adopting each other
        differing flag/argument the broker names, until the error is about the DLX itself. The queue
        exists (basic.consume would fail otherwise; checked passively first so that no declare can
        create it)."""
        import pika.exceptions as px

        conn = self._c.conn
        ch = conn.channel()
        ch.queue_declare(self.queue, passive=True)
        ch.close()
        flags = {"durable": True, "auto_delete": False, "exclusive": False}
        args = {"x-dead-letter-exchange": _DLX_PROBE}
        for _ in range(12):
            ch = conn.channel()
            try:
                ch.queue_declare(self.queue, arguments=args, **flags)
                ch.close()
                return True      # equal to the probe (or not compared): treat as having a DLX
            except px.ChannelClosedByBroker as e:
                if e.reply_code == 403:     # no configure permission: a declare is refused, even a no-op
                    log.warning("%s: the user may not declare the queue, so whether it has a dead-letter "
                                "exchange cannot be detected; assuming it has none. Pass dead_letter=True "
                                "or False to say.", self.where)
                    return False
                if e.reply_code != 406:
                    raise
                parsed = _parse_inequivalent(e.reply_text)
            if parsed is None:
                break
            name, current = parsed
            if name == "x-dead-letter-exchange":
                return current is not None
            if name in flags:
                flags[name] = not flags[name]
            elif current is None:
                args.pop(name, None)
            else:
                args[name] = current
        log.warning("%s: could not tell whether the queue has a dead-letter exchange; assuming it has "
                    "none. Pass dead_letter=True or False to say.", self.where)
        return False


_INEQUIVALENT = re.compile(r"inequivalent arg '([^']+)' for .*?: received .* but current is (.*)$", re.S)
_TYPED = re.compile(r"^the value '(.*)' of type '(\w+)'$", re.S)
_INT_TYPES = {"signedint", "long", "short", "byte", "unsignedbyte", "unsignedshort", "unsignedint",
              "signedshort", "signedbyte"}


def _parse_inequivalent(text: str):
    """``(argument, current value or None)`` from a PRECONDITION_FAILED text, None if it is not one."""
    m = _INEQUIVALENT.search(text)
    if m is None:
        return None
    name, current = m.group(1), m.group(2).strip()
    if current == "none":
        return name, None
    typed = _TYPED.match(current)
    if typed:
        value, kind = typed.groups()
        if kind in _INT_TYPES:
            return name, int(value)
        if kind == "bool":
            return name, value == "true"
        if kind in ("double", "float"):
            return name, float(value)
        return name, value
    if current.startswith("'") and current.endswith("'"):
        return name, current[1:-1]
    return name, current
