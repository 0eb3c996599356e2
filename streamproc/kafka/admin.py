"""Topic creation and validation, and a bounded wait for the cluster.

Every failure is a :class:`streamproc.errors.BrokerError` whose message says what
is wrong and what to do about it.

Metadata is always read with a full listing (``list_topics()`` without a topic):
a metadata request naming a missing topic can make a broker with
``auto.create.topics.enable=true`` create it with default settings.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from streamproc.errors import BrokerError

from .config import admin_config

#: Default bound for one admin round trip (seconds).
DEFAULT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class TopicSpec:
    """An internal topic streamproc needs: name, partition count and topic configs.

    ``config`` holds Kafka topic configs as strings, e.g.
    ``{"cleanup.policy": "compact"}`` or
    ``{"cleanup.policy": "compact,delete", "retention.ms": "86400000"}``.
    ``replication_factor=-1`` means the broker's ``default.replication.factor``.
    """

    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)
    replication_factor: int = -1


# --------------------------------------------------------------------------- helpers

def _bootstrap_of(admin: AdminClient) -> str:
    return getattr(admin, "_streamproc_bootstrap", None) or "the configured bootstrap servers"


def _kafka_error(exc: BaseException) -> KafkaError | None:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def _describe_exc(exc: BaseException) -> str:
    err = _kafka_error(exc)
    if err is not None:
        return f"{err.name()}: {err.str()}"
    return str(exc) or type(exc).__name__


def _topic_partitions(admin: AdminClient, timeout_s: float) -> dict[str, int]:
    """Partition count of every topic in the cluster (a full metadata listing)."""
    try:
        md = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise BrokerError(
            f"could not read topic metadata from Kafka at {_bootstrap_of(admin)} "
            f"within {timeout_s:g} s: {_describe_exc(exc)}") from exc
    counts: dict[str, int] = {}
    for name, tmd in md.topics.items():
        if tmd.error is not None and tmd.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            continue
        counts[name] = len(tmd.partitions)
    return counts


def _topic_configs(admin: AdminClient, names: Iterable[str], timeout_s: float) -> dict[str, dict[str, str]]:
    """The topic configs the broker reports for each name (empty dict if none)."""
    names = list(names)
    if not names:
        return {}
    resources = [ConfigResource(ResourceType.TOPIC, n) for n in names]
    futures = admin.describe_configs(resources, request_timeout=timeout_s)
    out: dict[str, dict[str, str]] = {}
    for res, fut in futures.items():
        try:
            entries = fut.result()
        except KafkaException as exc:
            raise BrokerError(
                f"could not read the configuration of topic {res.name!r} from Kafka at "
                f"{_bootstrap_of(admin)}: {_describe_exc(exc)}") from exc
        out[res.name] = {k: v.value for k, v in entries.items() if v.value is not None}
    return out


def topic_configs(admin: AdminClient, names: Iterable[str], timeout_s: float = 15.0) -> dict[str, dict[str, str]]:
    """``{topic: {config: value}}`` as the broker reports them (``BrokerError`` if they cannot be read)."""
    return _topic_configs(admin, names, timeout_s)


def group_offsets(admin: AdminClient, group: str, partitions: Iterable[tuple[str, int]],
                  timeout_s: float = 15.0) -> dict[tuple[str, int], int]:
    """The committed offsets of consumer group ``group`` for ``(topic, partition)``s (missing: none committed)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

    tps = [TopicPartition(t, p) for t, p in partitions]
    if not tps:
        return {}
    futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)],
                                                request_timeout=timeout_s)
    try:
        res = futures[group].result(timeout=timeout_s + 5)
    except KafkaException as exc:
        raise BrokerError(f"could not read the committed offsets of consumer group {group!r} from Kafka at "
                          f"{_bootstrap_of(admin)}: {_describe_exc(exc)}") from exc
    return {(tp.topic, tp.partition): tp.offset for tp in res.topic_partitions if tp.offset >= 0}


def _policies(value: str | None) -> frozenset[str]:
    if not value:
        return frozenset()
    return frozenset(p.strip() for p in value.split(",") if p.strip())


def _check_config(spec: TopicSpec, actual: Mapping[str, str]) -> str | None:
    """Why an existing internal topic's config is unsafe for ``spec``, or None.

    Only settings the broker reports are checked (a broker that reports nothing
    cannot be validated).
    """
    want_policy = _policies(spec.config.get("cleanup.policy"))
    have_policy_raw = actual.get("cleanup.policy")
    if want_policy and have_policy_raw is not None:
        have_policy = _policies(have_policy_raw)
        if have_policy != want_policy:
            return (f"has cleanup.policy={have_policy_raw} but streamproc needs "
                    f"cleanup.policy={spec.config['cleanup.policy']}")
    if "delete" in want_policy and "retention.ms" in spec.config:
        have_ret = actual.get("retention.ms")
        try:
            want_ms = int(spec.config["retention.ms"])
            have_ms = int(have_ret) if have_ret is not None else None
        except ValueError:
            return None
        if have_ms is not None and have_ms != -1 and (want_ms == -1 or have_ms < want_ms):
            return (f"has retention.ms={have_ms} but streamproc needs at least "
                    f"retention.ms={want_ms} (window size + grace + margin)")
    return None


