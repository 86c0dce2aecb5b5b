"""Mutual TLS: one process's certificate material, checked once, turned into credentials.

With TLS on, every gRPC server requires a client certificate signed by the cluster CA
and every client (node or edgectl) verifies the server's certificate against the same
CA, for the host it dialled (so node certificates carry SANs for 127.0.0.1, localhost
and their DNS names). HTTP servers (the origin application, the PoP ingress) serve
HTTPS from the same files; whether they demand a client certificate is per process
(`http_client_cert`), because a PoP's ingress also faces end users.

A node process has one identity: `use_process_tls` installs it when flags are parsed
(`edgepop.config.common_kwargs`), and `edgepop.rpc.channel`, `edgepop.http.start_site`
and the worker runtime's origin client read it with `process_tls()`. Files are read
and checked once, at start, so a bad certificate stops the node with a message naming
the file, rather than failing every handshake later.

The certificate checks themselves (cryptography) live in `edgepop.certfiles`, loaded
only by a process that uses TLS. Layout of a TLS directory (`edgectl certs` writes it):
`ca.crt` (+ `ca.key`, which only the issuer needs), `NAME.crt` / `NAME.key` per node,
`client.crt` / `client.key` for edgectl and tests.
"""

from __future__ import annotations

import datetime
import functools
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc

# A cluster's certificates: this folder of its data dir (`edgectl certs`).
TLS_DIR_NAME = "tls"
CA_CERT_FILE_NAME = "ca.crt"
CA_KEY_FILE_NAME = "ca.key"
CLIENT_NAME = "client"
CERT_SUFFIX = ".crt"
KEY_SUFFIX = ".key"

HttpClientCert = Literal["required", "optional"]
HTTP_CLIENT_CERT_CHOICES: tuple[HttpClientCert, ...] = ("required", "optional")


class TlsError(ValueError):
    """Certificate material that cannot be used (the message names the file and why)."""


def cert_path(tls_dir: Path, name: str) -> Path:
    return tls_dir / f"{name}{CERT_SUFFIX}"


def key_path(tls_dir: Path, name: str) -> Path:
    return tls_dir / f"{name}{KEY_SUFFIX}"


@dataclass(frozen=True)
class TlsConfig:
    """One process's identity and trust: the cluster CA, its certificate and key.

    Credentials and SSL contexts are built once per config and reused: gRPC and
    OpenSSL keep them for every connection.
    """

    ca_file: Path
    cert_file: Path
    key_file: Path
    # Whether this process's HTTP server demands a client certificate. "optional" still
    # verifies one that is presented (the PoP ingress: end users have none).
    http_client_cert: HttpClientCert = "required"

    @classmethod
    def from_dir(
        cls, tls_dir: Path, name: str, http_client_cert: HttpClientCert = "required"
    ) -> TlsConfig:
        """The identity `name` in a directory written by `edgectl certs`."""
        return cls(
            ca_file=tls_dir / CA_CERT_FILE_NAME,
            cert_file=cert_path(tls_dir, name),
            key_file=key_path(tls_dir, name),
            http_client_cert=http_client_cert,
        )

    @functools.cached_property
    def _material(self) -> tuple[bytes, bytes, bytes]:
        """(CA, certificate, key) as PEM, read once."""
        try:
            ca, cert, key = (p.read_bytes() for p in (self.ca_file, self.cert_file, self.key_file))
        except FileNotFoundError as error:
            raise TlsError(f"{error.filename}: missing (run `edgectl certs`)") from error
        return ca, cert, key

    def check(self, now: datetime.datetime | None = None) -> None:
        """Fail now, naming the file, if the material could not make a handshake succeed."""
        # Imported here, not at the top: cryptography is ~6 MiB of every process that
        # imports it, and a node without TLS (the default) never needs it.
        from edgepop import certfiles

        certfiles.check_material(self.ca_file, self.cert_file, self.key_file, now)

    # -- gRPC ------------------------------------------------------------------------------

    @functools.cached_property
    def server_credentials(self) -> grpc.ServerCredentials:
        """Serve with our certificate; refuse clients without one signed by the CA."""
        ca, cert, key = self._material
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        )

    @functools.cached_property
    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Present our certificate; trust only servers the CA signed."""
        ca, cert, key = self._material
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )

    # -- HTTP (aiohttp, urllib) -------------------------------------------------------------

    def server_ssl_context(self) -> ssl.SSLContext:
        """HTTPS server side; client certificates per `http_client_cert`."""
        ca, _, _ = self._material
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=ca.decode())
        context.load_cert_chain(self.cert_file, self.key_file)
        context.verify_mode = (
            ssl.CERT_REQUIRED if self.http_client_cert == "required" else ssl.CERT_OPTIONAL
        )
        return context

    def client_ssl_context(self) -> ssl.SSLContext:
        """HTTPS client side: verify the server against the CA and present our certificate."""
        ca, _, _ = self._material
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca.decode())
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


# -- the process's setting -------------------------------------------------------------------

_process_tls: TlsConfig | None = None


def use_process_tls(tls: TlsConfig | None) -> None:
    """Make `tls` the identity of every channel and HTTP server/client of this process."""
    global _process_tls
    _process_tls = tls


def process_tls() -> TlsConfig | None:
    """The process's TLS identity, or None when it speaks plaintext."""
    return _process_tls
