"""Mosaic reco service."""

__version__ = "0.1.0"
