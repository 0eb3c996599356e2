"""Topic creation and validation, and a bounded wait for the cluster.

Every failure is a :class:`streamproc.errors.BrokerError` whose message says what
is wrong and what to do about it.

Metadata is always read with a full listing (``list_topics()`` without a topic):
a metadata request naming a missing topic can make a broker with
``auto.create.topics.enable=true`` create it with default settings.

Every request retries a transient refusal (a leader not yet elected, a topic not yet
in every broker's metadata, a timeout, a controller move) for up to the call's
``timeout_s`` with :func:`streamproc.kafka.retry.retrying`; a topic another instance
creates at the same moment (``TOPIC_ALREADY_EXISTS``) is validated like any existing
one. Anything else fails at once.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from streamproc.errors import BrokerError, TopicError

from .config import admin_config
from .retry import Pending, RetriesExhausted, describe, is_retriable, is_retriable_error, kafka_error, retrying

T = TypeVar("T")

log = logging.getLogger("streamproc.kafka")

#: Default bound (seconds) of each step (a listing, a creation, the wait for new topics' leaders, a
#: config read), transient refusals retried within it.
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


_kafka_error = kafka_error
_describe_exc = describe


def _attempt_s(timeout_s: float) -> float:
    """The timeout of one request within a retried step of ``timeout_s`` (several attempts fit)."""
    return max(1.0, min(10.0, timeout_s / 3))


def _retry(admin: AdminClient, what: str, fn: Callable[[], T], timeout_s: float) -> T:
    """:func:`retrying` with this cluster's address in the message; a non-retriable ``KafkaException``
    the step did not turn into a ``BrokerError`` itself becomes one (``Kafka at X refused to <what>``)."""
    try:
        return retrying(what, fn, timeout_s, where=_bootstrap_of(admin))
    except KafkaException as exc:
        raise BrokerError(f"Kafka at {_bootstrap_of(admin)} refused to {what}: {describe(exc)}") from exc


def _list_once(admin: AdminClient, timeout_s: float) -> dict[str, Any]:
    """One full metadata listing: ``{topic: TopicMetadata}`` without the topics the broker reports unknown."""
    md = admin.list_topics(timeout=timeout_s)
    return {name: tmd for name, tmd in md.topics.items()
            if tmd.error is None or tmd.error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART}


def _metadata(admin: AdminClient, timeout_s: float) -> dict[str, Any]:
    """Every topic of the cluster (``{name: TopicMetadata}``), the listing retried for up to ``timeout_s``."""
    return _retry(admin, "answer a metadata request (the list of topics)",
                  lambda: _list_once(admin, _attempt_s(timeout_s)), timeout_s)


def _unready(admin: AdminClient, name: str, tmd: Any, want: int | None, leaders: bool) -> str | None:
    """What keeps topic ``name`` (its metadata ``tmd``, None if not listed) from being usable yet, or None.

    ``want``: the partition count it must list (None: any, but at least one); ``leaders``: every
    partition must have a leader. A topic-level error that is not transient (e.g. not authorized)
    raises ``BrokerError`` at once.
    """
    if tmd is None:
        return f"topic {name!r} not in its metadata yet"
    if tmd.error is not None:
        if is_retriable_error(tmd.error):
            return f"topic {name!r} reported as {tmd.error.name()} ({tmd.error.str()})"
        raise BrokerError(f"Kafka at {_bootstrap_of(admin)} reports topic {name!r} as {tmd.error.name()}: "
                          f"{tmd.error.str()}. Check that the client may describe it (ACLs).")
    n = len(tmd.partitions)
    if n == 0 or (want is not None and n < want):
        return f"topic {name!r} listing {n} partition(s)" + (f" of {want}" if want is not None else "")
    if leaders:
        leaderless = sorted(p for p, pmd in tmd.partitions.items()
                            if pmd.leader < 0 or (pmd.error is not None and pmd.error.code() in (
                                KafkaError.LEADER_NOT_AVAILABLE, KafkaError.NOT_LEADER_FOR_PARTITION)))
        if leaderless:
            shown = ", ".join(str(p) for p in leaderless[:8]) + (", ..." if len(leaderless) > 8 else "")
            return f"topic {name!r} without a leader for partition(s) {shown}"
    return None


def _wait_for_partitions(admin: AdminClient, expected: Mapping[str, int | None], timeout_s: float, *,
                         leaders: bool = True, known: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Wait until the topics of ``expected`` (``{name: partition count, or None for any}``) are listed with
    their partitions and (``leaders``) a leader for each: freshly created topics, by this instance or a
    concurrent one, take a moment to reach every broker's metadata and elect their leaders.

    ``known``: a listing already read (no request when it shows them all ready). Returns the
    newest listing (``{name: TopicMetadata}``)."""
    if not expected:
        return dict(known or {})
    if known is not None and not any(_unready(admin, n, known.get(n), w, leaders) for n, w in expected.items()):
        return dict(known)

    def check() -> dict[str, Any]:
        topics = _list_once(admin, _attempt_s(timeout_s))
        problems = [why for n, w in expected.items() if (why := _unready(admin, n, topics.get(n), w, leaders))]
        if problems:
            raise Pending("; ".join(problems))
        return topics

    names = ", ".join(repr(n) for n in sorted(expected))
    return _retry(admin, f"list topic(s) {names} with their partitions"
                  + (" and a leader for each" if leaders else ""), check, timeout_s)


