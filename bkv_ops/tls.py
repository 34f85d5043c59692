"""Transport security: a private cluster CA, role-bound leaf certificates, gRPC credentials.

Three roles, each named in the certificate by a URI SAN ``bkv://<role>/<name>``
and limited by its extended key usage:

* ``vault-node`` (serverAuth): serves ``bkv.v1.Vault``; carries the DNS name
  :data:`VAULT_SERVER_NAME`, which ChatD and the probes check instead of the
  address they dial, so a certificate of another role can't pose as a node.
* ``chatd`` (serverAuth + clientAuth): serves devices (:data:`CHATD_SERVER_NAME`)
  and is the client a vault node accepts.
* ``ops`` (clientAuth): status and health probes of the operator's tools.

A vault node verifies the client chain against the CA during the handshake (no
certificate or another CA: the connection never opens) and then
:class:`RoleGuard` refuses, per call, any leaf whose role it does not admit.
Issuing certificates is :mod:`bkv_ops.tls_certs`; this module is what servers
and clients load (it parses certificates only to read a peer's role).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from cryptography import x509

ROLE_VAULT_NODE = "vault-node"
ROLE_CHATD = "chatd"
ROLE_OPS = "ops"
ROLES = (ROLE_VAULT_NODE, ROLE_CHATD, ROLE_OPS)
VAULT_SERVER_NAME = "vault.bkv.internal"
CHATD_SERVER_NAME = "chatd.bkv.internal"
URI_SCHEME = "bkv"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
CA_FILE = "ca.pem"
CA_KEY_DIR = "ca-private"
CA_KEY_FILE = "ca-key.pem"


class TlsError(ValueError):
    """Certificates can't be made, read or used (one line, never key material)."""


def write_private(path: Path, data: bytes) -> None:
    """Write owner-only (0600) through a temporary file and an atomic rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_public(path: Path, data: bytes) -> None:
    """Write a certificate (0644) atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    os.replace(tmp, path)


def read_file(path: Path, what: str) -> bytes:
    """A PEM file's bytes; TlsError naming the file (never its content) if unreadable."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise TlsError(f"cannot read {what} {path}: {err.strerror}") from None
    if b"-----BEGIN" not in data:
        raise TlsError(f"{what} {path} is not a PEM file")
    return data


@dataclass(frozen=True)
class ServerTls:
    """A server's certificate and key, and the CA its clients must chain to (mTLS)."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None

    def credentials(self, *, require_client_auth: bool) -> grpc.ServerCredentials:
        cert = read_file(self.cert_file, "certificate")
        key = read_file(self.key_file, "private key")
        roots = read_file(self.ca_file, "CA file") if self.ca_file is not None else None
        if require_client_auth and roots is None:
            raise TlsError("client authentication needs a CA file")
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=roots, require_client_auth=require_client_auth
        )


@dataclass(frozen=True)
class ClientTls:
    """What a gRPC client trusts (``ca_file``), what it shows (optional), the name it checks."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        roots = read_file(self.ca_file, "CA file")
        if (self.cert_file is None) != (self.key_file is None):
            raise TlsError("a client certificate needs both its cert and key file")
        if self.cert_file is None or self.key_file is None:
            return grpc.ssl_channel_credentials(root_certificates=roots)
        return grpc.ssl_channel_credentials(
            root_certificates=roots,
            private_key=read_file(self.key_file, "private key"),
            certificate_chain=read_file(self.cert_file, "certificate"),
        )


def open_channel(
    address: str, tls: ClientTls | None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A TLS channel when ``tls`` is set (checking ``server_name`` if given), else plaintext."""
    if tls is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, tls.credentials(), options=_tls_options(tls, options))


def open_aio_channel(
    address: str, tls: ClientTls | None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """:func:`open_channel` for ``grpc.aio``."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    return grpc.aio.secure_channel(address, tls.credentials(),
                                   options=_tls_options(tls, options))


def _tls_options(tls: ClientTls, options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    opts = list(options)
    if tls.server_name:
        opts.append(("grpc.ssl_target_name_override", tls.server_name))
    return opts


def bundle_client(folder: Path, server_name: str | None) -> ClientTls:
    """The :class:`ClientTls` of one ``<name>/`` folder written by :func:`ensure_bundle`."""
    return ClientTls(folder / CA_FILE, folder / CERT_FILE, folder / KEY_FILE, server_name)


def cert_identity(cert: x509.Certificate) -> tuple[str, str] | None:
    """(role, name) from the ``bkv://`` URI SAN, or None if the certificate has none."""
    from cryptography import x509  # imported here: probes that never serve don't pay for it

    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        prefix = f"{URI_SCHEME}://"
        if uri.startswith(prefix):
            role, sep, name = uri[len(prefix):].partition("/")
            if sep and role in ROLES and name:
                return role, name
    return None


@functools.lru_cache(maxsize=256)
def _peer_role(pem: bytes) -> tuple[str, bool] | None:
    """(role, may act as a client) of a verified peer certificate (cached per certificate)."""
    from cryptography import x509  # imported here: probes that never serve don't pay for it
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    found = cert_identity(cert)
    if found is None:
        return None
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None
    return found[0], ExtendedKeyUsageOID.CLIENT_AUTH in eku


def peer_role(context: Any) -> str | None:
    """The role of the TLS client of a call, if its (already verified) certificate has one."""
    auth = context.auth_context() or {}
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        return None
    found = _peer_role(bytes(pems[0]))
    if found is None or not found[1]:
        return None
    return found[0]


class RoleGuard(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuses (PERMISSION_DENIED) every call whose client certificate's role may not call it.

    ``allowed`` is either the roles admitted to every method, or a map from full
    method name (``/package.Service/Method``) to the roles admitted to it; a
    method missing from the map admits no role. The check runs before the
    handler, so a refused call changes nothing (it costs no attempt).
    """

    def __init__(self, allowed: Iterable[str] | Mapping[str, Iterable[str]]) -> None:
        if isinstance(allowed, Mapping):
            self._per_method: dict[str, frozenset[str]] | None = {
                method: frozenset(roles) for method, roles in allowed.items()
            }
            self._allowed: frozenset[str] = frozenset()
        else:
            self._per_method = None
            self._allowed = frozenset(allowed)

    def roles_for(self, method: str) -> frozenset[str]:
        """The roles that may call ``method``."""
        if self._per_method is None:
            return self._allowed
        return self._per_method.get(method, frozenset())

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        roles = self.roles_for(details.method)
        return _guarded(handler, functools.partial(_check_role, roles))


def _check_role(roles: frozenset[str], context: Any) -> None:
    if peer_role(context) not in roles:
        context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            "client certificate does not carry a role this method accepts",
        )


def _guarded(handler: Any, check: Callable[[Any], None]) -> Any:
    def wrap(behaviour: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        def run(request: Any, context: Any) -> Any:
            check(context)
            return behaviour(request, context)
        return run

    kinds = (
        ("unary_unary", grpc.unary_unary_rpc_method_handler),
        ("unary_stream", grpc.unary_stream_rpc_method_handler),
        ("stream_unary", grpc.stream_unary_rpc_method_handler),
        ("stream_stream", grpc.stream_stream_rpc_method_handler),
    )
    for attr, make in kinds:
        behaviour = getattr(handler, attr)
        if behaviour is not None:
            return make(
                wrap(behaviour),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler
