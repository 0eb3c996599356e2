"""``streamproc state`` (inspect local stores), ``streamproc reset`` and ``streamproc replay``."""
from __future__ import annotations

import os
import re
import shutil
from typing import Optional

import orjson
import typer

from ..errors import StateError, StreamprocError
from ._app import app, compile_file, err, guarded

_TASK_DIR = re.compile(r"^(\d+)_(\d+)$")


def _task_dirs(state_dir: str, app_id: str) -> list[tuple[int, int, str]]:
    """``(subtopology, partition, path)`` of every local task directory of the app."""
    root = os.path.join(state_dir, app_id)
    out = []
    if os.path.isdir(root):
        for name in sorted(os.listdir(root)):
            m = _TASK_DIR.match(name)
            if m and os.path.isdir(os.path.join(root, name)):
                out.append((int(m.group(1)), int(m.group(2)), os.path.join(root, name)))
    return out


def _pick_store(plan, store: Optional[str]):
    names = [s.name for s in plan.stores]
    if not names:
        raise StreamprocError(f"topology {plan.app_id!r} has no stores")
    if store is None:
        if len(names) > 1:
            raise StreamprocError(f"topology {plan.app_id!r} has several stores ({', '.join(names)}): "
                                  f"pick one with --store")
        return plan.stores[0]
    try:
        return plan.store(store)
    except KeyError:
        raise StreamprocError(f"no store named {store!r} (stores: {', '.join(names)})") from None


def _json_default(o):
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    return repr(o)


def _dump(obj) -> str:
    return orjson.dumps(obj, default=_json_default, option=orjson.OPT_NON_STR_KEYS).decode()


@app.command()
@guarded
def state(
    topology: str = typer.Argument(..., help="Topology module: path.py or path.py:name"),
    store: Optional[str] = typer.Option(None, "--store", "-s", help="Store name (optional with one store)."),
    key: Optional[str] = typer.Option(None, "--key", "-k",
                                      help="Print only this key's current value, as one JSON line."),
    state_dir: str = typer.Option("./state", "--state-dir", envvar="STREAMPROC_STATE_DIR"),
):
    """Print the contents of a local store (RocksDB state written by `streamproc run`), one JSON line per entry."""
    from ..runtime.task import Task
    from ..state.rocksdb import RocksDBBackend

    _, plan = compile_file(topology)
    spec = _pick_store(plan, store)
    st = next(s for s in plan.subtopologies if spec in s.stores)
    dirs = [d for d in _task_dirs(state_dir, plan.app_id) if d[0] == st.id]
    if not dirs:
        raise StateError(f"no local state for {plan.app_id!r} sub-topology {st.id} under {state_dir!r} "
                         f"(run the app there first, or `streamproc replay` it from the changelog)")
    windowed = spec.window is not None
    found = []
    for _, partition, path in dirs:
        backend = RocksDBBackend.for_task(path, st, read_only=True)
        try:
            snapshot = Task(st, partition, backend).operator(spec.name).snapshot()
        finally:
            backend.close()
        for skey, value in snapshot.items():
            group_key = skey[0] if windowed else skey
            if key is None or _matches(group_key, key):
                found.append((group_key, value))
    if key is not None:
        if not found:
            raise StreamprocError(f"key {key!r} is not in store {spec.name!r}")
        value = [v for _, v in found] if windowed else found[0][1]
        typer.echo(_dump(value))
        return
    for k, v in found:
        typer.echo(_dump({"key": k, "value": v}))


def _matches(group_key, text: str) -> bool:
    if group_key == text:
        return True
    try:
        return group_key == orjson.loads(text)
    except orjson.JSONDecodeError:
        return False


@app.command()
@guarded
def reset(
    topology: str = typer.Argument(..., help="Topology module: path.py or path.py:name"),
    state_dir: str = typer.Option("./state", "--state-dir", envvar="STREAMPROC_STATE_DIR"),
    bootstrap_servers: Optional[str] = typer.Option(None, "--bootstrap-servers", "-b",
                                                    envvar="STREAMPROC_BOOTSTRAP_SERVERS"),
    local_only: bool = typer.Option(False, "--local-only",
                                    help="Only delete the local state (the changelog rebuilds it)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
):
    """Start the app from scratch: delete its local state and, unless --local-only, its internal
    topics (changelogs, repartition) and consumer group, so input is reprocessed from the beginning.
    Stop every instance of the app first."""
    from ..kafka.admin import make_admin, wait_for_broker
    from ..kafka.config import admin_config
    from ..state.lock import TaskDirLock

    _, plan = compile_file(topology)
    dirs = _task_dirs(state_dir, plan.app_id)
    internal = plan.changelog_topics + plan.repartition_topics
    if not local_only and not bootstrap_servers:
        raise StreamprocError("reset deletes the app's internal topics and consumer group: give "
                              "--bootstrap-servers (or --local-only to delete only the local state)")
    what = [f"{len(dirs)} local task director{'y' if len(dirs) == 1 else 'ies'} under "
            f"{os.path.join(state_dir, plan.app_id)}"]
    if not local_only:
        what += [f"topics {', '.join(internal) or '(none)'}", f"consumer group {plan.app_id!r}"]
    if not yes and not typer.confirm(f"Delete {'; '.join(what)}?", default=False):
        raise typer.Exit(1)
    for _, _, path in dirs:
        lock = TaskDirLock(path)
        lock.acquire()          # refuses, naming the holder, while a worker runs
        lock.release()
        shutil.rmtree(path)
    if not local_only:
        wait_for_broker(admin_config(bootstrap_servers, plan.app_id), timeout_s=30)
        admin = make_admin(bootstrap_servers, plan.app_id)
        existing = set(admin.list_topics(timeout=30).topics)
        doomed = [t for t in internal if t in existing]
        for t, fut in (admin.delete_topics(doomed, operation_timeout=30).items() if doomed else []):
            try:
                fut.result(30)
            except Exception as e:  # noqa: BLE001 - reported as one line
                raise StreamprocError(f"could not delete topic {t!r}: {e}") from None
        try:
            for fut in admin.delete_consumer_groups([plan.app_id], request_timeout=30).values():
                fut.result(30)
        except Exception as e:  # noqa: BLE001
            if "GROUP_ID_NOT_FOUND" not in str(e):
                raise StreamprocError(
                    f"could not delete consumer group {plan.app_id!r} ({e}); is an instance still running?"
                ) from None
    err.print(f"reset {plan.app_id}: deleted {'; '.join(what)}")
