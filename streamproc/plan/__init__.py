"""Validated, split and named form of a topology: what runs, where the topics and stores are."""
from .compile import compile_topology
from .model import GeneratedName, Plan, PlanNode, StoreSpec, SubTopology

__all__ = ["compile_topology", "GeneratedName", "Plan", "PlanNode", "StoreSpec", "SubTopology"]
