"""What stops a worker, and how an error of a Kafka client is told apart: fatal, fenced, or not.

A :class:`FatalKafkaError` (:class:`WorkerFenced` when another instance took over this worker's
``transactional.id`` / ``group.instance.id``) stops the worker without committing; the
``UnrecoverableError``s (:class:`ProcessingFailed`, :class:`ConfigError`) stop the whole instance
(``process.py`` turns them into exit codes); :class:`TaskDirBusy` is worth a restart.
"""
from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException

from ...errors import BrokerError, StreamprocError, UnrecoverableError

log = logging.getLogger("streamproc.worker")

_FENCED_CODES = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH,
                 KafkaError.FENCED_INSTANCE_ID, KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED}


class FatalKafkaError(StreamprocError):
    """A Kafka client hit an error it cannot recover from; the worker must stop without committing."""


class WorkerFenced(FatalKafkaError):
    """Another instance took over this worker's transactional.id or group.instance.id."""


class ProcessingFailed(UnrecoverableError):
    """A record could not be processed (user function raised, bad record under on_error='fail')."""


class ConfigError(UnrecoverableError):
    """A client setting the runtime cannot run with."""


class TaskDirBusy(StreamprocError):
    """A task directory is locked by another process (restartable, unlike other ``StateError``s)."""


def kafka_error(exc: BaseException) -> KafkaError | None:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def is_fenced(err: KafkaError) -> bool:
    return err.code() in _FENCED_CODES or "fence" in (err.str() or "").lower()


def fatal_error(err: KafkaError, what: str) -> FatalKafkaError:
    if is_fenced(err):
        return WorkerFenced(
            f"{what}: {err.str()}. Another instance with the same process id (state dir) took over this "
            f"worker's transactional.id / group.instance.id, so this one stops without committing.")
    return FatalKafkaError(f"{what}: fatal Kafka error {err.name()}: {err.str()}")


def consumer_error(m, worker_id: str) -> None:
    """An error event ``m`` of worker ``worker_id``'s consumer: nothing for an end of partition, raised when
    the worker cannot go on (fatal, a topic it cannot read), else logged."""
    err = m.error()
    if err.code() == KafkaError._PARTITION_EOF:
        return
    if err.fatal() or err.code() == KafkaError._FATAL:
        raise fatal_error(err, f"consumer of {worker_id}")
    if err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.TOPIC_AUTHORIZATION_FAILED,
                      KafkaError.GROUP_AUTHORIZATION_FAILED):
        raise FatalKafkaError(f"consumer of {worker_id}: {err.str()} (topic {m.topic()!r}); "
                              f"check that the topic exists and the client may read it")
    log.warning("worker %s: consumer error: %s", worker_id, err.str())


def loop_failure(e: KafkaException, worker_id: str, fatal: BaseException | None) -> StreamprocError:
    """A one-paragraph error for a Kafka client exception ``e`` that reached worker ``worker_id``'s loop;
    ``fatal``: what its error callback recorded as fatal (the cause, when it is one of ours)."""
    if isinstance(fatal, StreamprocError):
        return fatal
    err = kafka_error(e)
    if err is None:
        return BrokerError(f"worker {worker_id}: Kafka client error: {e}")
    if err.fatal() or is_fenced(err) or err.code() == KafkaError._FATAL:
        return fatal_error(err, f"worker {worker_id}")
    return BrokerError(f"worker {worker_id}: Kafka error {err.name()}: {err.str()}")
