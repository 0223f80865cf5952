"""Contracts several services share: the event payloads and NATS endpoint models one service
publishes and others consume, in one place both sides import (services never import each other).

Names are imported from their module (`mosaic_kit.contracts.auth`); this package re-exports
nothing.
"""
