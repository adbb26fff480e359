"""Persistence: the farm, the transition log and settings in SQLite or PostgreSQL."""

from corral.store.apply import ApplyReport, Done, Proposal, Refusal
from corral.store.store import SchemaMissing, Store, StoreError, Transition

__all__ = ["ApplyReport", "Done", "Proposal", "Refusal", "SchemaMissing", "Store", "StoreError", "Transition"]
