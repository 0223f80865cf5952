"""Which database errors mean "PostgreSQL cannot be reached now" (a 503, not a bug).

Registered with `mosaic_kit.problem.treat_as_unreachable` when `mosaic_kit.sql.db` is imported, so
every process that talks to PostgreSQL answers its outages as 503s. Not in the list: query
cancellations (a statement timeout is this service's business), serialization failures and
deadlocks (the transaction lost, not the server), and every other SQL error.
"""

from __future__ import annotations

import asyncpg
import sqlalchemy.exc

__all__ = ["connection_lost", "postgres_unreachable"]

_UNREACHABLE: tuple[type[BaseException], ...] = (
    # SQLAlchemy's pool found no connection within its timeout, or a connection it had died.
    sqlalchemy.exc.TimeoutError,
    sqlalchemy.exc.DisconnectionError,
    # PostgreSQL closed the connection or refused it (starting up, shutting down, crashed, full).
    asyncpg.PostgresConnectionError,
    # The connection ended under a statement run on the driver itself (`Database.read_one`).
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)


def postgres_unreachable(exc: BaseException) -> bool:
    if isinstance(exc, _UNREACHABLE):
        return True
    # The dialect recognised a lost connection ("connection is closed", ...).
    return isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated


def connection_lost(exc: BaseException) -> bool:
    """The database connection failed (as opposed to a statement, which may fail every time):
    what a consumer retries rather than dead-letters."""
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        return exc.connection_invalidated
    # Refused connections surface unwrapped; a full pool is SQLAlchemy's own TimeoutError.
    return isinstance(exc, ConnectionError | sqlalchemy.exc.TimeoutError)
