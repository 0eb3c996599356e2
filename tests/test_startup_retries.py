"""Start-up never fails on a transient broker condition (DESIGN.md section 7, issue 15 items 1-2).

1. The retry policy (``streamproc/kafka/retry.py``): what is retried, the backoff, the deadline and
   its paragraph - with an injected clock, no waiting.
2. Every start-up call site with fakes of the admin client / consumer that answer a transient error
   N times, then succeed (and a non-retriable one, which fails at once): the metadata listing,
   topic creation (a concurrent creator's ``TOPIC_ALREADY_EXISTS`` is success, then validated), the
   wait for new topics' partitions and leaders, the config check, the definition check and the
   instances topic. The dev broker (Tansu) elects leaders instantly, so the not-leader paths are
   covered here only.
3. ``broker``: three ``streamproc run`` instances of a new app (two re-keys, a windowed and a table
   aggregation: four internal topics) started within milliseconds of each other, three times with
   fresh app ids and once with ``--workers 2`` each: all come up, together they process every input
   record, and each exits 0 on SIGTERM.
"""
from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException

import runtime_helpers as h
from streamproc.errors import BrokerError
from streamproc.kafka import admin as admin_mod
from streamproc.kafka import retry
from streamproc.kafka.admin import TopicSpec, create_topics, ensure_internal_topics, validate_source_topics
from streamproc.kafka.retry import Pending, RetriesExhausted, is_retriable, retrying
from streamproc.runtime.changelog import definitions
from streamproc.runtime.serve import directory

HERE = h.HERE
ROOT = h.ROOT


def kexc(code: int, *, retriable: bool = False, fatal: bool = False) -> KafkaException:
    return KafkaException(KafkaError(code, f"test error {code}", retriable=retriable, fatal=fatal))


NOT_LEADER = KafkaError.NOT_LEADER_FOR_PARTITION
DENIED = KafkaError.TOPIC_AUTHORIZATION_FAILED


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    """The call sites sleep for real between attempts: keep the pauses at a millisecond."""
    monkeypatch.setattr(retry, "BACKOFF_S", 0.001)
    monkeypatch.setattr(retry, "MAX_BACKOFF_S", 0.002)


class FakeClock:
    def __init__(self):
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        assert s >= 0
        self.sleeps.append(s)
        self.now += s


def flaky(errors, result="ok"):
    """A step raising each of ``errors`` in turn, then returning ``result``; ``.calls`` counts calls."""
    errors = list(errors)

    def step():
        step.calls += 1
        if errors:
            raise errors.pop(0)
        return result

    step.calls = 0
    return step


# ------------------------------------------------------------------------------------------ 1. the policy

@pytest.mark.parametrize("exc", [
    kexc(KafkaError.LEADER_NOT_AVAILABLE), kexc(NOT_LEADER), kexc(KafkaError.UNKNOWN_TOPIC_OR_PART),
    kexc(KafkaError._TIMED_OUT), kexc(KafkaError.REQUEST_TIMED_OUT), kexc(KafkaError.NOT_CONTROLLER),
    kexc(KafkaError._UNKNOWN_PARTITION), kexc(KafkaError.INVALID_CONFIG, retriable=True),
    Pending("topic 'a' without a leader"),
])
def test_transient_errors_are_retriable(exc):
    assert is_retriable(exc)


@pytest.mark.parametrize("exc", [
    kexc(DENIED), kexc(KafkaError.POLICY_VIOLATION), kexc(KafkaError.INVALID_REPLICATION_FACTOR),
    kexc(KafkaError.TOPIC_ALREADY_EXISTS),                       # the creation site decides: success
    kexc(NOT_LEADER, fatal=True), ValueError("bug"), BrokerError("a paragraph"),
])
def test_other_errors_are_not(exc):
    assert not is_retriable(exc)


def test_retries_a_transient_error_with_growing_jittered_backoff():
    clock = FakeClock()
    step = flaky([kexc(NOT_LEADER)] * 6, result=(0, 42))
    assert retrying("report offsets", step, 30, sleep=clock.sleep, clock=clock) == (0, 42)
    assert step.calls == 7
    base = [retry.BACKOFF_S * 2 ** i for i in range(6)]
    for got, b in zip(clock.sleeps, base):
        assert 0.75 * min(b, retry.MAX_BACKOFF_S) <= got <= 1.25 * min(b, retry.MAX_BACKOFF_S)


