"""Fixtures starting real backend and gateway processes (see gateway_support.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from gateway_support import BackendFactory, BackendPool, GatewayFactory, close_fork_server


@pytest.fixture(scope="session", autouse=True)
def _fork_server() -> Iterator[None]:
    """The test process's gateway fork server (forkserver_support.py) stops with the session."""
    yield
    close_fork_server()


@pytest.fixture(scope="session")
def backend_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendPool]:
    """Backend processes handed from test to test (gateway_support.BackendPool), stopped at the
    end of the session."""
    pool = BackendPool(tmp_path_factory.mktemp("backend-pool"))
    yield pool
    pool.close()


@pytest.fixture
def backends(tmp_path: Path, backend_pool: BackendPool) -> Iterator[BackendFactory]:
    factory = BackendFactory(tmp_path, pool=backend_pool)
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def shared_backends(
    tmp_path_factory: pytest.TempPathFactory, backend_pool: BackendPool
) -> Iterator[BackendFactory]:
    """Backends reused by the tests of one module (they only read, or reset what they count):
    one process per name and mode."""
    factory = BackendFactory(tmp_path_factory.mktemp("backends"), reuse=True, pool=backend_pool)
    yield factory
    factory.close()


@pytest.fixture
async def gateways(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    factory = GatewayFactory(tmp_path)
    yield factory
    await factory.close()
