"""Certificate and key files checked with cryptography: signature, validity, key match, SANs.

Apart from `edgepop.tls` so that only a process that uses TLS (or `edgectl certs`)
imports cryptography: it is ~6 MiB of memory in every process that loads it, and every
node of a cluster without TLS would carry it for nothing.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from edgepop.tls import TlsError


def load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError as error:
        raise TlsError(f"{path}: no such certificate (run `edgectl certs`)") from error
    except ValueError as error:
        raise TlsError(f"{path}: not a PEM certificate ({error})") from error


def load_private_key(path: Path) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError as error:
        raise TlsError(f"{path}: no such private key (run `edgectl certs`)") from error
    except (ValueError, TypeError) as error:
        raise TlsError(f"{path}: not an unencrypted PEM private key ({error})") from error


def _public_bytes(key: object) -> bytes:
    public_bytes = getattr(key, "public_bytes")  # noqa: B009 - every public key type has it
    data: bytes = public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


def check_issued_by(cert: x509.Certificate, ca: x509.Certificate, where: str = "") -> None:
    """Raise TlsError unless `ca` signed `cert` (issuer name and signature)."""
    label = where or cert.subject.rfc4514_string()
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as error:
        reason = str(error) or "bad signature"
        raise TlsError(f"{label}: not signed by the cluster CA ({reason})") from error


def check_valid_at(cert: x509.Certificate, now: datetime.datetime, where: str = "") -> None:
    """Raise TlsError unless `now` lies within the certificate's validity period."""
    label = where or cert.subject.rfc4514_string()
    if now < cert.not_valid_before_utc:
        raise TlsError(f"{label}: not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if now >= cert.not_valid_after_utc:
        raise TlsError(f"{label}: expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")


def check_key_matches(cert: x509.Certificate, key: PrivateKeyTypes, where: str = "") -> None:
    """Raise TlsError unless `key` is the private half of the certificate's public key."""
    if _public_bytes(key.public_key()) != _public_bytes(cert.public_key()):
        raise TlsError(f"{where or 'key'}: does not match its certificate")


def subject_alt_names(cert: x509.Certificate) -> list[str]:
    """The certificate's DNS names and IP addresses, as text."""
    try:
        extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    names: list[str] = list(extension.value.get_values_for_type(x509.DNSName))
    names += [str(ip) for ip in extension.value.get_values_for_type(x509.IPAddress)]
    return names


def check_material(
    ca_file: Path, cert_file: Path, key_file: Path, now: datetime.datetime | None = None
) -> None:
    """Raise TlsError, naming the file, unless these files could make a handshake succeed."""
    now = now or datetime.datetime.now(datetime.UTC)
    ca = load_certificate(ca_file)
    cert = load_certificate(cert_file)
    key = load_private_key(key_file)
    check_valid_at(ca, now, str(ca_file))
    check_issued_by(cert, ca, str(cert_file))
    check_valid_at(cert, now, str(cert_file))
    check_key_matches(cert, key, str(key_file))
