"""The policy language: what wranglers write (schema, loader) and what it means
(operators, the reference evaluator, the compiler to durable_rules)."""

from corral.policy.loader import LoadResult, PolicyError, load_paths
from corral.policy.model import Policy

__all__ = ["LoadResult", "Policy", "PolicyError", "load_paths"]
