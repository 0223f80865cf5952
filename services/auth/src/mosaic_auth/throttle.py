"""The sign-in brute-force rule, as pure functions over a `Throttle` record.

Failures are counted per key (an account, a client address) within a window. Once a key reaches
its limit every further failure locks it for twice as long as the last, from `base_delay` up to
`max_delay`; a locked key is answered 429 with Retry-After before any password is checked.

An attempt is counted as a failure *before* its password is checked (`after_failure` at
admission, under the key's lock), so parallel guesses cannot all pass the check while the count
lags behind: at most `max_failures` of them reach a password check. A correct password then
takes its count back (`AuthService.signin`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from mosaic_auth.models import Throttle


@dataclass(frozen=True)
class Policy:
    max_failures: int
    window: timedelta
    base_delay: float
    max_delay: float


def seconds_locked(throttle: Throttle | None, now: datetime) -> float:
    if throttle is None or throttle.locked_until is None:
        return 0.0
    return max(0.0, (throttle.locked_until - now).total_seconds())


def after_failure(throttle: Throttle | None, now: datetime, policy: Policy) -> Throttle:
    if throttle is None or now - throttle.window_started_at > policy.window:
        failures, started = 1, now
    else:
        failures, started = throttle.failures + 1, throttle.window_started_at
    locked_until = None
    if failures >= policy.max_failures:
        delay = min(policy.base_delay * 2 ** (failures - policy.max_failures), policy.max_delay)
        locked_until = now + timedelta(seconds=delay)
    return Throttle(failures, started, locked_until)
