"""The database schema: Alembic's migrations (replenish/migrations) brought to the newest, and a database from before
migrations recognised or refused with the statements that would fix it."""

from __future__ import annotations

import functools
import re
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import OperationalError
from sqlmodel import SQLModel, create_engine

from replenish import models  # noqa: F401  (every table on SQLModel.metadata)
from replenish.constants import SCHEMA_LOCK_KEY


def create_schema(engine: Engine) -> None:
    """Bring the database to the newest schema: Alembic's migrations (replenish/migrations), run by every role at
    start-up and by `replenish db upgrade`.

    Roles start together; on PostgreSQL one migrates while the others wait on a lock. SQLite has no such lock: a
    role that loses the race finds the tables there when it looks again.
    """
    attempts = 20
    for attempt in range(attempts):
        try:
            with engine.connect() as connection:
                sqlite = connection.dialect.name == "sqlite"
                if sqlite:
                    # SQLite's own procedure for a schema change: batch mode rebuilds a table (copy, DROP, rename),
                    # and with foreign keys on (db.make_engine) the DROP of a table other rows refer to fails. Off
                    # for this connection (the pragma only takes effect outside a transaction), checked before the
                    # commit, on again after.
                    connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
                    connection.commit()
                try:
                    with connection.begin():
                        if connection.dialect.name == "postgresql":
                            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
                        if head_revision() is None or _revision(connection) != head_revision():
                            _upgrade(connection)
                            if sqlite:
                                _check_foreign_keys(connection)
                finally:
                    if sqlite:
                        connection.rollback()  # whatever a failure left open
                        connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                        connection.commit()
            return
        except OperationalError as exc:
            # Lost the race (the tables are there now), or the other process still holds SQLite's write lock.
            if not ("already exists" in str(exc) or "database is locked" in str(exc)) or attempt == attempts - 1:
                raise
            time.sleep(0.25)


def _check_foreign_keys(connection: Any) -> None:
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise RuntimeError(f"the migrated schema breaks {len(broken)} foreign keys, e.g. {tuple(broken[0])}")


# The first migration: the schema as it was when migrations came in (2026-11-26).
BASELINE_REVISION = "0001"
_VERSIONS = Path(__file__).parent / "migrations" / "versions"
_REVISION_LINE = re.compile(r"^(down_revision|revision)\b[^=]*=(.*)$", re.MULTILINE)


@functools.cache
def head_revision() -> str | None:
    """The newest migration, read from the scripts' `revision` and `down_revision` lines: a database already there
    needs no Alembic, whose loading with the scripts cost a role process a fifth of a second of CPU at every start.
    None where the scripts have no single head (Alembic then decides)."""
    revisions: set[str] = set()
    replaced: set[str] = set()
    for script in _VERSIONS.glob("*.py"):
        for name, value in _REVISION_LINE.findall(script.read_text()):
            ids = set(re.findall(r"[\"']([^\"']+)[\"']", value))
            (revisions if name == "revision" else replaced).update(ids)
    heads = revisions - replaced
    return heads.pop() if len(heads) == 1 else None


def _revision(connection: Any) -> str | None:
    """The migration the database was last brought to (None: no record of any)."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    revision: str | None = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return revision


def migration_config(connection: Any) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "replenish:migrations")
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Any) -> None:
    from alembic import command

    config = migration_config(connection)
    tables = set(inspect(connection).get_table_names())
    if "alembic_version" not in tables and tables & set(SQLModel.metadata.tables):
        # Made by create_all, before migrations: it is the baseline if it has every column of the baseline, and
        # the migrations after it bring it up to date.
        _check_columns(connection)
        command.stamp(config, BASELINE_REVISION)
    command.upgrade(config, "head")


def _baseline_columns() -> dict[str, set[str]]:
    """Table -> lower-cased column names, as the baseline migration makes them (on a scratch SQLite database)."""
    from alembic import command

    scratch = create_engine("sqlite://")
    try:
        with scratch.begin() as connection:
            command.upgrade(migration_config(connection), BASELINE_REVISION)
            inspector = inspect(connection)
            return {
                table: {column["name"].lower() for column in inspector.get_columns(table)}
                for table in inspector.get_table_names()
                if table != "alembic_version"
            }
    finally:
        scratch.dispose()


def _add_column_statement(connection: Any, table: str, column: str) -> str:
    if column == "*":
        return f"the whole table {table}"
    model_column = SQLModel.metadata.tables[table].columns.get(column) if table in SQLModel.metadata.tables else None
    kind = model_column.type.compile(dialect=connection.dialect) if model_column is not None else "..."
    return f"ALTER TABLE {table} ADD COLUMN {column} {kind}"


class OutdatedSchema(RuntimeError):
    """The database has tables from an older version that lack columns this version needs."""


def _check_columns(connection: Any) -> None:
    """A database from before migrations that lacks columns: say so plainly rather than fail on the first query."""
    inspector = inspect(connection)
    existing_tables = set(inspector.get_table_names())
    missing: list[tuple[str, str]] = []
    for table, columns in sorted(_baseline_columns().items()):
        if table not in existing_tables:
            continue  # a whole table: the baseline migration cannot make it on a stamped database, so say so too
        # Lower-cased: SQLite's column names are not case-sensitive.
        present = {existing["name"].lower() for existing in inspector.get_columns(table)}
        missing += [(table, column) for column in sorted(columns - present)]
    missing += [(table, "*") for table in sorted(set(_baseline_columns()) - existing_tables)]
    if missing:
        statements = "; ".join(_add_column_statement(connection, table, column) for table, column in missing)
        raise OutdatedSchema(
            f"the database was created by an older version and lacks "
            f"{', '.join(f'{table}.{column}' for table, column in missing)}, and predates schema "
            f"migrations: add the columns by hand ({statements}; columns that must not be null need a default for "
            "the rows already there), then start again, which records it as migrated; or, for a development or demo "
            "database, delete it (by default var/replenish.db) "
            "and start again"
        )
