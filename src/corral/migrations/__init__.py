"""Alembic migrations of the store, run from Python (`corral.store.migrate`), no alembic.ini."""
