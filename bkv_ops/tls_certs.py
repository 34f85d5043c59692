"""Certificates of the cluster: a private CA (ECDSA P-256) and role-bound leaves.

Each leaf names its role in a URI SAN ``bkv://<role>/<name>`` and limits it
with its extended key usage (see :mod:`bkv_ops.tls` for what each role may do);
node and ChatD leaves also carry their role's DNS name, which clients check
instead of the dialled address. Pure apart from :func:`ensure_bundle`, which
writes a folder per identity (private keys 0600 through an atomic rename).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bkv_ops.tls import (
    CA_FILE,
    CA_KEY_DIR,
    CA_KEY_FILE,
    CERT_FILE,
    CHATD_SERVER_NAME,
    KEY_FILE,
    ROLE_CHATD,
    ROLE_OPS,
    ROLE_VAULT_NODE,
    ROLES,
    URI_SCHEME,
    VAULT_SERVER_NAME,
    TlsError,
    read_file,
    write_private,
    write_public,
)

CA_DAYS = 3650
LEAF_DAYS = 397
_EKU = {
    ROLE_VAULT_NODE: [ExtendedKeyUsageOID.SERVER_AUTH],
    ROLE_CHATD: [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    ROLE_OPS: [ExtendedKeyUsageOID.CLIENT_AUTH],
}
_ROLE_DNS = {ROLE_VAULT_NODE: VAULT_SERVER_NAME, ROLE_CHATD: CHATD_SERVER_NAME}


@dataclass(frozen=True)
class Identity:
    """Who a leaf certificate speaks for, and the names/addresses it is valid for."""

    role: str
    name: str
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise TlsError(f"unknown certificate role {self.role!r}")
        if not self.name or "/" in self.name or not self.name.isprintable():
            raise TlsError(f"bad certificate name {self.name!r}")

    @property
    def uri(self) -> str:
        return f"{URI_SCHEME}://{self.role}/{self.name}"


@dataclass(frozen=True)
class Authority:
    """The cluster CA: its certificate and (while issuing) its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def new_ca(
    common_name: str = "Backup Key Vault cluster CA",
    *,
    days: int = CA_DAYS,
    now: datetime.datetime | None = None,
) -> Authority:
    """A fresh self-signed CA that may sign leaves only (path length 0)."""
    start = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - datetime.timedelta(minutes=5))
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(cert, key)


def issue(
    ca: Authority,
    identity: Identity,
    *,
    days: int = LEAF_DAYS,
    now: datetime.datetime | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A leaf key and certificate for ``identity``, signed by ``ca``."""
    start = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
    dns = [_ROLE_DNS[identity.role]] if identity.role in _ROLE_DNS else []
    for host in [*dns, *identity.dns_names]:
        if x509.DNSName(host) not in sans:
            sans.append(x509.DNSName(host))
    for ip in identity.ip_addresses:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise TlsError(f"bad IP address {ip!r} for {identity.name}") from None
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.role),
            x509.NameAttribute(NameOID.COMMON_NAME, identity.name),
        ]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - datetime.timedelta(minutes=5))
        .not_valid_after(min(start + datetime.timedelta(days=days), ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(_EKU[identity.role]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return key, cert


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# ---- files -----------------------------------------------------------------------


def load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(read_file(path, "certificate"))
    except ValueError:
        raise TlsError(f"certificate {path} is not a valid X.509 certificate") from None


def ensure_bundle(
    out_dir: Path,
    identities: Iterable[Identity],
    *,
    keep_ca_key: bool = True,
    days: int = LEAF_DAYS,
) -> list[Path]:
    """Make what is missing in ``out_dir``; return the files written.

    Layout: ``ca.pem``; ``<name>/{cert,key,ca}.pem`` per identity (one folder to
    mount per service); ``ca-private/ca-key.pem`` (0700 folder, 0600 file) unless
    ``keep_ca_key`` is false. Existing leaves are kept; a new one needs the
    kept CA key.
    """
    identities = list(identities)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_dir.chmod(0o755)
    written: list[Path] = []
    ca_path = out_dir / CA_FILE
    ca_key_path = out_dir / CA_KEY_DIR / CA_KEY_FILE
    missing = [i for i in identities
               if not (out_dir / i.name / CERT_FILE).exists()
               or not (out_dir / i.name / KEY_FILE).exists()]
    names = [i.name for i in missing]
    if len(set(names)) != len(names):
        raise TlsError("two certificates with the same name")
    authority: Authority | None = None
    if not ca_path.exists():
        authority = new_ca()
        if keep_ca_key:
            ca_key_path.parent.mkdir(mode=0o700, exist_ok=True)
            ca_key_path.parent.chmod(0o700)
            write_private(ca_key_path, key_pem(authority.key))
            written.append(ca_key_path)
        write_public(ca_path, cert_pem(authority.cert))
        written.append(ca_path)
    elif missing:
        authority = _load_authority(ca_path, ca_key_path)
    ca_bytes = ca_path.read_bytes()
    for identity in missing:
        assert authority is not None
        key, cert = issue(authority, identity, days=days)
        folder = out_dir / identity.name
        folder.mkdir(mode=0o755, exist_ok=True)
        write_private(folder / KEY_FILE, key_pem(key))
        write_public(folder / CERT_FILE, cert_pem(cert))
        written += [folder / KEY_FILE, folder / CERT_FILE]
    for identity in identities:
        ca_copy = out_dir / identity.name / CA_FILE
        if not ca_copy.exists() or ca_copy.read_bytes() != ca_bytes:
            write_public(ca_copy, ca_bytes)
    return written


def _load_authority(ca_path: Path, ca_key_path: Path) -> Authority:
    if not ca_key_path.exists():
        raise TlsError(
            f"new certificates are needed but the CA key was not kept ({ca_key_path}); "
            "make a new CA (remove the folder) or restore the key"
        )
    try:
        key = serialization.load_pem_private_key(read_file(ca_key_path, "CA key"), None)
    except (ValueError, TypeError):
        raise TlsError(f"CA key {ca_key_path} is not a usable private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TlsError(f"CA key {ca_key_path} is not an ECDSA key")
    return Authority(load_certificate(ca_path), key)
