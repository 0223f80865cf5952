"""A request's tries at a backend: when one more try is allowed, and where it goes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a request may be tried again on another instance."""

    attempts: int  # retries after the first try
    on_connect_error: bool
    statuses: frozenset[int]
    # A try with no response byte by then is retried elsewhere (Forward.on_timeout); None: off.
    per_try_timeout: float | None = None
