"""Which address is the client's when the gateway sits behind proxies (nginx, a load balancer).

X-Forwarded-For is a list each proxy appends its peer to, so only its right end is written by
proxies we run; anything to the left may be what the client typed. The client is therefore the
rightmost address that is not one of TRUSTED_PROXIES, found by walking from the connection's own
peer leftwards through trusted hops only. A peer that is not trusted is the client, whatever it
sends: an X-Forwarded-For from the open internet is a claim, not an address.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """TRUSTED_PROXIES, ready to answer `client_address` for each handshake."""

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks: tuple[Network, ...] = tuple(ipaddress.ip_network(n.strip(), strict=False) for n in networks if n.strip())

    def trusts(self, address: str) -> bool:
        parsed = _parse(address)
        return parsed is not None and any(parsed.version == n.version and parsed in n for n in self.networks)

    def client_address(self, peer: str, forwarded_for: str | None) -> str:
        """The client's address: `peer` unless it is a trusted proxy that forwarded the request."""
        if not self.networks or not forwarded_for or not self.trusts(peer):
            return peer
        client = peer
        for hop in reversed(forwarded_for.split(",")):
            address = _parse(hop)
            if address is None:
                # Garbage where an address should be: nothing left of it can be vouched for, so
                # the client is the last hop a trusted proxy did vouch for.
                return client
            client = str(address)
            if not self.trusts(client):
                return client
        return client  # every hop was a trusted proxy: the leftmost is as close as we get
