"""From a request's path to a compiled route: the router, path checks, the per-route chain."""
