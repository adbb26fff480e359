"""Bringing a database to the newest schema, and telling whether it is there.

Alembic runs from Python with its scripts inside the package, so an installed corral
needs no alembic.ini and no working directory of its own.  It is imported only to
migrate: every command's start checks the schema (`current_revision`), and importing
alembic for that cost a tenth of a second each time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect
from sqlalchemy.engine import Connection

import corral.migrations

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(corral.migrations.__file__).parent
#: The newest migration's revision: what every command checks the database against
#: before it works.  Written here, not read from the scripts, because reading them
#: means compiling every migration (a few ms on each start, every CLI command and
#: a daemon's first cycle); a test holds it to the scripts' own head.
HEAD = "0010"
#: Serialises concurrent `corral db init` runs on one PostgreSQL database.
_PG_LOCK = 0x636F7272616C  # "corral"


def _config(conn: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if conn is not None:
        cfg.attributes["connection"] = conn
    return cfg


def head_revision() -> str:
    return HEAD


def scripts_head() -> str | None:
    """The head revision the migration scripts declare (what `HEAD` must say)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(conn: Connection) -> str | None:
    """The revision the database is at; None when it was never migrated.  Read from
    alembic's own table as alembic reads it (one row: corral's migrations never branch)."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    found = [str(v) for v in conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars()]
    if len(found) > 1:
        raise RuntimeError(f"the store's schema is at several revisions at once ({', '.join(found)}): "
                           "it was migrated by something other than `corral db init`")
    return found[0] if found else None


def upgrade(conn: Connection) -> None:
    """Migrate to head on `conn` (inside the caller's transaction); a no-op at head."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK:d})")
    from alembic import command

    command.upgrade(_config(conn), "head")
