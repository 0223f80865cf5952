"""NATS users and permissions of a local stack: one user per service, plus the gateway's.

`mosaic up` runs its NATS servers with the `authorization` block `server_config()` renders: each
service connects as its own user (`NATS_USER` = its name, `NATS_PASSWORD` generated once per
data folder like the other secrets) and may publish and subscribe only on

- its own subjects: its endpoints (`<name>.>`, answered through `allow_responses`), its
  discovery (`$SRV.*`, `$SRV.*.<name>`, `$SRV.*.<name>.*`), its events (`events.<name>.>`) and
  its replies (`_INBOX_<name>.>`, the inbox prefix it is given);
- the JetStream API for what it owns: its stream `EVENTS_<NAME>`, the shared `DLQ`, its KV
  buckets (`nats_buckets`);
- what it declares in the registry: the streams it reads (`nats_consumes`: consumers on them,
  never the streams themselves) and the endpoints of others it calls (`nats_calls`).

So blog cannot publish `events.auth.*` nor answer `auth.*` requests, and reco cannot create or
delete another service's stream. The gateway may call auth's API key and JWKS endpoints, ask
`$SRV.INFO.<service>`, follow auth's events, hear every service's events (cache invalidation)
and keep its rate-limit bucket. The devstack itself (waiting for JetStream, `mosaic exec`)
connects as the unrestricted `mosaic` user.

Left to a deployment with NATS accounts: a reader of a stream may fetch from any consumer of it
(consumer names are chosen at run time, so the subject cannot name the owner).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from mosaic_devstack.services import Service
from mosaic_devstack.state import DataDir, kept_secrets, write_private_text

ADMIN = "mosaic"
"""The devstack's own user: unrestricted, for its set-up and the operator's `mosaic exec`."""
GATEWAY = "gateway"
GATEWAY_BUCKET = "gateway_rate_limits"
GATEWAY_CALLS = ("auth.apikeys.verify", "auth.jwks.get")
GATEWAY_CONSUMES = ("auth",)

_JS = "$JS.API"


def password_secret(user: str) -> str:
    """The name of the kept secret (`DataDir.secrets`) holding `user`'s NATS password."""
    return f"NATS_PASSWORD_{user.upper()}"


def inbox_prefix(user: str) -> str:
    return f"_INBOX_{user}"


def stream_name(service: str) -> str:
    return f"EVENTS_{service.upper()}"


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False
    """Whether the user answers requests (publishing to the reply subject of one it received)."""

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {
            "publish": {"allow": list(self.publish)},
            "subscribe": {"allow": list(self.subscribe)},
        }
        if self.allow_responses:
            body["allow_responses"] = True
        return body


def _owned_stream(stream: str) -> list[str]:
    """Creating and updating a stream of one's own (never deleting or purging it)."""
    return [f"{_JS}.STREAM.{op}.{stream}" for op in ("CREATE", "UPDATE", "INFO")]


