"""Engine, sessions and the column types every domain shares."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import JSON, BigInteger, DateTime, Engine, Integer, Table, event, insert, inspect, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import relationship
from sqlalchemy.types import TypeDecorator
from sqlmodel import Relationship, Session, SQLModel, create_engine

from replenish.constants import SCHEMA_LOCK_KEY
from replenish.errors import NotFound


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on SQLite (which keeps no zone) and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


ModelT = TypeVar("ModelT", bound=SQLModel)


def get_or_raise(session: Session, model: type[ModelT], key: str, *, entity: str) -> ModelT:
    """The row with this primary key, or NotFound (a 404 at the API)."""
    row = session.get(model, key)
    if row is None:
        raise NotFound(entity, key)
    return row


def written_after(model: str) -> Any:
    """A relationship that only orders writes: one flush inserts the ``model`` row that a foreign key refers to
    before the row that refers to it (the unit of work orders rows by relationships, not by foreign keys), so that a
    decision, its order and their history, links and notices go out in one flush, a statement per table, instead of
    a flush each. Never loaded (lazy="raise"): read the id column."""
    return Relationship(sa_relationship=relationship(model, lazy="raise"))


def new_id() -> str:
    return uuid.uuid4().hex


def make_engine(url: str) -> Engine:
    # Every mapper, before any session uses this engine: relationships name their targets (written_after).
    from replenish import models  # noqa: F401

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            # Everything about every customer is in it: the owner's alone (SQLite gives its -wal and -shm files the
            # database file's permissions).
            database = Path(parsed.database)
            database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not database.exists():
                os.close(os.open(database, os.O_WRONLY | os.O_CREAT, 0o600))
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL lets the API read while the ingestor writes; NORMAL sync is durable in WAL mode.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def create_schema(engine: Engine) -> None:
    """Bring the database to the newest schema: Alembic's migrations (replenish/migrations), run by every role at
    start-up and by `replenish db upgrade`.

    Roles start together; on PostgreSQL one migrates while the others wait on a lock. SQLite has no such lock: a
    role that loses the race finds the tables there when it looks again.
    """
    attempts = 20
    for attempt in range(attempts):
        try:
            with engine.begin() as connection:
                if connection.dialect.name == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
                _upgrade(connection)
            return
        except OperationalError as exc:
            # Lost the race (the tables are there now), or the other process still holds SQLite's write lock.
            if not ("already exists" in str(exc) or "database is locked" in str(exc)) or attempt == attempts - 1:
                raise
            time.sleep(0.25)


# The first migration: the schema as it was when migrations came in (2026-11-26).
BASELINE_REVISION = "0001"


def migration_config(connection: Any) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "replenish:migrations")
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Any) -> None:
    from alembic import command

    # Importing the models registers their tables on SQLModel.metadata.
    from replenish import models  # noqa: F401

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


@contextmanager
def transaction(engine: Engine, *, immediate: bool = False) -> Iterator[Session]:
    """One unit of work: commits on success, rolls back on error. Services never commit themselves.

    ``immediate``: on SQLite, take the one writer's lock at once (BEGIN IMMEDIATE) rather than at the first write,
    so that what the unit reads before it writes cannot change under it (PostgreSQL locks rows instead)."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            if immediate and engine.dialect.name == "sqlite":
                session.connection().exec_driver_sql("BEGIN IMMEDIATE")
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def _aware(value: Any) -> Any:
    # What UTCDateTime checks on the way in, which COPY bypasses: a naive time would be read in the server's zone.
    if isinstance(value, datetime) and value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: times are stored as aware UTC")
    return value


def insert_rows(session: Session, table: Table, rows: list[dict[str, Any]], *, return_ids: bool = False) -> list[int]:
    """Insert many rows of plain values (every row with the same keys) in the session's transaction; with
    ``return_ids``, their new ids, in the rows' order.

    On PostgreSQL through COPY, several times faster than even a batched INSERT (no statement per row for the
    server, no huge multi-row statement for the driver to parse); ids are drawn from the table's sequence first.
    Elsewhere one bulk INSERT (… RETURNING id). The ingest hot path's writes."""
    if not rows:
        return []
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        statement = insert(table)
        if not return_ids:
            connection.execute(statement, rows)
            return []
        returning = statement.returning(table.c.id, sort_by_parameter_order=True)
        return list(connection.execute(returning, rows).scalars())
    ids: list[int] = []
    if return_ids:
        ids = list(
            connection.execute(
                text("SELECT nextval(pg_get_serial_sequence(:table, 'id')) FROM generate_series(1, :count)"),
                {"table": table.name, "count": len(rows)},
            ).scalars()
        )
    columns = (["id"] if return_ids else []) + list(rows[0])
    json_columns = {name for name in rows[0] if isinstance(table.c[name].type, JSON)}
    raw = connection.connection.driver_connection
    assert raw is not None
    quoted = ", ".join(f'"{name}"' for name in columns)  # names from our own models, never from input
    statement = f'COPY "{table.name}" ({quoted}) FROM STDIN'
    try:
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            for index, row in enumerate(rows):
                values = [json.dumps(row[n]) if n in json_columns else _aware(row[n]) for n in rows[0]]
                copy.write_row([ids[index], *values] if return_ids else values)
    except raw.Error as error:
        # Raised by the driver, under SQLAlchemy's feet: wrapped as SQLAlchemy wraps its own (an IntegrityError, an
        # OperationalError, with connection_invalidated when the connection died), so callers tell a refused row
        # from a database gone away the same way for every statement.
        raise DBAPIError.instance(
            statement, None, error, type(raw).Error, connection_invalidated=bool(raw.closed), dialect=connection.dialect
        ) from error
    return ids


def _upsert_statement(session: Session, table: Table) -> Any:
    """INSERT ... ON CONFLICT for the session's dialect (PostgreSQL and SQLite)."""
    if session.connection().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    return dialect_insert(table)


def add_to_counters(
    session: Session, table: Table, *, key: dict[str, Any], add: dict[str, int], latest: dict[str, Any]
) -> None:
    """Add to a row's counters (and set its ``latest`` columns), making the row if it is not there: one statement,
    safe when other processes count the same row at the same time (INSERT ... ON CONFLICT, PostgreSQL and SQLite)."""
    statement = _upsert_statement(session, table).values(**key, **add, **latest)
    statement = statement.on_conflict_do_update(
        index_elements=list(key),
        set_={name: table.c[name] + statement.excluded[name] for name in add}
        | {name: statement.excluded[name] for name in latest},
    )
    session.execute(statement)


def upsert(session: Session, table: Table, rows: list[dict[str, Any]], *, key: list[str]) -> None:
    """Insert the rows, or update the ones whose ``key`` columns are already there: one statement for them all (the
    rows share their columns)."""
    if not rows:
        return
    statement = _upsert_statement(session, table)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=key, set_={name: statement.excluded[name] for name in rows[0] if name not in key}
        ),
        rows,
    )


# 64-bit keys and counters on PostgreSQL; on SQLite an INTEGER primary key is already 64-bit and must stay
# INTEGER to remain the auto-incrementing rowid.
BigInt = BigInteger().with_variant(Integer(), "sqlite")

# JSONB on PostgreSQL (indexable, compact), plain JSON text elsewhere.
JSONType = JSON().with_variant(JSONB(), "postgresql")
