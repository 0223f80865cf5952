"""Processes and configurations: supervisor, workers, reloads, the admin endpoints, runtimes."""
