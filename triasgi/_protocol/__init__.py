"""The wire protocols, sans-io: bytes in, neutral events out; commands in, bytes out.

Never imports trio, anyio, socket or ssl: see docs/architecture.md.
"""
