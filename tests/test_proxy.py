"""Behind a proxy: forwarded headers, trust, and the PROXY protocol."""

from __future__ import annotations

import socket
import struct

import h11
import pytest
import trio
from conftest import H11Client, connect, read_until_closed

from triasgi import Config
from triasgi._asgi._proxy_headers import TrustedProxies, apply_proxy_headers
from triasgi._protocol._proxy import ProxyProtocolError, parse_proxy_preamble
from triasgi.testing import open_memory_connection, open_memory_server, open_server

# The whole module runs against both request parsers (--http).
pytestmark = pytest.mark.usefixtures("http_backend")


def scope_for(headers, client=("10.0.0.1", 4000), scheme="http", server=("10.0.0.2", 80)):
    return {
        "type": "http",
        "scheme": scheme,
        "client": client,
        "server": server,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
    }


def rewritten(headers, trusted="10.0.0.1", **kwargs):
    scope = scope_for(headers, **kwargs)
    apply_proxy_headers(scope, TrustedProxies.parse(trusted))
    return scope["client"], scope["scheme"], scope["server"]


# -- trust -----------------------------------------------------------------------


def test_trusted_proxies_accept_addresses_ranges_and_star():
    trusted = TrustedProxies.parse("127.0.0.1, 10.0.0.0/8,  fd00::/8")
    assert trusted.trusts("127.0.0.1")
    assert trusted.trusts("10.200.3.4")
    assert trusted.trusts("fd12::1")
    assert trusted.trusts("::ffff:10.1.1.1")  # IPv4-mapped
    assert not trusted.trusts("11.0.0.1")
    assert not trusted.trusts("not-an-ip")
    assert trusted.trusts(None)  # a Unix socket peer
    assert TrustedProxies.parse("*").trusts("203.0.113.9")
    assert not TrustedProxies.parse("").trusts("127.0.0.1")


def test_bad_forwarded_allow_ips_is_a_clear_config_error():
    with pytest.raises(ValueError, match=r"forwarded_allow_ips entries must be IP addresses, CIDR ranges or '\*', got '10.0.0.0/33'\."):
        Config(forwarded_allow_ips="127.0.0.1,10.0.0.0/33")


# -- X-Forwarded-* ------------------------------------------------------------------


