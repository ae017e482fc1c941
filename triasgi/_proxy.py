"""Behind a proxy: forwarded headers and the PROXY protocol, sans-io.

Two ways a proxy tells us who the client really is:

* Headers on each request: ``X-Forwarded-For``/``-Proto``/``-Host``/``-Port``
  or the standard ``Forwarded`` (RFC 7239).  Any client can send them, so
  they count only when the direct peer is a trusted proxy
  (``forwarded_allow_ips``); :func:`apply_proxy_headers` rewrites a scope.
* A preamble before the first byte of the connection: the PROXY protocol
  of HAProxy, versions 1 (text) and 2 (binary), which cloud load balancers
  speak too.  :func:`parse_proxy_preamble` reads it from bytes.

The parsing does no I/O; only the last section, which reads a preamble
from a stream for the server, touches trio.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, final

import trio

from ._types import Address

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


# -- the PROXY protocol --------------------------------------------------------

# https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
_V1_PREFIX = b"PROXY "
_V1_MAX = 107  # section 2.1: the longest possible v1 line, CRLF included
_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_HEADER = 16
_V2_MAX = 16 + 65535


class ProxyProtocolError(Exception):
    """A malformed PROXY protocol preamble; the connection must be closed."""


@final
@dataclass(frozen=True)
class ProxyPreamble:
    """A parsed PROXY preamble.

    Attributes:
        length: how many bytes it took; what follows belongs to HTTP.
        client: the original client address, or None to keep the socket's
            (``UNKNOWN`` and ``LOCAL`` preambles, used for health checks).
        server: the address the client connected to, or None likewise.
    """

    length: int
    client: Address | None
    server: Address | None


def parse_proxy_preamble(data: bytes) -> ProxyPreamble | None:
    """Parse a PROXY v1 or v2 preamble at the start of ``data``.

    Returns:
        The preamble, or None if ``data`` is a valid beginning that needs
        more bytes.

    Raises:
        ProxyProtocolError: ``data`` does not start with a valid preamble.
    """
    if data[:1] == b"P":
        return _parse_v1(data)
    if data[:1] == b"\r":
        return _parse_v2(data)
    if not data:
        return None
    raise ProxyProtocolError("the connection did not start with a PROXY preamble")


def _parse_v1(data: bytes) -> ProxyPreamble | None:
    if not data.startswith(_V1_PREFIX[: len(data)]):
        raise ProxyProtocolError("the connection did not start with a PROXY preamble")
    end = data.find(b"\r\n", 0, _V1_MAX)
    if end < 0:
        if len(data) >= _V1_MAX:
            raise ProxyProtocolError("PROXY v1 line longer than 107 bytes")
        return None
    line = data[:end]
    fields = line.split(b" ")
    length = end + 2
    if len(fields) >= 2 and fields[1] == b"UNKNOWN":
        return ProxyPreamble(length, None, None)
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError(f"malformed PROXY v1 line {line[:_V1_MAX]!r}")
    family = socket.AF_INET if fields[1] == b"TCP4" else socket.AF_INET6
    try:
        src, dst = (_v1_address(f.decode("ascii"), family) for f in fields[2:4])
        sport, dport = (_v1_port(f) for f in fields[4:6])
    except (ValueError, OSError):
        raise ProxyProtocolError(f"malformed PROXY v1 line {line!r}") from None
    return ProxyPreamble(length, (src, sport), (dst, dport))


def _v1_address(text: str, family: int) -> str:
    return socket.inet_ntop(family, socket.inet_pton(family, text))


def _v1_port(field: bytes) -> int:
    if not field.isdigit() or len(field) > 5 or int(field) > 65535:
        raise ValueError("bad port")
    return int(field)


def _parse_v2(data: bytes) -> ProxyPreamble | None:
    if not data.startswith(_V2_SIGNATURE[: len(data)]):
        raise ProxyProtocolError("the connection did not start with a PROXY preamble")
    if len(data) < _V2_HEADER:
        return None
    version, command = data[12] >> 4, data[12] & 0x0F
    family, transport = data[13] >> 4, data[13] & 0x0F
    (size,) = struct.unpack_from("!H", data, 14)
    if version != 2 or command > 1:
        raise ProxyProtocolError(
            f"unsupported PROXY v2 version/command 0x{data[12]:02x}"
        )
    length = _V2_HEADER + size
    if len(data) < length:
        return None
    if command == 0 or family == 0 or transport != 1:
        # LOCAL (the proxy's own health check), or an address we do not use.
        return ProxyPreamble(length, None, None)
    body = data[_V2_HEADER:length]
    if family == 1 and size >= 12:
        src, dst = (
            socket.inet_ntop(socket.AF_INET, body[0:4]),
            socket.inet_ntop(socket.AF_INET, body[4:8]),
        )
        sport, dport = struct.unpack_from("!HH", body, 8)
    elif family == 2 and size >= 36:
        src, dst = (
            socket.inet_ntop(socket.AF_INET6, body[0:16]),
            socket.inet_ntop(socket.AF_INET6, body[16:32]),
        )
        sport, dport = struct.unpack_from("!HH", body, 32)
    elif family == 3:
        return ProxyPreamble(length, None, None)
    else:
        raise ProxyProtocolError(f"PROXY v2 address block too short ({size} bytes)")
    return ProxyPreamble(length, (src, sport), (dst, dport))


# -- on a stream ----------------------------------------------------------------


@final
class PrefixedStream(trio.abc.Stream):
    """A stream that first gives back bytes already read from it."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self.stream = stream
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        # ``socket`` and ``send_eof`` of the wrapped stream, where it has them.
        return getattr(self.stream, name)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            await trio.lowlevel.checkpoint()
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        await self.stream.aclose()


async def read_proxy_preamble(
    stream: trio.abc.Stream,
) -> tuple[ProxyPreamble, trio.abc.Stream]:
    """Read a PROXY preamble from ``stream``; the caller bounds the time.

    Returns:
        The preamble, and a stream that gives the bytes after it.

    Raises:
        ProxyProtocolError: the preamble is malformed or the peer closed first.
    """
    data = b""
    while True:
        chunk = await stream.receive_some(_V2_MAX)
        if not chunk:
            raise ProxyProtocolError("the peer closed before a full PROXY preamble")
        data += chunk
        preamble = parse_proxy_preamble(data)
        if preamble is not None:
            rest = data[preamble.length :]
            return preamble, PrefixedStream(stream, rest) if rest else stream
