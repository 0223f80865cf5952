"""`mosaic exec SERVICE COMMAND [ARGS...]`: a service's command against the stack `mosaic up` runs.

Operator commands (`migrate`, `rotate-keys`, `seed`) need the database and NATS of the stack, the
service's schema and its kept secrets: exactly what `mosaic up` gives the service's own steps.
Without them a command would have to guess (PostgreSQL on 127.0.0.1:5432 is, on many machines,
someone else's server), which the service commands refuse to do.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

from mosaic_devstack import nats_auth
from mosaic_devstack.services import RegistryError, Service
from mosaic_devstack.state import DataDir, kept_secrets, read_state

__all__ = ["exec_in_stack", "stack_env"]


def stack_env(data: DataDir, service: Service) -> dict[str, str]:
    """The environment `mosaic up` gives `service`'s steps, from the running stack's state."""
    state = read_state(data)
    if state is None or not state.supervisor().alive():
        raise RegistryError(f"no stack runs from {data.root}: start one with `make run`")
    if state.postgres is None or state.nats is None:
        raise RegistryError(f"the stack in {data.root} is still starting its servers; try again")
    env = {**os.environ, "DATABASE_URL": state.postgres.url, "NATS_URL": state.nats.url}
    if state.nats_nodes:
        # A command that creates a stream must replicate it like the services do.
        env.setdefault("NATS_STREAM_REPLICAS", str(len(state.nats_nodes)))
    if service.schema:
        env["DB_SCHEMA"] = service.schema
    env.update(kept_secrets(data, service.secrets, env))
    if state.nats.embedded:
        # The stack's own NATS has authorization: the command logs in as its service.
        password = nats_auth.passwords(data, [service.name])[service.name]
        env.update(nats_auth.client_env(service.name, password))
    return env


def exec_in_stack(
    data: DataDir, services: Sequence[Service], name: str, arguments: Sequence[str]
) -> int:
    """Run `<name's command> ARGUMENTS` with the stack's environment; its exit code."""
    found = {service.name: service for service in services}
    service = found.get(name)
    if service is None:
        raise RegistryError(f"no service {name!r} in the registry ({', '.join(sorted(found))})")
    if not arguments:
        raise RegistryError(f"which command of {name}? e.g. `mosaic exec {name} migrate`")
    env = stack_env(data, service)
    return subprocess.run(service.argv(*arguments), env=env, check=False).returncode