def test_x_forwarded_for_and_proto_from_a_trusted_peer():
    client, scheme, server = rewritten(
        [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https")]
    )
    assert client == ("203.0.113.7", 0)
    assert scheme == "https"
    assert server == ("10.0.0.2", 80)


def test_forged_headers_from_an_untrusted_peer_change_nothing():
    headers = [("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "https"),
               ("X-Forwarded-Host", "evil.test"), ("Forwarded", "for=1.2.3.4;proto=https")]
    assert rewritten(headers, client=("198.51.100.1", 5555)) == (
        ("198.51.100.1", 5555), "http", ("10.0.0.2", 80)
    )


def test_chain_is_resolved_from_the_right_skipping_trusted_proxies():
    headers = [("X-Forwarded-For", "6.6.6.6, 203.0.113.7, 10.0.0.5")]
    # 10.0.0.5 is a trusted inner proxy; 203.0.113.7 the first untrusted hop;
    # 6.6.6.6 is whatever the client claimed and is ignored.
    client, _, _ = rewritten(headers, trusted="10.0.0.0/8")
    assert client == ("203.0.113.7", 0)


def test_chain_of_only_trusted_hops_gives_the_leftmost():
    client, _, _ = rewritten([("X-Forwarded-For", "10.1.1.1, 10.2.2.2")], trusted="10.0.0.0/8")
    assert client == ("10.1.1.1", 0)


def test_repeated_x_forwarded_for_headers_are_one_list():
    headers = [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "203.0.113.7")]
    assert rewritten(headers)[0] == ("203.0.113.7", 0)


def test_x_forwarded_host_and_port_set_the_server():
    headers = [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https"),
               ("X-Forwarded-Host", "shop.example"), ("X-Forwarded-Port", "8443")]
    assert rewritten(headers)[2] == ("shop.example", 8443)
    assert rewritten([*headers[:2], ("X-Forwarded-Host", "shop.example:9443")])[2] == ("shop.example", 9443)
    assert rewritten([*headers[:2], ("X-Forwarded-Host", "shop.example")])[2] == ("shop.example", 443)


def test_forwarded_address_with_port_and_ipv6():
    assert rewritten([("X-Forwarded-For", "[2001:db8::1]:4711")])[0] == ("2001:db8::1", 4711)
    assert rewritten([("X-Forwarded-For", "2001:db8::1")])[0] == ("2001:db8::1", 0)
    assert rewritten([("X-Forwarded-For", "203.0.113.7:80")])[0] == ("203.0.113.7", 80)


def test_garbage_in_x_forwarded_for_keeps_the_direct_peer():
    assert rewritten([("X-Forwarded-For", "<script>")])[0] == ("10.0.0.1", 4000)
    assert rewritten([("X-Forwarded-For", "unknown")])[0] == ("10.0.0.1", 4000)


def test_unknown_proto_is_ignored_and_websocket_schemes_follow_proto():
    assert rewritten([("X-Forwarded-Proto", "gopher")])[1] == "http"
    assert rewritten([("X-Forwarded-Proto", "https")], scheme="ws")[1] == "wss"
    assert rewritten([("X-Forwarded-Proto", "http")], scheme="wss")[1] == "ws"


# -- RFC 7239 Forwarded -------------------------------------------------------------


def test_forwarded_header_with_quoted_ipv6_and_proto():
    headers = [("Forwarded", 'for="[2001:db8:cafe::17]:4711";proto=https;host=api.example')]
    assert rewritten(headers) == (("2001:db8:cafe::17", 4711), "https", ("api.example", 443))


def test_forwarded_header_chain_from_the_right():
    headers = [("Forwarded", "for=6.6.6.6;proto=http, for=203.0.113.7;proto=https"),
               ("Forwarded", "for=10.0.0.9")]
    client, scheme, _ = rewritten(headers, trusted="10.0.0.0/8")
    assert client == ("203.0.113.7", 0)
    assert scheme == "https"


def test_forwarded_wins_over_x_forwarded_for():
    headers = [("X-Forwarded-For", "198.51.100.1"), ("Forwarded", "For=203.0.113.7")]
    assert rewritten(headers)[0] == ("203.0.113.7", 0)


def test_forwarded_obfuscated_node_keeps_the_direct_peer():
    assert rewritten([("Forwarded", "for=_hidden;proto=https")]) == (
        ("10.0.0.1", 4000), "https", ("10.0.0.2", 80)
    )


# -- end to end -----------------------------------------------------------------------


async def echo_scope_app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = repr((scope["client"], scope["scheme"], scope["server"])).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


FORWARDED = [("x-forwarded-for", "203.0.113.7"), ("x-forwarded-proto", "https")]


async def test_server_trusts_127_0_0_1_by_default():
    async with open_memory_server(echo_scope_app) as server:
        async with open_memory_connection(server, client=("127.0.0.1", 5000)) as stream:
            reply = await H11Client(stream).request_response(headers=FORWARDED)
    assert reply.body == b"(('203.0.113.7', 0), 'https', ('127.0.0.1', 8000))"


async def test_server_ignores_headers_from_an_untrusted_peer():
    async with open_memory_server(echo_scope_app) as server:
        async with open_memory_connection(server, client=("198.51.100.4", 5000)) as stream:
            reply = await H11Client(stream).request_response(headers=FORWARDED)
    assert reply.body == b"(('198.51.100.4', 5000), 'http', ('127.0.0.1', 8000))"


async def test_no_proxy_headers_turns_it_off():
    async with open_memory_server(echo_scope_app, proxy_headers=False) as server:
        async with open_memory_connection(server, client=("127.0.0.1", 5000)) as stream:
            reply = await H11Client(stream).request_response(headers=FORWARDED)
    assert reply.body == b"(('127.0.0.1', 5000), 'http', ('127.0.0.1', 8000))"


async def test_forwarded_allow_ips_from_the_environment(monkeypatch):
    from click.testing import CliRunner

    from triasgi._cli import build_command

    seen = {}

    def fake_run(app, config):
        seen["config"] = config

    monkeypatch.setattr("triasgi._cli.run_config", fake_run)
    monkeypatch.setattr("triasgi._cli.configure_logging", lambda *a, **k: None)
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.0/8,*")
    result = CliRunner().invoke(build_command(), ["conftest:hello_app", "--app-dir", "tests"])
    assert result.exit_code == 0, result.output
    assert seen["config"].forwarded_allow_ips == "10.0.0.0/8,*"


async def test_access_log_shows_the_forwarded_client(caplog):
    caplog.set_level("INFO", logger="triasgi.access")
    async with open_memory_server(echo_scope_app, access_log=True) as server:
        async with open_memory_connection(server, client=("127.0.0.1", 5000)) as stream:
            await H11Client(stream).request_response(headers=FORWARDED)
    [line] = [r.getMessage() for r in caplog.records if r.name == "triasgi.access"]
    assert line.startswith('203.0.113.7:0 - "GET / HTTP/1.1" 200 ')


# -- the PROXY protocol: parsing --------------------------------------------------------


def v2(command=1, family=0x11, addresses=b"", tlvs=b""):
    body = addresses + tlvs
    return (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20 | command, family])
            + struct.pack("!H", len(body)) + body)