def _create(admin: AdminClient, new_topics: list[NewTopic], timeout_s: float) -> tuple[list[str], list[str]]:
    """Create topics; returns (created, already_existing). Transient refusals are retried, others raise.

    A topic another instance created concurrently (``TOPIC_ALREADY_EXISTS``) counts as existing:
    the caller validates it like any existing topic. So does one whose creation timed out on a
    first attempt and turned out to exist on the next.
    """
    if not new_topics:
        return [], []
    todo = {t.topic: t for t in new_topics}
    created: list[str] = []
    existing: list[str] = []
    op_s = _attempt_s(timeout_s)

    def attempt() -> None:
        futures = admin.create_topics(list(todo.values()), operation_timeout=op_s, request_timeout=op_s + 5)
        failures, transient = [], None
        for name, fut in futures.items():
            try:
                fut.result()
                created.append(name)
                del todo[name]
            except KafkaException as exc:
                err = kafka_error(exc)
                if err is not None and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    existing.append(name)  # created concurrently by another instance
                    del todo[name]
                elif is_retriable(exc):
                    transient = transient or exc
                else:
                    failures.append(f"{name!r} ({describe(exc)})")
        if failures:
            raise BrokerError(
                f"Kafka at {_bootstrap_of(admin)} refused to create topic(s) {', '.join(failures)}. "
                "Check that the client may create topics (ACLs) and that the partition count "
                "and replication factor are allowed by the cluster.")
        if transient is not None:
            raise transient

    _retry(admin, f"create topic(s) {', '.join(repr(n) for n in todo)}", attempt, timeout_s)
    return created, existing


def _topic_configs(admin: AdminClient, names: Iterable[str], timeout_s: float) -> dict[str, dict[str, str]]:
    """The topic configs the broker reports for each name (empty dict if none)."""
    todo = list(dict.fromkeys(names))
    if not todo:
        return {}
    out: dict[str, dict[str, str]] = {}

    def attempt() -> None:
        resources = [ConfigResource(ResourceType.TOPIC, n) for n in todo]
        futures = admin.describe_configs(resources, request_timeout=_attempt_s(timeout_s))
        transient = None
        for res, fut in futures.items():
            try:
                entries = fut.result()
            except KafkaException as exc:
                if is_retriable(exc):      # e.g. a topic just created, not yet known to the broker asked
                    transient = transient or exc
                    continue
                raise BrokerError(
                    f"could not read the configuration of topic {res.name!r} from Kafka at "
                    f"{_bootstrap_of(admin)}: {describe(exc)}") from exc
            out[res.name] = {k: v.value for k, v in entries.items() if v.value is not None}
            todo.remove(res.name)
        if transient is not None:
            raise transient

    _retry(admin, f"describe the configuration of topic(s) {', '.join(repr(n) for n in todo)}", attempt,
           timeout_s)
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
                    f"retention.ms={want_ms} (the store's retention, or window size + grace, + margin)")
    return None


# --------------------------------------------------------------------------- topic names

#: Kafka's rule for topic names (``org.apache.kafka.common.internals.Topic.validate``).
MAX_TOPIC_NAME = 249
_LEGAL_TOPIC = re.compile(r"[a-zA-Z0-9._-]+")


def illegal_topic_name(name: str) -> str | None:
    """Why ``name`` cannot be a Kafka topic name (Kafka refuses to create it, so it can never exist), or None."""
    if not isinstance(name, str) or not name:
        return "a topic name cannot be empty"
    if name in (".", ".."):
        return f"a topic cannot be named {name!r}"
    if len(name) > MAX_TOPIC_NAME:
        return f"it is {len(name)} characters long; Kafka allows at most {MAX_TOPIC_NAME}"
    if not _LEGAL_TOPIC.fullmatch(name):
        bad = "".join(dict.fromkeys(c for c in name if not _LEGAL_TOPIC.fullmatch(c)))
        return (f"it contains {', '.join(repr(c) for c in bad)}; Kafka allows only ASCII letters, digits, "
                f"'.', '_' and '-'")
    return None


