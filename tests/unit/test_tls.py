"""Certificates for mutual TLS (edgectl.certs) and the checks a node runs on them
(edgepop.tls, edgepop.certfiles): SANs, CA signature, validity, key files and their
modes, renewal, and TLS handshakes between the contexts it builds — in memory, no sockets."""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from edgectl import certs
from edgepop import certfiles, tls
from edgepop.config import add_common_arguments, common_kwargs
from edgepop.tls import TlsConfig, TlsError

NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
NODES = ("control-plane", "origin", "tokyo-1")


@pytest.fixture
def tls_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "tls"
    certs.ensure_certs(directory, NODES, hosts=["127.0.0.1"], now=NOW)
    return directory


@pytest.fixture
def live_tls_dir(tmp_path: Path) -> Path:
    """Certificates valid today: OpenSSL checks validity against the real clock."""
    directory = tmp_path / "live"
    certs.ensure_certs(directory, ["origin"], hosts=["127.0.0.1"])
    return directory


@pytest.fixture
def no_process_tls() -> Iterator[None]:
    yield
    tls.use_process_tls(None)


def _cert(tls_dir: Path, name: str) -> x509.Certificate:
    return certfiles.load_certificate(tls.cert_path(tls_dir, name))


def _ca(tls_dir: Path) -> x509.Certificate:
    return certfiles.load_certificate(tls_dir / tls.CA_CERT_FILE_NAME)


def _usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


# -- certificate contents ----------------------------------------------------------------------


def test_ca_is_self_signed_and_may_only_sign_leaves() -> None:
    ca, _ = certs.make_ca(NOW)
    certfiles.check_issued_by(ca, ca)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert ca.not_valid_after_utc - NOW == datetime.timedelta(days=certs.CA_VALID_DAYS)


def test_node_certificate_names_loopback_its_host_its_name_and_extra_sans() -> None:
    ca, ca_key = certs.make_ca(NOW)
    sans = certs.node_sans("tokyo-1", ["10.0.0.7"], ["{name}.pops.edgepop.svc", "edge.test"])
    assert sans == (
        "127.0.0.1",
        "localhost",
        "10.0.0.7",
        "tokyo-1",
        "tokyo-1.pops.edgepop.svc",
        "edge.test",
    )
    cert, key = certs.issue(ca, ca_key, "tokyo-1", sans, NOW)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # IPs are IP SANs (what a client dialling 127.0.0.1 checks), not DNS names.
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.0.0.7"),
    ]
    assert set(names.get_values_for_type(x509.DNSName)) == {
        "localhost",
        "tokyo-1",
        "tokyo-1.pops.edgepop.svc",
        "edge.test",
    }
    assert _usages(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    certfiles.check_issued_by(cert, ca)
    certfiles.check_key_matches(cert, key)


def test_client_certificate_only_dials(tls_dir: Path) -> None:
    client = _cert(tls_dir, tls.CLIENT_NAME)
    assert _usages(client) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert certfiles.subject_alt_names(client) == []


def test_leaf_is_valid_for_a_year_from_a_little_before_issue(tls_dir: Path) -> None:
    cert = _cert(tls_dir, "origin")
    assert cert.not_valid_after_utc - NOW == datetime.timedelta(days=certs.CERT_VALID_DAYS)
    assert NOW - cert.not_valid_before_utc == datetime.timedelta(seconds=certs.CLOCK_SKEW_S)
    certfiles.check_valid_at(cert, NOW)
    with pytest.raises(TlsError, match="expired"):
        certfiles.check_valid_at(cert, NOW + datetime.timedelta(days=certs.CERT_VALID_DAYS + 1))
    with pytest.raises(TlsError, match="not valid before"):
        certfiles.check_valid_at(cert, NOW - datetime.timedelta(days=1))


def test_a_certificate_from_another_ca_fails_the_signature_check(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    certs.ensure_certs(ours, ["origin"], now=NOW)
    certs.ensure_certs(theirs, ["origin"], now=NOW)
    certfiles.check_issued_by(_cert(ours, "origin"), _ca(ours))
    with pytest.raises(TlsError, match="not signed by the cluster CA"):
        certfiles.check_issued_by(_cert(theirs, "origin"), _ca(ours))


# -- files -------------------------------------------------------------------------------------


def test_keys_are_0600_certificates_0644_and_the_directory_0700(tls_dir: Path) -> None:
    assert stat.S_IMODE(tls_dir.stat().st_mode) == 0o700
    names = ["ca", *NODES, tls.CLIENT_NAME]
    for name in names:
        assert stat.S_IMODE(tls.key_path(tls_dir, name).stat().st_mode) == 0o600, name
        assert stat.S_IMODE(tls.cert_path(tls_dir, name).stat().st_mode) == 0o644, name
    assert {path.name for path in tls_dir.iterdir()} == {
        f"{name}{suffix}" for name in names for suffix in (".crt", ".key")
    }


def test_keys_are_0600_even_under_a_permissive_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        certs.ensure_certs(tmp_path / "tls", ["origin"], now=NOW)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "tls" / "origin.key").stat().st_mode) == 0o600


