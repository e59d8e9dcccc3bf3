"""Column types, ids and relationship helpers for the table models: what every domain's models.py needs, importing
nothing of the platform's own, so that models sit below everything else (db.py, the services, the app)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer, Table, inspect
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import relationship
from sqlalchemy.types import TypeDecorator
from sqlmodel import Relationship, SQLModel


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


def new_id() -> str:
    return uuid.uuid4().hex


def written_after(model: str) -> Any:
    """A relationship that only orders writes: one flush inserts the ``model`` row that a foreign key refers to
    before the row that refers to it (the unit of work orders rows by relationships, not by foreign keys), so that a
    decision, its order and their history, links and notices go out in one flush, a statement per table, instead of
    a flush each. Never loaded (lazy="raise"): read the id column."""
    return Relationship(sa_relationship=relationship(model, lazy="raise"))


# 64-bit keys and counters on PostgreSQL; on SQLite an INTEGER primary key is already 64-bit and must stay
# INTEGER to remain the auto-incrementing rowid.
BigInt = BigInteger().with_variant(Integer(), "sqlite")

# JSONB on PostgreSQL (indexable, compact), plain JSON text elsewhere.
JSONType = JSON().with_variant(JSONB(), "postgresql")


def table_of(model: type[SQLModel]) -> Table:
    """A table model's Table, for Core statements (SQLModel leaves ``__table__`` untyped)."""
    table = inspect(model).local_table
    assert isinstance(table, Table), f"{model.__name__} is not a table model"
    return table
