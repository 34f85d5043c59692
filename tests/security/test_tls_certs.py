"""The certificate library: names, roles, key usage, expiry, files; and the role guard
in-process (a real gRPC server with mutual TLS on loopback)."""

from __future__ import annotations

import datetime
import ipaddress
import stat
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bkv_ops import tls, tls_certs
from bkv_tools import certs_cli


def client_leaf_with_role(authority: tls_certs.Authority, role: str) -> tuple[bytes, bytes]:
    """(cert PEM, key PEM) of a clientAuth leaf naming ``role``: what the role guard must
    catch when the key usage alone would let it through."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(f"bkv://{role}/sneaky")]), critical=False)
        .sign(authority.key, hashes.SHA256())
    )
    return tls_certs.cert_pem(cert), tls_certs.key_pem(key)


@pytest.fixture(scope="module")
def authority() -> tls_certs.Authority:
    return tls_certs.new_ca()


def test_leaf_names_role_and_key_usage(authority: tls_certs.Authority) -> None:
    identity = tls_certs.Identity(tls.ROLE_VAULT_NODE, "dc1-n1", ("dc1-n1",), ("127.0.0.1", "::1"))
    _, cert = tls_certs.issue(authority, identity)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {tls.VAULT_SERVER_NAME, "dc1-n1"}
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    assert tls.cert_identity(cert) == (tls.ROLE_VAULT_NODE, "dc1-n1")
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]  # never a client
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca is False
    cert.verify_directly_issued_by(authority.cert)


def test_each_role_gets_its_own_usage_and_name(authority: tls_certs.Authority) -> None:
    _, chatd = tls_certs.issue(authority, tls_certs.Identity(tls.ROLE_CHATD, "chatd-dc1"))
    _, ops = tls_certs.issue(authority, tls_certs.Identity(tls.ROLE_OPS, "ops"))
    chatd_eku = chatd.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    ops_eku = ops.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(chatd_eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert list(ops_eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    chatd_dns = chatd.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert tls.CHATD_SERVER_NAME in chatd_dns.get_values_for_type(x509.DNSName)
    assert tls.VAULT_SERVER_NAME not in chatd_dns.get_values_for_type(x509.DNSName)
    assert tls.cert_identity(ops) == (tls.ROLE_OPS, "ops")


def test_ca_is_p256_and_limited_to_leaves(authority: tls_certs.Authority) -> None:
    assert isinstance(authority.key.curve, ec.SECP256R1)
    basic = authority.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca is True and basic.path_length == 0
    assert "PRIVATE" not in repr(authority) and "key=" not in repr(authority)


def test_expiry_is_bounded_by_the_leaf_days_and_the_ca(authority: tls_certs.Authority) -> None:
    now = datetime.datetime.now(datetime.UTC)
    _, cert = tls_certs.issue(authority, tls_certs.Identity(tls.ROLE_OPS, "ops"), days=30, now=now)
    assert cert.not_valid_after_utc - now <= datetime.timedelta(days=30, seconds=1)
    assert cert.not_valid_before_utc < now
    short_ca = tls_certs.new_ca(days=2)
    _, capped = tls_certs.issue(short_ca, tls_certs.Identity(tls.ROLE_OPS, "ops"), days=400)
    assert capped.not_valid_after_utc <= short_ca.cert.not_valid_after_utc


def test_bad_identities_are_refused() -> None:
    with pytest.raises(tls.TlsError):
        tls_certs.Identity("admin", "x")
    with pytest.raises(tls.TlsError):
        tls_certs.Identity(tls.ROLE_OPS, "a/b")
    with pytest.raises(tls.TlsError):
        tls_certs.issue(tls_certs.new_ca(),
                        tls_certs.Identity(tls.ROLE_OPS, "ops", ip_addresses=("nope",)))


def test_bundle_files_modes_and_reuse(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    ids = [tls_certs.Identity(tls.ROLE_CHATD, "chatd-dc1"), tls_certs.Identity(tls.ROLE_OPS, "ops")]
    written = tls_certs.ensure_bundle(out, ids)
    assert out / tls.CA_KEY_DIR / tls.CA_KEY_FILE in written
    assert stat.S_IMODE((out / tls.CA_KEY_DIR).stat().st_mode) == 0o700
    for path in [out / "chatd-dc1" / tls.KEY_FILE, out / "ops" / tls.KEY_FILE,
                 out / tls.CA_KEY_DIR / tls.CA_KEY_FILE]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert (out / "ops" / tls.CA_FILE).read_bytes() == (out / tls.CA_FILE).read_bytes()
    before = (out / "ops" / tls.CERT_FILE).read_bytes()
    assert tls_certs.ensure_bundle(out, ids) == []  # nothing missing: nothing rewritten
    assert (out / "ops" / tls.CERT_FILE).read_bytes() == before
    # the kept CA key signs a new one
    tls_certs.ensure_bundle(out, [*ids, tls_certs.Identity(tls.ROLE_OPS, "ops2")])
    new = tls_certs.load_certificate(out / "ops2" / tls.CERT_FILE)
    new.verify_directly_issued_by(tls_certs.load_certificate(out / tls.CA_FILE))
    assert not list(tmp_path.rglob(".*.tmp"))


def test_ca_key_can_be_discarded(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    tls_certs.ensure_bundle(out, [tls_certs.Identity(tls.ROLE_OPS, "ops")], keep_ca_key=False)
    assert not (out / tls.CA_KEY_DIR).exists()
    assert not [p for p in out.rglob("*.pem") if b"PRIVATE KEY" in p.read_bytes()
                and p.parent.name != "ops"]
    with pytest.raises(tls.TlsError, match="CA key was not kept"):
        tls_certs.ensure_bundle(out, [tls_certs.Identity(tls.ROLE_OPS, "other")])


def test_certs_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "compose-tls"
    assert certs_cli.main(["compose", "--out", str(out), "--no-keep-ca-key"]) == 0
    assert not (out / tls.CA_KEY_DIR).exists()
    node = tls_certs.load_certificate(out / "dc1-n1" / tls.CERT_FILE)
    assert tls.cert_identity(node) == (tls.ROLE_VAULT_NODE, "dc1-n1")
    sans = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "dc1-n1" in sans.get_values_for_type(x509.DNSName)
    assert (out / "probe" / tls.KEY_FILE).exists()
    assert "PRIVATE" not in capsys.readouterr().out
    assert certs_cli.main(["compose", "--out", str(out / "dc1-n1" / tls.CERT_FILE)]) != 0


def _serve(tmp_path: Path, authority: tls_certs.Authority) -> tuple[grpc.Server, int]:
    key, cert = tls_certs.issue(authority, tls_certs.Identity(tls.ROLE_VAULT_NODE, "n1",
                                                              ip_addresses=("127.0.0.1",)))
    tls.write_private(tmp_path / "n1.key", tls_certs.key_pem(key))
    tls.write_public(tmp_path / "n1.pem", tls_certs.cert_pem(cert))
    tls.write_public(tmp_path / "ca.pem", tls_certs.cert_pem(authority.cert))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                         interceptors=[tls.RoleGuard((tls.ROLE_CHATD, tls.ROLE_OPS))])
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    creds = tls.ServerTls(tmp_path / "n1.pem", tmp_path / "n1.key", tmp_path / "ca.pem")
    port = server.add_secure_port("127.0.0.1:0", creds.credentials(require_client_auth=True))
    server.start()
    return server, port


def _check(port: int, ca: Path, cert: bytes, key: bytes, tmp_path: Path) -> grpc.StatusCode:
    tls.write_public(tmp_path / "client.pem", cert)
    tls.write_private(tmp_path / "client.key", key)
    settings = tls.ClientTls(ca, tmp_path / "client.pem", tmp_path / "client.key",
                             tls.VAULT_SERVER_NAME)
    with tls.open_channel(f"127.0.0.1:{port}", settings) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError as err:
            code: grpc.StatusCode = err.code()
            return code
    return grpc.StatusCode.OK


def test_role_guard(tmp_path: Path, authority: tls_certs.Authority) -> None:
    server, port = _serve(tmp_path, authority)
    ca = tmp_path / "ca.pem"
    try:
        key, cert = tls_certs.issue(authority, tls_certs.Identity(tls.ROLE_CHATD, "chatd-dc1"))
        assert _check(port, ca, tls_certs.cert_pem(cert), tls_certs.key_pem(key), tmp_path) \
            == grpc.StatusCode.OK
        forged_cert, forged_key = client_leaf_with_role(authority, tls.ROLE_VAULT_NODE)
        assert _check(port, ca, forged_cert, forged_key, tmp_path) \
            == grpc.StatusCode.PERMISSION_DENIED
    finally:
        server.stop(0)


def test_unreadable_files_give_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "not.pem").write_text("hello")
    with pytest.raises(tls.TlsError, match="not a PEM file") as info:
        tls.ClientTls(tmp_path / "not.pem").credentials()
    assert "\n" not in str(info.value)
    with pytest.raises(tls.TlsError, match="cannot read"):
        tls.ServerTls(tmp_path / "a", tmp_path / "b").credentials(require_client_auth=False)


def test_certs_command_custom_and_local(tmp_path: Path) -> None:
    out = tmp_path / "custom"
    assert certs_cli.main(["custom", "--out", str(out), "--vault-node", "n1", "--chatd", "c1",
                           "--ops", "probe", "--dns", "vault.example", "--ip", "10.0.0.5"]) == 0
    chatd = tls_certs.load_certificate(out / "c1" / tls.CERT_FILE)
    sans = chatd.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"c1", "vault.example", tls.CHATD_SERVER_NAME} <= set(
        sans.get_values_for_type(x509.DNSName))
    assert ipaddress.ip_address("10.0.0.5") in sans.get_values_for_type(x509.IPAddress)
    assert tls.cert_identity(tls_certs.load_certificate(out / "probe" / tls.CERT_FILE)) == (
        tls.ROLE_OPS, "probe")
    assert certs_cli.main(["local", "--state-dir", str(tmp_path / "nowhere")]) == 1
