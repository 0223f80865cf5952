"""Writes docs/configuration.md from the settings classes themselves, so it cannot drift.

Run: `python tools/configdoc.py > docs/configuration.md` (a test checks it is current).
"""

from __future__ import annotations

import sys
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from mosaic_auth.settings import AuthSettings
from mosaic_devstack.services import SERVICES as REGISTRY
from mosaic_kit.settings import ServiceSettings

# Every service of the registry, in its order (a generated service appears without an edit here).
SERVICES: list[tuple[str, type[ServiceSettings]]] = [
    (f"{s.name} (`{s.command[0]}`)", s.load_definition().settings) for s in REGISTRY
]

PREAMBLE = """# Configuration

Every service reads its settings, highest priority first, from:

1. **command-line flags** of its CLI (`mosaic-auth serve --port 8001`): one flag per setting, the
   setting's name with dashes (`--database-url`, `--auth-access-token-ttl`);
2. **environment variables**: the setting's name in upper case, no prefix (`DATABASE_URL`,
   `AUTH_ACCESS_TOKEN_TTL`);
3. a **`.env` file** in the working directory;
4. a **secrets directory** named by `SECRETS_DIR`, one file per setting named like the variable
   (`$SECRETS_DIR/DATABASE_URL`, `$SECRETS_DIR/AUTH_SIGNING_KEY_SECRET`), as Kubernetes mounts
   secrets;
5. the default below.

Settings marked *secret* are never printed (their value shows as `**********`) and never logged.
This page is generated from the settings classes by
`python tools/configdoc.py > docs/configuration.md`; a test fails when it is stale.
"""

DEVSTACK = """## devstack (`mosaic`) and the test suite

| variable | default | meaning |
|---|---|---|
| `MOSAIC_DATA` | `.mosaic` | data folder of `mosaic up` (PostgreSQL, NATS, logs, state, credentials, secrets, gateway.yaml) |
| `MOSAIC_GATEWAY_PORT` | unset | the gateway's port (`mosaic up --gateway-port`); unset: 8080 when free, else any free port; `0`: any free port. `mosaic up` binds it at its check and holds it for the stack's life (docs/operations.md) |
| `DATABASE_URL` | unset | when set, `mosaic up` uses this PostgreSQL instead of starting one |
| `NATS_URL` | unset | when set, `mosaic up` uses this NATS (JetStream on) instead of starting one |
| `REDIS_URL` | unset | passed through to the services |
| `MOSAIC_TEST_DATABASE_URL` | unset | run the tests against this PostgreSQL instead of an embedded one |
| `MOSAIC_TEST_NATS_URL` | unset | run the tests against this NATS instead of an embedded one |
| `NO_COLOR` | unset | plain output from `mosaic` |

`mosaic up` generates the secrets a service needs but does not make itself (auth's
`AUTH_SIGNING_KEY_SECRET`) once, into `$MOSAIC_DATA/secrets/<NAME>` (mode 0600, folder 0700),
reuses them at every start and passes them to that service's steps and replicas; it never prints
them. A value set in the environment of `mosaic up` is used instead.

The gateway is configured by its YAML file, not by variables: every setting and its default is in
docs/gateway.md (for example `backends.<name>.retries.per_try_timeout`, default none; `mosaic up`
writes 3s), and what `mosaic up` writes is in docs/operations.md. Its JSON Schema, for editors, is
gateway/gateway.schema.json (`mosaic-gateway schema`).
"""

NOTES: dict[type[ServiceSettings], str] = {
    AuthSettings: """\
**Signing keys at rest.** `serve`, `seed` and `rotate-keys` refuse to run (exit code 2, the reason
on stderr) without `AUTH_SIGNING_KEY_SECRET`, unless `AUTH_ALLOW_PLAINTEXT_KEYS=true`. Private
keys are stored as PKCS#8 PEM encrypted with the secret: make it a long random value
(`python -c 'import secrets; print(secrets.token_urlsafe(32))'`), not a password, as the key
derivation is not built to resist guessing a short one. Keys stored in plaintext earlier (while
plaintext was allowed) are encrypted in place at the next start with a secret, keeping their
`kid`, so issued tokens stay valid. Keep the secret: with another one, or none, the service cannot
read its active key and refuses to start ("cannot be decrypted"). To change it, run `rotate-keys`
with the new one and restart every replica with it (docs/operations.md, "Secrets").

**Sign-in throttle.** Each attempt is counted, per account and per client address, in the
database (`signin_throttle`, under a PostgreSQL advisory lock) *before* its password is checked.
So however many attempts run in parallel, on however many replicas, at most
`AUTH_SIGNIN_MAX_FAILURES` get a password check per account (`..._PER_ADDRESS` per address)
before the lock; the others get 429 `auth.too_many_attempts` with `Retry-After`, the right
password included, until the lock passes. A right password clears its account's count and takes
its own attempt back from the address's.
""",
}


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        return "computed"
    value: Any = info.default
    if value is PydanticUndefined:
        return "required"
    if value is None:
        return "unset"
    secret = getattr(value, "get_secret_value", None)
    if secret is not None:
        value = secret()
    return f"`{value}`"


def _is_secret(info: FieldInfo) -> bool:
    return "SecretStr" in repr(info.annotation)


def _row(name: str, info: FieldInfo) -> str:
    flag = "--" + name.replace("_", "-")
    secret = " *(secret)*" if _is_secret(info) else ""
    return f"| `{name.upper()}` | `{flag}` | {_default(info)} | {info.description or ''}{secret} |"


def _table(rows: list[str]) -> str:
    head = "| variable | flag | default | meaning |\n|---|---|---|---|\n"
    return head + "\n".join(rows) + "\n"


def render() -> str:
    base = ServiceSettings.model_fields
    parts = [PREAMBLE, "## Every service\n", _table([_row(n, f) for n, f in base.items()])]
    for title, cls in SERVICES:
        own = [
            _row(name, info)
            for name, info in cls.model_fields.items()
            if name not in base or _default(info) != _default(base[name])
        ]
        parts.append(
            f"\n## {title}\n\nIts own settings, and the shared ones whose default differs.\n"
        )
        parts.append(_table(own))
        if cls in NOTES:
            parts.append(NOTES[cls])
    parts.append("\n" + DEVSTACK)
    return "\n".join(parts)


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