def _read_stream(stream: str) -> list[str]:
    """Reading a stream through consumers: durable, ordered (push, flow-controlled) or pull."""
    return [
        f"{_JS}.STREAM.INFO.{stream}",
        f"{_JS}.CONSUMER.CREATE.{stream}",
        f"{_JS}.CONSUMER.CREATE.{stream}.>",
        f"{_JS}.CONSUMER.DURABLE.CREATE.{stream}.*",
        f"{_JS}.CONSUMER.INFO.{stream}.*",
        f"{_JS}.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def _bucket(bucket: str) -> list[str]:
    stream = f"KV_{bucket}"
    return [
        *_owned_stream(stream),
        *_read_stream(stream),
        f"{_JS}.DIRECT.GET.{stream}",
        f"{_JS}.DIRECT.GET.{stream}.>",
        f"{_JS}.STREAM.MSG.GET.{stream}",
        f"$KV.{bucket}.>",
    ]


# Every client: JetStream's account info and finding a stream by subject.
_JS_BASE = (f"{_JS}.INFO", f"{_JS}.STREAM.NAMES")


def _unique(subjects: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(subjects))


def service_permissions(service: Service) -> Permissions:
    name = service.name
    publish = [
        *_JS_BASE,
        f"events.{name}.>",
        *_owned_stream(stream_name(name)),
        *_owned_stream("DLQ"),
        *_read_stream(stream_name(name)),
        *(
            subject
            for other in service.nats_consumes
            for subject in _read_stream(stream_name(other))
        ),
        *(subject for bucket in service.nats_buckets for subject in _bucket(bucket)),
        *service.nats_calls,
    ]
    if service.nats_consumes:
        publish.append("dlq.>")  # what its consumers give up on (`dlq.<durable>`)
    subscribe = [
        f"{name}.>",
        "$SRV.*",
        f"$SRV.*.{name}",
        f"$SRV.*.{name}.*",
        f"{inbox_prefix(name)}.>",
    ]
    return Permissions(_unique(publish), _unique(subscribe), allow_responses=True)


def gateway_permissions(services: Sequence[Service]) -> Permissions:
    publish = [
        *_JS_BASE,
        *(subject for other in GATEWAY_CONSUMES for subject in _read_stream(stream_name(other))),
        *_bucket(GATEWAY_BUCKET),
        *GATEWAY_CALLS,
        *(f"$SRV.INFO.{service.name}" for service in services),
    ]
    subscribe = [
        f"{inbox_prefix(GATEWAY)}.>",
        # Cache invalidation listens to the services' events as plain subscriptions.
        *(f"events.{service.name}.>" for service in services),
    ]
    return Permissions(_unique(publish), _unique(subscribe))


def users(services: Sequence[Service]) -> dict[str, Permissions | None]:
    """Every user of the stack and its permissions (None: unrestricted)."""
    found: dict[str, Permissions | None] = {ADMIN: None, GATEWAY: gateway_permissions(services)}
    for service in services:
        found[service.name] = service_permissions(service)
    return found


def _authorization(
    permissions: dict[str, Permissions | None], password: Callable[[str], str]
) -> str:
    entries = []
    for user, granted in permissions.items():
        # The password goes in as configuration text: a quoted literal, or a `$VARIABLE`.
        entry = f'{{"user": {json.dumps(user)}, "password": {password(user)}'
        if granted is not None:
            entry += f', "permissions": {json.dumps(granted.to_json())}'
        entries.append(entry + "}")
    body = ",\n    ".join(entries)
    return f"authorization {{\n  users = [\n    {body}\n  ]\n}}\n"


def server_config(permissions: dict[str, Permissions | None], passwords: dict[str, str]) -> str:
    """The nats-server configuration file of the stack's authorization (JSON is valid NATS
    configuration, and quoting every string keeps `$JS...` from reading as a variable)."""
    return "# Written by `mosaic up` at every start; private (it holds the NATS passwords).\n" + (
        _authorization(permissions, lambda user: json.dumps(passwords[user]))
    )


def password_variable(user: str) -> str:
    """The configuration variable a deployment's NATS reads `user`'s password from (defined in
    an included file or the server's environment, never in the committed configuration)."""
    return password_secret(user)


def server_config_by_variables(permissions: dict[str, Permissions | None]) -> str:
    """The `authorization` block with each password as `$NATS_PASSWORD_<USER>`: the text holds
    no secret, so a deployment may commit it (compose, Helm values)."""
    return _authorization(permissions, lambda user: f"${password_variable(user)}")


def passwords(data: DataDir, names: Iterable[str]) -> dict[str, str]:
    """Each user's password, kept in the data folder (generated there the first time)."""
    secrets = {name: password_secret(name) for name in names}
    # An empty environment: these are the devstack's own, never taken from outside.
    kept = kept_secrets(data, secrets.values(), {})
    return {name: kept[secret] for name, secret in secrets.items()}


def write_server_config(data: DataDir, services: Sequence[Service]) -> dict[str, str]:
    """Write `data.nats_config` for `services`; the passwords of its users."""
    granted = users(services)
    found = passwords(data, granted)
    write_private_text(data.nats_config, server_config(granted, found))
    return found


def login_env(user: str) -> dict[str, str]:
    """Who a kit process connects as (`mosaic_kit.settings`); its password comes separately
    (here, or as a secret file where containers run)."""
    return {"NATS_USER": user, "NATS_INBOX_PREFIX": inbox_prefix(user)}


def client_env(user: str, password: str) -> dict[str, str]:
    """The settings a kit process reads to connect as `user`, its password included."""
    return {**login_env(user), "NATS_PASSWORD": password}
