"""Log output of ``streamproc run``: one format per stream, never mixed.

The supervisor owns stderr. Worker processes do not write logs themselves: their records go
through the supervisor's queue (:func:`worker_logging`) and the supervisor writes them with its
own handler, so every line on stderr has the same format (``text`` or ``json``), and a live
status panel on a terminal is never torn by a worker's line.

``text``: ``HH:MM:SS LEVEL logger: message``. ``json``: one object per line, ``{"ts", "level",
"logger", "msg"}`` (plus ``"worker"`` for a worker's record), encoded with orjson so quotes and
newlines in messages stay valid JSON.
"""
from __future__ import annotations

import logging
import logging.handlers
import sys
import time

import orjson

FORMATS = ("text", "json")
_current: str | None = None         # the format configure() set (None: not configured)


def current_format() -> str | None:
    """The format :func:`configure` chose for this process's stderr (None before it ran)."""
    return _current


def json_line(level: str, message: str, logger: str = "streamproc") -> str:
    """One stderr line in the json format, for messages printed outside logging (CLI errors)."""
    return JsonFormatter().format(logging.LogRecord(logger, getattr(logging, level, logging.INFO), "", 0,
                                                    message, None, None))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
               + f".{int(record.msecs):03d}Z",
               "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        worker = getattr(record, "worker", None)
        if worker is not None:
            out["worker"] = worker
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (a live display replaces it while it runs)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def default_format() -> str:
    """``text`` on a terminal, ``json`` otherwise."""
    return "text" if sys.stderr.isatty() else "json"


def configure(level: int | str = logging.INFO, fmt: str | None = None) -> str:
    """Send the root logger to stderr in one format (``text`` | ``json``; default by terminal). Returns it."""
    global _current
    fmt = fmt or default_format()
    if fmt not in FORMATS:
        raise ValueError(f"log format must be 'text' or 'json', got {fmt!r}")
    _current = fmt
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("streamproc").setLevel(level)
    return fmt


def worker_logging(queue, level: int, worker: int) -> None:
    """In a worker process: every record goes to the supervisor through ``queue`` (see the module doc)."""
    handler = _WorkerQueueHandler(queue, worker)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)


class _WorkerQueueHandler(logging.handlers.QueueHandler):
    def __init__(self, queue, worker: int):
        super().__init__(queue)
        self.worker = worker

    def prepare(self, record):
        record = super().prepare(record)       # message formatted, args and exc_info dropped (picklable)
        record.worker = self.worker
        return record

    def enqueue(self, record):
        try:
            self.queue.put_nowait(("log", self.worker, record))
        except Exception:  # noqa: BLE001 - a full or closed queue must never stop a worker
            pass
