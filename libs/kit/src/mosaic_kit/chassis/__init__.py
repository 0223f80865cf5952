"""What assembles a service from the adapters: the one layer that may import all of them.

Names are imported from their module (`mosaic_kit.chassis.cache`, ...); this package re-exports
nothing.
"""