def v2_tcp4(src="203.0.113.7", dst="10.0.0.2", sport=4711, dport=443, tlvs=b""):
    addresses = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return v2(addresses=addresses, tlvs=tlvs)


def test_proxy_v1_tcp4_and_tcp6():
    line = b"PROXY TCP4 203.0.113.7 10.0.0.2 4711 443\r\n"
    preamble = parse_proxy_preamble(line + b"GET /")
    assert preamble is not None
    assert preamble.length == len(line)
    assert preamble.client == ("203.0.113.7", 4711)
    assert preamble.server == ("10.0.0.2", 443)
    six = parse_proxy_preamble(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n")
    assert six is not None
    assert six.client == ("2001:db8::1", 1)


def test_proxy_v1_unknown_keeps_the_socket_address():
    preamble = parse_proxy_preamble(b"PROXY UNKNOWN\r\n")
    assert preamble is not None
    assert (preamble.length, preamble.client, preamble.server) == (15, None, None)


def test_proxy_v1_needs_more_data_until_crlf():
    assert parse_proxy_preamble(b"") is None
    assert parse_proxy_preamble(b"PRO") is None
    assert parse_proxy_preamble(b"PROXY TCP4 203.0.113.7 10.0.0.2 4711 44") is None


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n\r\n",
    b"PROXY TCP4 203.0.113.7 10.0.0.2 4711\r\n",
    b"PROXY TCP4 999.0.113.7 10.0.0.2 4711 443\r\n",
    b"PROXY TCP4 203.0.113.7 10.0.0.2 4711 99999\r\n",
    b"PROXY TCP4 2001:db8::1 10.0.0.2 1 2\r\n",
    b"PROXY TCP5 203.0.113.7 10.0.0.2 4711 443\r\n",
    b"PROXY " + b"x" * 200,
    b"PROXY TCP4 \xff\xfe 10.0.0.2 1 2\r\n",
    b"\r\n\r\n\x00\r\nQUIT\x0b" + b"\x21\x11\x00\x0c",
    b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + bytes(12),  # version 3
    b"\r\n\r\n\x00\r\nQUIT\n\x22\x11\x00\x0c" + bytes(12),  # command 2
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x04" + bytes(4),  # short TCP4 block
])
def test_malformed_preambles_raise(data):
    with pytest.raises(ProxyProtocolError):
        parse_proxy_preamble(data)


def test_proxy_v2_tcp4_with_tlvs_and_trailing_http():
    data = v2_tcp4(tlvs=b"\x04\x00\x03abc") + b"GET / HTTP/1.1\r\n"
    preamble = parse_proxy_preamble(data)
    assert preamble is not None
    assert preamble.length == 16 + 12 + 6
    assert preamble.client == ("203.0.113.7", 4711)
    assert preamble.server == ("10.0.0.2", 443)
    assert parse_proxy_preamble(data[:20]) is None
    assert parse_proxy_preamble(data[:5]) is None


def test_proxy_v2_tcp6_and_local():
    addresses = (socket.inet_pton(socket.AF_INET6, "2001:db8::1")
                 + socket.inet_pton(socket.AF_INET6, "2001:db8::2") + struct.pack("!HH", 1, 2))
    preamble = parse_proxy_preamble(v2(family=0x21, addresses=addresses))
    assert preamble is not None
    assert preamble.client == ("2001:db8::1", 1)
    local = parse_proxy_preamble(v2(command=0, family=0))
    assert local is not None
    assert (local.length, local.client) == (16, None)


# -- the PROXY protocol: on the listener --------------------------------------------------


async def test_proxy_protocol_v1_sets_the_client_of_the_scope():
    async with open_server(echo_scope_app, proxy_protocol=True) as server:
        stream = await connect(server)
        await stream.send_all(b"PROXY TCP4 203.0.113.7 10.0.0.2 4711 443\r\n")
        reply = await H11Client(stream).request_response()
    assert reply.body == b"(('203.0.113.7', 4711), 'http', ('10.0.0.2', 443))"


