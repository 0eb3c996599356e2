"""The worker's consumer group: the assignor it needs, and what it says when it gets no partitions.

* :func:`check_assignor`: only the eager ``range`` assignor keeps co-partitioned inputs together
  and exactly-once whole (see ``loop.py``, "Partitions and tasks").
* :class:`IdleWatch`: an instance with no partitions for long says so (DESIGN section 7), with the
  group's state as the broker reports it, checked by :func:`describe_group`.
"""
from __future__ import annotations

import logging
import time

from ...kafka.config import ASSIGNMENT_STRATEGY
from .errors import ConfigError

log = logging.getLogger("streamproc.worker")


def check_assignor(consumer_conf: dict) -> None:
    """Refuse an assignment strategy that would break co-partitioning or exactly-once.

    Tasks need partition N of every co-partitioned input on one member, which the eager
    ``range`` assignor guarantees; the cooperative protocol keeps partitions flowing while a
    rebalance moves others, which this runtime's revocation checkpoint does not cover."""
    strategy = str(consumer_conf.get("partition.assignment.strategy", ASSIGNMENT_STRATEGY))
    names = [x.strip() for x in strategy.split(",") if x.strip()]
    if names != [ASSIGNMENT_STRATEGY]:
        raise ConfigError(
            f"partition.assignment.strategy={strategy!r} is not supported: streamproc needs the eager "
            f"{ASSIGNMENT_STRATEGY!r} assignor, which puts partition N of co-partitioned inputs on one worker and "
            f"revokes everything before a rebalance moves it (the cooperative protocol would leave an "
            f"exactly-once hole). Remove the setting from --config.")


class IdleWatch:
    """Warns, every ``options.no_partitions_warning_s``, while worker ``worker_id`` has no tasks."""

    def __init__(self, options, app_id: str, worker_id: str):
        self._options = options
        self._app_id = app_id
        self._worker_id = worker_id
        self._since: float | None = time.monotonic()
        self._warned_at = 0.0

    def tick(self, counts: dict, consumer) -> None:
        """``counts``: the task manager's tasks by phase; ``consumer``: the worker's (for its member id)."""
        now = time.monotonic()
        if counts["running"] or counts["restoring"]:
            self._since = None
            return
        if self._since is None:
            self._since = now
            return
        limit = self._options.no_partitions_warning_s
        idle = now - self._since
        if idle < limit or now - self._warned_at < limit:
            return
        self._warned_at = now
        log.warning("worker %s has had no partitions for %.0f s; consumer group %r: %s", self._worker_id, idle,
                    self._app_id, self._group_state(consumer))

    def _group_state(self, consumer) -> str:
        """The consumer group's state as the broker reports it, checked against what this worker knows: it is
        a member of the group (``describe_group``)."""
        try:
            member_id = consumer.memberid() if consumer is not None else None
        except Exception:  # noqa: BLE001 - RuntimeError on a closed consumer
            member_id = None
        return describe_group(self._options, self._app_id, instance_id=self._worker_id, member_id=member_id)


_MEMBER_STATES = {"STABLE", "PREPARING_REBALANCING", "COMPLETING_REBALANCING", "PREPARING_REBALANCE",
                  "COMPLETING_REBALANCE"}


def describe_group(options, group: str, *, instance_id: str | None = None, member_id: str | None = None,
                   describe=None) -> str:
    """The consumer group's state and members as the broker reports them (best effort, bounded), for the
    no-partitions warning. The asking worker knows two things the answer must agree with: it is a member
    (``member_id``, given once it joined; ``instance_id``, its ``group.instance.id``), and a group whose
    state says it has members has some. An answer that contradicts them (e.g. "STABLE, 0 members" from a
    broker that does not implement DescribeGroups faithfully) is not repeated as the group's state: the
    text says the state cannot be told. ``describe(group)``: the ``ConsumerGroupDescription`` (tests)."""
    try:
        if describe is None:
            from ...kafka.admin import make_admin

            admin = make_admin(options.bootstrap_servers, group, options.client("admin"))
            desc = admin.describe_consumer_groups([group], request_timeout=5)[group].result(timeout=6)
        else:
            desc = describe(group)
    except Exception as e:  # noqa: BLE001 - a diagnostic only
        return f"the group's state cannot be told: the broker could not describe it ({e})"
    state = str(getattr(desc.state, "name", desc.state)).upper()
    members = list(desc.members or ())
    ids = {m.member_id for m in members} | {m.group_instance_id for m in members if m.group_instance_id}

    def owned(m) -> str:
        tps = getattr(getattr(m, "assignment", None), "topic_partitions", None)
        return f" with {len(tps)} partition(s)" if tps is not None else ""

    shown = sorted(f"{m.group_instance_id or m.member_id}{owned(m)}" for m in members)
    listed = f"{len(members)} member(s)" + (f" ({', '.join(shown[:8])}{', ...' if len(shown) > 8 else ''})"
                                            if shown else "")
    me = (f"this worker ({instance_id}) is a member, member id {member_id}" if member_id
          else f"this worker ({instance_id}) has not been given a member id yet (still joining)")
    wrong = None
    if member_id and not ({member_id, instance_id} & ids):
        wrong = "it does not list this worker"
    elif state in _MEMBER_STATES and not members:
        wrong = f"a group in state {state} has members"
    elif state in ("EMPTY", "DEAD") and member_id:
        wrong = f"this worker is a member of it, so it is not {state}"
    if wrong is not None:
        return (f"its state cannot be told: the broker describes it as {state} with {listed}, which cannot be "
                f"right ({wrong}; {me}). The broker does not report group membership faithfully (the "
                f"development broker does not); ask the cluster's own tools "
                f"(kafka-consumer-groups --describe --members --group {group})")
    return (f"state {state} (as the broker reports it), {listed}; {me}: every partition may be owned by other "
            f"members (a group with more members than input partitions leaves some without any), and a "
            f"restarted instance waits for its static members' session timeout")
