"""A route's `ip_restriction`: which client addresses may use it (Kong's ip-restriction)."""

from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator, model_validator

from mosaic_gateway.config.base import Spec


class IpRestrictionSpec(Spec):
    """Client addresses (the TCP peer, never a forwarded header) allowed or denied."""

    allow: list[str] = Field(
        default_factory=list,
        description="Addresses or CIDR blocks; when given, only these may use the route.",
    )
    deny: list[str] = Field(
        default_factory=list,
        description="Addresses or CIDR blocks refused (403), even when `allow` lists them.",
    )

    @field_validator("allow", "deny")
    @classmethod
    def _check_networks(cls, networks: list[str]) -> list[str]:
        for network in networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not an IP address or CIDR block") from None
        return networks

    @model_validator(mode="after")
    def _check_some(self) -> IpRestrictionSpec:
        if not self.allow and not self.deny:
            raise ValueError("give `allow`, `deny` or both")
        return self
