"""The exception types users see. Each carries a message written for a person."""
from __future__ import annotations


class StreamprocError(Exception):
    """Base class for every error streamproc raises on purpose."""


class UnrecoverableError(StreamprocError):
    """A failure that restarting cannot fix (DESIGN section 7): the instance stops at once, exit code 2."""


class TopologyError(UnrecoverableError):
    """The topology is invalid (caught while building or planning it)."""


class TopologyLoadError(StreamprocError):
    """A topology file could not be imported or holds no (or several) Topology objects."""


class SerdeError(StreamprocError):
    """A value could not be serialized or deserialized.

    The message names the serde and, when known, the topic, partition and offset.
    """

    def __init__(self, message: str, *, serde: str | None = None, topic: str | None = None,
                 partition: int | None = None, offset: int | None = None):
        self.reason = message
        self.serde = serde
        self.topic = topic
        self.partition = partition
        self.offset = offset
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.topic is not None:
            where.append(f"topic {self.topic!r}")
        if self.partition is not None:
            where.append(f"partition {self.partition}")
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        prefix = f"{self.serde}" if self.serde else "serde"
        if not where:
            return f"{prefix} error: {self.reason}"
        return f"{prefix} could not handle a record ({', '.join(where)}): {self.reason}"

    def located(self, *, topic: str | None = None, partition: int | None = None,
                offset: int | None = None) -> "SerdeError":
        """A copy of this error with the record's location filled in."""
        return SerdeError(self.reason, serde=self.serde,
                          topic=topic if topic is not None else self.topic,
                          partition=partition if partition is not None else self.partition,
                          offset=offset if offset is not None else self.offset)


class CodecError(SerdeError):
    """Bytes on an internal topic or in a store could not be decoded, or a value cannot be encoded."""

    def __init__(self, message: str, *, serde: str | None = None, topic: str | None = None,
                 partition: int | None = None, offset: int | None = None):
        super().__init__(message, serde=serde if serde is not None else "streamproc internal codec",
                         topic=topic, partition=partition, offset=offset)

    def located(self, *, topic: str | None = None, partition: int | None = None,
                offset: int | None = None) -> "CodecError":
        """A copy of this error with the record's location filled in."""
        return type(self)(self.reason, serde=self.serde,
                          topic=topic if topic is not None else self.topic,
                          partition=partition if partition is not None else self.partition,
                          offset=offset if offset is not None else self.offset)


class StateError(UnrecoverableError):
    """Local state cannot be used (locked, wrong fingerprint, corrupt)."""


class StateBusyError(StreamprocError):
    """Local state is in use by another process right now (it may be released: not unrecoverable)."""


class BrokerError(StreamprocError):
    """The Kafka cluster cannot be reached or refused what was asked."""


class TopicError(BrokerError, UnrecoverableError):
    """A topic the topology names cannot be used as it is: it does not exist, or its name is one Kafka
    refuses (illegal characters, too long, ``.``/``..``). Restarting cannot fix it (exit code 2): the
    topic must be created or the topology changed."""


class ConnectorError(UnrecoverableError):
    """A connector's external system refused what it was asked in a way a restart cannot fix (bad
    credentials, a queue, exchange or stream that does not exist, a message the system will not take)."""