def test_real_defaults_back_off_from_100_ms_to_1_s(monkeypatch):
    monkeypatch.undo()                                           # the module's own constants
    clock = FakeClock()
    retrying("x", flaky([kexc(NOT_LEADER)] * 8), 30, sleep=clock.sleep, clock=clock)
    assert 0.075 <= clock.sleeps[0] <= 0.125
    assert all(s <= 1.25 for s in clock.sleeps) and clock.sleeps[-1] >= 0.75


def test_a_non_retriable_error_propagates_at_once():
    clock = FakeClock()
    denied = kexc(DENIED)
    step = flaky([denied])
    with pytest.raises(KafkaException) as info:
        retrying("create topics", step, 30, sleep=clock.sleep, clock=clock)
    assert info.value is denied and step.calls == 1 and clock.sleeps == []


def test_gives_up_at_the_deadline_with_one_paragraph(monkeypatch):
    monkeypatch.undo()                                           # the module's own backoff
    clock = FakeClock()
    step = flaky([kexc(NOT_LEADER)] * 10_000)
    with pytest.raises(RetriesExhausted) as info:
        retrying("report the offsets of changelog 'a'[2]", step, 5, where="k1:9092", sleep=clock.sleep, clock=clock)
    e = info.value
    assert isinstance(e, BrokerError)
    assert clock.now - 100.0 == pytest.approx(5.0)               # never sleeps past the deadline
    assert e.attempts == step.calls and 5 < step.calls < 30
    assert isinstance(e.__cause__, KafkaException)
    msg = str(e)
    assert "\n" not in msg
    assert msg.startswith(f"gave up after 5.0 s ({step.calls} attempts) waiting for Kafka at k1:9092 to report the "
                          "offsets of changelog 'a'[2]: the last answer was NOT_LEADER_FOR_PARTITION")
    assert "transient" in msg and "5 s start-up" in msg


def test_a_pending_condition_is_polled_and_named():
    clock = FakeClock()
    with pytest.raises(RetriesExhausted, match=r"the last check found topic 'a' without a leader for partition\(s\) 1\."):
        retrying("list topic 'a'", flaky([Pending("topic 'a' without a leader for partition(s) 1")] * 100_000), 2,
                 sleep=clock.sleep, clock=clock)
    assert retrying("list", flaky([Pending("x")] * 3, result=5), 2, sleep=clock.sleep, clock=clock) == 5


def test_a_custom_policy():
    step = flaky([KeyError("x")] * 2, result=1)
    assert retrying("x", step, 5, retriable=lambda e: isinstance(e, KeyError), sleep=lambda s: None) == 1


def test_no_copy_pasted_retry_loops_at_the_call_sites():
    """The start-up call sites use the helper; none sleeps in a retry loop of its own (the directory's
    follower thread, which runs after start-up, keeps its pause between failed reads)."""
    for rel in ("streamproc/kafka/admin.py", "streamproc/runtime/changelog/definitions.py", "streamproc/runtime/serve/directory.py"):
        src = open(os.path.join(ROOT, rel)).read()
        assert "retrying(" in src, rel
        if not rel.endswith("directory.py"):
            assert "time.sleep" not in src, rel


# ------------------------------------------------------------------------------------------ 2. fakes

def part(p: int, leader: int = 1, error=None):
    return SimpleNamespace(id=p, leader=leader, error=error, replicas=[leader], isrs=[leader])


def topic_md(name: str, partitions: int, *, leader: int = 1, error=None, leaderless=()):
    return SimpleNamespace(topic=name, error=error,
                           partitions={p: part(p, -1 if p in leaderless else leader) for p in range(partitions)})


def cluster(*topics):
    return SimpleNamespace(topics={t.topic: t for t in topics}, brokers={1: SimpleNamespace(id=1)})


def done(result=None, exc=None):
    f = concurrent.futures.Future()
    if exc is not None:
        f.set_exception(exc)
    else:
        f.set_result(result)
    return f


