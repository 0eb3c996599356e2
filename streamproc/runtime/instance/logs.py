"""Log output of ``streamproc run``: one format per stream, never mixed.

The supervisor owns stderr. Worker processes do not write logs themselves: their records go
through the supervisor's queue (:func:`worker_logging`) and the supervisor writes them with its
own handler, so every line on stderr has the same format (``text`` or ``json``), and a live
status panel on a terminal is never torn by a worker's line.

``text``: ``HH:MM:SS LEVEL logger: message``. ``json``: one object per line, ``{"ts", "level",
"logger", "msg"}`` (plus ``"worker"`` for a worker's record), encoded with orjson so quotes and
newlines in messages stay valid JSON.

From the first line: ``streamproc run`` chooses the format before it writes anything (the CLI
paragraphs go through ``cli._app.say``, which follows it), and what Python itself would write to
stderr as plain text - a warning (``warnings.warn``), an exception no code caught in a thread or
in the main thread, an "exception ignored" report - goes through logging too
(:func:`route_stray_output`, in the supervisor and in every worker), so it comes out in the
stream's format.
"""
from __future__ import annotations

import logging
import logging.handlers
import sys
import threading
import time
import warnings

import orjson

FORMATS = ("text", "json")
_current: str | None = None         # the format configure() set (None: not configured)


def current_format() -> str | None:
    """The format :func:`configure` chose for this process's stderr (None before it ran)."""
    return _current


def forget_format() -> None:
    """Back to "not configured" (each CLI command starts so; ``run`` then chooses its format)."""
    global _current
    _current = None


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
    route_stray_output()
    return fmt


_stray = logging.getLogger("streamproc.python")


def route_stray_output() -> None:
    """Send what Python would print to stderr by itself through logging (see the module doc): warnings
    (logger ``py.warnings``), uncaught exceptions of threads and of the main thread, "exception ignored"."""
    if warnings.showwarning is not getattr(logging, "_showwarning", None):
        logging.captureWarnings(False)       # logging thinks it captures, but someone put another hook back
    logging.captureWarnings(True)
    if getattr(threading.excepthook, "_streamproc", False):
        return

    def thread_hook(args) -> None:
        if args.exc_type is SystemExit:
            return
        name = getattr(args.thread, "name", None) or "?"
        _stray.error("uncaught exception in thread %s", name,
                     exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

    def main_hook(exc_type, exc, tb) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            sys.__excepthook__(exc_type, exc, tb)
            return
        _stray.critical("uncaught exception", exc_info=(exc_type, exc, tb))

    def unraisable_hook(u) -> None:
        _stray.warning("%s: %r", u.err_msg or "Exception ignored in", u.object,
                       exc_info=(u.exc_type, u.exc_value, u.exc_traceback) if u.exc_type else None)

    for hook in (thread_hook, main_hook, unraisable_hook):
        hook._streamproc = True
    threading.excepthook = thread_hook
    sys.excepthook = main_hook
    sys.unraisablehook = unraisable_hook


def worker_logging(queue, level: int, worker: int) -> None:
    """In a worker process: every record goes to the supervisor through ``queue`` (see the module doc)."""
    handler = _WorkerQueueHandler(queue, worker)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    route_stray_output()


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
