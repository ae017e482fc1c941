"""HTTP/2 GETs over a plain socket with prior knowledge (the h2 library).

The harness checks each server's HTTP/2 answers with ``get()`` before it
measures, and ``benchmarks.idle --http2`` opens its idle connections with
``open_connection()``: the client preface, SETTINGS and one ``GET /``, the
whole response read and the server's SETTINGS acknowledged, so that the
connection has served a request and sits idle.
"""

from __future__ import annotations

import socket

import h2.config
import h2.connection
import h2.events


class H2GetError(Exception):
    """The server did not answer an HTTP/2 GET as a server should."""


def _request(port: int, path: str) -> tuple[h2.connection.H2Connection, bytes]:
    """A client connection and its first bytes: preface, SETTINGS, GET ``path``."""
    config = h2.config.H2Configuration(client_side=True, header_encoding=None)
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    conn.send_headers(
        1,
        [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", b"127.0.0.1:%d" % port),
            (b":path", path.encode()),
        ],
        end_stream=True,
    )
    return conn, conn.data_to_send()


def _response(
    sock: socket.socket, conn: h2.connection.H2Connection
) -> tuple[int, bytes]:
    """Read stream 1's response to its end; returns its status and body.

    Body is credited back as it arrives, so a response larger than the
    initial window still comes whole; what the client owes the server
    (SETTINGS ACK, WINDOW_UPDATE) is sent before returning.
    """
    status = 0
    body = bytearray()
    while True:
        data = sock.recv(65536)
        if not data:
            raise H2GetError("the server closed the connection before the response")
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
                conn.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id
                )
            elif isinstance(event, h2.events.StreamReset):
                raise H2GetError(f"the server reset the stream ({event.error_code!r})")
            elif isinstance(event, h2.events.ConnectionTerminated):
                raise H2GetError(f"the server sent GOAWAY ({event.error_code!r})")
            elif isinstance(event, h2.events.StreamEnded):
                sock.sendall(conn.data_to_send())
                return status, bytes(body)
        sock.sendall(conn.data_to_send())


def get(port: int, path: str, *, timeout: float = 10.0) -> tuple[int, bytes]:
    """One GET over a fresh HTTP/2 connection to ``127.0.0.1:port``.

    Returns:
        The response's status and body.

    Raises:
        H2GetError: the server did not answer the request with a response.
        OSError: the connection failed or timed out.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        conn, first = _request(port, path)
        sock.sendall(first)
        return _response(sock, conn)


def open_connection(port: int, *, timeout: float = 30.0) -> socket.socket:
    """An HTTP/2 connection that has served one ``GET /`` with 200, left open.

    The h2 state is dropped once the response is read: an idle connection
    costs the client only its socket.

    Raises:
        H2GetError: the server did not answer with 200.
        OSError: the connection failed or timed out.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        conn, first = _request(port, "/")
        sock.sendall(first)
        status, _ = _response(sock, conn)
        if status != 200:
            raise H2GetError(f"GET / answered {status}")
    except BaseException:
        sock.close()
        raise
    return sock