class FakeAdmin:
    """An AdminClient whose answers are scripted: each call takes the next answer of its queue (the last one
    repeats); an answer is a value, an exception to raise, or a callable computing the value."""

    _streamproc_bootstrap = "fake:9092"

    def __init__(self, *, metadata=(), create=(), configs=()):
        self.queues = {"list_topics": list(metadata), "create_topics": list(create),
                       "describe_configs": list(configs)}
        self.calls = {k: 0 for k in self.queues}
        self.created: list[list[str]] = []

    def _next(self, what, *args):
        self.calls[what] += 1
        q = self.queues[what]
        answer = q.pop(0) if len(q) > 1 else q[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer(*args) if callable(answer) else answer

    def list_topics(self, topic=None, timeout=-1):
        assert topic is None, "always a full listing"
        assert 0 < timeout <= 10
        return self._next("list_topics")

    def create_topics(self, new_topics, operation_timeout=0, request_timeout=0):
        self.created.append([t.topic for t in new_topics])
        per_topic = self._next("create_topics")        # {name: exception or None}
        return {t.topic: done(exc=per_topic.get(t.topic)) for t in new_topics}

    def describe_configs(self, resources, request_timeout=0):
        per_topic = self._next("describe_configs")      # {name: {config: value} or exception}
        out = {}
        for r in resources:
            v = per_topic[r.name]
            out[r] = done(exc=v) if isinstance(v, BaseException) else done(
                {k: SimpleNamespace(value=x) for k, x in v.items()})
        return out


CHANGELOG = TopicSpec("app-s-changelog", 3, {"cleanup.policy": "compact"})
REPART = TopicSpec("app-r-repartition", 3, {"cleanup.policy": "delete", "retention.ms": "-1"})


def test_ensure_internal_topics_rides_out_a_not_leader_metadata_answer():
    admin = FakeAdmin(metadata=[kexc(NOT_LEADER), kexc(KafkaError._TIMED_OUT),
                                cluster(topic_md(CHANGELOG.name, 3))],
                      configs=[{CHANGELOG.name: {"cleanup.policy": "compact"}}])
    assert ensure_internal_topics(admin, [CHANGELOG]) == []
    assert admin.calls["list_topics"] == 3 and admin.calls["create_topics"] == 0


def test_a_topic_created_concurrently_is_success_then_waited_for_and_validated():
    """The other instance wins the creation: TOPIC_ALREADY_EXISTS, the topic not listed yet, then listed
    without leaders, then ready; its config is read (once refused as unknown: metadata lag) and checked."""
    admin = FakeAdmin(
        metadata=[cluster(), cluster(), cluster(topic_md(CHANGELOG.name, 3, leaderless=(0, 2))),
                  cluster(topic_md(CHANGELOG.name, 3))],
        create=[{CHANGELOG.name: kexc(KafkaError.TOPIC_ALREADY_EXISTS)}],
        configs=[{CHANGELOG.name: kexc(KafkaError.UNKNOWN_TOPIC_OR_PART)},
                 {CHANGELOG.name: {"cleanup.policy": "compact"}}])
    assert ensure_internal_topics(admin, [CHANGELOG]) == []
    assert admin.calls == {"list_topics": 4, "create_topics": 1, "describe_configs": 2}


def test_a_topic_created_concurrently_with_another_config_is_refused():
    admin = FakeAdmin(metadata=[cluster(), cluster(topic_md(CHANGELOG.name, 3))],
                      create=[{CHANGELOG.name: kexc(KafkaError.TOPIC_ALREADY_EXISTS)}],
                      configs=[{CHANGELOG.name: {"cleanup.policy": "delete"}}])
    with pytest.raises(BrokerError, match="has cleanup.policy=delete but streamproc needs cleanup.policy=compact"):
        ensure_internal_topics(admin, [CHANGELOG])


def test_a_topic_created_concurrently_with_another_partition_count_is_refused():
    admin = FakeAdmin(metadata=[cluster(), cluster(topic_md(CHANGELOG.name, 2))],
                      create=[{CHANGELOG.name: kexc(KafkaError.TOPIC_ALREADY_EXISTS)}])
    with pytest.raises(BrokerError, match="has 2 partition.s. but the topology needs 3"):
        ensure_internal_topics(admin, [CHANGELOG])


def test_creation_retries_a_transient_refusal_and_waits_for_leaders():
    """A timed-out creation is asked again (only for the topics not settled); new topics are waited for until
    every partition has a leader."""
    admin = FakeAdmin(
        metadata=[cluster(), cluster(topic_md(REPART.name, 3, leaderless=(1,))), cluster(topic_md(REPART.name, 3)),
                  cluster(topic_md(REPART.name, 3), topic_md(CHANGELOG.name, 1)),
                  cluster(topic_md(REPART.name, 3), topic_md(CHANGELOG.name, 3, leaderless=(0, 1, 2))),
                  cluster(topic_md(REPART.name, 3), topic_md(CHANGELOG.name, 3))],
        create=[{CHANGELOG.name: kexc(KafkaError.REQUEST_TIMED_OUT), REPART.name: None},
                {CHANGELOG.name: kexc(KafkaError.NOT_CONTROLLER)}, {CHANGELOG.name: None}])
    assert sorted(ensure_internal_topics(admin, [CHANGELOG, REPART])) == sorted([CHANGELOG.name, REPART.name])
    assert admin.created == [[CHANGELOG.name, REPART.name], [CHANGELOG.name], [CHANGELOG.name]]
    assert admin.calls["list_topics"] == 6 and admin.calls["describe_configs"] == 0


def test_a_creation_that_timed_out_but_happened_counts_as_existing():
    admin = FakeAdmin(metadata=[cluster(), cluster(topic_md(CHANGELOG.name, 3))],
                      create=[{CHANGELOG.name: kexc(KafkaError._TIMED_OUT)},
                              {CHANGELOG.name: kexc(KafkaError.TOPIC_ALREADY_EXISTS)}],
                      configs=[{CHANGELOG.name: {"cleanup.policy": "compact"}}])
    assert ensure_internal_topics(admin, [CHANGELOG]) == []
    assert admin.calls["describe_configs"] == 1


def test_a_refused_creation_fails_at_once():
    admin = FakeAdmin(metadata=[cluster()],
                      create=[{CHANGELOG.name: kexc(KafkaError.TOPIC_AUTHORIZATION_FAILED)}])
    with pytest.raises(BrokerError, match=r"refused to create topic\(s\) 'app-s-changelog' .*ACLs"):
        ensure_internal_topics(admin, [CHANGELOG])
    assert admin.calls["create_topics"] == 1


def test_a_refused_metadata_request_fails_at_once():
    admin = FakeAdmin(metadata=[kexc(KafkaError.CLUSTER_AUTHORIZATION_FAILED)])
    with pytest.raises(BrokerError, match="Kafka at fake:9092 refused to answer a metadata request"):
        ensure_internal_topics(admin, [CHANGELOG])
    assert admin.calls["list_topics"] == 1


def test_a_refused_config_read_fails_at_once():
    admin = FakeAdmin(metadata=[cluster(topic_md(CHANGELOG.name, 3))],
                      configs=[{CHANGELOG.name: kexc(KafkaError.TOPIC_AUTHORIZATION_FAILED)}])
    with pytest.raises(BrokerError, match="could not read the configuration of topic 'app-s-changelog'"):
        ensure_internal_topics(admin, [CHANGELOG])
    assert admin.calls["describe_configs"] == 1


def test_a_topic_whose_leaders_never_come_fails_after_the_deadline_naming_them():
    admin = FakeAdmin(metadata=[cluster(), cluster(topic_md(CHANGELOG.name, 3, leaderless=(2,)))],
                      create=[{}])
    started = time.monotonic()
    with pytest.raises(RetriesExhausted) as info:
        ensure_internal_topics(admin, [CHANGELOG], timeout_s=0.3)
    assert time.monotonic() - started < 2
    msg = str(info.value)
    assert "waiting for Kafka at fake:9092 to list topic(s) 'app-s-changelog' with their partitions and a " \
           "leader for each" in msg
    assert "the last check found topic 'app-s-changelog' without a leader for partition(s) 2" in msg


def test_a_metadata_request_failing_transiently_for_too_long_names_the_last_answer():
    admin = FakeAdmin(metadata=[kexc(KafkaError.LEADER_NOT_AVAILABLE)])
    with pytest.raises(RetriesExhausted, match="to answer a metadata request .*LEADER_NOT_AVAILABLE"):
        ensure_internal_topics(admin, [CHANGELOG], timeout_s=0.2)
    assert admin.calls["list_topics"] > 2


def test_source_topics_being_created_are_waited_for():
    src = "events"
    admin = FakeAdmin(metadata=[
        kexc(KafkaError._TRANSPORT),
        cluster(topic_md(src, 0, error=KafkaError(KafkaError.LEADER_NOT_AVAILABLE))),
        cluster(topic_md(src, 0)), cluster(topic_md(src, 4, leaderless=(3,)))])
    assert validate_source_topics(admin, [src]) == {src: 4}          # leaders are the consumer's business
    assert admin.calls["list_topics"] == 4


def test_a_missing_source_topic_still_fails_at_once():
    admin = FakeAdmin(metadata=[cluster(topic_md("other", 1))])
    with pytest.raises(BrokerError, match="source topic.s. 'events' do not exist .*--create-topics"):
        validate_source_topics(admin, ["events"])
    assert admin.calls["list_topics"] == 1


def test_a_source_topic_not_authorized_fails_at_once():
    admin = FakeAdmin(metadata=[cluster(topic_md("events", 0, error=KafkaError(DENIED)))])
    with pytest.raises(BrokerError, match="reports topic 'events' as TOPIC_AUTHORIZATION_FAILED"):
        validate_source_topics(admin, ["events"])
    assert admin.calls["list_topics"] == 1


def test_create_topics_waits_for_a_topic_another_instance_created():
    admin = FakeAdmin(metadata=[cluster(), cluster(), cluster(topic_md("events", 2))],
                      create=[{"events": kexc(KafkaError.TOPIC_ALREADY_EXISTS)}])
    assert create_topics(admin, ["events"], 2) == []
    assert admin.calls["list_topics"] == 3


# ---- the definition check (runtime/changelog/definitions.py)

class FakeConsumer:
    def __init__(self, *, metadata, watermarks=(), messages=((),)):
        self.metadata = list(metadata)
        self.watermarks = list(watermarks)
        self.messages = list(messages)
        self.calls = {"list_topics": 0, "get_watermark_offsets": 0}
        self.topics_asked: list = []
        self.assigned = None
        self.closed = False

    @staticmethod
    def _take(q):
        answer = q.pop(0) if len(q) > 1 else q[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def list_topics(self, topic=None, timeout=-1):
        self.calls["list_topics"] += 1
        self.topics_asked.append(topic)
        return self._take(self.metadata)

    def get_watermark_offsets(self, tp, timeout=None, cached=False):
        self.calls["get_watermark_offsets"] += 1
        assert not cached
        return self._take(self.watermarks)

    def assign(self, tps):
        self.assigned = list(tps)

    def consume(self, n, timeout):
        return self._take(self.messages) if self.messages else []

    def close(self):
        self.closed = True


def store(changelog: str):
    return SimpleNamespace(changelog=changelog, name=changelog)


class Msg:
    def __init__(self, topic, partition, error=None):
        self._t, self._p, self._e = topic, partition, error

    def topic(self):
        return self._t

    def partition(self):
        return self._p

    def error(self):
        return self._e


def test_definition_check_retries_not_leader_on_a_changelog_just_created():
    """The symptom of issue 15: a changelog another instance has just created, its leader not elected."""
    c = FakeConsumer(metadata=[cluster(topic_md("app-s-changelog", 2))],
                     watermarks=[kexc(NOT_LEADER), kexc(KafkaError.LEADER_NOT_AVAILABLE), (0, 0)])
    assert definitions._check(c, [store("app-s-changelog")], timeout_s=5, deadline_s=5) == 0
    assert c.calls["get_watermark_offsets"] == 4 and c.assigned is None
    assert c.topics_asked == [None, "app-s-changelog", "app-s-changelog"]   # a retry refreshes the leaders first


def test_definition_check_waits_out_a_changelog_listed_with_a_transient_error():
    c = FakeConsumer(metadata=[kexc(KafkaError._TIMED_OUT),
                               cluster(topic_md("app-s-changelog", 1, error=KafkaError(KafkaError.LEADER_NOT_AVAILABLE))),
                               cluster(topic_md("app-s-changelog", 1))],
                     watermarks=[(0, 0)])
    assert definitions._check(c, [store("app-s-changelog")], timeout_s=5, deadline_s=5) == 0
    assert c.calls == {"list_topics": 3, "get_watermark_offsets": 1}


def test_definition_check_skips_changelogs_that_do_not_exist_yet():
    c = FakeConsumer(metadata=[cluster(topic_md("app-s-changelog", 1, error=KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART)))])
    assert definitions._check(c, [store("app-s-changelog"), store("app-t-changelog")], 5, 5) == 0
    assert c.calls == {"list_topics": 1, "get_watermark_offsets": 0}


def test_definition_check_reads_past_a_transient_fetch_error():
    c = FakeConsumer(metadata=[cluster(topic_md("app-s-changelog", 1))], watermarks=[(0, 10)],
                     messages=[[Msg("app-s-changelog", 0, KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))],
                               [Msg("app-s-changelog", 0, KafkaError(KafkaError._PARTITION_EOF))]])
    assert definitions._check(c, [store("app-s-changelog")], 5, 5) == 0
    assert [(tp.topic, tp.partition, tp.offset) for tp in c.assigned] == [("app-s-changelog", 0, 0)]


