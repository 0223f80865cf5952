"""The IP restriction filter: a route's `ip_restriction` allow and deny lists, checked against
the client's address as the TCP peer (a forwarded header could be anyone's claim).

A denied address is answered 403 before any other filter spends work on it; `deny` wins over
`allow`. An IPv4 client reaching an IPv6 listener (`::ffff:a.b.c.d`) is judged by its IPv4
address. Verdicts are remembered per address (bounded), so a request pays one dict lookup.
"""

from __future__ import annotations

import ipaddress

from mosaic_gateway.config.ip_restriction import IpRestrictionSpec
from mosaic_gateway.http.problems import GatewayProblem
from mosaic_gateway.http.server import Exchange

IP_FORBIDDEN = GatewayProblem(403, "gateway.ip_forbidden", "Requests from this address are refused")
_VERDICTS_MAX = 10_000

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class IpRestrictionFilter:
    __slots__ = ("_verdicts", "allow", "deny")

    def __init__(self, allow: list[Network], deny: list[Network]) -> None:
        self.allow = tuple(allow)
        self.deny = tuple(deny)
        self._verdicts: dict[bytes, bool] = {}

    @classmethod
    def from_spec(cls, spec: IpRestrictionSpec) -> IpRestrictionFilter:
        return cls(
            [ipaddress.ip_network(network, strict=False) for network in spec.allow],
            [ipaddress.ip_network(network, strict=False) for network in spec.deny],
        )

    def on_request(self, exchange: Exchange) -> bool:
        peer = exchange.conn.peer
        allowed = self._verdicts.get(peer)
        if allowed is None:
            allowed = self.admits(peer)
            if len(self._verdicts) >= _VERDICTS_MAX:
                self._verdicts.clear()
            self._verdicts[peer] = allowed
        if allowed:
            return True
        exchange.send_problem(IP_FORBIDDEN)
        return False

    def admits(self, peer: bytes) -> bool:
        try:
            address = ipaddress.ip_address(peer.decode("ascii"))
        except ValueError:
            return False  # not an IP peer (a Unix socket): only an unrestricted route serves it
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.deny):
            return False
        return not self.allow or any(address in network for network in self.allow)
