"""A route's `ip_restriction`: the filter's rule, its configuration, and a gateway applying it."""

from __future__ import annotations

import ipaddress

import pytest
from gateway_support import BackendFactory, GatewayFactory, gateway_config

from mosaic_gateway.config import ConfigError, parse_config
from mosaic_gateway.filters.ip_restriction import IpRestrictionFilter

PROBLEM = "application/problem+json"


def restriction(allow: list[str] = [], deny: list[str] = []) -> IpRestrictionFilter:  # noqa: B006
    return IpRestrictionFilter(
        [ipaddress.ip_network(n, strict=False) for n in allow],
        [ipaddress.ip_network(n, strict=False) for n in deny],
    )


def test_allow_list_admits_only_its_networks() -> None:
    rule = restriction(allow=["10.0.0.0/8", "2001:db8::/32"])
    assert rule.admits(b"10.1.2.3")
    assert rule.admits(b"2001:db8::7")
    assert not rule.admits(b"11.0.0.1")
    assert not rule.admits(b"127.0.0.1")


def test_deny_wins_over_allow() -> None:
    rule = restriction(allow=["10.0.0.0/8"], deny=["10.9.0.0/16"])
    assert rule.admits(b"10.1.0.1")
    assert not rule.admits(b"10.9.0.1")


def test_deny_only_admits_everyone_else() -> None:
    rule = restriction(deny=["192.0.2.1"])
    assert not rule.admits(b"192.0.2.1")
    assert rule.admits(b"192.0.2.2")


def test_an_ipv4_client_on_an_ipv6_listener_is_judged_by_its_ipv4_address() -> None:
    rule = restriction(deny=["192.0.2.0/24"])
    assert not rule.admits(b"::ffff:192.0.2.9")
    assert rule.admits(b"::ffff:198.51.100.1")


def test_a_peer_that_is_no_ip_address_is_refused_by_a_restricted_route() -> None:
    assert not restriction(deny=["192.0.2.1"]).admits(b"")


CONFIG = """
backends: {b: {instances: ["http://127.0.0.1:9"]}}
routes:
  - path: /x
    methods: [GET]
    backend: b
    ip_restriction: %s
"""


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("{allow: [10.0.0.300]}", "'10.0.0.300' is not an IP address or CIDR block"),
        ("{deny: [not-an-ip]}", "'not-an-ip' is not an IP address or CIDR block"),
        ("{}", "give `allow`, `deny` or both"),
        ("{allow: [10.0.0.0/8], except: [x]}", "except"),
    ],
)
def test_bad_sections_are_refused_with_their_place(section: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(CONFIG % section, "gw.yaml")
    text = str(caught.value)
    assert "gw.yaml:7:" in text
    assert "ip_restriction" in text
    assert message in text


async def test_the_gateway_refuses_and_admits_by_the_peer_address(
    backends: BackendFactory, gateways: GatewayFactory
) -> None:
    echo = backends("echo")
    route = {"methods": ["GET"], "backend": "echo"}
    gw = gateways(
        gateway_config(
            {"echo": {"instances": [echo.url]}},
            [
                {**route, "path": "/closed", "ip_restriction": {"allow": ["10.0.0.0/8"]}},
                {**route, "path": "/denied", "ip_restriction": {"deny": ["127.0.0.0/8"]}},
                {**route, "path": "/open", "ip_restriction": {"allow": ["127.0.0.1"]}},
            ],
        )
    )
    client = gw.client()
    for path in ("/closed", "/denied"):
        # A forwarded header cannot talk its way in: only the TCP peer counts.
        refused = await client.get(path, headers={"x-forwarded-for": "10.0.0.1"})
        assert refused.status_code == 403
        assert refused.headers["content-type"] == PROBLEM
        assert refused.json()["code"] == "gateway.ip_forbidden"
    assert echo.stats()["requests"] == 0  # refused at the gateway, never forwarded
    admitted = await client.get("/open")
    assert admitted.status_code == 200
    assert echo.stats()["requests"] == 1
