"""The layout of a state directory: the one module that builds its paths, and the records kept in it.

::

    <state-dir>/
      <app-id>/                        app_dir: everything of one application on this machine
        .lock                          instance lock (flock) held by `run` and `reset` (lock_path)
        process-id                     this instance's id: group.instance.id / transactional.id (process_id_path)
        cluster.json                   the Kafka cluster and app id this state was built against (cluster_record_path)
        RESET-INCOMPLETE               a `streamproc reset` started here and has not finished (reset_marker_path)
        <subtopology>_<partition>/     task_dir: one task's stores
          LOCK                         the task's lock (flock, TASK_LOCK)
          rocksdb/                     RocksDB's own files (``rocksdb.DB_DIR``)
        global-<worker>/               a worker's global tables (global_dir)
        queries/<task>-<pid>/          RocksDB secondary instances of HTTP queries (query_dir)
      dev-broker/                      `run` without --bootstrap-servers (memory-only development broker):
        <app-id>/ ...                  the same layout, apart from every cluster's, started afresh each run

Besides the local marker, an unfinished reset is marked in Kafka by the topic
``<app-id>-reset-incomplete`` (:func:`reset_marker_topic`), so an instance on another machine
(with a state directory of its own) refuses to start too.

The cluster record binds local state to one cluster: ``run``, ``replay`` and ``state`` compare it
with the cluster they talk to (:func:`bind_cluster`) and refuse foreign state.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time

from ..errors import StateError

log = logging.getLogger("streamproc.state")

#: Name of the task lock file inside a task directory (``state.lock.TaskDirLock``).
TASK_LOCK = "LOCK"
#: The instance lock in the app directory (``runtime.instance.load.StateDirLock``).
LOCK_FILE = ".lock"
PROCESS_ID_FILE = "process-id"
CLUSTER_FILE = "cluster.json"
RESET_MARKER_FILE = "RESET-INCOMPLETE"
QUERIES_DIR = "queries"
#: Where `run` without --bootstrap-servers keeps its state, under --state-dir.
DEV_BROKER_DIR = "dev-broker"

_TASK_DIR = re.compile(r"^(\d+)_(\d+)$")
_GLOBAL_DIR = re.compile(r"^global-(\d+)$")


# ------------------------------------------------------------------------------------------ paths

def app_dir(state_dir: str, app_id: str) -> str:
    """``<state-dir>/<app-id>`` (absolute)."""
    return os.path.join(os.path.abspath(os.fspath(state_dir)), app_id)


def task_id(subtopology_id: int, partition: int) -> str:
    return f"{subtopology_id}_{partition}"


def task_dir(state_dir: str, app_id: str, task: str) -> str:
    """``<state-dir>/<app-id>/<task-id>``: where a task's backend lives."""
    return os.path.join(app_dir(state_dir, app_id), task)


def global_dir(state_dir: str, app_id: str, worker: int) -> str:
    """``<state-dir>/<app-id>/global-<worker>``: a worker's global tables."""
    return os.path.join(app_dir(state_dir, app_id), f"global-{worker}")


def query_dir(state_dir: str, app_id: str, task: str, pid: int) -> str:
    """``<state-dir>/<app-id>/queries/<task-id>-<pid>``: a query server's RocksDB secondary instance."""
    return os.path.join(app_dir(state_dir, app_id), QUERIES_DIR, f"{task}-{pid}")


def task_lock_path(task_directory: str) -> str:
    return os.path.join(os.path.abspath(os.fspath(task_directory)), TASK_LOCK)


def lock_path(state_dir: str, app_id: str) -> str:
    return os.path.join(app_dir(state_dir, app_id), LOCK_FILE)


def process_id_path(state_dir: str, app_id: str) -> str:
    return os.path.join(app_dir(state_dir, app_id), PROCESS_ID_FILE)


def cluster_record_path(state_dir: str, app_id: str) -> str:
    return os.path.join(app_dir(state_dir, app_id), CLUSTER_FILE)


def reset_marker_path(state_dir: str, app_id: str) -> str:
    return os.path.join(app_dir(state_dir, app_id), RESET_MARKER_FILE)


def dev_broker_state_dir(state_dir: str) -> str:
    """The state directory of runs on the development broker: ``<state-dir>/dev-broker``."""
    return os.path.join(os.fspath(state_dir), DEV_BROKER_DIR)


def reset_marker_topic(app_id: str) -> str:
    """The Kafka half of the reset marker: this topic exists while a reset of ``app_id`` is unfinished."""
    return f"{app_id}-reset-incomplete"


