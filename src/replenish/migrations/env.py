"""Alembic's environment for Replenish: the models' metadata, and the connection that
replenish.schema.create_schema hands over."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from replenish import models  # noqa: F401  (registers every table on SQLModel.metadata)

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "run migrations through `replenish db upgrade` (replenish.schema.create_schema), which opens the connection"
    )

context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    # SQLite cannot ALTER most things in place: batch mode copies the table.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
