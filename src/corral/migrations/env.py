"""Alembic environment: the store hands us an open connection; we never build an engine.

Running migrations on the caller's connection lets `corral db init` work with any URL
the store accepts (including the rewritten psycopg one) and in tests on a connection
that is already inside a transaction.
"""

from __future__ import annotations

from alembic import context

from corral.store.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
