"""TLS: the server's SSL context, the handshake, and the ``tls`` scope extension."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Any, final

import trio

from .._config import Config

logger = logging.getLogger("triasgi.error")

_CERT_REQS = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}
_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


class TLSSetupError(Exception):
    """A certificate, key or CA file cannot be used; one sentence for a user."""


@final
class TLS:
    """The server side of TLS for one server: its context and what it reports.

    Args:
        config: settings with ``ssl_certfile`` set.

    Raises:
        TLSSetupError: a file is missing, unreadable, not PEM, or the key does
            not match the certificate.
    """

    def __init__(self, config: Config) -> None:
        assert config.ssl_certfile is not None
        self.context = _make_context(config)
        self.timeout = config.timeout_ssl_handshake
        self._server_cert = _first_pem_certificate(config.ssl_certfile)
        self._cipher_ids = {
            c["name"]: c["id"] & 0xFFFF for c in self.context.get_ciphers()
        }

    async def handshake(self, stream: trio.abc.Stream) -> trio.SSLStream[Any] | None:
        """Wrap ``stream`` and complete the handshake within the timeout.

        Returns:
            The TLS stream, or None if the handshake failed or timed out (the
            raw stream is then closed and the reason logged at debug level).
        """
        tls_stream = trio.SSLStream(stream, self.context, server_side=True)
        with trio.move_on_after(self.timeout):
            try:
                await tls_stream.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                cause = exc.__cause__ or exc
                logger.debug("TLS handshake failed: %s", cause)
            else:
                return tls_stream
            await trio.aclose_forcefully(stream)
            return None
        logger.debug("TLS handshake timed out after %g seconds.", self.timeout)
        await trio.aclose_forcefully(stream)
        return None

    def extension(self, tls_stream: trio.SSLStream[Any]) -> dict[str, Any]:
        """The ``tls`` scope extension (ASGI TLS extension 0.2) of a connection."""
        chain = _peer_chain(tls_stream)
        cipher = tls_stream.cipher()
        return {
            "server_cert": self._server_cert,
            "client_cert_chain": chain,
            "client_cert_name": _rfc4514_name(tls_stream) if chain else None,
            "client_cert_error": None,
            "tls_version": _TLS_VERSIONS.get(tls_stream.version() or ""),
            "cipher_suite": self._cipher_ids.get(cipher[0]) if cipher else None,
        }


def _make_context(config: Config) -> ssl.SSLContext:
    certfile = config.ssl_certfile
    assert certfile is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    # HTTP/2 for clients that choose it, HTTP/1.1 for the others.
    context.set_alpn_protocols(["h2", "http/1.1"] if config.http2 else ["http/1.1"])
    # OpenSSL's errors do not say which file is missing: look first.
    _check_readable(certfile, "certificate file")
    if config.ssl_keyfile is not None:
        _check_readable(config.ssl_keyfile, "key file")
    try:
        context.load_cert_chain(certfile, config.ssl_keyfile, _password_of(config))
    except _PasswordNeeded:
        raise TLSSetupError(
            f"The TLS key {config.ssl_keyfile or certfile} is encrypted: give its "
            "password with --ssl-keyfile-password."
        ) from None
    except ssl.SSLError as exc:
        raise TLSSetupError(_load_error(exc, config)) from None
    except OSError as exc:
        raise TLSSetupError(
            f"Cannot load the TLS certificate {certfile}: {exc.strerror or exc}."
        ) from None
    if config.ssl_ca_certs:
        try:
            context.load_verify_locations(cafile=config.ssl_ca_certs)
        except (OSError, ssl.SSLError):
            raise TLSSetupError(
                f"Cannot load CA certificates from {config.ssl_ca_certs}: it must "
                "be a readable PEM file (--ssl-ca-certs)."
            ) from None
    elif config.ssl_cert_reqs != "none":
        raise TLSSetupError(
            f"--ssl-cert-reqs {config.ssl_cert_reqs} needs --ssl-ca-certs to "
            "verify client certificates with."
        )
    context.verify_mode = _CERT_REQS[config.ssl_cert_reqs]
    if config.ssl_ciphers:
        try:
            context.set_ciphers(config.ssl_ciphers)
        except ssl.SSLError:
            raise TLSSetupError(
                f"No usable cipher in --ssl-ciphers {config.ssl_ciphers!r}."
            ) from None
    return context


class _PasswordNeeded(Exception):
    """The key is encrypted and no password was given."""


def _password_of(config: Config) -> str | Callable[[], str]:
    """The key's password, or a callback that refuses to give one.

    Without a password argument OpenSSL asks for one on the terminal and
    waits: a server must never do that.  The callback runs only when the key
    is encrypted.
    """
    if config.ssl_keyfile_password is not None:
        return config.ssl_keyfile_password

    def refuse() -> str:
        raise _PasswordNeeded

    return refuse


def _check_readable(path: str, what: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise TLSSetupError(
            f"Cannot read the TLS {what} {path}: no such file."
        ) from None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise TLSSetupError(f"Cannot read the TLS {what} {path}: {reason}.") from None


def _load_error(exc: ssl.SSLError, config: Config) -> str:
    reason = (exc.reason or "").upper()
    if "KEY_VALUES_MISMATCH" in reason:
        return (
            f"The TLS key {config.ssl_keyfile or config.ssl_certfile} does not "
            f"match the certificate {config.ssl_certfile}."
        )
    if "BAD_DECRYPT" in reason or "BAD_PASSWORD" in reason or _encrypted(config):
        return (
            f"Cannot decrypt the TLS key {config.ssl_keyfile or config.ssl_certfile}:"
            " wrong or missing --ssl-keyfile-password."
        )
    if config.ssl_keyfile is None:
        return (
            f"Cannot load a certificate and its key from {config.ssl_certfile}: "
            "give a PEM file with both, or the key with --ssl-keyfile."
        )
    return (
        f"Cannot load the TLS certificate {config.ssl_certfile} with the key "
        f"{config.ssl_keyfile}: both must be PEM files."
    )


def _encrypted(config: Config) -> bool:
    """Whether the key is an encrypted PEM (OpenSSL's error does not say)."""
    path = config.ssl_keyfile or config.ssl_certfile
    try:
        with open(path or "", "rb") as file:
            return b"ENCRYPTED" in file.read(1 << 20)
    except OSError:
        return False


def _first_pem_certificate(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            text = file.read()
    except OSError:
        return None
    begin = text.find("-----BEGIN CERTIFICATE-----")
    end_marker = "-----END CERTIFICATE-----"
    end = text.find(end_marker, begin)
    if begin < 0 or end < 0:
        return None
    return text[begin : end + len(end_marker)] + "\n"


def _peer_chain(tls_stream: trio.SSLStream[Any]) -> list[str]:
    # Python 3.13 gives the whole chain the client sent; before, only its leaf.
    ssl_object = getattr(tls_stream, "_ssl_object", None)
    get_chain = getattr(ssl_object, "get_unverified_chain", None)
    if get_chain is not None:
        chain = get_chain() or []
        return [
            cert if isinstance(cert, str) else ssl.DER_cert_to_PEM_cert(cert)
            for cert in (
                c.public_bytes() if hasattr(c, "public_bytes") else c for c in chain
            )
        ]
    leaf = tls_stream.getpeercert(binary_form=True)
    return [ssl.DER_cert_to_PEM_cert(leaf)] if leaf else []


# RFC 4514 section 3: the short names a string representation must use.
_SHORT_NAMES = {
    "commonName": "CN",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


def _rfc4514_name(tls_stream: trio.SSLStream[Any]) -> str | None:
    """The client certificate's subject as an RFC 4514 string, or None.

    Only a verified certificate is decoded by the ssl module; one taken
    without verification (``ssl_cert_reqs=none``) has no name here.
    """
    cert = tls_stream.getpeercert()
    if not cert:
        return None
    rdns = []
    # RFC 4514 section 2.1: the last RDN of the sequence comes first.
    for rdn in reversed(cert.get("subject", ())):
        rdns.append("+".join(f"{_SHORT_NAMES.get(k, k)}={_escape(v)}" for k, v in rdn))
    return ",".join(rdns)


def _escape(value: str) -> str:
    """RFC 4514 section 2.4: escape the characters special in a value."""
    out = []
    for i, char in enumerate(value):
        if (
            char in ',+"\\<>;'
            or (char == "#" and i == 0)
            or (char == " " and i in (0, len(value) - 1))
        ):
            out.append("\\" + char)
        elif char == "\x00":
            out.append("\\00")
        else:
            out.append(char)
    return "".join(out)
