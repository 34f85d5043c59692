"""ChatD's per-account rate limit under a flood, and its isolation between accounts.

Guard: ``ChatDService.Forward`` calls ``RateLimiter.allow(account)`` after the
token check and before anything reaches the vault (``chatd_proxy/server.py``).
Without it, every request below would be forwarded and none refused.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from bkv_api.v1 import envelope_pb2 as pb
from bkv_protocol import tokens
from bkv_tools.launcher_layout import CHATD_BURST
from client_sdk.config import ClientConfig
from client_sdk.vault_replies import seal_client_request
from tests.security.conftest import RPC_TIMEOUT, new_account, signing_key

pytestmark = pytest.mark.cluster

FLOOD = 3 * CHATD_BURST


def _forward_once(config: ClientConfig, channel: grpc.Channel, account: str, token: str) -> str:
    # A LOGIN_FINISH for a session nobody issued: cheap for the vault, no Raft commit.
    body = pb.LoginFinish(session_id=os.urandom(16), ke3=os.urandom(64))
    request, _ = seal_client_request(config.fleet_public_key, account, 0, pb.LOGIN_FINISH, body)
    forward = channel.unary_unary(
        "/bkv.v1.ChatD/Forward",
        request_serializer=pb.SealedRequest.SerializeToString,
        response_deserializer=pb.SealedResponse.FromString,
    )
    try:
        forward(request, timeout=RPC_TIMEOUT, metadata=[("bkv-account-token", token)])
    except grpc.RpcError as err:
        return str(err.code().name)
    return "OK"


def test_flood_is_refused_per_account(sec_config: ClientConfig) -> None:
    signing = signing_key(sec_config)
    flooder, bystander = new_account("flood"), new_account("bystander")
    flood_token = tokens.mint_token(signing, flooder)
    with grpc.insecure_channel(sec_config.chatd[0]) as channel:
        with ThreadPoolExecutor(max_workers=16) as pool:
            codes = list(pool.map(
                lambda _: _forward_once(sec_config, channel, flooder, flood_token), range(FLOOD)
            ))
        refused = codes.count("RESOURCE_EXHAUSTED")
        assert refused > 0, codes
        assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, set(codes)
        assert codes.count("OK") >= CHATD_BURST // 2  # the burst itself is served
        # Another account on the same ChatD is unaffected by the flood.
        bystander_token = tokens.mint_token(signing, bystander)
        assert _forward_once(sec_config, channel, bystander, bystander_token) == "OK"
