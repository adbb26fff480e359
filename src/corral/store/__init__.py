"""Persistence: the farm, the transition log and settings in SQLite or PostgreSQL.

The store implements the cycle's ports (`corral.ports`): its farm source, its action
sink and its transition log.  The records it exchanges are defined there and
re-exported here for the callers that only know the store.
"""

from corral.ports import ApplyReport, Done, LogEntry, Proposal, Refusal
from corral.store.store import SchemaMissing, Store, StoreError

__all__ = ["ApplyReport", "Done", "LogEntry", "Proposal", "Refusal", "SchemaMissing", "Store", "StoreError"]