def _wait_for_partitions(admin: AdminClient, expected: Mapping[str, int], timeout_s: float) -> None:
    """Wait until freshly created topics show up in metadata with their partitions."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = _topic_partitions(admin, max(1.0, min(5.0, deadline - time.monotonic())))
        pending = [n for n, p in expected.items() if counts.get(n, 0) < p]
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise BrokerError(
                f"Kafka at {_bootstrap_of(admin)} accepted the creation of topic(s) "
                f"{', '.join(sorted(pending))} but they did not appear in its metadata "
                f"within {timeout_s:g} s")
        time.sleep(0.1)


def _create(admin: AdminClient, new_topics: list[NewTopic], timeout_s: float) -> tuple[list[str], list[str]]:
    """Create topics; returns (created, already_existing). Other failures raise."""
    if not new_topics:
        return [], []
    futures = admin.create_topics(new_topics, operation_timeout=timeout_s, request_timeout=timeout_s)
    created, existing, failures = [], [], []
    for name, fut in futures.items():
        try:
            fut.result()
            created.append(name)
        except KafkaException as exc:
            err = _kafka_error(exc)
            if err is not None and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                existing.append(name)  # created concurrently by another instance
            else:
                failures.append(f"{name!r} ({_describe_exc(exc)})")
    if failures:
        raise BrokerError(
            f"Kafka at {_bootstrap_of(admin)} refused to create topic(s) {', '.join(failures)}. "
            "Check that the client may create topics (ACLs) and that the partition count "
            "and replication factor are allowed by the cluster.")
    return created, existing


# --------------------------------------------------------------------------- public API

def make_admin(bootstrap: str, app_id: str | None = None,
               overrides: Mapping[str, Any] | None = None) -> AdminClient:
    """An ``AdminClient`` for ``bootstrap`` whose errors name that address."""
    admin = AdminClient(admin_config(bootstrap, app_id, overrides))
    try:
        admin._streamproc_bootstrap = bootstrap  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - C type without __dict__
        pass
    return admin


def ensure_internal_topics(admin: AdminClient, specs: Iterable[TopicSpec], *,
                           timeout_s: float = DEFAULT_TIMEOUT_S) -> list[str]:
    """Create the missing internal topics and validate the existing ones.

    Returns the names of the topics created by this call. Raises
    :class:`BrokerError` if an existing topic has a different partition count
    (state would be split differently from its source) or an unsafe
    ``cleanup.policy`` / ``retention.ms``.
    """
    specs = list(specs)
    for spec in specs:
        if spec.partitions < 1:
            raise ValueError(f"internal topic {spec.name!r} needs at least 1 partition, got {spec.partitions}")
    counts = _topic_partitions(admin, timeout_s)

    missing = [s for s in specs if s.name not in counts]
    created, raced = _create(admin, [
        NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor,
                 config={k: str(v) for k, v in s.config.items()})
        for s in missing], timeout_s)
    if created:
        _wait_for_partitions(admin, {s.name: s.partitions for s in specs if s.name in created}, timeout_s)
    if raced:
        counts = _topic_partitions(admin, timeout_s)

    to_validate = [s for s in specs if s.name not in created]
    problems: list[str] = []
    for spec in to_validate:
        have = counts.get(spec.name)
        if have is not None and have != spec.partitions:
            problems.append(
                f"internal topic {spec.name!r} has {have} partition(s) but the topology needs "
                f"{spec.partitions} (it must match its source topics)")
    if problems:
        raise BrokerError(
            "; ".join(problems) + ". The partition count of a source topic probably changed "
            "since the application last ran. Internal topics cannot be repartitioned in place: "
            "reset the application (delete its internal topics and local state) or restore the "
            "original partition count.")

    configs = _topic_configs(admin, [s.name for s in to_validate if s.config], timeout_s)
    for spec in to_validate:
        why = _check_config(spec, configs.get(spec.name, {}))
        if why:
            problems.append(f"internal topic {spec.name!r} {why}")
    if problems:
        raise BrokerError(
            "; ".join(problems) + ". Fix the topic configuration (kafka-configs --alter) or "
            "delete the topic so streamproc recreates it; a changelog with the wrong cleanup "
            "policy or retention loses state.")
    return created


def validate_source_topics(admin: AdminClient, topics: Iterable[str],
                           co_partition_groups: Iterable[Iterable[str]] = (), *,
                           timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, int]:
    """Check that the source topics exist and co-partitioned groups agree.

    Returns ``{topic: partition count}`` for every topic named (sources and
    members of co-partition groups). Raises :class:`BrokerError` naming every
    missing topic, or every group whose topics have different partition counts.
    """
    topics = list(dict.fromkeys(topics))
    groups = [list(dict.fromkeys(g)) for g in co_partition_groups]
    wanted = list(dict.fromkeys([*topics, *(t for g in groups for t in g)]))
    counts = _topic_partitions(admin, timeout_s)

    missing = [t for t in wanted if t not in counts]
    if missing:
        names = ", ".join(repr(t) for t in missing)
        raise BrokerError(
            f"source topic(s) {names} do not exist on Kafka at {_bootstrap_of(admin)}. "
            "Create them with the partition count you want (e.g. kafka-topics --create), "
            "or pass --create-topics to let streamproc create them (development only: it uses "
            "a default partition count).")

    empty = [t for t in wanted if counts[t] == 0]
    if empty:
        raise BrokerError(
            f"topic(s) {', '.join(repr(t) for t in empty)} on Kafka at {_bootstrap_of(admin)} "
            "report no partitions; the cluster may still be creating them. Retry in a moment.")

    problems = []
    for group in groups:
        distinct = {counts[t] for t in group}
        if len(distinct) > 1:
            detail = ", ".join(f"{t!r} has {counts[t]}" for t in group)
            problems.append(f"[{detail}]")
    if problems:
        raise BrokerError(
            "topics that are joined or merged into one state must have the same number of "
            f"partitions (co-partitioning), but: {'; '.join(problems)}. Repartition one side "
            "(e.g. group_by/repartition in the topology, or recreate the topic) so the counts match.")
    return {t: counts[t] for t in wanted}


def create_topics(admin: AdminClient, names: Iterable[str], partitions: int, *,
                  config: Mapping[str, str] | None = None, replication_factor: int = -1,
                  timeout_s: float = DEFAULT_TIMEOUT_S) -> list[str]:
    """Create the topics among ``names`` that do not exist yet (the ``--create-topics`` option).

    Existing topics are left alone. Returns the names created by this call.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    names = list(dict.fromkeys(names))
    counts = _topic_partitions(admin, timeout_s)
    missing = [n for n in names if n not in counts]
    created, _ = _create(admin, [
        NewTopic(n, num_partitions=partitions, replication_factor=replication_factor,
                 config=dict(config or {}))
        for n in missing], timeout_s)
    if created:
        _wait_for_partitions(admin, {n: partitions for n in created}, timeout_s)
    return created