def test_definition_check_fails_at_once_on_a_non_retriable_error(monkeypatch):
    fake = FakeConsumer(metadata=[cluster(topic_md("app-s-changelog", 1))], watermarks=[kexc(DENIED)])
    monkeypatch.setattr(definitions, "Consumer", lambda conf: fake)
    with pytest.raises(BrokerError, match="cannot read the app's changelogs to check their store definitions: "
                                          "test error 29"):
        definitions.check_changelog_definitions({"bootstrap.servers": "fake:9092"}, [store("app-s-changelog")])
    assert fake.calls["get_watermark_offsets"] == 1 and fake.closed


def test_definition_check_gives_up_after_its_deadline(monkeypatch):
    fake = FakeConsumer(metadata=[cluster(topic_md("app-s-changelog", 1))], watermarks=[kexc(NOT_LEADER)])
    monkeypatch.setattr(definitions, "Consumer", lambda conf: fake)
    with pytest.raises(RetriesExhausted, match="waiting for Kafka at fake:9092 to report the offsets of changelog "
                                               "'app-s-changelog' partition 0 .*NOT_LEADER_FOR_PARTITION"):
        definitions.check_changelog_definitions({"bootstrap.servers": "fake:9092"}, [store("app-s-changelog")],
                                                deadline_s=0.2)
    assert fake.closed