def check_topic_names(names: Iterable[str], what: str = "topic",
                      fix: str = "Rename the topic in the topology (and create it under that name).") -> None:
    """Raise :class:`TopicError` naming every name among ``names`` Kafka would refuse (:func:`illegal_topic_name`)."""
    problems = [f"{n!r} ({why})" for n in dict.fromkeys(names) if (why := illegal_topic_name(n)) is not None]
    if problems:
        raise TopicError(
            f"{what} name(s) {'; '.join(problems)} are not legal Kafka topic names: no such topic can exist or be "
            f"created. {fix}")


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

    Instances started together all get here: a topic another one creates first
    (``TOPIC_ALREADY_EXISTS``) is validated like any existing topic. Returns only
    once every internal topic is listed with a leader for each partition, so the
    workers do not meet a leader election. Each transient refusal of the cluster is
    retried for up to ``timeout_s`` (see :mod:`streamproc.kafka.retry`).
    """
    specs = list(specs)
    for spec in specs:
        if spec.partitions < 1:
            raise ValueError(f"internal topic {spec.name!r} needs at least 1 partition, got {spec.partitions}")
    check_topic_names([s.name for s in specs], "internal topic",
                      "Internal topics are named <app-id>-<name>-...: change the app id or the store / repartition "
                      "name in the topology.")
    topics = _metadata(admin, timeout_s)

    missing = [s for s in specs if s.name not in topics]
    created, raced = _create(admin, [
        NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor,
                 config={k: str(v) for k, v in s.config.items()})
        for s in missing], timeout_s)
    if raced:
        log.info("internal topic(s) %s created by another instance at the same moment: checking them",
                 ", ".join(raced))
    # created here: all their partitions; created concurrently or existing: any count (checked below)
    topics = _wait_for_partitions(admin, {s.name: s.partitions if s.name in created else None for s in specs},
                                  timeout_s, known=topics)
    counts = {s.name: len(topics[s.name].partitions) for s in specs}

    to_validate = [s for s in specs if s.name not in created]
    problems: list[str] = []
    for spec in to_validate:
        have = counts[spec.name]
        if have != spec.partitions:
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
    members of co-partition groups). Raises :class:`~streamproc.errors.TopicError`
    (a ``BrokerError`` that restarting cannot fix: exit code 2) naming every
    missing topic or every name Kafka refuses (:func:`illegal_topic_name`), and
    ``BrokerError`` naming every group whose topics have different partition counts.
    A topic listed without partitions or with a transient error (still being
    created) is waited for, up to ``timeout_s``.
    """
    topics = list(dict.fromkeys(topics))
    groups = [list(dict.fromkeys(g)) for g in co_partition_groups]
    wanted = list(dict.fromkeys([*topics, *(t for g in groups for t in g)]))
    check_topic_names(wanted, "source topic")
    listed = _metadata(admin, timeout_s)

    missing = [t for t in wanted if t not in listed]
    if missing:
        names = ", ".join(repr(t) for t in missing)
        raise TopicError(
            f"source topic(s) {names} do not exist on Kafka at {_bootstrap_of(admin)}. "
            "Create them with the partition count you want (e.g. kafka-topics --create), "
            "or pass --create-topics to let streamproc create them (development only: it uses "
            "a default partition count). Restarting does not help until they exist (exit code 2).")
    listed = _wait_for_partitions(admin, dict.fromkeys(wanted), timeout_s, leaders=False, known=listed)
    counts = {t: len(listed[t].partitions) for t in wanted}

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
    return counts


def create_topics(admin: AdminClient, names: Iterable[str], partitions: int, *,
                  config: Mapping[str, str] | None = None, replication_factor: int = -1,
                  timeout_s: float = DEFAULT_TIMEOUT_S) -> list[str]:
    """Create the topics among ``names`` that do not exist yet (the ``--create-topics`` option).

    Existing topics are left alone (one created concurrently by another instance too). Returns
    the names created by this call, once they (and the concurrently created ones) are listed with
    a leader for each partition.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    names = list(dict.fromkeys(names))
    check_topic_names(names)
    listed = _metadata(admin, timeout_s)
    missing = [n for n in names if n not in listed]
    created, raced = _create(admin, [
        NewTopic(n, num_partitions=partitions, replication_factor=replication_factor,
                 config=dict(config or {}))
        for n in missing], timeout_s)
    _wait_for_partitions(admin, {**{n: partitions for n in created}, **dict.fromkeys(raced)}, timeout_s)
    return created


def _reachable(exc: BaseException) -> bool:
    """wait_for_broker's policy: anything but a fatal error may clear up (a broker starting, DNS, ...)."""
    if isinstance(exc, Pending):
        return True
    err = kafka_error(exc)
    return isinstance(exc, KafkaException) and (err is None or not err.fatal())


