"""Running compiled sub-topologies: tasks (broker-free) and, in submodules, the Kafka worker loop."""
from .engine.task import Task

__all__ = ["Task"]
