"""`edgectl certs`: a cluster CA and the certificates its nodes and clients present.

Everything lives in one directory (`DATA_DIR/tls/` for a local cluster): the CA
(`ca.crt`, `ca.key`), one certificate per node named after it (`tokyo-1.crt`,
`tokyo-1.key`) and one for edgectl and tests (`client.crt`, `client.key`). Private keys
are written 0600 and the directory 0700; certificates are public.

Node certificates serve and dial (serverAuth + clientAuth): nodes call each other.
Their SANs hold every name a peer may dial them by — 127.0.0.1 and localhost (local
clusters bind loopback), the bind host, the node's name, and any `--san` (a Kubernetes
pod's DNS name; `{name}` in a SAN becomes the node's name). The client certificate only
dials (clientAuth). Keys are ECDSA P-256: fast to make and to handshake with.

`ensure_certs` is idempotent: an existing CA is kept, and a certificate is issued again
only when it is missing, not signed by the CA, near its expiry, missing a wanted SAN,
or its key is gone or does not match — so `cluster up --tls` can call it on every
start. A certificate issued again keeps the SANs it had. The certificate
logic (`make_ca`, `issue`, `needs_issue`) takes `now` and does no I/O.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgepop.certfiles import (
    check_issued_by,
    check_key_matches,
    check_valid_at,
    load_certificate,
    load_private_key,
    subject_alt_names,
)
from edgepop.tls import (
    CA_CERT_FILE_NAME,
    CA_KEY_FILE_NAME,
    CLIENT_NAME,
    TlsError,
    cert_path,
    key_path,
)

CA_VALID_DAYS = 3650
CERT_VALID_DAYS = 365
# A certificate this close to its end is issued again by the next `edgectl certs`.
RENEW_BEFORE_DAYS = 30
# Issued a little in the past, so a peer whose clock is slightly behind accepts it.
CLOCK_SKEW_S = 300
# Every node may be dialled on loopback (local clusters, a pod's own probes).
LOOPBACK_SANS = ("127.0.0.1", "localhost")
ORGANIZATION = "edgepop cluster"
KEY_FILE_MODE = 0o600
DIR_MODE = 0o700


@dataclass(frozen=True)
class Issued:
    """One certificate of the directory and whether this run wrote it."""

    name: str
    cert_file: Path
    key_file: Path
    sans: tuple[str, ...]
    not_after: datetime.datetime
    made: bool


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _general_name(san: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(san))
    except ValueError:
        return x509.DNSName(san)


def make_ca(
    now: datetime.datetime, common_name: str = "edgepop cluster CA"
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(common_name)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(seconds=CLOCK_SKEW_S))
        .not_valid_after(now + datetime.timedelta(days=CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    sans: Sequence[str],
    now: datetime.datetime,
    *,
    server: bool = True,
    valid_days: int = CERT_VALID_DAYS,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf certificate signed by the CA: serves and dials (`server`), or only dials."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(seconds=CLOCK_SKEW_S))
        # Never past the CA's own end: a chain is only as valid as its CA.
        .not_valid_after(
            min(now + datetime.timedelta(days=valid_days), ca_cert.not_valid_after_utc)
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(san) for san in sans]), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def node_sans(name: str, hosts: Iterable[str], extra: Iterable[str]) -> tuple[str, ...]:
    """The names a node's certificate answers to, without duplicates, in a stable order."""
    wanted: list[str] = []
    candidates = [*LOOPBACK_SANS, *hosts, name, *(san.replace("{name}", name) for san in extra)]
    for san in candidates:
        if san and san not in wanted:
            wanted.append(san)
    return tuple(wanted)


def needs_issue(
    cert: x509.Certificate | None,
    ca_cert: x509.Certificate,
    sans: Iterable[str],
    now: datetime.datetime,
) -> str:
    """Why `cert` must be issued again ("" when it is fine)."""
    if cert is None:
        return "missing"
    try:
        check_issued_by(cert, ca_cert)
    except TlsError:
        return "not signed by this CA"
    if cert.not_valid_after_utc - now <= datetime.timedelta(days=RENEW_BEFORE_DAYS):
        return "expires soon"
    missing = set(sans) - set(subject_alt_names(cert))
    if missing:
        return f"lacks {', '.join(sorted(missing))}"
    return ""


# -- files -----------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` with `mode` from the first byte on (no window of 0644)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as handle:
        handle.write(data)
    os.chmod(temporary, mode)  # the umask may have narrowed it
    temporary.replace(path)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    _write_atomic(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomic(path, pem, KEY_FILE_MODE)


def _existing(path: Path) -> x509.Certificate | None:
    try:
        return load_certificate(path)
    except TlsError:
        return None


def _key_problem(cert: x509.Certificate, key_file: Path) -> str:
    """Why the key beside `cert` cannot be used with it ("" when it can)."""
    try:
        check_key_matches(cert, load_private_key(key_file), str(key_file))
    except TlsError as error:
        return str(error)
    return ""


def ensure_ca(
    tls_dir: Path, now: datetime.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, bool]:
    """The directory's CA (made when missing); True when this call made it."""
    tls_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(tls_dir, DIR_MODE)
    ca_file, ca_key_file = tls_dir / CA_CERT_FILE_NAME, tls_dir / CA_KEY_FILE_NAME
    if ca_file.exists() or ca_key_file.exists():
        ca_cert = load_certificate(ca_file)
        key = load_private_key(ca_key_file)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TlsError(f"{ca_key_file}: expected an EC key (as `edgectl certs` makes)")
        check_key_matches(ca_cert, key, str(ca_key_file))
        check_valid_at(ca_cert, now, str(ca_file))
        return ca_cert, key, False
    ca_cert, key = make_ca(now)
    # Key first: a CA certificate without its key could never issue again.
    _write_key(ca_key_file, key)
    _write_cert(ca_file, ca_cert)
    return ca_cert, key, True


def ensure_certs(
    tls_dir: Path,
    node_names: Iterable[str],
    *,
    hosts: Iterable[str] = (),
    extra_sans: Iterable[str] = (),
    renew: bool = False,
    now: datetime.datetime | None = None,
) -> list[Issued]:
    """CA, node certificates and the client certificate in `tls_dir`, each made if needed.

    With `renew`, every leaf certificate is issued again (the CA is kept).
    """
    now = now or datetime.datetime.now(datetime.UTC)
    ca_cert, ca_key, _ = ensure_ca(tls_dir, now)
    hosts, extra_sans = list(hosts), list(extra_sans)
    wanted = [(name, node_sans(name, hosts, extra_sans), True) for name in node_names]
    wanted.append((CLIENT_NAME, (), False))
    issued = []
    for name, sans, server in wanted:
        cert_file, key_file = cert_path(tls_dir, name), key_path(tls_dir, name)
        cert = _existing(cert_file)
        if cert is not None:
            # Names are only ever added (an earlier --san stays); delete a file to drop one.
            sans = (*sans, *(san for san in subject_alt_names(cert) if san not in sans))
        reason = "renew" if renew else needs_issue(cert, ca_cert, sans, now)
        if not reason and cert is not None:
            reason = _key_problem(cert, key_file)
        if reason:
            cert, key = issue(ca_cert, ca_key, name, sans, now, server=server)
            _write_key(key_file, key)
            _write_cert(cert_file, cert)
        assert cert is not None
        issued.append(
            Issued(
                name=name,
                cert_file=cert_file,
                key_file=key_file,
                sans=tuple(subject_alt_names(cert)),
                not_after=cert.not_valid_after_utc,
                made=bool(reason),
            )
        )
    return issued
