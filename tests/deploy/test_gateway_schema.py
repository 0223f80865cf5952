"""The gateway configurations the devstack generates (`mosaic up`, `mosaic compose`, `mosaic
manifests` for each overlay) are valid against the gateway's JSON Schema, as an editor opening
them would see (gateway/gateway.schema.json; gateway/tests/test_config_schema.py keeps it
generated from the models)."""

from __future__ import annotations

from typing import Any

import pytest
from config_schema_support import schema_errors

from mosaic_devstack import compose, manifests
from mosaic_devstack.gateway_config import GatewaySettings, gateway_config, render
from mosaic_devstack.services import SERVICES, openapi_documents


@pytest.fixture(scope="module")
def documents() -> dict[str, dict[str, Any]]:
    return dict(openapi_documents(SERVICES))


def test_mosaic_ups_configuration(documents: dict[str, dict[str, Any]]) -> None:
    # Every optional part `mosaic up` may write: its JWT settings and tracing.
    settings = GatewaySettings(
        listen="127.0.0.1",
        port=8080,
        admin_port=9901,
        workers=2,
        nats_url="nats://127.0.0.1:4222",
        jwt_issuer="mosaic-auth",
        jwt_audience="mosaic",
        otlp_endpoint="http://127.0.0.1:4318",
    )
    text = render(gateway_config(settings, documents), "gateway.yaml")
    assert "otlp_endpoint" in text
    assert schema_errors(text) == []


def test_compose_configuration() -> None:
    assert schema_errors(compose.gateway_yaml(SERVICES)) == []


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_kubernetes_configuration(overlay: str) -> None:
    text = manifests.gateway_yaml(SERVICES, manifests.load_overlay(overlay))
    assert schema_errors(text) == []
