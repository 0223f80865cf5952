"""Stopping what a stack recorded in state.json, when its supervisor cannot do it any more."""

from __future__ import annotations

import signal

from mosaic_devstack.procs import ProcessRef, terminate
from mosaic_devstack.state import State


def stop_recorded(state: State, grace: float = 10.0) -> list[ProcessRef]:
    """Stop every recorded process still alive, in the supervisor's order; return survivors.

    Servers given from outside (DATABASE_URL, NATS_URL) have no recorded process and are never
    touched.
    """
    services = [ref for inst in state.instances if (ref := inst.process()) is not None]
    if state.gateway and (gateway := state.gateway.process()) is not None:
        # Signalled first, so clients stop getting in (it drains its workers itself on SIGTERM);
        # waited for together with the services, so parts that hang cost one grace period.
        services.insert(0, gateway)
    terminate(services, signal.SIGTERM, grace)
    # The single server, or a cluster's nodes (its `nats` entry then has no process).
    nats = [ref for info in (state.nats, *state.nats_nodes) if info and (ref := info.process())]
    terminate(nats, signal.SIGTERM, 10.0)
    if state.postgres and (pg := state.postgres.process()) is not None:
        # SIGINT is PostgreSQL's fast shutdown; SIGKILL would leave its backends behind.
        terminate([pg], signal.SIGINT, 15.0)
    return [ref for ref in state.processes() if ref.alive()]
