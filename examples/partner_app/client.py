"""Mosaic's client-credentials flow from the application's side, over httpx.

- `TokenSource` gets an access token at `POST /v1/oauth/token` with `client_secret_basic`, keeps
  it in memory (never on disk: it is a credential) and replaces it shortly before `expires_in`
  runs out, so that a request never leaves with a token about to die in flight.
- `PartnerClient` calls the gateway's routes open to client applications with that token as
  `Authorization: Bearer` (no `x-api-key`) and turns each answer into data or a clear error:

  | answer | what the client does |
  |---|---|
  | 401 (`auth.token_expired`, `auth.token_revoked`, ...) | gets a new token and repeats the request **once**; a second 401, or a token endpoint that refuses the credentials, is `UnauthorizedError` / `TokenRequestError` |
  | 403 `auth.scope_missing` | `ScopeMissingError`, naming the scope the route needs and those the token has |
  | 429 | waits `Retry-After` (when it is not absurdly long) and repeats, a bounded number of times |
  | 500, 502, 503, 504, a connection error | repeats with exponential backoff (every call here is an idempotent GET), a bounded number of times |

The clock and the sleep are parameters so that a test can move time forward instead of waiting.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus

import httpx

SCOPE_BLOGS = "blogs:read"
SCOPE_RECOMMENDATIONS = "recommendations:read"
TOKEN_PATH = "/v1/oauth/token"  # noqa: S105 - a path, not a secret
USER_AGENT = "mosaic-partner-app/0.1"

# A token is replaced this long before it expires (or at half its lifetime, if that is shorter):
# enough for a slow request to arrive while it is still valid, whatever the gateway's leeway.
RENEW_BEFORE = 60.0

Clock = Callable[[], float]
Sleep = Callable[[float], None]


# -- errors: each carries the exit code the command line uses ------------------------------------


class MosaicError(Exception):
    """An answer the application cannot work with; `str()` is a message for a person."""

    exit_code = 1

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class TokenRequestError(MosaicError):
    """The token endpoint refused: `error` is the RFC 6749 §5.2 code (`invalid_client`, ...)."""

    exit_code = 3

    def __init__(self, message: str, *, status: int | None, error: str | None) -> None:
        super().__init__(message, status=status, code=error)
        self.error = error
        if error == "invalid_scope":
            self.exit_code = 4  # a scope problem, like a 403 auth.scope_missing


class UnauthorizedError(MosaicError):
    """The gateway refused the token, and a freshly issued one too."""

    exit_code = 3


class ScopeMissingError(MosaicError):
    """403 `auth.scope_missing`: the client is not allowed this route."""

    exit_code = 4

    def __init__(self, message: str, *, needed: str, granted: frozenset[str]) -> None:
        super().__init__(message, status=403, code="auth.scope_missing")
        self.needed = needed
        self.granted = granted


class UnavailableError(MosaicError):
    """Still rate limited, failing or unreachable after the bounded retries."""

    exit_code = 5


# -- retries ---------------------------------------------------------------------------------------

RETRIED_STATUSES = frozenset({500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # tries in all, the first included
    backoff: float = 0.5  # first backoff for a 5xx; doubles each time, with full jitter
    backoff_cap: float = 8.0
    max_retry_after: float = 60.0  # a longer Retry-After is reported, not waited for

    def backoff_delay(self, retry: int) -> float:
        # Full jitter: clients failing together do not come back together.
        return random.uniform(0, min(self.backoff_cap, self.backoff * 2**retry))


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def send_with_retries(
    send: Callable[[], httpx.Response], *, policy: RetryPolicy, sleep: Sleep, what: str
) -> httpx.Response:
    """`send()` until its answer is neither a 429 nor a retried 5xx, at most `policy.attempts`
    times. Only for requests that are safe to repeat. The last answer when retries run out on a
    status; `UnavailableError` when they run out on connection errors or a 429 asks too long."""
    for retry in range(policy.attempts):
        last = retry == policy.attempts - 1
        try:
            answer = send()
        except httpx.TransportError as exc:
            if last:
                raise UnavailableError(
                    f"{what}: the gateway could not be reached ({type(exc).__name__}: {exc})"
                ) from exc
            sleep(policy.backoff_delay(retry))
            continue
        if answer.status_code == 429:
            wait = retry_after_seconds(answer.headers.get("retry-after"))
            if wait is None:
                wait = policy.backoff_delay(retry)
            if wait > policy.max_retry_after:
                raise UnavailableError(
                    f"{what}: rate limited; the gateway asks to wait {wait:.0f} s, longer than"
                    f" this application waits ({policy.max_retry_after:.0f} s)",
                    status=429,
                )
            if last:
                return answer
            sleep(wait)
            continue
        if answer.status_code in RETRIED_STATUSES and not last:
            wait = retry_after_seconds(answer.headers.get("retry-after"))
            sleep(
                min(wait, policy.max_retry_after)
                if wait is not None
                else policy.backoff_delay(retry)
            )
            continue
        return answer
    raise AssertionError("unreachable: the last attempt returns or raises")


def _problem(answer: httpx.Response) -> tuple[str | None, str]:
    """(code, detail) of a problem+json answer; (None, a short excerpt) of anything else."""
    try:
        body = answer.json()
    except ValueError:
        return None, answer.text[:200]
    if not isinstance(body, dict):
        return None, answer.text[:200]
    code = body.get("code")
    detail = body.get("detail") or body.get("title") or ""
    return (code if isinstance(code, str) else None), str(detail)


# -- the token -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccessToken:
    value: str = field(repr=False)  # never in a repr, a log line or a traceback
    scopes: frozenset[str]
    expires_at: float  # on the TokenSource's clock
    renew_at: float  # from then on a new token is fetched instead


class TokenSource:
    """Client-credentials tokens for one client, cached in memory and renewed before they expire.

    `issued` counts the tokens fetched so far, which is how a caller (or a test) sees renewals.
    """

    def __init__(
        self,
        http: httpx.Client,
        *,
        client_id: str,
        client_secret: str,
        scope: str | None = None,
        token_path: str = TOKEN_PATH,
        renew_before: float = RENEW_BEFORE,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._http = http
        # RFC 6749 §2.3.1: each part is form-urlencoded before the Basic encoding. Mosaic's ids
        # and secrets are URL-safe already, so this only matters for other servers' clients.
        self._auth = httpx.BasicAuth(quote_plus(client_id), quote_plus(client_secret))
        self.client_id = client_id
        self._scope = scope
        self._token_path = token_path
        self._renew_before = renew_before
        self._clock = clock
        self._sleep = sleep
        self._retry = retry or RetryPolicy()
        self._token: AccessToken | None = None
        self.issued = 0

    def current(self) -> AccessToken:
        """The cached token, or a new one when there is none or it is due for renewal."""
        token = self._token
        if token is None or self._clock() >= token.renew_at:
            token = self._fetch()
        return token

    def renew(self, stale: AccessToken) -> AccessToken:
        """A new token in place of `stale`, which the gateway refused. If another request has
        already replaced it, that newer token is used: one refusal costs one token request."""
        if self._token is not None and self._token is not stale:
            return self._token
        self._token = None
        return self._fetch()

    def _fetch(self) -> AccessToken:
        form = {"grant_type": "client_credentials"}
        if self._scope:
            form["scope"] = self._scope
        started = self._clock()  # the lifetime counts from before the request left
        # Repeating a token request is harmless (an unused token just expires), so 429 and 5xx
        # are retried here as for GETs.
        answer = send_with_retries(
            lambda: self._http.post(
                self._token_path,
                data=form,
                auth=self._auth,
                headers={"accept": "application/json"},
            ),
            policy=self._retry,
            sleep=self._sleep,
            what="token request",
        )
        if answer.status_code != 200:
            raise self._refusal(answer)
        try:
            body = answer.json()
            value, kind, lifetime = body["access_token"], body["token_type"], body["expires_in"]
        except (ValueError, KeyError, TypeError) as exc:
            raise MosaicError(
                "the token endpoint answered 200 without an OAuth token response", status=200
            ) from exc
        if not isinstance(value, str) or str(kind).lower() != "bearer":
            raise MosaicError(f"the token endpoint issued an unusable token (type {kind!r})")
        if not isinstance(lifetime, int) or lifetime <= 0:
            raise MosaicError(f"the token endpoint gave an unusable expires_in: {lifetime!r}")
        # RFC 6749 §5.1: without `scope`, the token has the scope that was asked for.
        granted = body.get("scope", self._scope or "")
        margin = min(self._renew_before, lifetime / 2)
        token = AccessToken(
            value=value,
            scopes=frozenset(str(granted).split()),
            expires_at=started + lifetime,
            renew_at=started + lifetime - margin,
        )
        self._token = token
        self.issued += 1
        return token

    def _refusal(self, answer: httpx.Response) -> MosaicError:
        error: str | None = None
        description = ""
        try:
            body = answer.json()
            if isinstance(body, dict):
                error = body.get("error")
                description = str(body.get("error_description") or "")
        except ValueError:
            pass
        status = answer.status_code
        said = f"{error}: {description}" if description else str(error)
        if error == "invalid_client":
            return TokenRequestError(
                f"the token endpoint refused client {self.client_id!r} ({said}). Check"
                " MOSAIC_CLIENT_ID and the secret: the client may have been disabled or deleted,"
                " or this secret removed by a rotation.",
                status=status,
                error=error,
            )
        if error == "invalid_scope":
            return TokenRequestError(
                f"the token endpoint refused the scope {self._scope!r} ({said}): ask for scopes"
                " the client is registered for, or ask the platform's admin to add them.",
                status=status,
                error=error,
            )
        if status == 429:
            return UnavailableError(
                f"token request: still throttled after {self._retry.attempts} tries ({said})",
                status=status,
                code=error,
            )
        if error is not None:
            return TokenRequestError(
                f"the token endpoint answered {status} ({said})", status=status, error=error
            )
        code, detail = _problem(answer)
        return UnavailableError(
            f"token request failed with {status} ({code or 'no code'}: {detail})",
            status=status,
            code=code,
        )


# -- the API ---------------------------------------------------------------------------------------


class PartnerClient:
    """The routes a partner application reads, through the gateway, with the client's token."""

    def __init__(
        self,
        http: httpx.Client,
        tokens: TokenSource,
        *,
        sleep: Sleep = time.sleep,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._http = http
        self.tokens = tokens
        self._sleep = sleep
        self._retry = retry or RetryPolicy()

    @classmethod
    def connect(
        cls,
        gateway: str,
        *,
        client_id: str,
        client_secret: str,
        scope: str | None = None,
        timeout: float = 10.0,
        renew_before: float = RENEW_BEFORE,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
        retry: RetryPolicy | None = None,
    ) -> PartnerClient:
        """A client of the gateway at `gateway`; `close()` it (or use it in a `with`)."""
        http = httpx.Client(
            base_url=gateway.rstrip("/"),
            timeout=timeout,
            headers={"user-agent": USER_AGENT},
            # The gateway's address is given explicitly; a proxy from the environment would be
            # a surprise hop for a bearer token.
            trust_env=False,
        )
        tokens = TokenSource(
            http,
            client_id=client_id,
            client_secret=client_secret,
            scope=scope,
            renew_before=renew_before,
            clock=clock,
            sleep=sleep,
            retry=retry,
        )
        return cls(http, tokens, sleep=sleep, retry=retry)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PartnerClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- the routes --

    def blogs(
        self, *, limit: int = 20, tag: str | None = None, cursor: str | None = None
    ) -> dict[str, Any]:
        """One page of published blogs, newest first: `{items, nextCursor}`."""
        params: dict[str, str | int] = {"limit": limit}
        if tag:
            params["tag"] = tag
        if cursor:
            params["cursor"] = cursor
        page: dict[str, Any] = self.get("/v1/blogs", params=params, scope=SCOPE_BLOGS)
        return page

    def blog_pages(
        self, *, limit: int = 20, tag: str | None = None, max_pages: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Pages of published blogs, following `nextCursor` until it is null (or `max_pages`)."""
        cursor: str | None = None
        pages = 0
        while max_pages is None or pages < max_pages:
            page = self.blogs(limit=limit, tag=tag, cursor=cursor)
            pages += 1
            yield page
            cursor = page.get("nextCursor")
            if not cursor:
                return

    def trending(
        self, *, limit: int = 10, window: str | None = None, tag: str | None = None
    ) -> list[dict[str, Any]]:
        """Trending blogs: `[{blog, score, reason}]`, best first."""
        params: dict[str, str | int] = {"limit": limit}
        if window:
            params["window"] = window
        if tag:
            params["tag"] = tag
        body = self.get("/v1/recommendations/trending", params=params, scope=SCOPE_RECOMMENDATIONS)
        items: list[dict[str, Any]] = body["items"]
        return items

    def also_liked(self, blog_id: str, *, limit: int = 10) -> list[dict[str, Any]]:
        """What readers of this blog also liked: `[{blog, score, reason}]`, best first."""
        body = self.get(
            f"/v1/recommendations/blogs/{blog_id}",
            params={"limit": limit},
            scope=SCOPE_RECOMMENDATIONS,
        )
        items: list[dict[str, Any]] = body["items"]
        return items

    # -- the request path --

    def get(self, path: str, *, params: Mapping[str, str | int], scope: str) -> Any:
        """GET `path` with the client's token; the JSON body, or a `MosaicError`.

        `scope` is the scope the route needs, named in the error when the token lacks it."""
        token = self.tokens.current()
        answer = self._send(path, params, token)
        if answer.status_code == 401:
            first_code, first_detail = _problem(answer)
            try:
                token = self.tokens.renew(token)
            except TokenRequestError as exc:
                raise TokenRequestError(
                    f"the gateway refused the token ({first_code}: {first_detail}), and a new one"
                    f" was refused too: {exc}",
                    status=exc.status,
                    error=exc.error,
                ) from exc
            answer = self._send(path, params, token)
            if answer.status_code == 401:
                code, detail = _problem(answer)
                raise UnauthorizedError(
                    f"GET {path}: the gateway refused a freshly issued token ({code}: {detail});"
                    " giving up rather than asking again",
                    status=401,
                    code=code,
                )
        if answer.is_success:
            return answer.json()
        code, detail = _problem(answer)
        if answer.status_code == 403 and code == "auth.scope_missing":
            has = ", ".join(sorted(token.scopes)) or "none"
            raise ScopeMissingError(
                f"GET {path} needs the scope {scope!r}, which client {self.tokens.client_id!r}"
                f" does not have (its token's scopes: {has}). Ask the platform's admin to register"
                f" the client for {scope!r}. (gateway: {detail})",
                needed=scope,
                granted=token.scopes,
            )
        if answer.status_code == 429:
            raise UnavailableError(
                f"GET {path}: still rate limited after {self._retry.attempts} tries ({detail})",
                status=429,
                code=code,
            )
        if answer.status_code >= 500:
            raise UnavailableError(
                f"GET {path}: the platform answered {answer.status_code} after"
                f" {self._retry.attempts} tries ({code}: {detail})",
                status=answer.status_code,
                code=code,
            )
        raise MosaicError(
            f"GET {path}: {answer.status_code} {code or ''} {detail}".rstrip(),
            status=answer.status_code,
            code=code,
        )

    def _send(
        self, path: str, params: Mapping[str, str | int], token: AccessToken
    ) -> httpx.Response:
        headers = {"authorization": f"Bearer {token.value}", "accept": "application/json"}
        return send_with_retries(
            lambda: self._http.get(path, params=params, headers=headers),
            policy=self._retry,
            sleep=self._sleep,
            what=f"GET {path}",
        )