# ---- the instances topic (runtime/serve/directory.py)

class FakeProducer:
    def __init__(self, conf):
        self.produced = []

    def produce(self, topic, value, key):
        self.produced.append((topic, key, value))

    def poll(self, t):
        return 0

    def flush(self, t):
        return 0


def make_directory(monkeypatch, metadata):
    fake = FakeConsumer(metadata=metadata, messages=[[]])
    monkeypatch.setattr(directory, "Consumer", lambda conf: fake)
    monkeypatch.setattr(directory, "Producer", FakeProducer)
    return directory.InstanceDirectory("fake:9092", "app", "p1", "http://h:1", deadline_s=0.5), fake


def test_directory_waits_for_the_instances_topic_to_be_listed(monkeypatch):
    d, fake = make_directory(monkeypatch, [
        kexc(KafkaError._TIMED_OUT),
        cluster(topic_md("app-instances", 0, error=KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))),
        cluster(topic_md("app-instances", 1, error=KafkaError(KafkaError.LEADER_NOT_AVAILABLE))),
        cluster(topic_md("app-instances", 1))])
    d.start()
    try:
        assert fake.calls["list_topics"] == 4
        assert [(tp.topic, tp.partition) for tp in fake.assigned] == [("app-instances", 0)]
    finally:
        d.close()