#: Seconds after which a cluster whose every bootstrap server refuses connections is reported (nothing
#: listens there: retrying to ``timeout_s`` would only delay the same answer).
REFUSED_GIVE_UP_S = 3.0
_REFUSED = "connection refused"


def _servers(bootstrap: str) -> set[str]:
    """``host:port`` of each bootstrap server as librdkafka names them in its errors (default port 9092)."""
    out = set()
    for s in bootstrap.split(","):
        s = s.strip()
        if "://" in s:
            s = s.split("://", 1)[1]
        if not s:
            continue
        if not re.search(r":\d+$", s):
            s += ":9092"
        out.add(s.lower())
    return out


def nothing_listens(errors: list[KafkaError], bootstrap: str) -> bool:
    """True when the errors librdkafka reported say nothing listens at any bootstrap server: each one refused
    a connection ("Connection refused") and nothing else went wrong (no timeout, name resolution or TLS/SASL
    failure: a broker that accepts connections but is slow or still starting is waited for)."""
    refused: set[str] = set()
    for err in errors:
        code = err.code()
        if code == KafkaError._ALL_BROKERS_DOWN:
            continue
        text = err.str() or ""
        if code != KafkaError._TRANSPORT or _REFUSED not in text.lower():
            return False
        refused.add(text.split("/", 1)[0].strip().lower())
    servers = _servers(bootstrap)
    return bool(refused) and (servers <= refused or len(refused) >= len(servers))


def wait_for_broker(config: Mapping[str, Any] | str, timeout_s: float = 30.0) -> Any:
    """Wait until the cluster answers a metadata request; return its ``ClusterMetadata``.

    ``config`` is a librdkafka config dict (with ``bootstrap.servers``) or a
    bootstrap string. librdkafka retries unreachable brokers forever, so this
    polls with short ``list_topics`` timeouts and gives up after ``timeout_s``
    with ``BrokerError("cannot reach Kafka at X after N s: <reason>")``, the
    reason being the last error librdkafka reported (name resolution failure,
    authentication failure, timeouts, ...). When nothing listens at all - every
    bootstrap server refuses the connection - it says so after
    :data:`REFUSED_GIVE_UP_S` instead (:func:`nothing_listens`); a broker that
    accepts connections but does not answer yet is waited for up to ``timeout_s``.
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
    conf["logger"] = _NullLogger()  # librdkafka's retry noise stays off stderr: the errors are in the paragraph
    admin = AdminClient(conf)
    deadline = time.monotonic() + timeout_s

    def attempt() -> Any:
        try:
            md = admin.list_topics(timeout=max(0.1, min(2.0, deadline - time.monotonic())))
        except KafkaException:
            admin.poll(0)  # serve error callbacks
            raise
        if not md.brokers:
            raise Pending("no broker in the metadata")
        return md

    refused_after = min(REFUSED_GIVE_UP_S, timeout_s)

    def give_up(last: BaseException, waited: float) -> BrokerError | None:
        admin.poll(0)  # serve error callbacks
        if waited < refused_after or not nothing_listens(errors, bootstrap):
            return None
        return BrokerError(
            f"cannot reach Kafka at {bootstrap}: nothing is listening there - every connection was refused for "
            f"{waited:.1f} s ({_reason(errors, None)}), so streamproc stops waiting before the {timeout_s:g} s it "
            f"allows a broker to answer. Check the host and port in --bootstrap-servers (or "
            f"STREAMPROC_BOOTSTRAP_SERVERS), that the broker is running, and that it listens on that address "
            f"(its listeners / advertised.listeners). A broker that is still starting refuses connections too: "
            f"start streamproc once it accepts them.")

    try:
        return retrying("answer a metadata request", attempt, timeout_s, where=bootstrap, retriable=_reachable,
                        give_up=give_up)
    except (RetriesExhausted, KafkaException) as exc:
        last = exc.last if isinstance(exc, RetriesExhausted) else exc
        admin.poll(0)
        reason = _reason(errors, last if isinstance(last, KafkaException) else None)
        raise BrokerError(f"cannot reach Kafka at {bootstrap} after {timeout_s:g} s: {reason}") from None


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


# --------------------------------------------------------------------------- cluster and group (reset)

@dataclass(frozen=True)
class GroupMember:
    """A member of a consumer group as the coordinator lists it."""

    member_id: str
    instance_id: str | None        # group.instance.id: a static member
    client_id: str
    host: str

    def describe(self) -> str:
        who = f"static member {self.instance_id!r}" if self.instance_id else f"member {self.member_id!r}"
        return f"{who} ({self.client_id} at {self.host})"


@dataclass(frozen=True)
class GroupInfo:
    """A consumer group's state (``"STABLE"``, ``"EMPTY"``, ...) and members."""

    state: str
    members: tuple[GroupMember, ...]