def test_second_run_keeps_everything(tls_dir: Path) -> None:
    before = {path.name: path.read_bytes() for path in tls_dir.iterdir()}
    issued = certs.ensure_certs(tls_dir, NODES, hosts=["127.0.0.1"], now=NOW)
    assert not any(item.made for item in issued)
    assert {path.name: path.read_bytes() for path in tls_dir.iterdir()} == before


def test_certificates_are_issued_again_when_due_and_the_ca_is_kept(tls_dir: Path) -> None:
    ca_before = (tls_dir / tls.CA_CERT_FILE_NAME).read_bytes()
    near_expiry = NOW + datetime.timedelta(days=certs.CERT_VALID_DAYS - certs.RENEW_BEFORE_DAYS)
    early = certs.ensure_certs(tls_dir, NODES, hosts=["127.0.0.1"], now=near_expiry - DAY)
    assert not any(item.made for item in early)
    issued = certs.ensure_certs(tls_dir, NODES, hosts=["127.0.0.1"], now=near_expiry)
    assert all(item.made for item in issued)
    assert (tls_dir / tls.CA_CERT_FILE_NAME).read_bytes() == ca_before
    assert _cert(tls_dir, "origin").not_valid_after_utc > near_expiry + datetime.timedelta(days=300)


def test_new_node_or_new_san_issues_only_what_changed(tls_dir: Path) -> None:
    issued = certs.ensure_certs(
        tls_dir, [*NODES, "london-1"], hosts=["127.0.0.1"], extra_sans=["edge.test"], now=NOW
    )
    made = {item.name for item in issued if item.made}
    # Every node certificate lacked edge.test; london-1 was missing; the client has no SANs.
    assert made == {*NODES, "london-1"}
    assert "edge.test" in certfiles.subject_alt_names(_cert(tls_dir, "london-1"))
    # A later run without --san keeps the name (names are only added).
    again = certs.ensure_certs(tls_dir, ["london-1"], hosts=["127.0.0.1"], now=NOW)
    assert not any(item.made for item in again)
    renewed = certs.ensure_certs(tls_dir, ["london-1"], renew=True, now=NOW)
    assert all(item.made for item in renewed)
    assert "edge.test" in certfiles.subject_alt_names(_cert(tls_dir, "london-1"))


def test_a_lost_or_foreign_key_is_replaced(tls_dir: Path, tmp_path: Path) -> None:
    tls.key_path(tls_dir, "origin").unlink()
    certs.ensure_certs(tmp_path / "other", ["origin"], now=NOW)
    (tls_dir / "tokyo-1.key").write_bytes((tmp_path / "other" / "origin.key").read_bytes())
    issued = certs.ensure_certs(tls_dir, NODES, hosts=["127.0.0.1"], now=NOW)
    assert {item.name for item in issued if item.made} == {"origin", "tokyo-1"}
    for name in ("origin", "tokyo-1"):
        TlsConfig.from_dir(tls_dir, name).check(NOW)


# -- what a node checks at start ---------------------------------------------------------------


def test_node_identity_checks_out(tls_dir: Path) -> None:
    for name in [*NODES, tls.CLIENT_NAME]:
        TlsConfig.from_dir(tls_dir, name).check(NOW)


def test_check_names_the_file_that_is_wrong(tls_dir: Path, tmp_path: Path) -> None:
    certs.ensure_certs(tmp_path / "other", ["origin"], now=NOW)
    foreign = TlsConfig(
        ca_file=tls_dir / tls.CA_CERT_FILE_NAME,
        cert_file=tmp_path / "other" / "origin.crt",
        key_file=tmp_path / "other" / "origin.key",
    )
    with pytest.raises(TlsError, match=r"other/origin\.crt: not signed by the cluster CA"):
        foreign.check(NOW)
    mismatched = TlsConfig(
        ca_file=tls_dir / tls.CA_CERT_FILE_NAME,
        cert_file=tls_dir / "origin.crt",
        key_file=tls_dir / "tokyo-1.key",
    )
    with pytest.raises(TlsError, match=r"tokyo-1\.key: does not match its certificate"):
        mismatched.check(NOW)
    with pytest.raises(TlsError, match="expired"):
        TlsConfig.from_dir(tls_dir, "origin").check(NOW + datetime.timedelta(days=400))
    with pytest.raises(TlsError, match=r"london-1\.crt: no such certificate"):
        TlsConfig.from_dir(tls_dir, "london-1").check(NOW)