def wait_for_broker(config: Mapping[str, Any] | str, timeout_s: float = 30.0) -> Any:
    """Wait until the cluster answers a metadata request; return its ``ClusterMetadata``.

    ``config`` is a librdkafka config dict (with ``bootstrap.servers``) or a
    bootstrap string. librdkafka retries unreachable brokers forever, so this
    polls with short ``list_topics`` timeouts and gives up after ``timeout_s``
    with ``BrokerError("cannot reach Kafka at X after N s: <reason>")``, the
    reason being the last error librdkafka reported (connection refused, name
    resolution failure, authentication failure, ...).
    """
    if isinstance(config, str):
        conf: dict[str, Any] = admin_config(config)
    else:
        conf = dict(config)
    bootstrap = str(conf.get("bootstrap.servers") or conf.get("metadata.broker.list") or "")
    if not bootstrap:
        raise BrokerError("no Kafka bootstrap servers given (e.g. --bootstrap-servers localhost:9092)")
    conf.setdefault("allow.auto.create.topics", False)

    errors: list[KafkaError] = []
    user_error_cb = conf.get("error_cb")

    def _on_error(err: KafkaError) -> None:
        errors.append(err)
        if user_error_cb is not None:
            user_error_cb(err)

    conf["error_cb"] = _on_error
    conf.setdefault("logger", _NullLogger())  # keep librdkafka's retry noise off stderr
    admin = AdminClient(conf)

    deadline = time.monotonic() + timeout_s
    last_exc: BaseException | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            md = admin.list_topics(timeout=max(0.1, min(2.0, remaining)))
        except KafkaException as exc:
            last_exc = exc
            err = _kafka_error(exc)
            if err is not None and err.fatal():
                break
            admin.poll(0)  # serve error callbacks
            continue
        if md.brokers:
            return md
        time.sleep(0.1)

    admin.poll(0)
    reason = _reason(errors, last_exc)
    raise BrokerError(f"cannot reach Kafka at {bootstrap} after {timeout_s:g} s: {reason}")


class _NullLogger:
    """A ``logging.Logger`` stand-in that drops librdkafka's log lines."""

    def log(self, *args: Any, **kwargs: Any) -> None:  # noqa: D401
        return None


def _reason(errors: list[KafkaError], last_exc: BaseException | None) -> str:
    # Prefer the most specific transport-level error over the generic timeouts.
    generic = {KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN}
    for err in reversed(errors):
        if err.code() not in generic:
            return err.str()
    if errors:
        return errors[-1].str()
    if last_exc is not None:
        return _describe_exc(last_exc)
    return "no broker answered"
