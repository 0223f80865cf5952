"""The SQL adapter (extra `mosaic-kit[sql]`): the database (SQLAlchemy Core on asyncpg), the
transactional outbox table, the processed-events table, Alembic migrations, and which database
errors mean "PostgreSQL cannot be reached now".

Names are imported from their module (`mosaic_kit.sql.db`, ...); this package re-exports nothing.
"""