def test_directory_fails_at_once_when_not_authorized(monkeypatch):
    d, fake = make_directory(monkeypatch, [cluster(topic_md("app-instances", 0, error=KafkaError(DENIED)))])
    with pytest.raises(BrokerError, match="cannot read the metadata of topic 'app-instances'"):
        d.start()
    assert fake.calls["list_topics"] == 1 and fake.assigned is None


def test_directory_gives_up_after_its_deadline(monkeypatch):
    d, fake = make_directory(monkeypatch, [cluster()])
    with pytest.raises(RetriesExhausted, match="list the partitions of topic 'app-instances'.*not in the metadata"):
        d.start()


def test_admin_module_keeps_its_private_helpers_for_callers():
    # names other code may still import
    assert admin_mod._kafka_error is retry.kafka_error and admin_mod._describe_exc is retry.describe


# ------------------------------------------------------------------------------------------ 3. broker

@pytest.mark.broker
def test_concurrent_creators_of_the_same_internal_topics_all_go_on(kafka_bootstrap):
    """Six admin clients ensure the same internal topics at the same instant: each topic is created by one of
    them, the others find it or get TOPIC_ALREADY_EXISTS and validate it; nobody fails."""
    import threading
    import uuid

    from streamproc.kafka import make_admin

    app = f"race-{uuid.uuid4().hex[:8]}"
    specs = [TopicSpec(f"{app}-s-changelog", 4, {"cleanup.policy": "compact"}),
             TopicSpec(f"{app}-w-changelog", 4, {"cleanup.policy": "compact,delete", "retention.ms": "90000000"}),
             TopicSpec(f"{app}-r-repartition", 4, {"cleanup.policy": "delete", "retention.ms": "-1"})]
    admins = [make_admin(kafka_bootstrap) for _ in range(6)]
    for a in admins:
        a.list_topics(timeout=10)                      # connected: the barrier releases requests, not handshakes
    barrier = threading.Barrier(len(admins))
    results: list = [None] * len(admins)

    def go(i):
        barrier.wait()
        try:
            results[i] = ensure_internal_topics(admins[i], specs, timeout_s=20)
        except BaseException as e:  # noqa: BLE001
            results[i] = e

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(admins))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    assert sorted(n for r in results for n in r) == sorted(s.name for s in specs)
    assert validate_source_topics(admins[0], [s.name for s in specs]) == {s.name: 4 for s in specs}


