"""Secret hygiene after a real end-to-end run: nothing secret on disk, in logs, argv or env.

Scanned: every file under the cluster's state directory except ``secrets/``
(which holds the master key, transport secret, link keys and token signing key *by
design*, 0600 in a 0700 folder; everything else on disk must be either public
or sealed under the master key). That covers Raft journals, snapshots (if any),
the sealed fleet file, configs, layout, pid files and every process's log.
Searched for: the password, the backup key, the OPAQUE export and session
keys (captured on the client side), every fleet secret (read through the HSM
object in this process), the master key, the transport secret and every
node's private link key -- raw, hex in both cases, and base64 (standard and
URL-safe, at each of the three alignments, so a secret inside a longer base64
blob is found too).
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w

from bkv_protocol import opaque
from bkv_protocol.ksf import IDENTITY_KSF
from bkv_tools.launcher import LocalCluster
from bkv_tools.launcher_layout import child_env
from client_sdk.config import ClientConfig
from client_sdk.errors import KeyDestroyed, NotRegistered, VaultError, WrongPassword
from client_sdk.vault_client import VaultClient
from tests.security.conftest import ATTEMPT_LIMIT, direct_client, new_account
from tests.vault.conftest import VaultCallError
from vault_node.hsm.fleet import FleetHsm, HsmError, SoftwareMasterKey

pytestmark = pytest.mark.cluster

PASSWORD = "Tr0ub4dor&3-unique-hygiene-password"


def encodings(secret: bytes) -> dict[str, bytes]:
    """The forms a leaked secret could take in a file."""
    forms = {"raw": secret, "hex": secret.hex().encode(), "HEX": secret.hex().upper().encode()}
    for shift in range(3):  # a secret at any offset inside a longer base64 text
        for name, enc in (("b64", base64.b64encode), ("b64url", base64.urlsafe_b64encode)):
            text = enc(b"\x00" * shift + secret).rstrip(b"=")
            lead = (shift * 4 + 2) // 3  # chars that depend on the padding bytes
            forms[f"{name}+{shift}"] = text[lead : len(text) - 2]
    return forms


def find_leaks(blob: bytes, named: dict[str, bytes]) -> list[str]:
    hits = []
    for what, secret in named.items():
        for form, needle in encodings(secret).items():
            if needle and needle in blob:
                hits.append(f"{what} ({form})")
    return hits


def test_encodings_find_a_planted_secret() -> None:
    """Sanity: the scanner finds each form it claims to search (so the real scan can fail)."""
    secret = os.urandom(32)
    for shift in range(3):
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            planted = b"<" + enc(b"j" * shift + secret + b"tail") + b">"
            assert find_leaks(planted, {"s": secret}), (shift, enc)
    assert find_leaks(b"...%s..." % secret.hex().upper().encode(), {"s": secret})
    assert not find_leaks(os.urandom(4096), {"s": secret})


def _fleet_secrets(cluster: LocalCluster) -> dict[str, bytes]:
    master = SoftwareMasterKey.from_file(cluster.secrets_dir / "master.key")
    hsm = FleetHsm.from_file(master, cluster.state_dir / "fleet" / "fleet.sealed")
    # Private attributes on purpose: the test plays the HSM's auditor.
    return {
        "oprf seed": hsm._opaque.oprf_seed,
        "opaque ake private key": hsm._opaque.private_key,
        "hpke private key": hsm._hpke_private,
        "account hash key": hsm._account_key,
        "master key": bytes.fromhex((cluster.secrets_dir / "master.key").read_text().strip()),
        "transport secret": (cluster.secrets_dir / "transport.secret").read_text().strip().encode(),
        **{f"link key {path.stem}": bytes.fromhex(path.read_text().strip())
           for path in sorted((cluster.secrets_dir / "link").glob("*.key"))},
    }


def _client_keys(cluster: LocalCluster, config: ClientConfig, account: str) -> dict[str, bytes]:
    """Log in by hand with the right password to capture what only the client may know."""
    client = direct_client(cluster, config)
    try:
        login = client.login_start(account, PASSWORD.encode())
        _ke3, session_key, export_key = opaque.client_finish_login(
            login.state, login.reply.ke2, ksf=IDENTITY_KSF, context=opaque.PRODUCT_CONTEXT,
            client_identity=account.encode())
        client.login_finish(account, login)  # completes and resets the counter
    finally:
        client.close()
    return {"export key": bytes(export_key), "session key": bytes(session_key)}


def test_no_secret_on_disk_in_logs_argv_env_or_errors(
    sec_cluster: LocalCluster, sec_config: ClientConfig
) -> None:
    account = new_account("hygiene")
    backup_key = os.urandom(32)
    messages: list[str] = []
    with VaultClient(sec_config, ksf=IDENTITY_KSF) as client:
        messages.append(repr(client))
        client.register(account, backup_key, PASSWORD)
        with pytest.raises(WrongPassword) as wrong:
            client.recover(account, PASSWORD + "x")
        messages += [str(wrong.value), repr(wrong.value)]
        assert client.recover(account, PASSWORD) == backup_key
        with pytest.raises(NotRegistered) as missing:
            client.recover(new_account("nobody"), PASSWORD)
        messages += [str(missing.value), repr(missing.value)]
        doomed = new_account("doomed")
        client.register(doomed, backup_key, PASSWORD)
        for _ in range(ATTEMPT_LIMIT):
            with pytest.raises(VaultError) as err:
                client.recover(doomed, "guess")
            messages.append(str(err.value))
        with pytest.raises(KeyDestroyed) as gone:
            client.recover(doomed, PASSWORD)
        messages += [str(gone.value), repr(gone.value)]
    captured = _client_keys(sec_cluster, sec_config, account)
    with pytest.raises(VaultCallError):
        raw = direct_client(sec_cluster, sec_config)
        try:
            raw.recover(account, b"wrong-" + PASSWORD.encode())
        finally:
            raw.close()

    user = {"password": PASSWORD.encode(), "backup key": backup_key, **captured}
    fleet = _fleet_secrets(sec_cluster)
    everything = {**user, **fleet}

    # 1. Every file the nodes and ChatDs wrote (secrets/ excepted, see module docstring).
    scanned = 0
    leaks: list[str] = []
    for path in sorted(sec_cluster.state_dir.rglob("*")):
        if not path.is_file() or sec_cluster.secrets_dir in path.parents:
            continue
        scanned += 1
        leaks += [f"{path.relative_to(sec_cluster.state_dir)}: {hit}"
                  for hit in find_leaks(path.read_bytes(), everything)]
    assert scanned >= 20, "the state directory looks empty: wrong place?"
    assert any(p.name.endswith("journal") for p in sec_cluster.state_dir.rglob("*"))
    assert not leaks, leaks

    # 2. Error messages and reprs the user sees.
    for text in messages:
        assert not find_leaks(text.encode(), user), text

    # 3. argv and environment of every cluster process.
    pids = [int(p.read_text().strip()) for p in (sec_cluster.state_dir / "pids").glob("*.pid")]
    assert len(pids) == len(sec_cluster.process_names())
    for pid in pids:
        for what in ("cmdline", "environ"):
            blob = Path(f"/proc/{pid}/{what}").read_bytes()
            assert not find_leaks(blob, everything), (pid, what, find_leaks(blob, everything))


def test_key_loading_errors_never_echo_key_material(tmp_path: Path) -> None:
    key_hex = os.urandom(32).hex()
    needles = {"master key": bytes.fromhex(key_hex)}
    for content in (key_hex + "zz", key_hex[:-2], key_hex + "00"):
        path = tmp_path / "master.key"
        path.unlink(missing_ok=True)
        path.write_text(content)
        path.chmod(0o600)
        with pytest.raises(HsmError) as err:
            SoftwareMasterKey.from_file(path)
        assert not find_leaks(str(err.value).encode(), needles), err.value
        assert key_hex[:8] not in str(err.value)
        with pytest.raises(HsmError) as err:
            SoftwareMasterKey.load(None, env={"BKV_MASTER_KEY": content})
        assert key_hex[:8] not in str(err.value)
    assert "SoftwareMasterKey" in repr(SoftwareMasterKey(bytes.fromhex(key_hex)))
    assert not find_leaks(repr(SoftwareMasterKey(bytes.fromhex(key_hex))).encode(), needles)


def test_node_refusing_a_wrong_master_key_says_so_in_one_line(
    sec_cluster: LocalCluster, tmp_path: Path
) -> None:
    """A node started with the wrong master key: clear one-line error, no key, no traceback."""
    wrong_hex = os.urandom(32).hex()
    key_file = tmp_path / "wrong-master.key"
    key_file.write_text(wrong_hex + "\n")
    key_file.chmod(0o600)
    node_id = sec_cluster.nodes(0)[0]
    config = tomllib.loads(sec_cluster.config_path(node_id).read_text())
    config["master_key_file"] = str(key_file)
    config["data_dir"] = str(tmp_path / "data")
    config_path = tmp_path / "node.toml"
    config_path.write_text(tomli_w.dumps(config))
    proc = subprocess.run(
        [sys.executable, "-m", "vault_node.cli", "run", "--config", str(config_path)],
        capture_output=True, timeout=60, env=child_env(), check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert b"master key" in output and b"Traceback" not in output, output
    secrets_now = {"wrong key": bytes.fromhex(wrong_hex), **_fleet_secrets(sec_cluster)}
    assert not find_leaks(output, secrets_now), output
