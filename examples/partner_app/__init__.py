"""A sample third-party application of Mosaic: it reads published blogs and recommendations
through the gateway with its own OAuth 2.0 client-credentials token (no API key, no user).

`client.py` is the part worth copying: the token cache and renewal, and what to do with each
answer (401, 403 `auth.scope_missing`, 429, 5xx). `cli.py` is the command line around it.
"""

from __future__ import annotations

from .client import (
    AccessToken,
    MosaicError,
    PartnerClient,
    ScopeMissingError,
    TokenRequestError,
    TokenSource,
    UnauthorizedError,
    UnavailableError,
)

__version__ = "0.1.0"

__all__ = [
    "AccessToken",
    "MosaicError",
    "PartnerClient",
    "ScopeMissingError",
    "TokenRequestError",
    "TokenSource",
    "UnauthorizedError",
    "UnavailableError",
]
