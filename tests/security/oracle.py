"""The offline test an attacker runs once it holds one KE2 and an OPRF evaluation of a guess.

KE2's ``masked_response`` is ``(server public key || envelope) XOR pad``, where the
pad is derived from the masking key, which comes from the OPRF output of the
password under the deposit's OPRF key. Anyone who obtains an evaluation of
``blind(candidate)`` under that same key -- for example from a REGISTER_START
answered with the account's key -- can derive the masking key, unmask, and check
whether the server public key appears: one password test per evaluation, with
no KE2 counted for it. These helpers implement exactly that check, so the tests
can show that no entry point hands out such an evaluation.
"""

from __future__ import annotations

from bkv_protocol import opaque
from bkv_protocol.ksf import IDENTITY_KSF
from bkv_protocol.opaque_messages import ENVELOPE_BYTES, KE2, NH, NPK, expand, xor

_PAD_BYTES = NPK + ENVELOPE_BYTES


def masking_key_from_registration(
    state: opaque.RegistrationState, registration_response: bytes, account: str
) -> bytes:
    """What the attacker derives from a REGISTER_START answer for ``blind(candidate)``."""
    record, _export = opaque.client_finish_registration(
        state, registration_response, ksf=IDENTITY_KSF, client_identity=account.encode()
    )
    return bytes(record)[NPK : NPK + NH]


def candidate_matches(ke2: bytes, masking_key: bytes, server_public_key: bytes) -> bool:
    """True when ``masking_key`` unmasks ``ke2``: the candidate password is the right one."""
    response = KE2.parse(ke2)
    pad = expand(masking_key, response.masking_nonce + b"CredentialResponsePad", _PAD_BYTES)
    return xor(pad, response.masked_response)[:NPK] == server_public_key


def masking_key_from_login(state: opaque.ClientLoginState, ke2: bytes) -> bytes:
    """The masking key an honest client derives from a KE2 for its own password.

    The control: for the right password this key unmasks *every* KE2 of the
    deposit, which is what makes an uncounted evaluation an oracle.
    """
    evaluated = KE2.parse(ke2).evaluated_message
    randomized = opaque._randomized_password(state.password, state.blind, evaluated,
                                             IDENTITY_KSF)
    return expand(randomized, b"MaskingKey", NH)