def _parse(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_common_arguments(parser)
    return parser.parse_args(["--name", "origin", "--region", "us-east-1", *flags])


@pytest.mark.usefixtures("no_process_tls")
def test_tls_flags_set_the_config_and_the_process_setting(
    live_tls_dir: Path, tmp_path: Path
) -> None:
    kwargs = common_kwargs(_parse("--data-dir", str(tmp_path / "origin")))
    assert kwargs["tls"] is None and tls.process_tls() is None
    today = live_tls_dir
    kwargs = common_kwargs(_parse("--data-dir", str(tmp_path / "origin"), "--tls-dir", str(today)))
    config = kwargs["tls"]
    assert isinstance(config, TlsConfig)
    assert config.cert_file == (today / "origin.crt").resolve()
    assert config.http_client_cert == "required"
    assert tls.process_tls() is config
    explicit = common_kwargs(
        _parse(
            "--data-dir", str(tmp_path / "origin"),
            "--tls-ca", str(today / "ca.crt"),
            "--tls-cert", str(today / "origin.crt"),
            "--tls-key", str(today / "origin.key"),
            "--tls-http-client-cert", "optional",
        )
    )["tls"]  # fmt: skip
    assert isinstance(explicit, TlsConfig) and explicit.http_client_cert == "optional"
    with pytest.raises(ValueError, match="needs --tls-dir or all of"):
        common_kwargs(_parse("--data-dir", str(tmp_path), "--tls-ca", str(today / "ca.crt")))


# -- handshakes, in memory ---------------------------------------------------------------------


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext, hostname: str) -> None:
    """Run a TLS handshake plus one record each way over memory BIOs; raise on failure."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_side = client.wrap_bio(to_client, to_server, server_hostname=hostname)
    server_side = server.wrap_bio(server_in, server_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, side in (("client", client_side), ("server", server_side)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
        server_in.write(to_server.read())
        to_client.write(server_out.read())
        if all(done.values()):
            break
    # With TLS 1.3 the server's verdict on the client certificate arrives after the
    # client finished; a round of application data brings it back.
    client_side.write(b"ping")
    server_in.write(to_server.read())
    assert server_side.read(4) == b"ping"
    server_side.write(b"pong")
    to_client.write(server_out.read())
    assert client_side.read(4) == b"pong"


def _server_context(live_tls_dir: Path, policy: tls.HttpClientCert = "required") -> ssl.SSLContext:
    return TlsConfig.from_dir(live_tls_dir, "origin", policy).server_ssl_context()


def test_handshake_with_the_cluster_client_certificate(live_tls_dir: Path) -> None:
    client = TlsConfig.from_dir(live_tls_dir, tls.CLIENT_NAME).client_ssl_context()
    _handshake(client, _server_context(live_tls_dir), "127.0.0.1")
    _handshake(client, _server_context(live_tls_dir), "localhost")
    _handshake(client, _server_context(live_tls_dir), "origin")


def test_handshake_fails_for_a_host_not_in_the_certificate(live_tls_dir: Path) -> None:
    client = TlsConfig.from_dir(live_tls_dir, tls.CLIENT_NAME).client_ssl_context()
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _handshake(client, _server_context(live_tls_dir), "10.9.9.9")


def test_handshake_fails_without_a_client_certificate_unless_optional(live_tls_dir: Path) -> None:
    anonymous = ssl.create_default_context(cadata=(live_tls_dir / "ca.crt").read_text())
    with pytest.raises(ssl.SSLError):
        _handshake(anonymous, _server_context(live_tls_dir), "127.0.0.1")
    _handshake(anonymous, _server_context(live_tls_dir, "optional"), "127.0.0.1")


def test_handshake_fails_with_a_client_certificate_from_another_ca(
    live_tls_dir: Path, tmp_path: Path
) -> None:
    certs.ensure_certs(tmp_path / "other", [], now=NOW)
    foreign = ssl.create_default_context(cadata=(live_tls_dir / "ca.crt").read_text())
    foreign.load_cert_chain(tmp_path / "other" / "client.crt", tmp_path / "other" / "client.key")
    for policy in tls.HTTP_CLIENT_CERT_CHOICES:
        with pytest.raises(ssl.SSLError):
            _handshake(foreign, _server_context(live_tls_dir, policy), "127.0.0.1")
