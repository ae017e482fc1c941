"""The PROXY protocol preamble (HAProxy, versions 1 and 2), sans-io.

A preamble before the first byte of the connection says who the client
really is; cloud load balancers speak it too.  :func:`parse_proxy_preamble`
reads it from bytes; the serving layer reads the bytes (``_serve/_edge.py``).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import final

from .._types import Address

_V1_PREFIX = b"PROXY "
_V1_MAX = 107  # section 2.1: the longest possible v1 line, CRLF included
_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_HEADER = 16
# The longest preamble: a v2 header and the largest address block.
PREAMBLE_MAX = _V2_HEADER + 65535


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
    version = 4 if fields[1] == b"TCP4" else 6
    try:
        src, dst = (_v1_address(f.decode("ascii"), version) for f in fields[2:4])
        sport, dport = (_v1_port(f) for f in fields[4:6])
    except (ValueError, OSError):
        raise ProxyProtocolError(f"malformed PROXY v1 line {line!r}") from None
    return ProxyPreamble(length, (src, sport), (dst, dport))


def _v1_address(text: str, version: int) -> str:
    """The address in its normal written form; ValueError if it is not one."""
    if "%" in text:
        raise ValueError("a scope id is no address on the wire")
    address = ipaddress.ip_address(text)
    if address.version != version:
        raise ValueError("wrong address family")
    return _written(address)


def _written(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An address as the C library's ``inet_ntop`` writes it.

    That is ``ipaddress``'s form, except for IPv6 addresses that carry an
    IPv4 one in their last 32 bits (``::ffff:1.2.3.4``, ``::1.2.3.4``),
    which ``inet_ntop`` ends in dotted decimal.
    """
    if address.version == 6:
        packed = address.packed
        if packed[:10] == bytes(10) and packed[10:12] in (b"\xff\xff", b"\0\0"):
            if packed[10:12] == b"\xff\xff":
                return "::ffff:" + str(ipaddress.IPv4Address(packed[12:]))
            if packed[12:14] != b"\0\0":
                return "::" + str(ipaddress.IPv4Address(packed[12:]))
    return str(address)


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
            str(ipaddress.IPv4Address(body[0:4])),
            str(ipaddress.IPv4Address(body[4:8])),
        )
        sport, dport = struct.unpack_from("!HH", body, 8)
    elif family == 2 and size >= 36:
        src, dst = (
            _written(ipaddress.IPv6Address(body[0:16])),
            _written(ipaddress.IPv6Address(body[16:32])),
        )
        sport, dport = struct.unpack_from("!HH", body, 32)
    elif family == 3:
        return ProxyPreamble(length, None, None)
    else:
        raise ProxyProtocolError(f"PROXY v2 address block too short ({size} bytes)")
    return ProxyPreamble(length, (src, sport), (dst, dport))
