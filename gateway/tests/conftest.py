"""Fixtures starting real backend and gateway processes (see gateway_support.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from gateway_support import BackendFactory, GatewayFactory


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[BackendFactory]:
    factory = BackendFactory(tmp_path)
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def shared_backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendFactory]:
    """Backends reused by the tests of one module (they only read, or reset what they count):
    one process per name and mode."""
    factory = BackendFactory(tmp_path_factory.mktemp("backends"), reuse=True)
    yield factory
    factory.close()


@pytest.fixture
async def gateways(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    factory = GatewayFactory(tmp_path)
    yield factory
    await factory.close()
