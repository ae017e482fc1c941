"""Forwarded headers from a trusted proxy (sans-io).

A proxy tells us who the client really is in headers on each request:
``X-Forwarded-For``/``-Proto``/``-Host``/``-Port`` or the standard
``Forwarded`` (RFC 7239).  Any client can send them, so they count only when
the direct peer is a trusted proxy (``forwarded_allow_ips``);
:func:`apply_proxy_headers` rewrites a scope.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, final

from .._types import Address

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@final
class TrustedProxies:
    """The set of peers whose forwarded headers are believed.

    Built from ``forwarded_allow_ips``: addresses and CIDR ranges separated
    by commas, or ``*`` for every peer.  A connection on a Unix socket has
    no peer address and is always trusted: whoever can open the socket file
    is a local process, as trusted as one on 127.0.0.1.
    """

    def __init__(self, networks: Sequence[_Network], *, everyone: bool) -> None:
        self._networks = tuple(networks)
        self._everyone = everyone
        self._cache: dict[str, bool] = {}

    @classmethod
    def parse(cls, text: str) -> TrustedProxies:
        """Parse ``forwarded_allow_ips``.

        Raises:
            ValueError: an entry is neither an address, a CIDR range nor ``*``.
        """
        networks: list[_Network] = []
        everyone = False
        for item in text.split(","):
            item = item.strip()
            if not item:
                continue
            if item == "*":
                everyone = True
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(
                    f"forwarded_allow_ips entries must be IP addresses, CIDR "
                    f"ranges or '*', got {item!r}."
                ) from None
        return cls(networks, everyone=everyone)

    def trusts(self, host: str | None) -> bool:
        """Whether a peer at ``host`` (None: a Unix socket peer) is trusted."""
        if host is None or self._everyone:
            return True
        known = self._cache.get(host)
        if known is None:
            address = _ip(host)
            known = address is not None and any(
                address in network for network in self._networks
            )
            if len(self._cache) >= 1024:
                self._cache.clear()
            self._cache[host] = known
        return known


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


# -- forwarded headers --------------------------------------------------------


@dataclass
class _Hop:
    """What one proxy said about the connection it received."""

    node: str | None  # the ``for`` of this hop
    proto: str | None = None
    host: str | None = None
    port: int | None = None


def apply_proxy_headers(scope: dict[str, Any], trusted: TrustedProxies) -> None:
    """Rewrite ``client``, ``scheme`` and ``server`` of an HTTP or WebSocket scope.

    Nothing changes unless the direct peer (``scope["client"]``) is trusted.
    ``Forwarded`` wins over the ``X-Forwarded-*`` headers when both are sent.
    A chain of proxies is read from the right: hops added by trusted proxies
    are skipped, and the first untrusted address is the client.
    """
    client = scope.get("client")
    if not trusted.trusts(client[0] if client else None):
        return
    hops = _hops(scope["headers"])
    if not hops:
        return
    chosen = hops[0]
    for hop in reversed(hops):
        chosen = hop
        if hop.node is None or not trusted.trusts(_node_host(hop.node)[0]):
            break
    if chosen.node is not None:
        new_client = _node_client(chosen.node)
        if new_client is not None:
            scope["client"] = new_client
    proto = chosen.proto or hops[-1].proto
    if proto in ("http", "https"):
        websocket = scope["scheme"] in ("ws", "wss")
        scope["scheme"] = {"http": "ws", "https": "wss"}[proto] if websocket else proto
    host = chosen.host or hops[-1].host
    if host:
        name, port = _split_host(host)
        port = port or chosen.port or hops[-1].port
        if port is None:
            port = 443 if scope["scheme"] in ("https", "wss") else 80
        scope["server"] = (name, port)


def _hops(headers: Iterable[tuple[bytes, bytes]]) -> list[_Hop]:
    forwarded: list[bytes] = []
    xff: list[bytes] = []
    protos: list[bytes] = []
    hosts: list[bytes] = []
    ports: list[bytes] = []
    for name, value in headers:
        if name == b"forwarded":
            forwarded.append(value)
        elif name == b"x-forwarded-for":
            xff.append(value)
        elif name == b"x-forwarded-proto":
            protos.append(value)
        elif name == b"x-forwarded-host":
            hosts.append(value)
        elif name == b"x-forwarded-port":
            ports.append(value)
    if forwarded:
        return _parse_forwarded(b",".join(forwarded).decode("latin-1"))
    return _x_forwarded_hops(xff, protos, hosts, ports)


def _x_forwarded_hops(
    xff: list[bytes], protos: list[bytes], hosts: list[bytes], ports: list[bytes]
) -> list[_Hop]:
    def items(values: list[bytes]) -> list[str]:
        joined = b",".join(values).decode("latin-1")
        return [item.strip() for item in joined.split(",") if item.strip()]

    nodes = items(xff)
    proto_items = [p.lower() for p in items(protos)]
    host_items = items(hosts)
    port_items = [_port(p) for p in items(ports)]
    hops: list[_Hop] = [_Hop(node) for node in nodes] or [_Hop(None)]
    # Each list is lined up with the hops from the right: the proxy next to
    # us appended the last item of every header it sets.
    for attr, values in (
        ("proto", proto_items),
        ("host", host_items),
        ("port", port_items),
    ):
        for hop, value in zip(reversed(hops), reversed(values), strict=False):
            setattr(hop, attr, value)
    if not nodes:
        # Only -Proto/-Host from a trusted proxy: they describe the direct peer.
        hops[0].node = None
    return hops


def _parse_forwarded(text: str) -> list[_Hop]:
    """RFC 7239 section 4: ``element *( "," element )``, pairs split by ``;``."""
    hops = []
    for element in _split_outside_quotes(text, ","):
        hop = _Hop(None)
        for pair in _split_outside_quotes(element, ";"):
            name, sep, value = pair.partition("=")
            if not sep:
                continue
            name = name.strip().lower()
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            if name == "for":
                hop.node = value
            elif name == "proto":
                hop.proto = value.lower()
            elif name == "host":
                hop.host = value
        hops.append(hop)
    return hops


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == sep and not quoted:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return [part for part in parts if part]


def _node_host(node: str) -> tuple[str | None, int]:
    """``1.2.3.4``, ``1.2.3.4:80``, ``[::1]``, ``[::1]:80`` or ``::1``."""
    if node.startswith("["):
        host, _, rest = node[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif node.count(":") == 1:
        host, _, port = node.partition(":")
    else:
        host, port = node, ""
    address = _ip(host)
    number = _port(port) or 0
    return (str(address) if address is not None else None), number


def _node_client(node: str) -> Address | None:
    host, port = _node_host(node)
    return (host, port) if host is not None else None


def _port(text: str) -> int | None:
    """A TCP port number, or None; ``str.isdigit`` alone would pass ``"²"``."""
    if 0 < len(text) <= 5 and text.isascii() and text.isdigit():
        number = int(text)
        return number if number < 65536 else None
    return None


def _split_host(host: str) -> tuple[str, int | None]:
    if host.startswith("["):
        name, _, rest = host.partition("]")
        name += "]"
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = host.partition(":")
    return name, _port(port)
