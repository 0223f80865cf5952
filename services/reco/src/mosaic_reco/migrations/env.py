"""Alembic environment of the reco service: all the wiring lives in the kit."""

from mosaic_kit.sql.migrations import run_env
from mosaic_reco.tables import metadata

run_env(metadata)
