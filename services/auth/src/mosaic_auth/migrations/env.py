"""Alembic environment of the auth service: all the wiring lives in the kit."""

from mosaic_auth.tables import metadata
from mosaic_kit.sql.migrations import run_env

run_env(metadata)
