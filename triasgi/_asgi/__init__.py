"""ASGI semantics, sans-io: message tables, scopes, the request and WebSocket cycles.

Never imports trio, a socket, or a protocol library (h11, h2, wsproto): see
docs/architecture.md.
"""
