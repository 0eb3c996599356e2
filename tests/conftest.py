"""Broker fixtures shared by the test suite.

Which broker the ``broker`` tests run against, in order of preference:

1. ``STREAMPROC_TEST_BOOTSTRAP=host:port`` -> that cluster ("external"); nothing is started.
2. a Docker engine that answers ``docker info`` and ``testcontainers`` installed ->
   a throw-away Apache Kafka container ("container"; image from
   ``STREAMPROC_TEST_KAFKA_IMAGE``, default confluentinc/cp-kafka:7.6.0).
3. otherwise the Tansu development broker ("tansu").

The broker starts lazily, once per session, for the first test that asks for it.
Tests marked ``real_kafka`` are skipped (with the reason) when the broker would
be Tansu, decided at collection time without starting anything.

Parallel runs (pytest-xdist, ``make test`` runs ``-n 4 --dist loadgroup``): a session is one
xdist worker process, so every worker starts a Tansu broker (or a container) of its own, on a
free port, and its tests are isolated from the other workers'. With
``STREAMPROC_TEST_BOOTSTRAP`` all workers share that cluster: tests name their app ids and
topics uniquely (``runtime_helpers.unique``, ``topic_factory``). The tests of a module that
share a module-scoped fixture (e.g. two running instances, set up once) run on one worker, in
order (an ``xdist_group`` per module), so that fixture is set up once, not once per worker.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator

import pytest

_BOOTSTRAP_ENV = "STREAMPROC_TEST_BOOTSTRAP"
_IMAGE_ENV = "STREAMPROC_TEST_KAFKA_IMAGE"
_kind_cache: list[str] = []


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _testcontainers_kafka():
    try:
        from testcontainers.community.kafka import KafkaContainer   # testcontainers >= 4.10
    except ImportError:
        try:
            from testcontainers.kafka import KafkaContainer
        except ImportError:
            return None
    return KafkaContainer


def _broker_kind() -> str:
    """'external', 'container' or 'tansu' (computed once, starts nothing)."""
    if not _kind_cache:
        if os.environ.get(_BOOTSTRAP_ENV):
            kind = "external"
        elif _testcontainers_kafka() is not None and _docker_answers():
            kind = "container"
        else:
            kind = "tansu"
        _kind_cache.append(kind)
    return _kind_cache[0]


def _shares_a_broker_fixture(item: pytest.Item) -> bool:
    """Does ``item`` use a module-scoped fixture that uses the broker (set up once for the module)?"""
    defs_of = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})

    def uses_broker(name: str, seen: set) -> bool:
        if name in ("kafka", "kafka_bootstrap"):
            return True
        defs = defs_of.get(name)
        if not defs or name in seen:
            return False
        seen.add(name)
        return any(uses_broker(arg, seen) for arg in defs[-1].argnames)

    return any(defs and defs[-1].scope == "module" and uses_broker(name, set())
               for name, defs in defs_of.items() if name in item.fixturenames)


@pytest.hookimpl(tryfirst=True)          # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.pluginmanager.hasplugin("xdist"):
        for item in items:
            if item.get_closest_marker("xdist_group") is None and _shares_a_broker_fixture(item):
                item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
    _skip_real_kafka(items)


def _skip_real_kafka(items: list[pytest.Item]) -> None:
    marked = [item for item in items if item.get_closest_marker("real_kafka") is not None]
    # STREAMPROC_TEST_FORCE_REAL_KAFKA=1 runs them on Tansu anyway (to watch how they fail there)
    if not marked or _broker_kind() != "tansu" or os.environ.get("STREAMPROC_TEST_FORCE_REAL_KAFKA"):
        return
    for item in marked:
        marker = item.get_closest_marker("real_kafka")
        why = marker.args[0] if marker.args else marker.kwargs.get("reason", "")
        reason = "needs real Apache Kafka, the test broker is Tansu"
        if why:
            reason += f" ({why})"
        reason += f"; set {_BOOTSTRAP_ENV} or run a Docker engine to include it"
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def kafka(kafka_bootstrap: str, kafka_kind: str) -> tuple[str, str]:
    """``(bootstrap, kind)`` for the runtime tests."""
    return kafka_bootstrap, kafka_kind


@pytest.fixture(scope="session")
def kafka_kind() -> str:
    """Which kind of broker ``kafka_bootstrap`` is: "external", "container" or "tansu"."""
    return _broker_kind()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_kind: str) -> Iterator[str]:
    """Bootstrap servers of the session's test broker (started on first use)."""
    if kafka_kind == "external":
        yield os.environ[_BOOTSTRAP_ENV]
        return
    if kafka_kind == "container":
        KafkaContainer = _testcontainers_kafka()
        container = KafkaContainer(os.environ.get(_IMAGE_ENV, "confluentinc/cp-kafka:7.6.0"))
        try:
            container = container.with_kraft()
        except (AttributeError, ValueError):
            pass
        # A single broker: internal topics must not ask for 3 replicas, or
        # init_transactions() never finds a coordinator.
        for key, value in {
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS": "1",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
            "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        }.items():
            container = container.with_env(key, value)
        with container:
            yield container.get_bootstrap_server()
        return
    from streamproc.kafka.devbroker import DevBroker

    with DevBroker() as broker:
        yield broker.bootstrap


@pytest.fixture
def topic_factory(request: pytest.FixtureRequest) -> Callable[..., str]:
    """``topic_factory(prefix="t", partitions=None, config=None) -> name``.

    Returns a topic name unique to this test and call. With ``partitions`` the
    topic is also created on ``kafka_bootstrap`` (starting the broker if needed).
    """
    base = re.sub(r"[^a-zA-Z0-9._-]+", "-", request.node.name).strip("-")[:80] or "test"
    counter = iter(range(1_000_000))

    def make(prefix: str = "t", partitions: int | None = None,
             config: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{base}-{next(counter)}-{uuid.uuid4().hex[:8]}"
        if partitions is not None:
            from streamproc.kafka import create_topics, make_admin

            create_topics(make_admin(request.getfixturevalue("kafka_bootstrap")), [name],
                          partitions, config=config)
        return name

    return make
