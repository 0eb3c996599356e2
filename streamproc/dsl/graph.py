"""The logical graph the DSL records: nodes and edges, nothing executable."""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field

from ..kinds import NodeKind

_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(eq=False)
class Node:
    """One logical operation.

    ``kind``: a :class:`~streamproc.kinds.NodeKind` (any but the plan's repartition_sink and
    repartition_source). ``params`` holds the user's functions and specs. ``key_changed`` says
    whether records leaving this node may have a key other than the one their topic was
    partitioned by (so a stateful operator downstream needs a repartition).
    """

    id: int
    kind: NodeKind
    parents: list["Node"]
    params: dict = field(default_factory=dict)
    key_changed: bool = False
    where: str = ""            # "file.py:line" of the DSL call that made it, for messages

    @property
    def label(self) -> str:
        return f"{self.kind}-{self.id}"


def caller_location() -> str:
    """``file:line`` of the first stack frame outside the streamproc package."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            fn = frame.f_code.co_filename
            if not os.path.abspath(fn).startswith(_PKG_DIR):
                return f"{os.path.relpath(fn) if not fn.startswith('<') else fn}:{frame.f_lineno}"
            frame = frame.f_back
        return ""
    finally:
        del frame
