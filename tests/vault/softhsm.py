"""One SoftHSM2 token directory per test process, shared by every PKCS#11 test module.

SoftHSM2 reads ``SOFTHSM2_CONF`` when python-pkcs11 first initialises the library in
a process, and the library then stays loaded: so the token directory, its config
and the tokens of every module are made once, up front, and each module's fixture
only points ``SOFTHSM2_CONF`` at them (for the processes it starts).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vault_node.config import Pkcs11Settings
from vault_node.hsm.pkcs11 import PIN_ENV

MODULE_CANDIDATES = (
    Path("/usr/lib/softhsm/libsofthsm2.so"),
    Path("/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"),
    Path("/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so"),
    Path("/usr/local/lib/softhsm/libsofthsm2.so"),
)
# every token any module uses, initialised before the library is first loaded
TOKENS = ("bkv-a", "bkv-b", "bkv-node", "bkv-other", "bkv-hw", "bkv-hw-b", "bkv-hw-cli",
          "bkv-rebuild")
KEY_LABEL = "bkv-master"
SKIP_REASON = "softhsm2 is not installed (scripts/install-system-deps.sh installs it)"


@dataclass(frozen=True)
class SoftHsm:
    module: Path
    pin: str
    pin_file: Path
    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "softhsm2.conf"

    def settings(self, token: str, key_label: str = KEY_LABEL) -> Pkcs11Settings:
        return Pkcs11Settings(self.module, token, key_label, self.pin_file)


_shared: list[SoftHsm] = []


def softhsm_module() -> Path | None:
    return next((p for p in MODULE_CANDIDATES if p.exists()), None)


def shared_softhsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm | None:
    """The process's SoftHSM2 setup (made on first use), or None without softhsm2."""
    if _shared:
        return _shared[0]
    module = softhsm_module()
    if shutil.which("softhsm2-util") is None or module is None:
        return None
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    (root / "softhsm2.conf").write_text(
        f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    pin = secrets.token_hex(8)
    pin_file = root / "pin"
    pin_file.write_text(pin + "\n")
    pin_file.chmod(0o600)
    hsm = SoftHsm(module, pin, pin_file, root)
    env = os.environ | {"SOFTHSM2_CONF": str(hsm.conf)}
    for label in TOKENS:
        subprocess.run(
            [
                *("softhsm2-util", "--init-token", "--free", "--label", label),
                *("--pin", pin, "--so-pin", secrets.token_hex(8)),
            ],
            check=True,
            capture_output=True,
            timeout=30,
            env=env,
        )
    _shared.append(hsm)
    return hsm


def softhsm_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """The body of each module's ``softhsm`` fixture: skip without softhsm2, else set the env."""
    hsm = shared_softhsm(tmp_path_factory)
    if hsm is None:
        pytest.skip(SKIP_REASON)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOFTHSM2_CONF", str(hsm.conf))
        mp.delenv(PIN_ENV, raising=False)
        yield hsm
