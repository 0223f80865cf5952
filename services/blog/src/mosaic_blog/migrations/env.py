"""Alembic environment of the blog service: all the wiring lives in the kit."""

from mosaic_blog.tables import metadata
from mosaic_kit.sql.migrations import run_env

run_env(metadata)
