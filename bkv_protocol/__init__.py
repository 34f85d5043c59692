"""Protocol crypto shared by the device (client_sdk) and the vault (vault_node).

Pure, side-effect-free functions: OPRF (RFC 9497), OPAQUE-3DH (RFC 9807),
request sealing (HPKE, RFC 9180) and the key deposit. Every malformed input
raises :class:`bkv_protocol.errors.ProtocolError`.
"""

from bkv_protocol.errors import ProtocolError

__all__ = ["ProtocolError"]
