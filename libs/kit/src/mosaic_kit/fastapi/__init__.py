"""The FastAPI adapter (extra `mosaic-kit[fastapi]`): the app factory, problem handlers, request
middleware, health and metrics routes, bearer-token dependencies, `Idempotency-Key`, the service CLI.

Names are imported from their module (`mosaic_kit.fastapi.app`, ...); this package re-exports
nothing, so importing one adapter module never loads the others.
"""
