"""Thin helpers around confluent-kafka: client configs, topic admin, a dev broker."""
from __future__ import annotations

from .admin import (
    TopicSpec,
    create_topics,
    ensure_internal_topics,
    make_admin,
    validate_source_topics,
    wait_for_broker,
)
from .config import (
    ASSIGNMENT_STRATEGY,
    admin_config,
    consumer_config,
    producer_config,
    restore_consumer_config,
    transactional_producer_config,
)
from .devbroker import DevBroker, find_tansu_binary

__all__ = [
    "ASSIGNMENT_STRATEGY",
    "DevBroker",
    "TopicSpec",
    "admin_config",
    "consumer_config",
    "create_topics",
    "ensure_internal_topics",
    "find_tansu_binary",
    "make_admin",
    "producer_config",
    "restore_consumer_config",
    "transactional_producer_config",
    "validate_source_topics",
    "wait_for_broker",
]