def ensure_app_dir(state_dir: str, app_id: str) -> str:
    d = app_dir(state_dir, app_id)
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as e:
        raise StateError(f"cannot create the state directory {d!r}: {e.strerror}. "
                         f"Pick a writable --state-dir.") from None
    return d


# ------------------------------------------------------------------------------------------ listing

def _dirs(state_dir: str, app_id: str, pattern) -> list[tuple[re.Match, str]]:
    root = app_dir(state_dir, app_id)
    out = []
    if os.path.isdir(root):
        for name in sorted(os.listdir(root)):
            m = pattern.match(name)
            if m and os.path.isdir(os.path.join(root, name)):
                out.append((m, os.path.join(root, name)))
    return out


def task_dirs(state_dir: str, app_id: str) -> list[tuple[int, int, str]]:
    """``(sub-topology id, partition, path)`` of the local task directories."""
    return [(int(m.group(1)), int(m.group(2)), path) for m, path in _dirs(state_dir, app_id, _TASK_DIR)]


def global_dirs(state_dir: str, app_id: str) -> list[tuple[None, int, str]]:
    """``(None, worker, path)`` of the workers' global-table directories."""
    return [(None, int(m.group(1)), path) for m, path in _dirs(state_dir, app_id, _GLOBAL_DIR)]


def state_dirs(state_dir: str, app_id: str) -> list[str]:
    """Every directory holding state of ``app_id`` here: tasks, global tables, query secondaries."""
    out = [p for *_, p in task_dirs(state_dir, app_id) + global_dirs(state_dir, app_id)]
    q = os.path.join(app_dir(state_dir, app_id), QUERIES_DIR)
    if os.path.isdir(q):
        out.append(q)
    return out


def has_state(state_dir: str, app_id: str) -> bool:
    """Does the app directory hold any task or global-table state?"""
    return bool(task_dirs(state_dir, app_id) or global_dirs(state_dir, app_id))


# ------------------------------------------------------------------------------------------ records

def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader (or a crash) sees the old file or the new one, whole."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise StateError(f"{path} is not a record streamproc wrote (unreadable JSON); delete it if you know "
                         f"which cluster this state belongs to, or delete the state directory")
    return data


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_cluster_record(state_dir: str, app_id: str) -> dict | None:
    """``{"cluster_id", "app_id", "bootstrap_servers", "recorded_at"}`` or None."""
    return _read_json(cluster_record_path(state_dir, app_id))


def write_cluster_record(state_dir: str, app_id: str, cluster_id: str | None, bootstrap: str) -> None:
    ensure_app_dir(state_dir, app_id)
    write_atomic(cluster_record_path(state_dir, app_id), json.dumps(
        {"cluster_id": cluster_id, "app_id": app_id, "bootstrap_servers": bootstrap, "recorded_at": _now()},
        indent=1) + "\n")


def cluster_mismatch(state_dir: str, app_id: str, cluster_id: str | None, bootstrap: str,
                     topology: str = "<topology>", verb: str = "run the app") -> str | None:
    """Why the state of ``app_id`` under ``state_dir`` must not be used with cluster ``cluster_id``
    (one paragraph), or None. Only a directory that holds state can be foreign."""
    rec = read_cluster_record(state_dir, app_id)
    if rec is None or not has_state(state_dir, app_id):
        return None
    d = app_dir(state_dir, app_id)
    how = (f"To {verb} on cluster {cluster_id!r}, give it a state directory of its own (--state-dir elsewhere); to "
           f"discard this state, run `streamproc reset {topology} --local-only --state-dir {state_dir}` (or "
           f"delete {d}); to keep using it, point --bootstrap-servers at the cluster it was built against.")
    if rec.get("app_id") not in (None, app_id):
        return (f"state directory {d} was built for app id {rec.get('app_id')!r}, not {app_id!r} "
                f"(it was copied or renamed): streamproc never restores one application's state into another. "
                + how)
    have = rec.get("cluster_id")
    if have is None or cluster_id is None or have == cluster_id:
        return None
    was = rec.get("bootstrap_servers")
    return (f"state directory {d} was built against Kafka cluster {have!r} (app {app_id!r}"
            f"{', via ' + was if was else ''}), but {bootstrap} is cluster {cluster_id!r}: streamproc never "
            f"restores one cluster's state into another (its changelogs and offsets are not there). " + how)


