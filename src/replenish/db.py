"""Engines, transactions and the bulk statements the services share."""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import JSON, Engine, Table, case, event, insert, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, SQLModel, create_engine, select

from replenish import models  # noqa: F401  (every mapper, before any session: relationships name their targets)
from replenish.errors import NotFound

ModelT = TypeVar("ModelT", bound=SQLModel)


def get_or_raise(
    session: Session,
    model: type[ModelT],
    key: str,
    *,
    entity: str,
    customer_id: str | None = None,
    device_ids: Collection[str] | None = None,
) -> ModelT:
    """The row with this primary key, or NotFound (a 404 at the API). Given ``customer_id``, only that customer's
    (filtered in SQL): another customer's row answers exactly as a missing one does, its existence not given away.
    Given ``device_ids`` (the devices a member or carer sees), only a row of one of them (a device: one of them)."""
    if customer_id is None and device_ids is None:
        row = session.get(model, key)
    else:
        mapper = inspect(model)
        [primary_key] = mapper.primary_key
        query = select(model).where(primary_key == key)
        if customer_id is not None:
            query = query.where(mapper.columns["customer_id"] == customer_id)
        if device_ids is not None:
            device_column = mapper.columns.get("device_id", primary_key)
            query = query.where(device_column.in_(list(device_ids)))
        row = session.exec(query).first()
    if row is None:
        raise NotFound(entity, key)
    return row


def make_engine(url: str) -> Engine:
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
    copy_sql = f'COPY "{table.name}" ({quoted}) FROM STDIN'
    try:
        with raw.cursor() as cursor, cursor.copy(copy_sql) as copy:
            for index, row in enumerate(rows):
                values = [json.dumps(row[n]) if n in json_columns else _aware(row[n]) for n in rows[0]]
                copy.write_row([ids[index], *values] if return_ids else values)
    except raw.Error as error:
        # Raised by the driver, under SQLAlchemy's feet: wrapped as SQLAlchemy wraps its own (an IntegrityError, an
        # OperationalError, with connection_invalidated when the connection died), so callers tell a refused row
        # from a database gone away the same way for every statement.
        raise DBAPIError.instance(
            copy_sql, None, error, type(raw).Error, connection_invalidated=bool(raw.closed), dialect=connection.dialect
        ) from error
    return ids


def _upsert_statement(session: Session, table: Table) -> Any:
    """INSERT ... ON CONFLICT for the session's dialect (PostgreSQL and SQLite)."""
    if session.connection().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def within(value: Any, bounds: tuple[float, float]) -> Any:
    """A SQL expression's value, kept within ``bounds`` (low, high): both dialects, unlike LEAST and GREATEST."""
    low, high = bounds
    return case((value > high, high), (value < low, low), else_=value)


def add_to_counters(
    session: Session,
    table: Table,
    *,
    key: dict[str, Any],
    add: dict[str, float],
    latest: dict[str, Any],
    bounds: dict[str, tuple[float, float]] | None = None,
) -> None:
    """Add to a row's counters (and set its ``latest`` columns), making the row if it is not there: one statement,
    safe when other processes count the same row at the same time (INSERT ... ON CONFLICT, PostgreSQL and SQLite).
    A counter in ``bounds`` stays within them."""
    bounds = bounds or {}

    def bounded(name: str, value: Any) -> Any:
        return within(value, bounds[name]) if name in bounds else value

    start = {
        name: min(bounds[name][1], max(bounds[name][0], value)) if name in bounds else value
        for name, value in add.items()
    }
    statement = _upsert_statement(session, table).values(**key, **start, **latest)
    statement = statement.on_conflict_do_update(
        index_elements=list(key),
        set_={name: bounded(name, table.c[name] + value) for name, value in add.items()}
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
