"""Bringing a database to the newest schema, and telling whether it is there.

Alembic runs from Python with its scripts inside the package, so an installed corral
needs no alembic.ini and no working directory of its own.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

import corral.migrations

MIGRATIONS_DIR = Path(corral.migrations.__file__).parent
#: The newest migration's revision: what every command checks the database against
#: before it works.  Written here, not read from the scripts, because reading them
#: means compiling every migration (a few ms on each start, every CLI command and
#: a daemon's first cycle); a test holds it to the scripts' own head.
HEAD = "0010"
#: Serialises concurrent `corral db init` runs on one PostgreSQL database.
_PG_LOCK = 0x636F7272616C  # "corral"


def _config(conn: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if conn is not None:
        cfg.attributes["connection"] = conn
    return cfg


def head_revision() -> str:
    return HEAD


def scripts_head() -> str | None:
    """The head revision the migration scripts declare (what `HEAD` must say)."""
    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(conn: Connection) -> str | None:
    """The revision the database is at; None when it was never migrated."""
    return MigrationContext.configure(conn).get_current_revision()


def upgrade(conn: Connection) -> None:
    """Migrate to head on `conn` (inside the caller's transaction); a no-op at head."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK:d})")
    command.upgrade(_config(conn), "head")