def bind_cluster(state_dir: str, app_id: str, cluster_id: str | None, bootstrap: str,
                 topology: str = "<topology>", *, record: bool = True, verb: str = "run the app") -> None:
    """Refuse (``StateError``) if the state here was built against another cluster or app; otherwise
    (``record``) record ``cluster_id`` when the directory has no record yet, or holds no state to protect."""
    why = cluster_mismatch(state_dir, app_id, cluster_id, bootstrap, topology, verb)
    if why:
        raise StateError(why)
    if not record:
        return
    rec = read_cluster_record(state_dir, app_id)
    if rec is None and has_state(state_dir, app_id):
        log.info("state directory %s has no cluster record (written by an older streamproc): recording that it "
                 "belongs to cluster %r", app_dir(state_dir, app_id), cluster_id)
    if rec is None or (rec.get("cluster_id") != cluster_id or rec.get("app_id") != app_id):
        write_cluster_record(state_dir, app_id, cluster_id, bootstrap)


# ------------------------------------------------------------------------------------------ reset marker

def read_reset_marker(state_dir: str, app_id: str) -> dict | None:
    try:
        return _read_json(reset_marker_path(state_dir, app_id))
    except StateError:
        return {}           # a marker torn by a crash is still a marker


def write_reset_marker(state_dir: str, app_id: str, info: dict) -> None:
    ensure_app_dir(state_dir, app_id)
    write_atomic(reset_marker_path(state_dir, app_id), json.dumps({**info, "started_at": _now()}, indent=1) + "\n")


def remove_reset_marker(state_dir: str, app_id: str) -> None:
    try:
        os.unlink(reset_marker_path(state_dir, app_id))
    except FileNotFoundError:
        return
    _fsync_dir(app_dir(state_dir, app_id))


def reset_command(topology: str, state_dir: str, bootstrap: str | None, local_only: bool = False) -> str:
    cmd = f"streamproc reset {topology} --state-dir {state_dir}"
    if local_only:
        return cmd + " --local-only"
    return cmd + f" --bootstrap-servers {bootstrap or '<servers>'}"


def reset_incomplete_local(state_dir: str, app_id: str, topology: str = "<topology>",
                           bootstrap: str | None = None) -> str | None:
    """The refusal (one paragraph) while the local reset marker exists, else None."""
    info = read_reset_marker(state_dir, app_id)
    if info is None:
        return None
    local_only = bool(info.get("local_only"))
    servers = bootstrap or info.get("bootstrap_servers")
    started = f" started at {info['started_at']}" if info.get("started_at") else ""
    what = "its local state" if local_only else "its local state, internal topics and consumer group"
    return (f"reset incomplete: run `{reset_command(topology, state_dir, servers, local_only)}` again. "
            f"A reset of app {app_id!r}{started} did not finish, so {what} may be partly deleted "
            f"(marker {reset_marker_path(state_dir, app_id)}); running on them would give wrong results "
            f"without any error. The reset checks again and deletes what is left; then start the app.")


def reset_incomplete_kafka(app_id: str, cluster_id: str | None, state_dir: str, topology: str = "<topology>",
                           bootstrap: str | None = None) -> str:
    """The refusal (one paragraph) while the Kafka reset marker topic exists."""
    on = f" on cluster {cluster_id!r}" if cluster_id else ""
    return (f"reset incomplete: run `{reset_command(topology, state_dir, bootstrap)}` again. A reset of app "
            f"{app_id!r}{on} did not finish (topic {reset_marker_topic(app_id)!r} marks it), so the app's "
            f"internal topics and consumer group may be partly deleted; running on them would give wrong results "
            f"without any error. Finish the reset from any machine, then start the app.")


def refuse_if_reset_incomplete(state_dir: str, app_id: str, topology: str = "<topology>",
                               bootstrap: str | None = None, *, topics=None, cluster_id: str | None = None) -> None:
    """``StateError`` while a reset of ``app_id`` is unfinished: the local marker, or (``topics``: the
    names the cluster lists) the Kafka marker topic."""
    why = reset_incomplete_local(state_dir, app_id, topology, bootstrap)
    if why is None and topics is not None and reset_marker_topic(app_id) in topics:
        why = reset_incomplete_kafka(app_id, cluster_id, state_dir, topology, bootstrap)
    if why:
        raise StateError(why)


# ------------------------------------------------------------------------------------------ deleting

def remove_tree(path: str) -> None:
    """Delete a directory tree (absent: nothing to do)."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass


def clear_app_dir(state_dir: str, app_id: str, keep: tuple[str, ...] = (LOCK_FILE,)) -> None:
    """Delete everything in the app directory but the names in ``keep``."""
    root = app_dir(state_dir, app_id)
    if not os.path.isdir(root):
        return
    for name in os.listdir(root):
        if name in keep:
            continue
        p = os.path.join(root, name)
        if os.path.isdir(p) and not os.path.islink(p):
            remove_tree(p)
        else:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
