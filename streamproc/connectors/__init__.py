"""Edges to other messaging systems (DESIGN section 9): RabbitMQ, NATS JetStream and Redis Streams.

A connector here is a definition and the clients that speak to its system (``_base.py`` says what
they must do); the runtime's edge process (``runtime/edge``) bridges sources into ingest topics and
delivers egress topics to sinks, and holds the guarantees. Each system's Python client is imported only
when a client is made, so a topology without connectors needs none of them
(``pip install 'streamproc[connectors]'``).
"""
from __future__ import annotations

from ._base import Connector, Incoming, Outgoing, SinkClient, SourceClient, Unavailable

__all__ = ["Connector", "RabbitMQ", "NatsJetStream", "RedisStream", "Incoming", "Outgoing", "SourceClient",
           "SinkClient", "Unavailable", "INGEST_ID_HEADER", "TARGET_HEADER"]

#: The header of an ingest record holding the external message's id (dedupe reads it).
INGEST_ID_HEADER = "streamproc-message-id"
#: The header of an egress record holding its resolved target (routing key / subject / stream).
TARGET_HEADER = "streamproc-target"


_DEFINITIONS = {"RabbitMQ": ("rabbitmq", "pika", "rabbitmq"), "NatsJetStream": ("nats", "nats-py", "nats"),
                "RedisStream": ("redis", "redis", "redis")}


def __getattr__(name):            # the definitions, imported on first use: each needs its system's client
    if name not in _DEFINITIONS:
        raise AttributeError(f"module 'streamproc.connectors' has no attribute {name!r}")
    module, package, extra = _DEFINITIONS[name]
    import importlib

    try:
        mod = importlib.import_module(f".{module}", __name__)
    except ImportError as e:
        from ..errors import TopologyError

        raise TopologyError(f"connectors.{name} needs the Python package {package!r}, which is not installed "
                            f"({e}): pip install 'streamproc[{extra}]'") from None
    return getattr(mod, name)
