"""The Redis adapter (extra `mosaic-kit[redis]`): the shared cache on a Redis server.

Names are imported from their module (`mosaic_kit.redis.cache`); this package re-exports nothing.
"""
