"""Human units in the configuration file: durations (`250ms`, `2s`, `1m`) and sizes (`64KiB`).

Plain numbers are accepted too (seconds, bytes), so a value written by a program needs no suffix.
"""

from __future__ import annotations

import re

# The patterns are public so the JSON Schema (base.py) accepts exactly what is parsed here.
DURATION_PATTERN = r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*"
_DURATION = re.compile(DURATION_PATTERN)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

SIZE_PATTERN = r"\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*"
_SIZE = re.compile(SIZE_PATTERN)
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "KiB": 1024,
    "MB": 1000**2,
    "MiB": 1024**2,
    "GB": 1000**3,
    "GiB": 1024**3,
}


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like `250ms`, `2s`, `1.5m`, `1h`."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '250ms', '2s', '1m'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    raise ValueError("a duration is a number of seconds or a string like '250ms', '2s', '1m'")


def parse_size(value: object) -> int:
    """Bytes from an integer or a string like `512KiB`, `1MiB`, `10MB`."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a string like '64KiB', '1MiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value)
        if match:
            return int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    raise ValueError("a size is a number of bytes or a string like '64KiB', '1MiB'")