TOPOLOGY = os.path.join(HERE, "topologies", "startup_race.py")
PARTITIONS = 6
INSTANCES = 3
BAD = re.compile(r"Traceback|^\s*error:|crashed", re.MULTILINE)
ASSIGNED = re.compile(r"assigned [1-9]\d* partition")
CREATED = re.compile(r"created internal topic\(s\): (.*)")


def _records(n: int):
    """``n`` events spread over 3 windows: ``(key, value, ts)``."""
    t0 = 1_700_000_000_000
    return [(f"k{i}", {"user": f"u{i % 17}", "region": f"r{i % 5}", "x": i % 7}, t0 + i * 100) for i in range(n)]


def _expected(records):
    windows, totals = {}, {}
    for _, v, ts in records:
        w = windows.setdefault((v["user"], ts - ts % 10_000), [0, 0])
        w[0] += 1
        w[1] += v["x"]
        t = totals.setdefault(v["region"], [0, 0])
        t[0] += 1
        t[1] += v["x"]
    return {k: tuple(v) for k, v in windows.items()}, {k: tuple(v) for k, v in totals.items()}


class Latest:
    """Follows an output topic from the start; the newest value per key (per window)."""

    def __init__(self, bootstrap: str, topic: str):
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{topic}",
                           "enable.auto.commit": False, "isolation.level": "read_committed"})
        self.c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        self.values: dict = {}

    def poll(self) -> dict:
        import orjson

        for m in self.c.consume(10_000, 0.2):
            if m.error() is None:
                v = orjson.loads(m.value())
                self.values[(m.key().decode(), v.get("window_start"))] = (v["n"], v["total"])
        return self.values

    def close(self):
        self.c.close()