async def test_proxy_protocol_v2_in_the_same_packet_as_the_request_with_keepalive():
    async with open_memory_server(echo_scope_app, proxy_protocol=True) as server:
        async with open_memory_connection(server, client=("10.0.0.9", 1)) as stream:
            client = H11Client(stream)
            request = client.conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
            request += client.conn.send(h11.EndOfMessage())
            await stream.send_all(v2_tcp4() + request)
            first = await client.response()
            second = await client.request_response()
    assert first.body == second.body == b"(('203.0.113.7', 4711), 'http', ('10.0.0.2', 443))"


async def test_proxy_protocol_local_keeps_the_socket_address():
    async with open_memory_server(echo_scope_app, proxy_protocol=True) as server:
        async with open_memory_connection(server, client=("10.0.0.9", 1)) as stream:
            await stream.send_all(v2(command=0, family=0))
            reply = await H11Client(stream).request_response()
    assert reply.body == b"(('10.0.0.9', 1), 'http', ('127.0.0.1', 8000))"


async def test_malformed_preamble_closes_and_others_are_served():
    async with open_server(echo_scope_app, proxy_protocol=True) as server:
        bad = await connect(server)
        await bad.send_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        with trio.fail_after(5):
            assert await read_until_closed(bad) == b""
        good = await connect(server)
        await good.send_all(b"PROXY TCP4 203.0.113.8 10.0.0.2 1 2\r\n")
        assert (await H11Client(good).request_response()).status == 200


async def test_missing_preamble_times_out(autojump_clock):
    async with open_memory_server(echo_scope_app, proxy_protocol=True,
                                  timeout_request_header=7) as server:
        async with open_memory_connection(server) as stream:
            await stream.send_all(b"PROXY TCP4 ")
            start = trio.current_time()
            assert await read_until_closed(stream) == b""
            assert trio.current_time() - start == pytest.approx(7)


async def test_proxy_protocol_then_forwarded_headers_trust_the_proxied_client():
    # The address from the PROXY preamble is the peer that headers are judged by.
    async with open_memory_server(echo_scope_app, proxy_protocol=True) as server:
        async with open_memory_connection(server, client=("127.0.0.1", 1)) as stream:
            await stream.send_all(v2_tcp4(src="198.51.100.3"))
            reply = await H11Client(stream).request_response(headers=FORWARDED)
    assert reply.body == b"(('198.51.100.3', 4711), 'http', ('10.0.0.2', 443))"


async def test_websocket_scope_takes_the_forwarded_client_and_scheme():
    import wsproto
    import wsproto.events

    async def ws_app(scope, receive, send):
        assert scope["type"] == "websocket"
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": repr((scope["client"], scope["scheme"], scope["server"]))})
        await send({"type": "websocket.close"})

    async def session(client_address):
        async with open_memory_server(ws_app) as server:
            async with open_memory_connection(server, client=client_address) as stream:
                ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
                await stream.send_all(ws.send(wsproto.events.Request(
                    host="shop.example", target="/ws",
                    extra_headers=[(b"x-forwarded-for", b"203.0.113.7"),
                                   (b"x-forwarded-proto", b"https"),
                                   (b"x-forwarded-host", b"shop.example")])))
                texts = []
                while data := await stream.receive_some(65536):
                    ws.receive_data(data)
                    for event in ws.events():
                        if isinstance(event, wsproto.events.TextMessage):
                            texts.append(event.data)
                        elif isinstance(event, wsproto.events.CloseConnection):
                            return texts
        return texts

    assert await session(("127.0.0.1", 5000)) == [
        "(('203.0.113.7', 0), 'wss', ('shop.example', 443))"
    ]
    assert await session(("198.51.100.4", 5000)) == [
        "(('198.51.100.4', 5000), 'ws', ('127.0.0.1', 8000))"
    ]


@pytest.mark.parametrize("port", ["\xb2", "9" * 5000, "65536", "-1", " 80", "0x50"])
def test_odd_forwarded_ports_are_ignored(port):
    headers = [("X-Forwarded-For", f"203.0.113.7:{port}"), ("X-Forwarded-Host", f"a.example:{port}"),
               ("X-Forwarded-Port", port)]
    client, _, server = rewritten(headers)
    assert client == ("203.0.113.7", 0)
    assert server == ("a.example", 80)
    assert rewritten([("Forwarded", f'for="[2001:db8::1]:{port}"')])[0] == ("2001:db8::1", 0)
