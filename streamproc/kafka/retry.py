"""The one retry policy of the broker calls made at start-up (DESIGN section 7).

A cluster answers some requests with a transient refusal: a partition whose leader is not
elected yet (``LEADER_NOT_AVAILABLE``, ``NOT_LEADER_FOR_PARTITION``) - typical of a topic another
instance has just created -, a topic not yet in every broker's metadata
(``UNKNOWN_TOPIC_OR_PART``), a request that timed out, a controller move. :func:`retrying` calls
a step again, with jittered exponential backoff, until it succeeds or a bounded deadline passes;
then it raises :class:`RetriesExhausted` (a ``BrokerError``), one paragraph naming what it
waited for and the last answer. Anything else (authorization, a bad config, a ``BrokerError``
raised by the step itself) propagates at once.

A step that polls for a condition rather than calling something that fails raises
:class:`Pending` with what it still misses; that is retried the same way.

A caller that can tell, from what it observed, that waiting longer cannot help (e.g. nothing
listens at the address at all: every connection refused) passes ``give_up``: after each
transient failure it may return the error to raise at once instead of retrying to the deadline.
"""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import KafkaError, KafkaException

from ..errors import BrokerError

log = logging.getLogger("streamproc.kafka")

T = TypeVar("T")

#: Error codes retried even when librdkafka does not flag the error retriable (it flags few of them:
#: ``KafkaError(code).retriable()`` is False for a plain code such as a failed watermark query's).
RETRIABLE_CODES = frozenset({
    KafkaError.LEADER_NOT_AVAILABLE, KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.REPLICA_NOT_AVAILABLE, KafkaError.BROKER_NOT_AVAILABLE, KafkaError.NOT_CONTROLLER,
    KafkaError.REQUEST_TIMED_OUT, KafkaError.NETWORK_EXCEPTION, KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError.KAFKA_STORAGE_ERROR, KafkaError.UNKNOWN_LEADER_EPOCH, KafkaError.FENCED_LEADER_EPOCH,
    KafkaError.OFFSET_NOT_AVAILABLE, KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.THROTTLING_QUOTA_EXCEEDED,
    # librdkafka's own: a timeout, a lost connection, metadata of this client not (yet) knowing the topic
    KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._WAIT_COORD,
    KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_TOPIC,
})

#: First pause between attempts (seconds); doubled up to :data:`MAX_BACKOFF_S`, each jittered by +-25 %.
BACKOFF_S = 0.1
MAX_BACKOFF_S = 1.0


class Pending(Exception):
    """Raised by a polling step: the condition it waits for is not met yet (the message says what is missing)."""


class RetriesExhausted(BrokerError):
    """A retried step still failed transiently when its deadline passed."""

    def __init__(self, message: str, *, what: str, last: BaseException, attempts: int, waited_s: float):
        super().__init__(message)
        self.what = what
        self.last = last
        self.attempts = attempts
        self.waited_s = waited_s


def kafka_error(exc: BaseException) -> KafkaError | None:
    """The ``KafkaError`` a ``KafkaException`` carries, or None."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def describe(exc: BaseException) -> str:
    """``NAME: text`` of a Kafka error, else the exception's message."""
    err = kafka_error(exc)
    if err is not None:
        return f"{err.name()}: {err.str()}"
    return str(exc) or type(exc).__name__


def is_retriable_error(err: KafkaError | None) -> bool:
    """True for a transient ``KafkaError`` (never for a fatal one)."""
    if err is None or err.fatal():
        return False
    return err.retriable() or err.code() in RETRIABLE_CODES


def is_retriable(exc: BaseException) -> bool:
    """The default policy: :class:`Pending`, or a ``KafkaException`` carrying a transient error."""
    if isinstance(exc, Pending):
        return True
    return isinstance(exc, KafkaException) and is_retriable_error(kafka_error(exc))


def retrying(what: str, fn: Callable[[], T], deadline_s: float, *, where: str | None = None,
             retriable: Callable[[BaseException], bool] = is_retriable,
             give_up: Callable[[BaseException, float], BaseException | None] | None = None,
             sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> T:
    """``fn()``, called again while it raises a retriable exception, until ``deadline_s`` seconds have passed.

    ``what`` completes "waiting for Kafka to ..." (e.g. ``"report the offsets of changelog 'a'[2]"``);
    ``where`` is the bootstrap address for the message. A non-retriable exception propagates at
    once; after the deadline :class:`RetriesExhausted` is raised (chained to the last exception).
    ``give_up(last exception, seconds waited)``: consulted after each transient failure; an exception it
    returns is raised at once (chained to the last exception), None goes on retrying.
    An attempt already running at the deadline is not interrupted: callers bound each attempt
    (a request timeout) well below ``deadline_s``.
    """
    start = clock()
    deadline = start + deadline_s
    delay = BACKOFF_S
    attempts = 0
    while True:
        attempts += 1
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified right here
            if not retriable(exc):
                raise
            last = exc
        now = clock()
        if give_up is not None:
            stop = give_up(last, now - start)
            if stop is not None:
                raise stop from last
        if now >= deadline:
            break
        if attempts == 1 and not isinstance(last, Pending):
            log.info("waiting for Kafka to %s: %s (transient; retrying for up to %g s)", what, describe(last),
                     deadline_s)
        else:
            log.debug("waiting for Kafka to %s (attempt %d): %s", what, attempts, describe(last))
        sleep(min(delay * random.uniform(0.75, 1.25), deadline - now))
        delay = min(delay * 2, MAX_BACKOFF_S)
    waited = clock() - start
    at = f" at {where}" if where else ""
    if isinstance(last, Pending):
        answer = f"the last check found {last}"
    else:
        answer = f"the last answer was {describe(last)}"
    raise RetriesExhausted(
        f"gave up after {waited:.1f} s ({attempts} attempts) waiting for Kafka{at} to {what}: {answer}. "
        f"This is normally transient (a partition leader not yet elected, a topic another instance has just "
        f"created, a broker restarting or overloaded) but lasted longer than the {deadline_s:g} s start-up "
        f"allows. Check the cluster's health (e.g. kafka-topics --describe --unavailable-partitions) and start "
        f"again.", what=what, last=last, attempts=attempts, waited_s=waited) from last