def _start(bootstrap: str, app: str, tmp_path, workers: int) -> list[tuple[subprocess.Popen, str]]:
    """``INSTANCES`` ``streamproc run`` processes of ``app``, started back to back (within milliseconds)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), COLUMNS="300",
               STARTUP_RACE_APP=app)
    cmds, logs = [], []
    for i in range(INSTANCES):
        cmds.append([sys.executable, "-m", "streamproc", "run", TOPOLOGY, "--bootstrap-servers", bootstrap,
                     "--state-dir", str(tmp_path / f"{app}-{i}"), "--workers", str(workers), "--log-format", "text",
                     "--config", "consumer.session.timeout.ms=6000", "--config", "consumer.heartbeat.interval.ms=500"])
        logs.append(open(tmp_path / f"{app}-{i}.log", "wb"))
    started, procs = [], []
    for cmd, log in zip(cmds, logs):
        started.append(time.monotonic())
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                      cwd=ROOT))
    for log in logs:
        log.close()
    assert started[-1] - started[0] < 0.5, f"instances started {started[-1] - started[0]:.3f} s apart"
    return [(p, str(tmp_path / f"{app}-{i}.log")) for i, p in enumerate(procs)]


def _text(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def _round(bootstrap: str, tmp_path, workers: int, n: int = 400) -> float:
    from streamproc import serdes

    app = h.unique("race")
    h.create(bootstrap, [f"{app}-in", f"{app}-windows", f"{app}-totals"], PARTITIONS)
    records = _records(n)
    h.produce(bootstrap, f"{app}-in", records, key_serde=serdes.String(), value_serde=serdes.Json())
    want_windows, want_totals = _expected(records)
    want_windows = {(k, w): v for (k, w), v in want_windows.items()}
    want_totals = {(k, None): v for k, v in want_totals.items()}

    t0 = time.monotonic()
    procs = _start(bootstrap, app, tmp_path, workers)
    outs = {"windows": Latest(bootstrap, f"{app}-windows"), "totals": Latest(bootstrap, f"{app}-totals")}
    try:
        deadline = time.monotonic() + 90
        while True:
            for p, log in procs:
                if p.poll() is not None:
                    raise AssertionError(f"an instance of {app} exited with {p.returncode} while starting:\n"
                                         f"{_text(log)[-4000:]}")
            got_w, got_t = outs["windows"].poll(), outs["totals"].poll()
            joined = all(ASSIGNED.search(_text(log)) for _, log in procs)
            if got_w == want_windows and got_t == want_totals and joined:
                break
            if time.monotonic() > deadline:
                missing = {k: (want_windows.get(k), got_w.get(k)) for k in set(want_windows) | set(got_w)
                           if want_windows.get(k) != got_w.get(k)}
                raise AssertionError(f"{app}: not every record processed within 90 s (joined: {joined}); "
                                     f"window differences {dict(list(missing.items())[:5])}, totals {got_t} != "
                                     f"{want_totals}")
        took = time.monotonic() - t0
        for p, _ in procs:
            p.send_signal(signal.SIGTERM)
        for p, log in procs:
            try:
                code = p.wait(60)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"an instance of {app} did not stop within 60 s of SIGTERM") from None
            text = _text(log)
            assert code == 0, f"exit {code} on SIGTERM:\n{text[-4000:]}"
            assert not BAD.search(text), text[-4000:]
        # each internal topic was created by exactly one instance; the others found it or lost the race to it
        creators = [t for _, log in procs for line in CREATED.findall(_text(log)) for t in line.split(", ")]
        internal = {f"{app}-{n}" for n in ("user-windows-changelog", "region-totals-changelog",
                                           "by-user-repartition", "by-region-repartition")}
        assert sorted(creators) == sorted(internal), creators
        return took
    finally:
        for o in outs.values():
            o.close()
        for p, _ in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)


@pytest.mark.broker
def test_instances_of_a_new_app_started_together_all_come_up(kafka, tmp_path):
    """3 rounds of 3 instances (fresh app ids), then 3 instances with 2 workers each: every instance comes up
    (no start-up error on the concurrently created internal topics), gets partitions, the outputs hold every
    input record, and each exits 0 on SIGTERM."""
    bootstrap, _kind = kafka
    for workers in (1, 1, 1, 2):
        _round(bootstrap, tmp_path, workers)


# ---- end offsets read when a worker starts a restore or its global tables (runtime/changelog/restore.py, globals.py)

def test_restore_end_offset_retries_a_leader_being_elected(monkeypatch):
    from streamproc.kafka import retry
    from streamproc.runtime.changelog.restore import Restorer

    monkeypatch.setattr(retry, "BACKOFF_S", 0.001)
    r = Restorer({"bootstrap.servers": "fake:9092", "group.id": "g"})
    r._consumer = FakeConsumer(metadata=[None], watermarks=[kexc(NOT_LEADER), kexc(KafkaError.LEADER_NOT_AVAILABLE),
                                                             (3, 17)])
    assert r._watermarks("app-s-changelog", 0) == (3, 17)
    assert r._consumer.calls["get_watermark_offsets"] == 3
    r._consumer = FakeConsumer(metadata=[None], watermarks=[kexc(DENIED)])
    with pytest.raises(BrokerError, match=r"changelog app-s-changelog\[0\]"):
        r._watermarks("app-s-changelog", 0)
    assert r._consumer.calls["get_watermark_offsets"] == 1            # not retriable: at once


def test_global_tables_metadata_retries_a_transient_error(monkeypatch):
    from streamproc.kafka import retry
    from streamproc.runtime.changelog import globals as global_tables

    monkeypatch.setattr(retry, "BACKOFF_S", 0.001)
    fake = FakeConsumer(metadata=[kexc(KafkaError._TIMED_OUT), cluster(topic_md("prices", 2))])
    monkeypatch.setattr(global_tables, "Consumer", lambda conf: fake)
    g = global_tables.GlobalTables.__new__(global_tables.GlobalTables)
    g._conf = {}
    g._by_topic = {"prices": SimpleNamespace(name="prices", offsets=lambda: {})}
    c = g._open()
    assert c is fake and fake.calls["list_topics"] == 2
    assert sorted(tp.partition for tp in fake.assigned) == [0, 1]