def cluster_id(admin: AdminClient, timeout_s: float = DEFAULT_TIMEOUT_S) -> str | None:
    """The cluster id the brokers report in their metadata (None if they report none)."""
    md = _retry(admin, "answer a metadata request (the cluster id)",
                lambda: admin.list_topics(timeout=_attempt_s(timeout_s)), timeout_s)
    return md.cluster_id


def describe_group(admin: AdminClient, group: str, timeout_s: float = 15.0) -> GroupInfo | None:
    """The state and members of consumer group ``group``; None if the cluster does not know it."""
    def attempt() -> GroupInfo | None:
        fut = admin.describe_consumer_groups([group], request_timeout=_attempt_s(timeout_s))[group]
        try:
            g = fut.result()
        except KafkaException as exc:
            err = kafka_error(exc)
            if err is not None and err.code() == KafkaError.GROUP_ID_NOT_FOUND:
                return None
            raise
        state = getattr(g.state, "name", str(g.state)).upper()
        members = tuple(GroupMember(m.member_id, m.group_instance_id or None, m.client_id, m.host)
                        for m in (g.members or []))
        if state == "DEAD" and not members:
            return None
        return GroupInfo(state, members)

    return _retry(admin, f"describe consumer group {group!r}", attempt, timeout_s)


def delete_group(admin: AdminClient, group: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Delete consumer group ``group`` with its committed offsets. Returns False if it did not exist.

    A group that still has members raises ``BrokerError`` (``NON_EMPTY_GROUP``)."""
    def attempt() -> bool:
        fut = admin.delete_consumer_groups([group], request_timeout=_attempt_s(timeout_s))[group]
        try:
            fut.result()
            return True
        except KafkaException as exc:
            err = kafka_error(exc)
            if err is not None and err.code() == KafkaError.GROUP_ID_NOT_FOUND:
                return False
            if err is not None and err.code() == KafkaError.NON_EMPTY_GROUP:
                raise BrokerError(f"Kafka at {_bootstrap_of(admin)} refused to delete consumer group {group!r}: "
                                  f"it has members again (an instance of the app started)") from None
            raise

    return _retry(admin, f"delete consumer group {group!r}", attempt, timeout_s)


def delete_topics(admin: AdminClient, names: Iterable[str], timeout_s: float = DEFAULT_TIMEOUT_S) -> list[str]:
    """Delete the topics among ``names`` that exist; return them once the cluster no longer lists any of
    them (a topic deleted but still listed could be "re-created" by nobody, or validated and then vanish)."""
    names = list(dict.fromkeys(names))
    listed = _metadata(admin, timeout_s)
    doomed = [n for n in names if n in listed]
    todo = list(doomed)
    op_s = _attempt_s(timeout_s)

    def attempt() -> None:
        if not todo:
            return
        futures = admin.delete_topics(list(todo), operation_timeout=op_s, request_timeout=op_s + 5)
        failures, transient = [], None
        for name, fut in futures.items():
            try:
                fut.result()
                todo.remove(name)
            except KafkaException as exc:
                err = kafka_error(exc)
                if err is not None and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    todo.remove(name)          # deleted meanwhile (e.g. by an earlier attempt)
                elif is_retriable(exc):
                    transient = transient or exc
                else:
                    failures.append(f"{name!r} ({describe(exc)})")
        if failures:
            raise BrokerError(f"Kafka at {_bootstrap_of(admin)} refused to delete topic(s) {', '.join(failures)}. "
                              "Check that the client may delete topics (ACLs) and that the brokers allow it "
                              "(delete.topic.enable).")
        if transient is not None:
            raise transient

    if doomed:
        _retry(admin, f"delete topic(s) {', '.join(repr(n) for n in doomed)}", attempt, timeout_s)

        def gone() -> None:
            left = [n for n in doomed if n in _list_once(admin, _attempt_s(timeout_s))]
            if left:
                raise Pending(f"topic(s) {', '.join(map(repr, left))} still listed after their deletion")

        _retry(admin, "stop listing the deleted topic(s)", gone, timeout_s)
    return doomed
