"""Locks held for as long as a process lives: a PostgreSQL session-level advisory lock on a connection of its own, or
an flock on a local file (SQLite: every process is on one machine). Either is released the moment its holder dies,
even by kill -9: the server ends the dead client's session, the kernel closes the dead process's files."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import zlib
from pathlib import Path
from typing import IO, Protocol

from sqlalchemy import Connection, Engine, TextClause, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from replenish.constants import MQTT_SESSION_LOCK_NAMESPACE

log = logging.getLogger(__name__)

# The lock's connection: give up connecting, or on a query, after this long, and let the kernel notice a server that
# vanished from the network (no RST) within about 10 s rather than the default two hours.
LOCK_CONNECT_ARGS = {
    "connect_timeout": 3,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}
# Set after connecting, not as a startup option: PgBouncer refuses unknown startup parameters.
LOCK_STATEMENT_TIMEOUT = "SET statement_timeout = 3000"


class HeldLock(Protocol):
    """One process at a time holds it, and loses it when it dies."""

    # After acquire() returned False: True when another process holds it, False when it could not even be asked.
    refused: bool

    def acquire(self) -> bool:
        """Take it if it is free; True when held afterwards (also when it already was)."""
        ...

    def check(self) -> bool:
        """Whether it is still held: False once its database session is gone (then it is released too)."""
        ...

    def release(self) -> None: ...


def session_lock_key(client_id: str) -> tuple[int, int]:
    """The advisory lock of one MQTT client id (two-int4 form, a namespace of our own and a hash of the id)."""
    return MQTT_SESSION_LOCK_NAMESPACE, zlib.crc32(client_id.encode()) & 0x7FFF_FFFF


class AdvisoryLock:
    """PostgreSQL advisory locks on a dedicated connection (not from the pool, never idle-timed out), held until
    released or until that connection's session ends. Several keys are taken together or not at all.

    Session-level advisory locks need one server session for as long as they are held: through PgBouncer in
    transaction pooling the lock would belong to whichever client's transaction got that server connection next.
    Point the database URL of processes that take one at PostgreSQL itself or at a session-pooling PgBouncer."""

    def __init__(self, database_url: str, *, keys: tuple[int | tuple[int, int], ...], name: str) -> None:
        self.keys = keys
        self.name = name
        self._engine: Engine = create_engine(database_url, poolclass=NullPool, connect_args=LOCK_CONNECT_ARGS)
        self._connection: Connection | None = None
        self.refused = False

    def acquire(self) -> bool:
        self.refused = False
        if self._connection is not None:
            return self.check()
        try:
            connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except Exception as exc:
            # Loud: a scheduler that cannot ask runs no jobs, and nobody else may be running them either.
            log.warning("%s: cannot reach the database to ask for the lock: %s", self.name, exc)
            return False
        taken: list[int | tuple[int, int]] = []
        try:
            connection.execute(text(LOCK_STATEMENT_TIMEOUT))
            for key in self.keys:
                if not connection.execute(_sql("pg_try_advisory_lock", key), _params(key)).scalar_one():
                    break
                taken.append(key)
        except Exception as exc:
            log.warning("%s: could not ask for the lock: %s", self.name, exc)
            connection.close()
            return False
        if len(taken) < len(self.keys):
            self.refused = True
            for key in taken:
                connection.execute(_sql("pg_advisory_unlock", key), _params(key))
            connection.close()
            return False
        self._connection = connection
        return True

    def check(self) -> bool:
        if self._connection is None:
            return False
        try:
            # The session holds the locks as long as it lives: a round trip proves it does.
            self._connection.execute(text("SELECT 1"))
            return True
        except Exception as exc:
            log.warning("%s: the lock's database session is gone: %s", self.name, exc)
            self._drop()
            return False

    def release(self) -> None:
        if self._connection is not None:
            # Closing the session releases them anyway; unlocking first hands them over without waiting for it.
            with contextlib.suppress(Exception):
                self._connection.execute(text("SELECT pg_advisory_unlock_all()"))
            self._drop()
        self._engine.dispose()

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.invalidate()
                connection.close()


def _sql(function: str, key: int | tuple[int, int]) -> TextClause:
    return text(f"SELECT {function}(:a, :b)" if isinstance(key, tuple) else f"SELECT {function}(:a)")


def _params(key: int | tuple[int, int]) -> dict[str, int]:
    return {"a": key[0], "b": key[1]} if isinstance(key, tuple) else {"a": key}


class FileLock:
    """flock on files next to the SQLite database: for processes on one machine."""

    def __init__(self, paths: tuple[Path, ...], *, name: str) -> None:
        self.paths = paths
        self.name = name
        self._files: list[IO[bytes]] = []
        self.refused = False

    def acquire(self) -> bool:
        self.refused = False
        if self._files:
            return True
        for path in self.paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "ab")  # noqa: SIM115 - held open for as long as the lock is
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                self.release()
                self.refused = True
                return False
            self._files.append(handle)
        return True

    def check(self) -> bool:
        return bool(self._files)

    def release(self) -> None:
        files, self._files = self._files, []
        for handle in files:
            handle.close()  # closing the file drops its flock


class AlwaysHeld:
    """No election: the one process there is holds it (the scheduler on SQLite, `replenish up`)."""

    refused = False

    def acquire(self) -> bool:
        return True

    def check(self) -> bool:
        return True

    def release(self) -> None:
        pass


def is_postgres(database_url: str) -> bool:
    return make_url(database_url).get_backend_name() == "postgresql"


def lock_dir(database_url: str) -> Path:
    """Where the file locks of a SQLite database live: next to it."""
    database = make_url(database_url).database or ""
    return Path(os.path.dirname(os.path.abspath(database))) / "locks"
